"""Country mosaics from tile predictions: pixel equality, strict COG validation, resume after a real kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_validate
from builders import EPSG, ORIGIN, predict_tiles, victoria_tiles

from cropmap.errors import IncompatibleInputError
from cropmap.stages.mosaic import mosaic_tiles, tile_grid
from cropmap.stages.predict import NODATA, PredictOptions, tile_path

ROWS, COLS, PX = 2, 4, 10  # the 800 real Victoria series (train + test) as 8 tiles of 10 x 10 pixels


@pytest.fixture(scope="module")
def mosaic_run(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("mosaic")
    cubes, _ = victoria_tiles(root / "cubes", rows=ROWS, cols=COLS, ny=PX, nx=PX, split="all")
    predict_tiles(tiny_checkpoint, cubes, root / "tiles", options=PredictOptions(probabilities=True))
    result = mosaic_tiles(root / "tiles", root / "out", name="vic", blocksize=16)
    return root, cubes, result


def test_mosaic_equals_the_tiles_pixel_for_pixel(mosaic_run):
    root, _, result = mosaic_run
    assert set(result.cogs) == {"class", "confidence", "probability"}
    for product, cog in result.cogs.items():
        with rasterio.open(cog) as src:
            assert (src.width, src.height) == (COLS * PX, ROWS * PX)
            assert src.crs.to_epsg() == EPSG and (src.transform.c, src.transform.f) == ORIGIN
            for k in range(ROWS * COLS):
                r, c = divmod(k, COLS)
                with rasterio.open(tile_path(root / "tiles", f"T{r}_{c}", product)) as tile:
                    np.testing.assert_array_equal(src.read(window=Window(c * PX, r * PX, PX, PX)), tile.read())


def test_cogs_validate_strictly_with_colour_table_and_class_names(mosaic_run, tiny_checkpoint):
    from cropmap.ml.checkpoint import load_checkpoint

    _, _, result = mosaic_run
    ckpt = load_checkpoint(tiny_checkpoint)
    for cog in result.cogs.values():
        valid, errors, warnings = cog_validate(cog, strict=True, quiet=True)
        assert valid and not errors and not warnings, (cog, errors, warnings)
    with rasterio.open(result.cogs["class"]) as src:
        assert src.overviews(1) == [2, 4]  # 20 x 40 pixels in 16-pixel blocks: the 40 px side fits one at /4
        cmap = src.colormap(1)
        for i, colour in enumerate(ckpt.class_colours):
            assert cmap[i] == (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16), 255)
        assert json.loads(src.tags()["class_names"]) == list(ckpt.class_names)
        assert [src.tags(1)[f"class_{i}"] for i in range(len(ckpt.class_names))] == list(ckpt.class_names)
        assert src.tags()["OVERVIEW_RESAMPLING"] == "MODE"
        full = src.read(1)
        overview = src.read(1, out_shape=(ROWS * PX // 2, COLS * PX // 2))
    # mode resampling: where a 2 x 2 block has a strict majority, the overview holds it (never an average)
    blocks = full.reshape(ROWS * PX // 2, 2, COLS * PX // 2, 2).transpose(0, 2, 1, 3).reshape(*overview.shape, 4)
    counts = np.stack([(blocks == v).sum(-1) for v in range(256)], axis=-1)
    majority = counts.max(-1) >= 3
    assert majority.sum() > 50
    np.testing.assert_array_equal(overview[majority], counts.argmax(-1)[majority])
    with rasterio.open(result.cogs["confidence"]) as src:
        assert src.tags()["OVERVIEW_RESAMPLING"] == "AVERAGE"
        conf, conf_ov = src.read(1).astype(float), src.read(1, out_shape=(ROWS * PX // 2, COLS * PX // 2))
    mean = conf.reshape(ROWS * PX // 2, 2, COLS * PX // 2, 2).mean(axis=(1, 3))
    assert np.abs(conf_ov - mean).max() <= 1.0  # uint8 rounding


def test_stac_item_and_quicklook(mosaic_run, tiny_checkpoint):
    from matplotlib.image import imread

    from cropmap.ml.checkpoint import load_checkpoint

    _, _, result = mosaic_run
    ckpt = load_checkpoint(tiny_checkpoint)
    item = pystac.Item.from_file(str(result.stac_item))
    with rasterio.open(result.cogs["class"]) as src:
        assert item.properties["proj:code"] == f"EPSG:{EPSG}"
        assert item.properties["proj:shape"] == [src.height, src.width]
        assert item.properties["proj:transform"] == list(src.transform)[:6]
    assert item.properties["start_datetime"].startswith("2017-08-01")
    assert item.properties["end_datetime"].startswith("2018-07-31")
    lon, lat = item.geometry["coordinates"][0][0]
    assert 140 < lon < 150 and -39 < lat < -35  # Victoria
    classes = item.assets["class"].extra_fields["classification:classes"]
    assert [c["description"] for c in classes if not c.get("nodata")] == list(ckpt.class_names)
    assert item.assets["confidence"].extra_fields["raster:bands"][0]["nodata"] == NODATA
    assert item.properties["cropmap:model_card"]["model_name"] == "cropnet"
    assert item.properties["cropmap:source_items"] == sorted(f"victoria-T{r}_{c}" for r in range(ROWS) for c in range(COLS))
    assert item.properties["cropmap:software_version"]
    for asset in item.assets.values():
        assert (result.stac_item.parent / asset.href).exists()
    png = imread(result.quicklook)
    assert png.ndim == 3 and png.shape[0] > 100


def _copy_moved(src_path: Path, dst_path: Path, dx: float, dy: float) -> Path:
    """A copy of the tile ``src_path`` whose grid is moved by ``(dx, dy)`` pixels."""
    with rasterio.open(src_path) as src:
        profile, data = src.profile, src.read()
    profile["transform"] = profile["transform"] @ rasterio.Affine.translation(dx, dy)
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)
    return dst_path


def test_tiles_off_the_grid_are_refused(mosaic_run, tmp_path):
    root, _, _ = mosaic_run
    src_path = tile_path(root / "tiles", "T0_0", "class")
    moved = _copy_moved(src_path, tmp_path / "T9_9.class.tif", 0.5, 0)
    with pytest.raises(IncompatibleInputError, match="off the pixel grid"):
        tile_grid([src_path, moved])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from cropmap.cli import app; app()", *args]


@pytest.mark.slow
def test_killed_run_resumes_and_gives_byte_identical_mosaics(tiny_checkpoint, tmp_path):
    cubes, _ = victoria_tiles(tmp_path / "cubes", rows=ROWS, cols=COLS, ny=PX, nx=PX, split="all")
    # small batches: each tile takes long enough for the kill to land between tiles
    options = ["--batch-size", "5"]
    tiles = tmp_path / "tiles"
    proc = subprocess.Popen(_cli("predict", str(tiny_checkpoint), *map(str, cubes), "--out", str(tiles), *options),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not list(tiles.glob("*.class.tif")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name.split(".")[0] for p in tiles.glob("*.class.tif"))
    assert 0 < len(finished) < ROWS * COLS, finished
    stamps = {t: tile_path(tiles, t, "class").stat().st_mtime_ns for t in finished}

    rerun = subprocess.run(_cli("predict", str(tiny_checkpoint), *map(str, cubes), "--out", str(tiles), *options),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    skipped = sorted(line.split(":")[0] for line in rerun.stdout.splitlines() if line.endswith(": skipped"))
    assert skipped == finished
    assert {t: tile_path(tiles, t, "class").stat().st_mtime_ns for t in finished} == stamps
    assert not [p for p in tiles.iterdir() if p.name.startswith(".")]  # the killed tile's temporary is gone

    clean = tmp_path / "clean"
    predict_tiles(tiny_checkpoint, cubes, clean, options=PredictOptions(batch_size=5))
    resumed = mosaic_tiles(tiles, tmp_path / "out_resumed", blocksize=16)
    reference = mosaic_tiles(clean, tmp_path / "out_clean", blocksize=16)
    again = mosaic_tiles(tiles, tmp_path / "out_resumed", blocksize=16)  # a rerun of the mosaic itself
    for product in ("class", "confidence"):
        assert resumed.cogs[product].read_bytes() == reference.cogs[product].read_bytes()
        assert again.cogs[product].read_bytes() == reference.cogs[product].read_bytes()


def test_overlapping_tiles_are_refused(mosaic_run, tmp_path):
    root, _, _ = mosaic_run
    src_path = tile_path(root / "tiles", "T0_0", "class")
    moved = _copy_moved(src_path, tmp_path / "T9_9.class.tif", 5, 5)  # half a tile over
    with pytest.raises(IncompatibleInputError, match="overlaps"):
        tile_grid([src_path, moved])
    tile_grid([src_path, tile_path(root / "tiles", "T0_1", "class")])  # neighbours sharing an edge are fine


def test_cli_mosaic_rerun_is_byte_identical(mosaic_run, tmp_path):
    from typer.testing import CliRunner

    from cropmap.cli import app

    root, _, result = mosaic_run
    run = CliRunner().invoke(app, ["mosaic", str(root / "tiles"), "--out", str(tmp_path), "--name", "vic",
                                   "--blocksize", "16"])
    assert run.exit_code == 0, run.output
    for product, cog in result.cogs.items():
        assert (tmp_path / cog.name).read_bytes() == cog.read_bytes(), product
    assert (tmp_path / "vic.json").read_bytes() == result.stac_item.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in result.stac_item.parent.iterdir())
    missing = CliRunner().invoke(app, ["mosaic", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "run `cropmap predict` first" in missing.output


def test_tiles_of_two_runs_are_not_mixed(mosaic_run, tmp_path):
    import shutil

    root, _, _ = mosaic_run
    tiles = tmp_path / "tiles"
    shutil.copytree(root / "tiles", tiles)
    with rasterio.open(tile_path(tiles, "T1_3", "class"), "r+") as dst:
        dst.update_tags(cropmap_run_key="another-checkpoint")
    with pytest.raises(IncompatibleInputError, match="T1_3"):
        mosaic_tiles(tiles, tmp_path / "out")


def test_cli_mosaic_of_tiles_in_two_zones_gives_zone_and_national_cogs(mosaic_run, tmp_path):
    """One tile moved to the neighbouring UTM zone (EPSG:32754): per-zone COGs, and a national COG in --crs that
    holds both zones' pixels (before, `cropmap mosaic` exited 2 on such a folder)."""
    from typer.testing import CliRunner

    from cropmap.cli import app

    root, _, _ = mosaic_run
    folder = tmp_path / "tiles"
    folder.mkdir()
    for path in sorted((root / "tiles").glob("T0_*.*.tif")):
        shutil.copy(path, folder / path.name)
    for product in ("class", "confidence", "probability"):  # T0_0 to zone 54, a few km west of 144 E
        src = folder / f"T0_0.{product}.tif"
        with rasterio.open(src) as ds:
            profile, data, tags, band_tags = ds.profile, ds.read(), ds.tags(), [ds.tags(b) for b in range(1, ds.count + 1)]
            cmap = ds.colormap(1) if product == "class" else None
        profile.update(crs="EPSG:32754", transform=rasterio.transform.from_origin(760_000, 5_900_000, 10, 10))
        with rasterio.open(src, "w", **profile) as dst:
            dst.write(data)
            dst.update_tags(**tags)
            for b, t in enumerate(band_tags, 1):
                dst.update_tags(b, **t)
            if cmap:
                dst.write_colormap(1, cmap)
    run = CliRunner().invoke(app, ["mosaic", str(folder), "--out", str(tmp_path / "out"), "--name", "two",
                                   "--crs", "EPSG:3577"])
    assert run.exit_code == 0, run.output
    assert "zone EPSG:32755" in run.output and "zone EPSG:32754" in run.output
    national = tmp_path / "out" / "two_class.tif"
    assert cog_validate(national, strict=True)[0]
    with rasterio.open(national) as n, rasterio.open(folder / "T0_0.class.tif") as moved:
        assert n.crs.to_epsg() == 3577
        assert (n.read(1) != NODATA).sum() >= 0.9 * (len(list(folder.glob("*.class.tif"))) * moved.width * moved.height)


def test_a_strip_longer_than_a_block_gets_overviews_and_validates(demo_paths, tmp_path):
    """A country wider than one block but narrower than one in the other direction (a 768 x 64 px strip
    of the DEMO reference map): rio-cogeo's default overview count follows the shorter side (none here)
    and strict validation refused the file; the COG now has overviews down to one block."""
    from cropmap.stages.mosaic import write_cog

    with rasterio.open(demo_paths.reference) as ref:
        data, profile = ref.read(1), ref.profile
    strip = np.concatenate([data[0:64], data[64:128], data[128:192]], axis=1)  # (64, 768)
    source = tmp_path / "strip.tif"
    profile.update(driver="GTiff", width=strip.shape[1], height=strip.shape[0], tiled=False)
    profile.pop("blockxsize", None), profile.pop("blockysize", None)
    with rasterio.open(source, "w", **profile) as dst:
        dst.write(strip, 1)
    cog = write_cog(source, tmp_path / "strip_cog.tif", resampling="mode", blocksize=512)
    assert cog_validate(cog, strict=True)[0]
    with rasterio.open(cog) as src:
        assert src.overviews(1) == [2] and np.array_equal(src.read(1), strip)
