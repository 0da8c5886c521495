"""Bayesian smoothing of class probabilities: against a per-pixel loop, on fields with speckle, and across
tile edges in the zone mosaic (no seams)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import rasterio
from builders import predict_tiles, victoria_tiles

from cropmap.core.smoothing import BayesSmoothing, bayes_smooth
from cropmap.errors import ConfigError, IncompatibleInputError
from cropmap.stages.mosaic import mosaic_tiles
from cropmap.stages.predict import NODATA, PredictOptions, tile_path
from cropmap.stages.smoothing import smooth_percent
from cropmap.stages.tile_geotiffs import tile_products


def _reference(probs: np.ndarray, window: int, fraction: float, smoothness: float, eps: float = 1e-6) -> np.ndarray:
    """sits' Bayesian smoother pixel by pixel, in plain Python (no data: NaN, never a neighbour)."""
    c, ny, nx = probs.shape
    logit = np.full(probs.shape, np.nan)
    for i in range(ny):
        for j in range(nx):
            total = sum(probs[:, i, j])
            if math.isnan(total):
                continue
            for k in range(c):
                share = min(max(probs[k, i, j] / total, eps), 1 - eps)
                logit[k, i, j] = math.log(share / (1 - share))
    out = np.full(probs.shape, np.nan)
    leg = window // 2
    for i in range(ny):
        for j in range(nx):
            if math.isnan(logit[0, i, j]):
                continue
            post = []
            for k in range(c):
                neigh = [logit[k, a, b] for a in range(max(0, i - leg), min(ny, i + leg + 1))
                         for b in range(max(0, j - leg), min(nx, j + leg + 1)) if not math.isnan(logit[k, a, b])]
                high = sorted(neigh, reverse=True)[:math.ceil(fraction * len(neigh))]
                x = logit[k, i, j]
                if len(high) < 2:
                    post.append(x)
                    continue
                m, s = statistics.fmean(high), statistics.variance(high)
                w = s / (s + smoothness)
                post.append(w * x + (1 - w) * m)
            p = [1 / (1 + math.exp(-v)) for v in post]
            out[:, i, j] = [v / sum(p) for v in p]
    return out


@pytest.mark.parametrize("window,fraction,smoothness", [(5, 0.5, 20.0), (3, 1.0, 2.0), (9, 0.3, 10.0)])
def test_bayes_smooth_equals_a_per_pixel_loop(window, fraction, smoothness):
    rng = np.random.default_rng(window)
    probs = rng.dirichlet(np.full(4, 0.4), size=(13, 11)).transpose(2, 0, 1)
    probs[:, 3, 4] = np.nan  # no data: never a neighbour, stays no data
    probs[:, 0, :3] = np.nan
    probs[1, 7, 7] = 0.0  # clipped, not an infinite logit
    got = bayes_smooth(probs, BayesSmoothing(window, fraction, smoothness), rows_per_step=4)
    want = _reference(probs, window, fraction, smoothness)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.isnan(got[:, 3, 4]).all() and np.allclose(np.nansum(got, axis=0)[~np.isnan(got[0])], 1.0)


def test_speckle_inside_fields_is_cleaned_and_the_field_edge_kept():
    """Two fields (classes 0 | 1, edge at column 12) with 8 % of pixels confidently wrong: smoothed, every
    wrong pixel away from the edge is its field's class again and no right pixel turns wrong, next to the
    edge included (a wrong pixel ON the edge, its neighbours split between the fields, may stay)."""
    rng = np.random.default_rng(3)
    truth = np.zeros((24, 24), dtype=int)
    truth[:, 12:] = 1
    wrong = rng.random(truth.shape) < 0.08
    label = np.where(wrong, (truth + 1 + rng.integers(0, 2, truth.shape)) % 3, truth)  # one of the other two
    probs = np.full((3, 24, 24), 10.0)
    np.put_along_axis(probs, label[None], 80.0, axis=0)
    percent = probs.astype(np.uint8)
    assert (percent.argmax(axis=0) != truth).mean() > 0.05
    smoothed = smooth_percent(percent, BayesSmoothing())
    off = smoothed["class"] != truth
    assert not (off & ~wrong).any()  # edges preserved: no right pixel turned wrong
    assert not off[:, np.r_[0:10, 14:24]].any()  # the speckle inside the fields cleaned
    assert off.sum() <= 2
    percent[:, 5, 5] = NODATA  # nodata: no neighbour, and nodata in every output
    holed = smooth_percent(percent, BayesSmoothing())
    assert holed["class"][5, 5] == holed["confidence"][5, 5] == NODATA and (holed["probability"][:, 5, 5] == NODATA).all()
    assert (holed["class"] != NODATA).sum() == 24 * 24 - 1
    assert np.abs(smoothed["probability"].sum(axis=0).astype(int) - 100).max() <= 2


