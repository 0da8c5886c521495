"""Labelling suggestions (``cropmap area sample --design uncertainty``) on a real map: the tiny CropNet's
mosaic of the 800 real Victoria series (8 tiles of 10 x 10 px, 10 m). Checked against brute force over
every pixel: the points are the least confident (no less confident pixel is left far from every point),
the most out of distribution first, spaced, on their pixels; the file is the sample's format, train's
vector reader takes it, and the area estimate refuses it."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import rasterio
from builders import predict_tiles, victoria_tiles
from scipy.spatial.distance import cdist, pdist
from typer.testing import CliRunner

from cropmap.cli import app
from cropmap.core.harmonise import Legend
from cropmap.errors import InvalidInputError
from cropmap.samples.reference import SamplingOptions
from cropmap.samples.reference_labels import sample_label_vectors
from cropmap.stages.area import (SUGGESTION_DESIGN, check_sample_on_map, estimate_areas, map_strata, read_sample,
                                  refuse_suggestions, write_sample)
from cropmap.stages.label_suggestions import suggest_points
from cropmap.stages.mosaic import mosaic_tiles
from cropmap.stages.predict import NODATA

PIXEL_M = 10.0


@pytest.fixture(scope="module")
def vic_map(tiny_checkpoint, tmp_path_factory):
    """``(folder, class COG, confidence COG)`` of the tiny model's 40 x 20 px Victoria mosaic."""
    root = tmp_path_factory.mktemp("suggest")
    cubes, _ = victoria_tiles(root / "cubes", rows=2, cols=4, ny=10, nx=10, split="all")
    predict_tiles(tiny_checkpoint, cubes, root / "tiles")
    result = mosaic_tiles(root / "tiles", root / "out", name="vic", blocksize=16, stac=False, quicklook=False)
    return root / "out", result.cogs["class"], result.cogs["confidence"]


