"""Phenology augmentation on REAL Victoria series (400 pixels x 10 bands x 73 five-day bins)."""

from __future__ import annotations

import numpy as np
import pytest

from cropmap.core.bands import S2_BANDS
from cropmap.errors import ConfigError
from cropmap.ml.augment import AUGMENTATIONS, Augmenter, augmenter, resample_window
from cropmap.samples.victoria import read_victoria

B04, B08 = S2_BANDS.index("B04"), S2_BANDS.index("B08")


@pytest.fixture(scope="module")
def victoria(shared_data):
    ds = read_victoria("train")
    x = ds["reflectance"].values.transpose(0, 2, 1).copy()  # (sample, band, time)
    return x, ds["label"].values, [str(c) for c in ds["class_name"].values]


def _ndvi(x: np.ndarray) -> np.ndarray:
    return (x[:, B08] - x[:, B04]) / (x[:, B08] + x[:, B04])


def test_p0_is_the_identity(victoria):
    x, _, _ = victoria
    out = augmenter("none")(x, start=0, n_bins=73, rng=np.random.default_rng(0))
    assert np.array_equal(out, x)
    out = augmenter("none")(x, start=10, n_bins=43, rng=np.random.default_rng(0))
    assert np.array_equal(out, x[:, :, 10:53])


@pytest.mark.parametrize("days", [10, -10])
def test_a_10_day_shift_moves_the_ndvi_peak_by_two_bins(victoria, days):
    x, labels, names = victoria
    crops = np.isin(labels, [names.index("canola"), names.index("cereals")])
    shift = Augmenter(p_shift=1, p_scale=0, p_warp=0, shift_days=(days, days))
    out = shift(x[crops], start=0, n_bins=73, rng=np.random.default_rng(0))
    before, after = _ndvi(x[crops]).argmax(1), _ndvi(out).argmax(1)
    inside = (before >= 2) & (before <= 70)  # peaks not pushed over the ends of the year
    assert inside.sum() > 50
    assert np.array_equal(after[inside] - before[inside], np.full(inside.sum(), days // 5))
    # a whole number of bins: the series itself is moved, edge value repeated at the year's end
    k = days // 5
    if k > 0:
        assert np.array_equal(out[:, :, k:], x[crops][:, :, :-k])
        assert np.array_equal(out[:, :, :k], np.repeat(x[crops][:, :, :1], k, axis=2))
    else:
        assert np.array_equal(out[:, :, :k], x[crops][:, :, -k:])


def test_shift_and_scale_read_real_observations_outside_the_window(victoria):
    x, _, _ = victoria
    start, n = 15, 43  # a 43-bin season inside the full-year series
    # both ends 30 days earlier: the window is the series 6 bins earlier, read from outside the season
    early = Augmenter(p_shift=0, p_scale=1, p_warp=0, scale_days=(-30, -30))
    assert np.array_equal(early(x, start=start, n_bins=n, rng=np.random.default_rng(1)), x[:, :, 9:52])
    late = Augmenter(p_shift=0, p_scale=1, p_warp=0, scale_days=(10, 10))
    assert np.array_equal(late(x, start=start, n_bins=n, rng=np.random.default_rng(1)), x[:, :, 17:60])
    shift = Augmenter(p_shift=1, p_scale=0, p_warp=0, shift_days=(-10, -10))
    assert np.array_equal(shift(x, start=start, n_bins=n, rng=np.random.default_rng(1)), x[:, :, 17:60])


def test_random_scale_resamples_to_the_bin_count_by_linear_interpolation(victoria):
    x, _, _ = victoria
    rng = np.random.default_rng(3)
    scale = Augmenter(p_shift=0, p_scale=1, p_warp=0)
    out = scale(x, start=15, n_bins=43, rng=rng)
    assert out.shape == (400, 10, 43)
    # independent reference: redraw the same numbers and interpolate each series with np.interp
    ref_rng = np.random.default_rng(3)
    ref_rng.random((400, 3))
    ref_rng.uniform(-10, 10, 400)
    ends = ref_rng.uniform(-30, 10, (400, 2)) / 5
    for i in (0, 123, 399):
        pos = np.linspace(15 + ends[i, 0], 15 + 42 + ends[i, 1], 43)
        for b in (B04, B08):
            assert np.allclose(out[i, b], np.interp(pos, np.arange(73), x[i, b]), atol=1e-6)
    # the window moved: the stretched series is not the unaugmented one
    assert not np.allclose(out, x[:, :, 15:58])


def test_magnitude_warping_keeps_the_time_axis(victoria):
    x, _, _ = victoria
    x = x[(x[:, [B04, B08]] > 0).all(axis=(1, 2))]  # a few water pixels hold zeros: no ratio there
    assert len(x) > 300
    warp = Augmenter(p_shift=0, p_scale=0, p_warp=1)
    out = warp(x, start=0, n_bins=73, rng=np.random.default_rng(2))
    nir = x[:, B08]
    curve = out[:, B08] / nir
    # one smooth curve per sample, shared by the bands: band ratios and NDVI (hence its peak) unchanged
    assert np.allclose(out, x * curve[:, None, :], rtol=1e-5, atol=1e-7)
    assert np.allclose(_ndvi(out), _ndvi(x), atol=1e-5)
    peak = _ndvi(x).argmax(1)  # still the peak (up to float ties of gap-filled plateaus)
    assert np.allclose(_ndvi(out)[np.arange(len(x)), peak], _ndvi(out).max(1), atol=1e-5)
    assert 0.9 < curve.mean() < 1.1 and curve.std() > 0.05  # N(1, 0.2) knots
    assert np.abs(np.diff(curve, 2, axis=1)).max() < 0.05  # smooth (cubic spline through 5 knots)


def test_each_transform_hits_about_half_the_samples_and_is_seeded(victoria):
    x, _, _ = victoria
    aug = augmenter("all")
    a = aug(x, start=0, n_bins=73, rng=np.random.default_rng(7))
    b = aug(x, start=0, n_bins=73, rng=np.random.default_rng(7))
    c = aug(x, start=0, n_bins=73, rng=np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    changed = ~np.all(a == x, axis=(1, 2))
    assert 0.8 < changed.mean() < 0.95  # 1 - 0.5^3 = 0.875 of the samples touched
    shift_only = augmenter("shift")(x, start=0, n_bins=73, rng=np.random.default_rng(7))
    assert 0.4 < (~np.all(shift_only == x, axis=(1, 2))).mean() < 0.6


def test_bad_settings_raise():
    with pytest.raises(ConfigError, match="p_warp"):
        Augmenter(p_warp=1.5)
    with pytest.raises(ConfigError, match="unknown augmentation"):
        augmenter("mixup")
    with pytest.raises(ConfigError, match="outside"):
        augmenter("all")(np.zeros((2, 3, 40), np.float32), start=10, n_bins=43, rng=np.random.default_rng(0))
    assert set(AUGMENTATIONS) >= {"none", "shift", "shift+scale", "all"}


def test_resample_window_clamps_at_the_ends():
    x = np.arange(10, dtype=np.float32).reshape(1, 1, 10)
    out = resample_window(x, np.array([[-3.0, 0.5, 8.25, 12.0]]))
    assert np.allclose(out[0, 0], [0, 0.5, 8.25, 9])
