"""Compositing against plain NumPy on real Sentinel-2 acquisitions."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cropmap.core.composite import interpolate_gaps, median_by_bin, median_composite
from cropmap.core.masking import DEFAULT_INVALID_SCL, valid_from_scl
from cropmap.core.season import Season


@pytest.fixture(scope="module")
def raw_belgium(shared_data):
    """12 raw S2 L2A acquisitions (April 2023, Belgium) as (time, band, y, x) reflectance + SCL."""
    ds = xr.open_dataset(shared_data / "openeo_gfmap/cdse_sentinel2_l2a.nc").load()
    bands = ["B04", "B08", "B11"]
    refl = xr.concat([ds[f"S2-L2A-{b}"].astype("float32") / 10000 for b in bands], dim="band")
    refl = refl.assign_coords(band=bands).rename(t="time").transpose("time", "band", "y", "x")
    return refl, ds["S2-L2A-SCL"].rename(t="time")


APRIL = Season(start="04-01", end="04-30")


def _numpy_reference(refl: np.ndarray, scl: np.ndarray, dates: np.ndarray) -> np.ndarray:
    """Per-bin nanmedian after SCL masking, written independently of cropmap."""
    masked = np.where(np.isin(scl, DEFAULT_INVALID_SCL)[:, None], np.nan, refl)
    day = (dates.astype("datetime64[D]") - np.datetime64("2023-04-01")).astype(int)
    out = np.full((6,) + refl.shape[1:], np.nan, dtype=np.float32)
    for b in range(6):
        sel = (day // 5) == b
        if sel.any():
            with _nullctx():  # all-NaN slices warn
                out[b] = np.nanmedian(masked[sel], axis=0)
    return out


class _nullctx:
    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *a):
        self._w.__exit__(*a)


def test_median_bins_equal_numpy_reference_on_real_acquisitions(raw_belgium):
    refl, scl = raw_belgium
    assert APRIL.n_bins == 6
    got = median_composite(refl, APRIL, 2023, valid=valid_from_scl(scl))
    ref = _numpy_reference(refl.values, scl.values, refl.time.values)
    # before interpolation, every observed bin equals np.nanmedian exactly
    observed = ~np.isnan(ref)
    assert observed.sum() > 20000  # a cloudy April, still a third of all bin-pixels observed
    np.testing.assert_array_equal(got.values[observed], ref[observed])
    # empty bins are linear interpolations (nearest at the ends) of the reference
    t = np.arange(6)
    for (band, y, x) in [(0, 0, 0), (1, 30, 40), (2, 65, 63)]:
        series = ref[:, band, y, x]
        ok = ~np.isnan(series)
        np.testing.assert_allclose(got.values[:, band, y, x], np.interp(t, t[ok], series[ok]), rtol=1e-6)
    assert got.time.values[0] == np.datetime64("2023-04-01")
    frac = (~observed).mean(axis=(0, 1))
    np.testing.assert_allclose(got.filled_fraction.values, frac, rtol=1e-6)


def test_dask_composite_is_lazy_and_identical(raw_belgium):
    refl, scl = raw_belgium
    eager = median_composite(refl, APRIL, 2023, valid=valid_from_scl(scl))
    lazy = median_composite(refl.chunk({"y": 33, "x": 32}), APRIL, 2023, valid=valid_from_scl(scl.chunk({"y": 33, "x": 32})))
    assert isinstance(lazy.data, da.Array)
    xr.testing.assert_identical(lazy.compute(), eager)


def test_pixel_without_valid_observation_is_flagged_not_zero():
    times = pd.date_range("2023-05-01", periods=40, freq="5D")
    values = np.random.default_rng(0).uniform(0.05, 0.4, size=(3, 40, 2)).astype(np.float32)
    values[1] = np.nan  # all-cloud sample
    obs = xr.DataArray(values, dims=("sample", "time", "band"), coords={"time": times, "band": ["B04", "B08"]})
    out = median_composite(obs, Season(), 2023)
    assert out.filled_fraction.values[1] == 1.0
    assert np.isnan(out.values[1]).all()
    assert out.filled_fraction.values[0] < 0.2 and not np.isnan(out.values[0]).any()


def test_any_cadence_monthly_is_interpolated_linearly():
    times = pd.to_datetime(["2023-05-15", "2023-06-15", "2023-07-15"])
    obs = xr.DataArray(np.array([[0.1], [0.2], [0.4]], dtype=np.float32)[None], dims=("sample", "time", "band"),
                       coords={"time": times, "band": ["B08"]})
    out = median_composite(obs, Season(start="05-01", end="07-31"), 2023).isel(sample=0, band=0)
    # bins start May 1 + 5k; the observations fall in bins 2 (May 11-15), 9 (Jun 15), 15 (Jul 15)
    assert out.values[0] == out.values[2] == np.float32(0.1)  # nearest before the first
    assert out.values[-1] == np.float32(0.4)
    np.testing.assert_allclose(out.values[9], 0.2, rtol=1e-6)
    np.testing.assert_allclose(out.values[12], 0.3, rtol=1e-6)  # halfway between bins 9 and 15


def test_median_by_bin_matches_nanmedian_even_and_odd_counts():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(9, 50)).astype(np.float32)
    values[rng.random(values.shape) < 0.3] = np.nan
    bins = np.array([0, 0, 0, 0, 1, 1, 1, 2, -1])
    got = median_by_bin(values, bins, 4)
    for b in range(3):
        with _nullctx():
            ref = np.nanmedian(values[bins == b], axis=0)
        np.testing.assert_array_equal(got[b], ref.astype(np.float32))
    assert np.isnan(got[3]).all()


def test_interpolate_gaps_reports_gaps():
    series = np.array([np.nan, 1.0, np.nan, np.nan, 4.0, np.nan], dtype=np.float32)
    filled, gap = interpolate_gaps(series)
    np.testing.assert_allclose(filled, [1, 1, 2, 3, 4, 4])
    assert gap.tolist() == [True, False, True, True, False, True]
