"""Hostile rasters (issue 33): non-finite reflectance is no data from the reader to the model's input (a
float asset holding ±inf, a composite or a cube that holds it), and a tile map whose every pixel is nodata
is refused with one line, never reported "done"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window, from_bounds
from builders import AUG, TILE
from builders import VIC_SEASON, VIC_YEAR, victoria_tiles

from cropmap.core.composite import median_composite
from cropmap.core.features import compute_features
from cropmap.core.grid import Grid
from cropmap.core.masking import valid_from_scl
from cropmap import errors
from cropmap.io.catalogs import ASSET_ROOTS_PROPERTY
from cropmap.ml.checkpoint import load_checkpoint
from cropmap.ml.normalisation import apply_normalisation
from cropmap.stages.cube import CubeOptions, build_tile_cube, load_observations, open_tile_cube
from cropmap.stages.predict import NODATA, PredictOptions, open_cube, infer_cube, resolve_model, write_tile_predictions

RED = ("B04",)


def _float_red(item, folder: Path, spots: list[tuple[tuple[slice, slice], float]]):
    """``item`` with its red asset replaced by a float32 GeoTIFF of the real DNs in a 96 x 96 px window
    (11.5 km) around TILE, each spot (rows, cols of the window) set to its value."""
    src_path = Path(item.assets["red"].get_absolute_href())
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="NO"), rasterio.open(src_path) as src:
        centre = from_bounds(*TILE.bounds, transform=src.transform)
        window = Window(int(centre.col_off) - 40, int(centre.row_off) - 40, 96, 96)
        dn = src.read(1, window=window).astype(np.float32)
        transform, crs = src.window_transform(window), src.crs
    for where, value in spots:
        dn[where] = value
    path = folder / item.id / "B04.tif"
    path.parent.mkdir(parents=True)
    with rasterio.open(path, "w", driver="GTiff", width=96, height=96, count=1, dtype="float32", crs=crs,
                       transform=transform, nodata=0) as dst:
        dst.write(dn, 1)
    out = item.clone()
    out.assets["red"].href = str(path)
    out.properties[ASSET_ROOTS_PROPERTY] = [str(folder)]  # the catalog may read these local files
    return out


def _spots(date: int, value_pos: float, value_neg: float) -> list[tuple[tuple[slice, slice], float]]:
    """Window pixels (120 m) under TILE: two blocks on every date, one more on one date each."""
    every = [((slice(45, 48), slice(45, 48)), value_pos), ((slice(50, 53), slice(50, 53)), value_neg)]
    once = {0: [((slice(55, 58), slice(42, 45)), value_neg)], 2: [((slice(42, 45), slice(55, 58)), value_pos)]}
    return every + once.get(date, [])


def test_inf_pixels_of_a_float_asset_are_nodata_in_the_cube(twm_items, tmp_path):
    """A float asset holding ±inf (on every date, or on one) gives the cube its nodata gives: no ±inf, those
    pixels unobserved, the tile's status and filled fraction as with nodata."""
    hostile = [_float_red(it, tmp_path / "inf", _spots(i, np.inf, -np.inf)) for i, it in enumerate(twm_items)]
    nodata = [_float_red(it, tmp_path / "nodata", _spots(i, 0, 0)) for i, it in enumerate(twm_items)]
    with rasterio.open(hostile[0].assets["red"].href) as src:
        assert np.isposinf(src.read(1)).sum() == 9 and np.isneginf(src.read(1)).sum() == 18
    opts = CubeOptions(bands=RED, chunk=128)
    got = build_tile_cube(TILE, hostile, AUG, 2023, tmp_path / "cubes_inf", options=opts)
    want = build_tile_cube(TILE, nodata, AUG, 2023, tmp_path / "cubes_nodata", options=opts)
    assert got.status == want.status == "written", (got.reason, want.reason)
    cube, reference = open_tile_cube(got.path), open_tile_cube(want.path)
    values = cube.values
    assert not np.isinf(values).any()
    np.testing.assert_array_equal(values, reference.values)
    np.testing.assert_array_equal(cube.filled_fraction.values, reference.filled_fraction.values)
    assert cube.attrs["filled_fraction"] == reference.attrs["filled_fraction"]
    # the pixels that were ±inf on every date are never observed (all NaN), not extreme reflectances
    blank = np.isnan(values).all(axis=(0, 1))
    assert 0 < blank.mean() < 0.2 and (cube.filled_fraction.values[blank] == 1).all()


