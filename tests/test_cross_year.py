"""Cross-year mapping: a checkpoint trained on the season of year Y-1 maps year Y, and says so.

Real Victoria series (season 2017-08-01..2018-07-31) cut into tile cubes; the small real checkpoint of
test_predict, saved again as trained on the 2016 season. The map of 2017 records both years (tile tags,
mosaic tags, STAC item, model card); a change of bins or bands is still refused.
"""

from __future__ import annotations

import json

import numpy as np
import pystac
import pytest
import rasterio

from cropmap.core.season import Season
from cropmap.errors import IncompatibleInputError
from cropmap.ml.checkpoint import card_path, load_checkpoint, save_checkpoint
from cropmap.stages.mosaic import mosaic_tiles
from cropmap.stages.predict import PredictOptions
from builders import VIC_SEASON, VIC_YEAR, predict_tiles, victoria_tiles


def _as_trained_in(checkpoint, path, year: int):
    c = load_checkpoint(checkpoint)
    return save_checkpoint(path, model=c.model, model_name=c.model_name, model_config=c.model_config,
                           feature_kind=c.feature_kind, bands=list(c.bands), season=c.season, n_bins=c.n_bins,
                           normalisation=c.normalisation, class_names=list(c.class_names),
                           class_colours=list(c.class_colours), config=c.config, scores=c.scores, year=year)


def test_a_model_of_the_year_before_maps_this_year_and_records_both(tiny_checkpoint, tmp_path):
    older = _as_trained_in(tiny_checkpoint, tmp_path / "y2016.pt", VIC_YEAR - 1)
    assert load_checkpoint(older).year == VIC_YEAR - 1 and load_checkpoint(tiny_checkpoint).year is None
    assert json.loads(card_path(older).read_text())["season_year"] == VIC_YEAR - 1
    cubes, _ = victoria_tiles(tmp_path / "cubes", rows=1, cols=2, ny=10, nx=10)
    predict_tiles(older, cubes, tmp_path / "tiles", options=PredictOptions())
    predict_tiles(tiny_checkpoint, cubes, tmp_path / "same", options=PredictOptions())
    result = mosaic_tiles(tmp_path / "tiles", tmp_path / "out", name="vic", blocksize=16)
    with rasterio.open(result.cogs["class"]) as src:
        tags, got = src.tags(), src.read(1)
    assert tags["season_year"] == str(VIC_YEAR) and tags["model_season_year"] == str(VIC_YEAR - 1)
    assert tags["season_offset_months"] == "0"
    for tile in sorted((tmp_path / "tiles").glob("*.class.tif")):  # the year changes nothing but the record
        with rasterio.open(tile) as a, rasterio.open(tmp_path / "same" / tile.name) as b:
            np.testing.assert_array_equal(a.read(), b.read())
            assert a.tags()["model_season_year"] == str(VIC_YEAR - 1) and "model_season_year" not in b.tags()
    assert (got != 255).any()
    props = pystac.Item.from_file(str(result.stac_item)).properties
    assert props["cropmap:season_year"] == VIC_YEAR and props["cropmap:model_season_year"] == VIC_YEAR - 1
    assert props["cropmap:season_offset_months"] == 0
    assert props["cropmap:model_season"] == props["cropmap:season"] == json.loads(VIC_SEASON.model_dump_json())


def test_another_year_with_other_bins_or_bands_is_refused(tiny_checkpoint):
    c = load_checkpoint(tiny_checkpoint)
    ten_day = Season(start=VIC_SEASON.start, end=VIC_SEASON.end, hemisphere="south", bin_days=10)
    with pytest.raises(IncompatibleInputError, match=r"build the input with season 08-01\.\.07-31 \(south, 5-day"):
        c.check_compatible(bands=list(c.bands), season=ten_day, n_bins=ten_day.n_bins, what="2018 cubes")
    with pytest.raises(IncompatibleInputError, match="B12"):
        c.check_compatible(bands=list(c.bands)[:-1], season=VIC_SEASON, n_bins=VIC_SEASON.n_bins, what="2018 cubes")
