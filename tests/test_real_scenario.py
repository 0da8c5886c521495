"""The REAL scenario's pieces, fast: a 4-band checkpoint sets the run's bands, the config's ``bands:`` and
``catalog.asset_roots``, and a map that is all nodata is never ``complete``. The REAL scenes mapped end to
end through a Prefect deployment: tests/test_flows.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio

from cropmap.errors import ForbiddenHrefError, IncompatibleInputError, MosaicError

FOUR = ("B02", "B03", "B04", "B08")


@pytest.fixture(scope="module")
def four_band_model(tmp_path_factory, shared_data, one_torch_thread) -> str:
    """A 4-band checkpoint of the REAL season (the scenario's recipe, 1 epoch: fit, not skill, is the point)."""
    from cropmap.scenarios.real import train_real_checkpoint

    return train_real_checkpoint(tmp_path_factory.mktemp("real") / "real.pt", epochs=1).path


def test_a_four_band_checkpoint_sets_the_runs_bands(four_band_model, tmp_path):
    """resolve_run(model=...) takes the checkpoint's bands for the cubes (the run is then keyed apart from a
    10-band run), and the plan's fit check accepts the 4-band model; a conflicting --bands is refused."""
    from cropmap.jobs.tiles import check_model_fits, run_model
    from cropmap.ml.checkpoint import load_checkpoint
    from cropmap.scenarios import resolve_run

    assert load_checkpoint(four_band_model).bands == FOUR
    run = resolve_run("REAL", out_dir=str(tmp_path), parts=["drava"], model=four_band_model)
    assert run.cube.bands == FOUR
    assert check_model_fits(run, run_model(run, four_band_model), run.tiles()) == {"north": 0}
    ten = resolve_run("REAL", out_dir=str(tmp_path), parts=["drava"], bands=[
        "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"])
    assert ten.key != run.key
    with pytest.raises(IncompatibleInputError, match="bands"):
        check_model_fits(ten, run_model(ten, four_band_model), ten.tiles())
    with pytest.raises(IncompatibleInputError, match="checkpoint's bands"):
        resolve_run("REAL", out_dir=str(tmp_path), model=four_band_model, bands=["B02", "B03", "B04", "B8A"])


def test_the_configs_bands_train_and_unset_bands_keep_the_old_keys(tmp_path):
    """``bands:`` in a config is what a training run cubes (``cropmap train --bands`` overrides it); a
    config without it keeps the run key it had before the field existed."""
    from cropmap.io.config import load_country
    from cropmap.jobs.country_run import run_key
    from cropmap.scenarios import resolve_run

    assert resolve_run("REAL", out_dir=str(tmp_path)).cube.bands == FOUR
    assert resolve_run("REAL", out_dir=str(tmp_path), bands=["B02", "B04"]).cube.bands == ("B02", "B04")
    assert run_key(load_country("ARG")) == "98b9c880afce9b01"  # the key of the commit before `bands:`


def test_asset_roots_allow_a_catalogs_local_files_and_nothing_else(shared_data):
    """An API's items may point at local files only under the config's ``catalog.asset_roots`` (the REAL
    scenario names the data folder's s2_l2a_stac/): no CROPMAP_ASSET_HREF_SCHEMES=file needed."""
    from cropmap.io.catalogs import ASSET_ROOTS_PROPERTY, ROOT_PROPERTY, check_asset_href

    folder = shared_data / "s2_l2a_stac"
    href = next(folder.glob("sentinel-2-l2a/*/B02.tif")).resolve().as_uri()
    item = pystac.Item("x", None, None, __import__("datetime").datetime(2023, 8, 15), {})
    item.properties[ROOT_PROPERTY] = "http://127.0.0.1:8765"
    with pytest.raises(ForbiddenHrefError, match="asset_roots"):
        check_asset_href(href, item, "blue")
    item.properties[ASSET_ROOTS_PROPERTY] = [str(folder.resolve())]
    check_asset_href(href, item, "blue")
    with pytest.raises(ForbiddenHrefError):
        check_asset_href("file:///etc/passwd", item, "blue")


def test_an_all_nodata_map_is_never_complete(tiny_checkpoint, tmp_path):
    """Tiles whose every pixel is nodata (e.g. every bin interpolated above max_filled_fraction) give a map
    whose STAC item says ``empty``, not ``complete``, and a map-country result that fails in one line."""
    from builders import predict_tiles, victoria_tiles

    from cropmap.jobs.mapping import MapResult, check_complete
    from cropmap.jobs.tile_pipeline import TileSummary
    from cropmap.stages.mosaic import mosaic_tiles
    from cropmap.stages.predict import NODATA

    cubes, _ = victoria_tiles(tmp_path / "cubes", rows=1, cols=2, ny=4, nx=4)
    predict_tiles(tiny_checkpoint, cubes, tmp_path / "tiles")
    full = mosaic_tiles(tmp_path / "tiles", tmp_path / "full", name="vic")
    assert json.loads(Path(full.stac_item).read_text())["properties"]["cropmap:status"] == "complete"
    for tile in (tmp_path / "tiles").glob("*.class.tif"):  # the same tiles, every pixel nodata
        with rasterio.open(tile, "r+") as dst:
            dst.write(np.full((dst.count, dst.height, dst.width), NODATA, dtype=dst.dtypes[0]))
    empty = mosaic_tiles(tmp_path / "tiles", tmp_path / "empty", name="vic")
    props = json.loads(Path(empty.stac_item).read_text())["properties"]
    assert props["cropmap:status"] == "empty" and "nodata" in props["cropmap:reason"]
    summary = TileSummary(total=2)
    for t in ("T0_0", "T0_1"):
        summary.record(t, "cube", "written")
        summary.record(t, "predict", "done")
    with pytest.raises(MosaicError, match="all nodata") as err:
        check_complete(MapResult("m.pt", "key", empty, {}, summary))
    assert "\n" not in str(err.value)
    check_complete(MapResult("m.pt", "key", full, {}, summary))  # the map with pixels passes
    shutil.rmtree(tmp_path / "cubes")