def test_inf_in_observations_is_no_data_to_the_composite(twm_items):
    """±inf in the observations (a reader or a sample file that lets it through) composites like NaN."""
    refl, scl, _ = load_observations(TILE, twm_items, bands=RED, chunk=128)
    valid = valid_from_scl(scl)
    hostile, missing = refl.copy(), refl.copy()
    for where, value in [((0, 0, slice(0, 20), slice(0, 20)), np.inf), ((2, 0, slice(30, 50), slice(0, 20)), -np.inf),
                         ((slice(None), 0, slice(60, 70), slice(60, 70)), np.inf)]:
        hostile[where], missing[where] = value, np.nan
    got = median_composite(hostile, AUG, 2023, valid=valid)
    want = median_composite(missing, AUG, 2023, valid=valid)
    assert not np.isinf(got.values).any()
    np.testing.assert_array_equal(got.values, want.values)
    np.testing.assert_array_equal(got.filled_fraction.values, want.filled_fraction.values)


def test_inf_in_a_cube_is_nodata_in_the_map_never_a_class(tiny_checkpoint, tmp_path):
    """A cube holding ±inf (written by another tool): features and normalisation keep it no data, and its
    pixels are nodata in the map, where -inf clipped to 0 used to give a confident class."""
    (path,), _ = victoria_tiles(tmp_path, rows=1, cols=1, ny=10, nx=10)
    cube = open_cube(path).load()
    checkpoint = load_checkpoint(tiny_checkpoint)
    options = PredictOptions(device="cpu")
    clean = infer_cube(checkpoint, cube, options=options)
    hostile = cube.copy(deep=True)
    hostile.values[5, 0, 0, :3] = -np.inf  # one bin of one band
    hostile.values[:, :, 1, 0] = -np.inf  # the whole series
    hostile.values[7, 2, 2, 2] = np.inf
    bad = np.zeros((10, 10), dtype=bool)
    bad[0, :3] = bad[1, 0] = bad[2, 2] = True
    for kind in ("2d", "1d", "harmonic"):
        feats = compute_features(hostile, kind)
        assert not np.isinf(feats.values).any(), kind
        assert np.isnan(feats.values).reshape(100, -1).any(axis=1).reshape(10, 10)[bad].all(), kind
    x = hostile.transpose("y", "x", "band", "time").values.reshape(100, 10, -1)
    z = apply_normalisation(x, checkpoint.normalisation)
    assert np.isnan(z[10]).all() and not np.isinf(z).any()  # pixel (1, 0): no data, not a dark pixel
    maps = infer_cube(checkpoint, hostile, options=options)
    for name in ("label", "confidence"):
        assert (maps[name].values[bad] == NODATA).all(), name
        np.testing.assert_array_equal(maps[name].values[~bad], clean[name].values[~bad])


def test_a_tile_whose_every_pixel_is_nodata_is_refused_not_done(tiny_checkpoint, tmp_path):
    """Real series with too few dates (7 of 73 bins observed in every pixel): predict writes nothing and
    says why in one line; `cropmap predict` exits 2 instead of "1 done"."""
    from typer.testing import CliRunner

    from cropmap.cli import app

    (path,), _ = victoria_tiles(tmp_path / "cubes", rows=1, cols=1, ny=10, nx=10,
                                blank={s: slice(0, 66) for s in range(100)})
    out = tmp_path / "out"
    with pytest.raises(errors.CropmapError, match=r"^tile T0_0: every pixel of its map would be nodata, so none is "
                                            r"written: 100 of its 100 pixels have more than max_filled_fraction 0.8 "
                                            r"of their bins interpolated .*max_filled_fraction$") as err:
        write_tile_predictions(resolve_model(location=tiny_checkpoint, options=PredictOptions(device="cpu")), path, out)
    assert isinstance(err.value, errors.EmptyMapError) and "\n" not in str(err.value)
    assert not list(out.glob("*.tif"))  # nothing published: the next run tries the tile again
    run = CliRunner().invoke(app, ["predict", str(tiny_checkpoint), str(path), "--out", str(out)])
    assert run.exit_code == 2 and "T0_0: done" not in run.output and "1 done" not in run.output, run.output
    assert "every pixel of its map would be nodata" in run.output
    assert not list(out.glob("*.tif"))


