"""Per-tile cubes on real Sentinel-2 L2A items, checked against plain NumPy + rasterio."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import warnings
from pathlib import Path

import dask
import numpy as np
import pytest
import rasterio
import xarray as xr

from builders import AUG, TILE

from cropmap.core.composite import median_composite
from cropmap.core.grid import Grid
from cropmap.core.masking import DEFAULT_INVALID_SCL, valid_from_scl
from cropmap.core.season import Season
from cropmap.errors import AssetReadError
from cropmap.io.config import CatalogConfig
from cropmap.io.stac import search_items
from cropmap.stages.cube import (
    AssetUnavailableWarning,
    CubeOptions,
    build_tile_cube,
    composite_observations,
    load_observations,
    open_tile_cube,
)

BANDS = ("B02", "B03", "B04", "B08")  # the bands whose files are local in s2_l2a_stac
FILES = {"B02": "B02.tif", "B03": "B03.tif", "B04": "B04.tif", "B08": "B08.tif", "SCL": "SCL.tif"}
KEYS = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir"}


@pytest.fixture(scope="module")
def built(twm_items, tmp_path_factory):
    out = tmp_path_factory.mktemp("cubes")
    with warnings.catch_warnings():
        warnings.simplefilter("error", AssetUnavailableWarning)  # all four bands + SCL are local
        result = build_tile_cube(TILE, twm_items, AUG, 2023, out, options=CubeOptions(bands=BANDS, chunk=128))
    return result


def _numpy_reference(item_dir: Path, item_json: dict, invalid) -> np.ndarray:
    """(band, y, x) reflectance of one item on TILE's 10 m pixel centres, read with plain rasterio."""
    xmin, _, _, ymax = TILE.bounds
    xs = xmin + (np.arange(256) + 0.5) * 10
    ys = ymax - (np.arange(256) + 0.5) * 10
    out = []
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="NO"):
        with rasterio.open(item_dir / FILES["SCL"]) as src:
            inv = ~src.transform
            cols = np.floor(inv.a * xs + inv.c).astype(int)
            rows = np.floor(inv.e * ys + inv.f).astype(int)
            scl = src.read(1)[np.ix_(rows, cols)]
        for band in BANDS:
            with rasterio.open(item_dir / FILES[band]) as src:
                inv = ~src.transform
                cols = np.floor(inv.a * xs + inv.c).astype(int)
                rows = np.floor(inv.e * ys + inv.f).astype(int)
                dn = src.read(1)[np.ix_(rows, cols)].astype(np.float64)
            rb = item_json["assets"][KEYS[band]]["raster:bands"][0]
            # Earth Search: offset already removed from the DNs when this flag is set
            offset = 0.0 if item_json["properties"].get("earthsearch:boa_offset_applied") else rb["offset"]
            refl = (dn * rb["scale"] + offset).astype(np.float32)
            refl[(dn == rb["nodata"]) | np.isin(scl, invalid)] = np.nan
            out.append(refl)
    return np.stack(out)


def _interp_reference(series: np.ndarray) -> np.ndarray:
    """np.interp along axis 0 of (bins, n) series, vectorised per pattern of observed bins."""
    t = np.arange(series.shape[0], dtype=float)
    out = np.full(series.shape, np.nan)
    ok = ~np.isnan(series)
    patterns, inverse = np.unique(ok, axis=1, return_inverse=True)
    for p, pattern in enumerate(patterns.T):
        cols = inverse.ravel() == p
        if not pattern.any():
            continue  # never observed: stays NaN
        # np.interp is linear in the values: its weights come from interpolating unit vectors
        weights = np.stack([np.interp(t, t[pattern], e) for e in np.eye(pattern.sum())], axis=1)
        out[:, cols] = weights @ series[pattern][:, cols]
    return out


@pytest.fixture(scope="module")
def built_float32(twm_items, tmp_path_factory):
    """The tile of ``built`` with reflectance stored as float32 (the composite's values as computed)."""
    out = tmp_path_factory.mktemp("cubes_float32")
    return build_tile_cube(TILE, twm_items, AUG, 2023, out, options=CubeOptions(bands=BANDS, chunk=128,
                                                                               encoding="float32"))


