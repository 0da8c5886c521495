"""The job's steps without Prefect: country resolution, output keys, tile selection, map scoring."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from cropmap import pipeline
from cropmap.demo import part_bounds, read_layout
from cropmap.errors import IncompatibleInputError, UnknownCountryError


@pytest.mark.parametrize("bad", ["../etc", "", "demo", "ARG/../DEMO", "XYZ"])
def test_unknown_country_fails_fast_with_the_known_ones(bad):
    with pytest.raises(UnknownCountryError, match="known: .*DEMO"):
        pipeline.resolve_country(bad)


def test_config_hash_and_run_dir(tmp_path):
    from cropmap.config import load_country

    arg = load_country("ARG")
    assert pipeline.config_hash(arg) == pipeline.config_hash(load_country("ARG"))
    assert pipeline.config_hash(arg) != pipeline.config_hash(arg.model_copy(update={"year": arg.year + 1}))
    assert pipeline.config_hash(arg, {"epochs": 1}) != pipeline.config_hash(arg, {"epochs": 2})
    assert pipeline.run_dir(tmp_path, arg) == tmp_path / "ARG" / pipeline.config_hash(arg)


def test_demo_tiles_by_bounds_and_reference(demo_paths, monkeypatch):
    from cropmap.demo import demo_country

    config = demo_country(demo_paths)
    layout = read_layout(demo_paths.root)
    assert len(pipeline.country_tiles(config)) == 4
    assert len(pipeline.country_tiles(config, tile_limit=1)) == 1
    west = pipeline.country_tiles(config, bounds=part_bounds(layout, "west"))
    east = pipeline.country_tiles(config, bounds=part_bounds(layout, "east"))
    assert len(west) == len(east) == 2 and not set(west) & set(east)
    assert sorted(pipeline.country_tiles(config, reference=demo_paths.reference)) == sorted(west + east)
    monkeypatch.setenv("CROPMAP_DEMO_DIR", str(demo_paths.root))
    assert pipeline.resolve_country("DEMO").catalog.path == demo_paths.catalog  # complete: not rebuilt


def _write_map(path, data, profile, names):
    with rasterio.open(path, "w", **{**profile, "driver": "GTiff"}) as ds:
        ds.write(data, 1)
        ds.update_tags(1, **{f"class_{i}": n for i, n in enumerate(names)})


def test_score_class_map_against_numpy(demo_paths, tmp_path):
    """A map equal to the reference except known pixels: OA and the confusion computed here."""
    with rasterio.open(demo_paths.reference) as ds:
        truth, profile = ds.read(1), ds.profile
        names = [ds.tags(1)[f"class_{i}"] for i in range(8)]
    rng = np.random.default_rng(0)
    pred = truth.copy()
    wrong = rng.random(truth.shape) < 0.1
    pred[wrong] = (pred[wrong] + 1) % 8
    pred[:5, :] = 255  # unmapped rows
    _write_map(tmp_path / "map.tif", pred, profile, names)
    layout = read_layout(demo_paths.root)
    east = part_bounds(layout, "east")
    result = pipeline.score_class_map(tmp_path / "map.tif", demo_paths.reference, bounds=east)
    half = slice(128, 256)
    t, p = truth[:, half], pred[:, half]
    valid = p != 255
    assert result["n"] == valid.sum() and result["n_unmapped"] == (~valid).sum() == 5 * 128
    assert result["oa"] == pytest.approx((t[valid] == p[valid]).mean())
    cm = np.zeros((8, 8), int)
    np.add.at(cm, (t[valid], p[valid]), 1)
    assert np.array_equal(result["confusion"], cm)
    whole = pipeline.score_class_map(tmp_path / "map.tif", demo_paths.reference)
    assert whole["n"] == (pred != 255).sum()


def test_score_refuses_other_grids(demo_paths, tmp_path):
    with rasterio.open(demo_paths.reference) as ds:
        profile, data = ds.profile, ds.read(1)
    profile.update(crs="EPSG:32755")
    _write_map(tmp_path / "other.tif", data, profile, ["a", "b"])
    with pytest.raises(IncompatibleInputError, match="CRS or pixel size"):
        pipeline.score_class_map(tmp_path / "other.tif", demo_paths.reference)