def test_an_empty_cube_gives_no_tile_map(tiny_checkpoint, tmp_path):
    """A cube without a single observation (no STAC item for the tile) is refused by predict naming the
    cube's reason, not mapped as an all-nodata tile."""
    bands = tuple(load_checkpoint(tiny_checkpoint).bands)
    tile = Grid(32755, tile_size=16).tile(0, 0)
    options = CubeOptions(bands=bands, chunk=16)
    empty = build_tile_cube(tile, [], VIC_SEASON, VIC_YEAR, tmp_path / "cubes", options=options)
    assert empty.status == "empty"
    with pytest.raises(errors.CropmapError, match=r"its cube is empty \(no STAC item found for the tile") as err:
        write_tile_predictions(resolve_model(location=tiny_checkpoint, options=PredictOptions(device="cpu")), empty.path,
                               tmp_path / "out")
    assert isinstance(err.value, errors.EmptyMapError)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.tif"))


def test_a_run_whose_tiles_map_no_pixel_reports_them_empty_and_fails(demo_run, demo_model, tmp_path):
    """DEMO tiles in a year without scenes: their cubes are empty, their maps are ``empty`` in the run's
    summary (no tile map written, so a rerun tries them again; four alike do not stop the run as a dead
    catalog would) and the run fails in one line."""
    from cropmap.jobs.executors import InlineExecutor
    from cropmap.jobs.mapping import MapResult, check_complete
    from cropmap.jobs.tile_pipeline import run_tiles
    from cropmap.jobs.tiles import run_model

    config = demo_run.config.model_copy(update={"year": 2019})
    run = demo_run.model_copy(update={"config": config, "root": str(tmp_path / "run")})
    tiles = run.tiles()
    assert len(tiles) == 4  # more than SAME_FAILURES_TO_STOP
    model = run_model(run, demo_model)
    summary = run_tiles(InlineExecutor(), run, tiles, model=model)
    assert {t: s["predict"] for t, s in summary.status.items()} == {t: "empty" for t in tiles}
    assert summary.failed_tiles == set(tiles) and "predict: 4 empty" in summary.describe()
    assert not list(Path(run.tile_dir(model.key)).glob("*.tif"))
    with pytest.raises(errors.CubeBuildError, match=r"4 of 4 tile\(s\) failed.*its cube is empty") as err:
        check_complete(MapResult(demo_model, "key", None, {}, summary))
    assert "\n" not in str(err.value)


def test_a_cube_past_its_time_limit_stops_between_reads_and_publishes_nothing(twm_items, tmp_path):
    """A read loop past the task's time limit (a hung or slow asset): the cube stops naming the tile and the
    setting, nothing is published; Prefect's own timeout cannot interrupt a task on a Dask worker thread."""
    from cropmap.io.time_limits import time_limit
    from cropmap.stages.cube import cube_path, is_finished

    with time_limit(0.0, what=f"tile {TILE.id}", setting="CROPMAP_CUBE_TIMEOUT_S"):
        with pytest.raises(errors.TimeLimitError, match=f"tile {TILE.id} ran past its time limit .*CROPMAP_CUBE_TIMEOUT_S"):
            build_tile_cube(TILE, twm_items, AUG, 2023, tmp_path / "cubes", options=CubeOptions(bands=RED, chunk=128))
    assert not is_finished(cube_path(tmp_path / "cubes", TILE))
    assert not [p for p in (tmp_path / "cubes").rglob("*") if p.is_dir() and p.suffix == ".zarr"]