def test_options_key_window_and_products():
    plain = PredictOptions()
    assert plain.smoother() is None and "smoothing" not in plain.output_key()  # the old runs' key unchanged
    assert plain.output_key() == {"max_filled_fraction": 0.8, "probabilities": False, "precision": "auto"}
    bayes = PredictOptions(smoothing="bayes", smoothing_window=7)
    assert bayes.smoother() == BayesSmoothing(7, 0.5, 20.0)
    assert bayes.output_key()["smoothing"]["window"] == 7 and bayes.output_key() != plain.output_key()
    assert PredictOptions(smoothing_window=7).output_key() == plain.output_key()  # off: parameters do not count
    assert bayes.probabilities  # the tiles write the probabilities the mosaic smooths
    assert tile_products(bayes) == ("class", "confidence", "probability")
    with pytest.raises(ValueError, match="probabilities"):
        PredictOptions(smoothing="bayes", probabilities=False)
    with pytest.raises(ValueError, match="odd"):
        PredictOptions(smoothing="bayes", smoothing_window=8)
    with pytest.raises(ConfigError, match="odd"):
        BayesSmoothing(window=4)


@pytest.fixture(scope="module")
def two_tiles(tiny_checkpoint, tmp_path_factory):
    """Two neighbouring 20 x 20 px tiles (all 800 real Victoria series) predicted with smoothing on."""
    root = tmp_path_factory.mktemp("smooth")
    cubes, _ = victoria_tiles(root / "cubes", rows=1, cols=2, ny=20, nx=20, split="all")
    options = PredictOptions(smoothing="bayes", smoothing_window=5)
    predict_tiles(tiny_checkpoint, cubes, root / "tiles", options=options)
    return root, options.smoother()


def test_zone_mosaic_smooths_across_tile_edges_without_seams(two_tiles):
    """The smoothed zone mosaic (windows of 16 px, so they straddle the tile edge at column 20 and the
    mosaic's edges) equals smoothing the whole un-tiled probability image in one piece, pixel for pixel."""
    root, params = two_tiles
    result = mosaic_tiles(root / "tiles", root / "out", name="vic", blocksize=16)  # smoothing: as run.json says
    whole = np.concatenate([rasterio.open(tile_path(root / "tiles", t, "probability")).read() for t in ("T0_0", "T0_1")],
                           axis=2)
    want = smooth_percent(whole, params)
    for product in ("class", "confidence", "probability"):
        with rasterio.open(result.cogs[product]) as src:
            got, tags = src.read(), src.tags()
        np.testing.assert_array_equal(got, want[product].reshape(got.shape), err_msg=product)
        assert "cropmap_smoothing" in tags  # the COG says how it was smoothed
    tiles = np.concatenate([rasterio.open(tile_path(root / "tiles", t, "class")).read(1) for t in ("T0_0", "T0_1")],
                           axis=1)
    changed = (tiles != want["class"]) & (tiles != NODATA)
    assert changed.any(), "the smoothing changed no class: the test would not see a seam"
    near_edge = changed[:, 18:22].any()  # the pixels beside the tile edge were smoothed with both tiles
    assert near_edge or changed.sum() > 5


def test_no_smoothing_keeps_the_tiles_and_smoothing_needs_probabilities(two_tiles, tiny_checkpoint, tmp_path):
    root, params = two_tiles
    plain = mosaic_tiles(root / "tiles", tmp_path / "plain", name="vic", blocksize=16, smoothing=None, stac=False,
                         quicklook=False)
    with rasterio.open(plain.cogs["class"]) as src:
        np.testing.assert_array_equal(src.read(1)[:, :20], rasterio.open(tile_path(root / "tiles", "T0_0", "class")).read(1))
    cubes, _ = victoria_tiles(tmp_path / "cubes", rows=1, cols=1, ny=10, nx=10)
    predict_tiles(tiny_checkpoint, cubes, tmp_path / "tiles")
    with pytest.raises(IncompatibleInputError, match="probabilities"):
        mosaic_tiles(tmp_path / "tiles", tmp_path / "out", name="x", blocksize=16, smoothing=params)