def test_cube_equals_numpy_rasterio_reference(built_float32, twm_items):
    built = built_float32
    assert built.status == "written" and built.n_items == 5 and built.reason == ""
    cube = open_tile_cube(built.path)
    assert cube.dims == ("time", "band", "y", "x") and cube.dtype == np.float32
    assert cube.shape == (3, 4, 256, 256) and list(cube.band.values) == list(BANDS)
    obs, days = [], []
    for it in twm_items:
        item_dir = Path(it.get_self_href()).parent
        obs.append(_numpy_reference(item_dir, json.loads(Path(it.get_self_href()).read_text()), DEFAULT_INVALID_SCL))
        days.append(it.datetime.date())
    obs = np.stack(obs)  # (time, band, y, x)
    bin_of = np.array([(d - dt.date(2023, 8, 8)).days // 5 for d in days])
    ref = np.full((3, *obs.shape[1:]), np.nan, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        for b in range(3):
            ref[b] = np.nanmedian(obs[bin_of == b], axis=0)
    got = cube.values
    observed = ~np.isnan(ref)
    assert 0.5 < observed.mean() < 1.0  # clouds on 18 Aug leave gaps: interpolation is exercised
    np.testing.assert_array_equal(got[observed], ref[observed])
    # gap bins: linear interpolation along the bins, nearest value at the ends
    expected = _interp_reference(ref.reshape(3, -1))
    np.testing.assert_allclose(got.reshape(3, -1), expected, rtol=1e-6, atol=0)
    np.testing.assert_allclose(cube.filled_fraction.values, (~observed).mean(axis=(0, 1)), rtol=1e-6)
    # a real, plausible surface: no negative reflectance over summer vegetation
    assert np.nanmin(got[:, :3]) >= 0 and 0.1 < np.nanmedian(got[:, 3]) < 0.6


def test_an_int16_cube_holds_the_float32_cube_within_half_a_count(built, built_float32):
    """The default store: int16 counts of 1e-4 reflectance (CF scale_factor / _FillValue, decoded by plain
    xarray), equal to the float32 composite within half a count (5e-5), no data where it has none. (Its size
    against float32 is measured on real-shaped cubes by bench/cube_encoding.py: this tile's 120 m data on a 10 m
    grid is no guide.)"""
    import zarr

    stored = zarr.open_group(str(built.path), mode="r")["reflectance"]
    assert stored.dtype == np.int16 and stored.attrs["scale_factor"] == 1e-4 and stored.attrs["_FillValue"] == -32768
    exact = open_tile_cube(built_float32.path).values
    for got in (open_tile_cube(built.path).values, xr.open_zarr(built.path, consolidated=False)["reflectance"].values):
        assert got.shape == exact.shape and got.dtype in (np.float32, np.float64)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(exact))
        assert np.nanmax(np.abs(got - exact)) <= 5e-5 + 1e-7  # the rounding, and float32's own step near 1
    raw = open_tile_cube(built.path, stored=True)
    assert raw.dtype == np.int16 and raw.attrs["scale_factor"] == 1e-4 and raw.attrs["_FillValue"] == -32768


def test_cube_metadata_and_georeferencing(built, twm_items):
    cube = open_tile_cube(built.path)
    a = cube.attrs
    assert a["tile_id"] == TILE.id and a["status"] == "complete"
    assert Season.from_attrs(a) == AUG and a["season_year"] == 2023
    assert a["source_items"] == [it.id for it in twm_items]
    assert a["bin_edges"] == ["2023-08-08", "2023-08-13", "2023-08-18", "2023-08-23"]
    assert cube.rio.crs.to_epsg() == 32633 and cube.rio.transform() == TILE.transform
    assert 0 < a["filled_fraction"] < 1
    assert list(cube.time.values.astype("datetime64[D]").astype(str)) == a["bin_edges"][:3]
    assert float(cube.x[0]) == TILE.bounds[0] + 5 and float(cube.y[0]) == TILE.bounds[3] - 5


def test_existing_cube_is_skipped_and_leftover_temp_ignored(built, twm_items, tmp_path):
    mtime = (built.path / "zarr.json").stat().st_mtime_ns
    again = build_tile_cube(TILE, twm_items, AUG, 2023, built.path.parent, options=CubeOptions(bands=BANDS))
    assert again.status == "skipped" and (built.path / "zarr.json").stat().st_mtime_ns == mtime
    # a crashed run leaves a hidden temporary store: it never counts as complete
    crashed = tmp_path / f".{TILE.id}.tmp-1.zarr"
    crashed.mkdir()
    (crashed / "zarr.json").write_text("{}")
    empty = build_tile_cube(TILE, [], AUG, 2023, tmp_path, options=CubeOptions(bands=BANDS, chunk=128))
    assert empty.status == "empty" and (tmp_path / f"{TILE.id}.zarr").exists()
    assert [p.name for p in tmp_path.glob(".*")] == [crashed.name]  # our own temporary name was renamed


def test_tile_without_items_is_explicit_all_nodata(tmp_path):
    res = build_tile_cube(TILE, [], AUG, 2023, tmp_path, options=CubeOptions(bands=BANDS, chunk=128))
    cube = open_tile_cube(res.path)
    assert res.status == "empty" and "no STAC item" in res.reason
    assert cube.attrs["status"] == "empty" and cube.attrs["reason"] == res.reason
    assert cube.shape == (3, 4, 256, 256) and np.isnan(cube.values).all()
    assert (cube.filled_fraction.values == 1).all()


def test_fully_masked_tile_is_empty_with_reason(twm_items, tmp_path):
    opts = CubeOptions(bands=("B04",), chunk=128, invalid_scl=tuple(range(12)))  # every SCL class rejected
    res = build_tile_cube(TILE, twm_items, AUG, 2023, tmp_path, options=opts)
    assert res.status == "empty" and "masked" in res.reason
    assert np.isnan(open_tile_cube(res.path).values).all()


def test_unreachable_asset_warns_naming_item_and_asset(twm_items, tmp_path, monkeypatch):
    # B11 (swir16) points at an s3 https URL this machine cannot reach in every real item
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.05")  # each URL is retried: not for seconds here
    opts = CubeOptions(bands=("B04", "B11"), chunk=128)
    with pytest.warns(AssetUnavailableWarning) as record:
        res = build_tile_cube(TILE, twm_items[:2], AUG, 2023, tmp_path, options=opts)
    messages = [str(w.message) for w in record]
    assert any(twm_items[0].id in m and "'swir16'" in m for m in messages)
    assert res.status == "incomplete" and f"{twm_items[1].id}/swir16" in res.unavailable  # rebuilt on a rerun
    cube = open_tile_cube(res.path)
    assert np.isnan(cube.sel(band="B11").values).all() and not np.isnan(cube.sel(band="B04").values).all()
    with pytest.raises(AssetReadError, match="swir16"):
        build_tile_cube(TILE, twm_items[:1], AUG, 2023, tmp_path / "fail",
                        options=CubeOptions(bands=("B04", "B11"), on_asset_error="fail"))


def test_corrupt_local_asset_warns_and_tile_continues(twm_items, tmp_path):
    import pystac

    src_dir = Path(twm_items[0].get_self_href()).parent
    copy = tmp_path / "item"
    shutil.copytree(src_dir, copy, ignore=shutil.ignore_patterns("GRANULE"))
    (copy / "B04.tif").write_bytes(b"not a JPEG2000 file" * 10)
    (copy / "B03.tif").unlink()  # and a missing one
    item = pystac.Item.from_file(str(copy / f"{twm_items[0].id}.json"))
    item.make_asset_hrefs_absolute()
    with pytest.warns(AssetUnavailableWarning) as record:
        refl, scl, dropped = load_observations(TILE, [item, twm_items[1]], bands=("B02", "B03", "B04"), chunk=128)
    messages = " | ".join(str(w.message) for w in record)
    assert f"item {item.id} asset 'red'" in messages and f"item {item.id} asset 'green'" in messages
    assert f"{item.id}/red" in dropped and f"{item.id}/green" in dropped
    day0, day1 = refl.isel(time=0).compute(), refl.isel(time=1).compute()
    assert np.isnan(day0.sel(band=["B03", "B04"])).all() and not np.isnan(day0.sel(band="B02")).all()
    assert not np.isnan(day1).all(axis=(1, 2)).any()  # the other item keeps all its bands


def _raise_on_compute(*args, **kwargs):
    raise AssertionError("building the cube graph computed something")


def test_graph_building_reads_no_pixels(twm_items):
    """Compositing Dask-backed observations stays a lazy graph (all dates of a chunk in one task)."""
    refl, scl, _ = load_observations(TILE, twm_items, bands=BANDS, chunk=128)
    with dask.config.set(scheduler=_raise_on_compute):
        cube = composite_observations(refl.chunk({"y": 128, "x": 128}), scl.chunk({"y": 128, "x": 128}), AUG, 2023)
    assert cube.chunks is not None and cube.data.chunksize[2:] == (128, 128)
    assert cube.data.chunksize[0] == AUG.n_bins  # all dates of a chunk in one task: the median needs them


def test_a_tile_is_built_without_any_dask_graph(twm_items, tmp_path):
    """A tile cube is one task to a cluster: reading, compositing and writing compute no Dask graph
    at all (the default scheduler raises here), and the result equals the lazy composite's."""
    with dask.config.set(scheduler=_raise_on_compute):
        res = build_tile_cube(TILE, twm_items, AUG, 2023, tmp_path, options=CubeOptions(bands=BANDS, chunk=64,
                                                                                    encoding="float32"))
    refl, scl, _ = load_observations(TILE, twm_items, bands=BANDS, chunk=128)
    lazy = composite_observations(refl.chunk({"y": 128, "x": 128}), scl.chunk({"y": 128, "x": 128}), AUG, 2023)
    built = open_tile_cube(res.path)
    np.testing.assert_array_equal(built.values, lazy.values)
    np.testing.assert_array_equal(built["filled_fraction"].values, lazy["filled_fraction"].values)


def test_cube_and_sample_compositing_identical_on_raw_acquisitions(shared_data):
    """The openeo_gfmap raw acquisitions as a Dask cube and as (sample, time, band) pixels."""
    ds = xr.open_dataset(shared_data / "openeo_gfmap/cdse_sentinel2_l2a.nc").load()
    bands = ["B04", "B08", "B11"]
    refl = xr.concat([ds[f"S2-L2A-{b}"].astype("float32") / 10000 for b in bands], dim="band")
    refl = refl.assign_coords(band=bands).rename(t="time").transpose("time", "band", "y", "x")
    scl = ds["S2-L2A-SCL"].rename(t="time").transpose("time", "y", "x")
    april = Season(start="04-01", end="04-30")
    cube = composite_observations(refl.chunk({"y": 33, "x": 32}), scl.chunk({"y": 33, "x": 32}), april, 2023)
    cube = cube.compute()
    samples = refl.stack(sample=("y", "x")).transpose("sample", "time", "band")
    scl_s = scl.stack(sample=("y", "x")).transpose("sample", "time")
    pixels = median_composite(samples, april, 2023, valid=valid_from_scl(scl_s))
    as_cube = pixels.unstack("sample").transpose("time", "band", "y", "x")
    assert np.isfinite(cube.values).mean() > 0.9
    np.testing.assert_array_equal(cube.values, as_cube.values)
    np.testing.assert_array_equal(cube.filled_fraction.values, as_cube.filled_fraction.transpose("y", "x").values)


def test_cli_builds_then_skips_and_reports_errors(shared_data, tmp_path):
    from typer.testing import CliRunner

    from cropmap.cli import app

    (tmp_path / "SVN.yaml").write_text(
        "name: Slovenia (part)\noutline: {bbox: [15.70, 46.60, 15.72, 46.61]}\nhemisphere: north\n"
        "season: {start: '08-08', end: '08-22'}\nyear: 2023\n"
        f"catalog: {{path: {shared_data / 's2_l2a_stac/catalog.json'}, margin_days: 2}}\ntile_size: 128\n")
    args = ["cube", "SVN", "--configs-dir", str(tmp_path), "--out", str(tmp_path / "cubes"), "--bands", "B04,B08",
            "--max-tiles", "2", "--chunk", "64"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "2 written, 0 skipped, 0 empty" in first.output
    cubes = sorted((tmp_path / "cubes").glob("*.zarr"))
    assert len(cubes) == 2 and open_tile_cube(cubes[0]).shape == (3, 2, 128, 128)
    again = CliRunner().invoke(app, args)
    assert "0 written, 2 skipped" in again.output
    bad = CliRunner().invoke(app, ["cube", "../SVN", "--configs-dir", str(tmp_path), "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown country" in bad.output
    bad = CliRunner().invoke(app, [*args[:6], "--bands", "B04,NDVI"])
    assert bad.exit_code == 2 and "NDVI" in bad.output


def test_same_day_items_of_overlapping_mgrs_tiles_are_fused(shared_data):
    """33TWL and 33TWM overlap by ~10 km: each overpass must count once, first valid pixel wins."""
    tile = Grid(32633, tile_size=256).tile(1915, 219)  # y 5 095 040..5 097 600: in both granules
    cat = CatalogConfig(path=shared_data / "s2_l2a_stac/catalog.json")
    items = search_items(cat, bbox=tile.lonlat_bbox(), start=dt.date(2023, 8, 1), end=dt.date(2023, 8, 31))
    assert len(items) == 10
    refl, scl, _ = load_observations(tile, items, bands=("B04",), chunk=256)
    assert refl.sizes["time"] == 5 and scl.sizes["time"] == 5
    first_of_day = {}
    for it in items:  # items come sorted by (datetime, id): the first of each day wins
        first_of_day.setdefault(it.datetime.date(), it)
    firsts = list(first_of_day.values())
    seconds = [it for it in items if it not in firsts]
    a = load_observations(tile, firsts, bands=("B04",), chunk=256)[0].values
    b = load_observations(tile, seconds, bands=("B04",), chunk=256)[0].values
    assert np.isnan(a).any() or not np.array_equal(a, b, equal_nan=True)  # the two granules differ somewhere
    np.testing.assert_array_equal(refl.values, np.where(np.isnan(a), b, a))


@pytest.mark.slow  # starts a LocalCluster of worker processes (~20 s on 2 busy cores)
def test_distributed_workers_build_the_same_cube(built, twm_items, tmp_path):
    """With a distributed client active, chunks run in worker processes (GDAL env set there too)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None,
                      worker_dashboard_address=None) as cluster, Client(cluster):
        res = build_tile_cube(TILE, twm_items, AUG, 2023, tmp_path, options=CubeOptions(bands=BANDS, chunk=128))
    assert res.status == "written"
    xr.testing.assert_identical(open_tile_cube(res.path).load(), open_tile_cube(built.path).load())


def test_scl_dilation_grows_the_mask(twm_items, tmp_path):
    plain = open_tile_cube(build_tile_cube(TILE, twm_items, AUG, 2023, tmp_path / "a",
                                           options=CubeOptions(bands=("B04",), chunk=256)).path)
    grown = open_tile_cube(build_tile_cube(TILE, twm_items, AUG, 2023, tmp_path / "b",
                                           options=CubeOptions(bands=("B04",), chunk=256, dilate_pixels=12)).path)
    assert grown.attrs["dilate_pixels"] == 12 and grown.attrs["config_hash"] != plain.attrs["config_hash"]
    # one 120 m cloud pixel is 12 x 12 tile pixels: growing by 12 px masks more bins
    assert float(grown.filled_fraction.mean()) > float(plain.filled_fraction.mean())


def test_open_tile_cube_names_a_missing_store(tmp_path):
    from cropmap.errors import DataNotFoundError

    with pytest.raises(DataNotFoundError, match="cropmap cube"):
        open_tile_cube(tmp_path / "nothing.zarr")
