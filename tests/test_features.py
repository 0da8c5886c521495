"""The seed's three feature types: 2D median, 1D median, harmonic coefficients."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from cropmap.core.composite import median_composite
from cropmap.core.features import (
    HARMONIC_BANDS,
    compute_features,
    harmonic_coefficients,
    median_1d,
    median_2d,
)
from cropmap.core.season import NORTH, SOUTH
from cropmap.errors import MissingBandError
from cropmap.samples.victoria import read_victoria


@pytest.fixture(scope="module")
def victoria_composite():
    """Victoria train series composited onto the southern 5-day season (Nov 2017 - May 2018)."""
    return median_composite(read_victoria("train")["reflectance"], SOUTH, 2017)


def _design(days: np.ndarray, period: float = 365.25) -> np.ndarray:
    """1, cos wt, sin wt, cos 2wt, sin 2wt, written here independently of cropmap."""
    w = 2 * np.pi * days / period
    return np.stack([np.ones_like(w), np.cos(w), np.sin(w), np.cos(2 * w), np.sin(2 * w)], axis=1)


def test_harmonic_fit_recovers_an_exact_sinusoid():
    times = NORTH.bin_starts(2021)
    days = (times - times[0]) / np.timedelta64(1, "D")
    rng = np.random.default_rng(0)
    coef = rng.uniform(-0.1, 0.3, size=(3, len(HARMONIC_BANDS), 5))  # (sample, band, term)
    values = np.einsum("tk,sbk->stb", _design(days), coef)
    series = xr.DataArray(values.astype(np.float32), dims=("sample", "time", "band"),
                          coords={"time": times, "band": list(HARMONIC_BANDS)})
    got = harmonic_coefficients(series)
    assert got.dims == ("sample", "feature") and got.shape == (3, 35)
    assert got["feature"].values[:5].tolist() == ["B02_c0", "B02_cos1", "B02_sin1", "B02_cos2", "B02_sin2"]
    np.testing.assert_allclose(got.values.reshape(3, len(HARMONIC_BANDS), 5), coef, atol=2e-6)


def test_harmonic_fit_on_victoria_is_the_least_squares_optimum(victoria_composite, record_property):
    comp = victoria_composite
    y = comp.sel(band=list(HARMONIC_BANDS)).values  # (sample, time, band)
    days = (comp["time"].values - comp["time"].values[0]) / np.timedelta64(1, "D")
    design = _design(days)
    coef = harmonic_coefficients(comp).values.reshape(len(y), len(HARMONIC_BANDS), 5)
    rmse = float(np.sqrt(np.mean((np.einsum("tk,sbk->stb", design, coef) - y) ** 2)))
    # the independent least-squares solution: no other coefficients reconstruct the series better
    flat = y.transpose(1, 0, 2).reshape(len(days), -1)
    ref = np.linalg.lstsq(design, flat, rcond=None)[0]
    ref_rmse = float(np.sqrt(np.mean((design @ ref - flat) ** 2)))
    constant_rmse = float(np.sqrt(np.mean((y - y.mean(axis=1, keepdims=True)) ** 2)))
    record_property("victoria_harmonic_rmse", rmse)
    print(f"Victoria harmonic reconstruction RMSE {rmse:.5f} (lstsq {ref_rmse:.5f}, mean only "
          f"{constant_rmse:.5f}) reflectance")
    assert rmse <= ref_rmse * (1 + 1e-4)
    np.testing.assert_allclose(coef, ref.reshape(5, len(y), len(HARMONIC_BANDS)).transpose(1, 2, 0), atol=1e-5)
    # the 2-harmonic fit captures most of the seasonal signal the mean alone misses
    assert rmse < 0.5 * constant_rmse


def test_median_2d_and_1d_shapes_and_order(victoria_composite):
    matrix = median_2d(victoria_composite)
    assert matrix.dims == ("sample", "band", "time") and matrix.shape == (400, 10, 43)
    assert matrix.dtype == np.float32
    flat = median_1d(victoria_composite)
    assert flat.dims == ("sample", "feature") and flat.shape == (400, 430)
    # 1D is the 2D matrix flattened band-major, feature names included
    np.testing.assert_array_equal(flat.values, matrix.values.reshape(400, -1))
    assert flat["feature"].values[[0, 42, 43]].tolist() == ["B02_t00", "B02_t42", "B03_t00"]
    np.testing.assert_array_equal(compute_features(victoria_composite, "1d").values, flat.values)
    assert compute_features(victoria_composite, "harmonic").shape == (400, 35)


def test_harmonic_options_and_errors(victoria_composite):
    three = harmonic_coefficients(victoria_composite, bands=["B04", "B08"], n_harmonics=3)
    assert three.shape == (400, 2 * 7)
    with pytest.raises(MissingBandError, match="B09"):
        harmonic_coefficients(victoria_composite, bands=["B04", "B09"])
    with pytest.raises(ValueError, match="unknown feature kind"):
        compute_features(victoria_composite, "3d")


def test_a_series_without_observations_stays_nan_in_every_feature(victoria_composite):
    comp = victoria_composite.isel(sample=slice(0, 2)).copy()
    comp[0] = np.nan  # what median_composite returns for a pixel never observed
    for kind in ("2d", "1d", "harmonic"):
        feats = compute_features(comp, kind).values
        assert np.isnan(feats[0]).all() and np.isfinite(feats[1]).all()