def _read(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _write_like(path, like, data: np.ndarray) -> None:
    with rasterio.open(like) as src:
        profile = src.profile | {"driver": "GTiff", "nodata": NODATA}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def test_suggestions_are_the_least_confident_pixels_spread_in_space(vic_map):
    _, class_map, confidence = vic_map
    classes, conf = _read(class_map), _read(confidence)
    strata = map_strata(class_map)
    distance = 30.0
    points = suggest_points(strata, n=25, confidence=confidence, min_distance_m=distance, seed=3)
    assert len(points) == 25 and set(points["reason"]) == {"low_confidence"} and (points["design"] == SUGGESTION_DESIGN).all()
    rows, cols = points["row"].to_numpy(), points["col"].to_numpy()
    np.testing.assert_array_equal(points["map_class"], classes[rows, cols])  # on their pixels, as written
    np.testing.assert_array_equal(points["confidence"], conf[rows, cols])
    xy = np.column_stack([cols, rows]) * PIXEL_M
    assert pdist(xy).min() >= distance  # spacing holds
    mapped = (classes != NODATA) & (conf != NODATA)
    assert points["confidence"].iloc[0] == conf[mapped].min()  # the most urgent first
    assert points["confidence"].is_monotonic_increasing
    # brute force over every mapped pixel: any pixel less confident than the last point taken lies near a
    # point (within the distance plus a cell's diagonal: its cell's best was taken or lies that near one)
    worse = np.argwhere(mapped & (conf < points["confidence"].max()))
    near = cdist(worse[:, ::-1] * PIXEL_M, xy).min(axis=1)
    assert near.max() <= distance * (1 + np.sqrt(2)) + 1e-9
    # far below what a random draw gives: the points' median confidence is in the map's lowest decile
    assert points["confidence"].median() <= np.quantile(conf[mapped], 0.1)
    again = suggest_points(strata, n=25, confidence=confidence, min_distance_m=distance, seed=3)
    assert again.equals(points)
    # a distance the 400 x 200 m map has no room for: fewer points, still spaced
    sparse = suggest_points(strata, n=25, confidence=confidence, min_distance_m=150.0)
    assert 1 < len(sparse) < 25
    assert pdist(sparse[["x", "y"]].to_numpy()).min() >= 150.0


def test_ood_share_comes_from_the_highest_ood_pixels(vic_map, tmp_path):
    folder, class_map, confidence = vic_map
    classes = _read(class_map)
    rng = np.random.default_rng(0)
    ood = rng.integers(0, 90, size=classes.shape).astype(np.uint8)
    spots = [(1, 2), (3, 30), (10, 12), (15, 38), (18, 5), (8, 22)]  # six far-apart OOD pixels, 200 ... 150
    for k, (r, c) in enumerate(spots):
        ood[r, c] = 200 - 10 * k
    ood[classes == NODATA] = NODATA
    for name in ("vic_class.tif", "vic_confidence.tif"):
        shutil.copy(folder / name, tmp_path / name)
    _write_like(tmp_path / "vic_ood.tif", class_map, ood)
    strata = map_strata(tmp_path / "vic_class.tif")
    points = suggest_points(strata, n=8, confidence=confidence, ood=tmp_path / "vic_ood.tif", min_distance_m=30.0,
                            ood_share=0.5)
    top = points[points["reason"] == "ood"]
    assert list(zip(top["row"], top["col"])) == spots[:4]  # the four highest, in order
    assert (points["reason"] == "low_confidence").sum() == 4
    assert pdist(points[["x", "y"]].to_numpy()).min() >= 30.0
    # the CLI finds <name>_ood.tif beside the class map by itself
    run = CliRunner().invoke(app, ["area", "sample", str(tmp_path / "vic_class.tif"), "--design", "uncertainty",
                                   "--n", "8", "--min-distance", "30", "--out", str(tmp_path / "s.gpkg")])
    assert run.exit_code == 0, run.output
    assert "4 least confident, 4 most out of distribution" in run.output
    assert read_sample(tmp_path / "s.gpkg")[["row", "col"]].head(4).values.tolist() == [list(s) for s in spots[:4]]


def test_suggestion_file_is_a_sample_train_reads_and_the_estimate_refuses(vic_map, tmp_path):
    _, class_map, confidence = vic_map
    strata = map_strata(class_map)
    points = suggest_points(strata, n=12, confidence=confidence, min_distance_m=30.0)
    points["reference_class"] = points["stratum"]  # the labeller agrees with the map
    path = write_sample(points, tmp_path / "points.gpkg")
    back = read_sample(path)
    assert list(back.columns[:10]) == ["id", "stratum", "map_class", "row", "col", "x", "y", "lon", "lat",
                                       "reference_class"]
    check_sample_on_map(strata, back)  # on this map's pixels: only the design column tells it apart
    # what `cropmap train --labels points.gpkg --label-column reference_class --legend L --per-cell 1000` samples
    # from it; train's default --per-cell 1 keeps one point per class and 0.1 degree cell (here: 5 of the 12)
    legend = Legend(name="vic", classes=list(strata.names))
    assert len(sample_label_vectors(path, column="reference_class", legend=legend)) == points["stratum"].nunique()
    train = sample_label_vectors(path, column="reference_class", legend=legend, options=SamplingOptions(per_cell=1000))
    assert len(train) == len(points)
    got = train.sort_values(["lon", "lat"])["class_name"].tolist()
    assert got == points.sort_values(["lon", "lat"])["stratum"].tolist()
    with pytest.raises(InvalidInputError, match="not a probability sample"):
        refuse_suggestions(back)
    with pytest.raises(InvalidInputError, match="not a probability sample"):  # map-country's area_samples path
        estimate_areas(strata, back)
    refuse_suggestions(pd.DataFrame({"map_class": [0], "reference_class": ["x"]}))  # a stratified sample passes
    run = CliRunner().invoke(app, ["area", "estimate", str(class_map), str(path), "--out", str(tmp_path / "r")])
    assert run.exit_code == 2 and "not a probability sample" in run.output
    assert len(run.output.strip().splitlines()) == 1


@pytest.mark.parametrize(("extra", "says"), [
    (["--design", "random"], "--design 'random'"),
    (["--design", "uncertainty", "--ood-share", "2"], "ood_share"),
    (["--design", "uncertainty", "--min-distance", "-5"], "min_distance_m"),
    (["--design", "uncertainty", "--confidence", "nowhere.tif"], "not found"),
    (["--design", "uncertainty", "--confidence", "{other}"], "not on the class map's grid"),
])
def test_cli_bad_input_exits_2_in_one_line(vic_map, tmp_path, extra, says):
    _, class_map, confidence = vic_map
    other = tmp_path / "other.tif"
    with rasterio.open(confidence) as src:
        profile = src.profile | {"driver": "GTiff", "width": 30}
    with rasterio.open(other, "w", **profile) as dst:
        dst.write(_read(confidence)[:, :30], 1)
    args = [a.replace("{other}", str(other)) for a in extra]
    run = CliRunner().invoke(app, ["area", "sample", str(class_map), "--out", str(tmp_path / "s.csv"), *args])
    assert run.exit_code == 2, run.output
    assert says in run.output and len(run.output.strip().splitlines()) == 1, run.output
