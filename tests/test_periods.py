"""Monthly composites stored as local midnight in UTC land in their own month's bins."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from cropmap.core.composite import median_composite
from cropmap.core.season import Season
from cropmap.errors import InvalidInputError
from cropmap.samples.periods import snap_to_periods
from cropmap.samples.worldcereal import read_worldcereal

BEL = "worldcereal/private_extractions_dummy_BEL.parquet"


@pytest.fixture()
def shifted_bel(shared_data, tmp_path):
    """The real Belgian long-format file with every month start written as Brussels midnight in UTC
    (``2020-12-31 23:00`` for January, ``2021-04-30 22:00`` for May), as real extraction files store them."""
    table = pd.read_parquet(shared_data / BEL)
    local = pd.to_datetime(table["timestamp"]).dt.tz_localize("Europe/Brussels")
    table["timestamp"] = local.dt.tz_convert("UTC").dt.tz_localize(None)
    assert (table["timestamp"].dt.hour.isin([22, 23])).all()
    path = tmp_path / "bel_shifted.parquet"
    table.to_parquet(path)
    return path


def test_shifted_month_starts_go_to_their_month_bins(shared_data, shifted_bel):
    plain = read_worldcereal(shared_data / BEL)
    with pytest.warns(UserWarning, match=r"look like month starts shifted by a time zone \(e\.g\. 2020-07-31 22:00:00"):
        snapped = read_worldcereal(shifted_bel)
    np.testing.assert_array_equal(snapped["time"].values, plain["time"].values)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # literal dates: no warning, and the bug the snap guards
        literal = read_worldcereal(shifted_bel, period="none")
    assert (pd.DatetimeIndex(literal["time"].values).month == pd.DatetimeIndex(plain["time"].values).month - 1).sum() >= 10

    season = Season(start="01-01", end="12-31", hemisphere="north")
    edges = season.bin_edges(2021)
    refl = snapped["reflectance"]
    comp = median_composite(refl, season, 2021)
    # plain NumPy: each value's bin is (day - Jan 1) // 5, a month start sits in the bin holding its day
    days = (np.asarray(snapped["time"].values, "datetime64[D]") - np.datetime64("2021-01-01")).astype(int)
    inside = (days >= 0) & (days < 365)
    bins = np.minimum(days[inside] // 5, season.n_bins - 1)
    expected = refl.values[:, inside, :]
    got = comp.values[:, bins, :]
    ok = np.isfinite(expected)
    np.testing.assert_allclose(got[ok], expected[ok], rtol=0, atol=1e-7)
    assert [str(t)[:10] for t in comp["time"].values[bins[:2]]] == ["2021-01-01", "2021-01-31"]
    # read literally, January's value sits in the last bin of the year before: the window loses it
    lit = median_composite(literal["reflectance"], season, 2021)
    assert not np.allclose(lit.values[:, bins, :][ok], expected[ok], equal_nan=True)
    assert int(((days >= 0) & (days < 365)).sum()) == 11  # Jan - Nov 2021
    lit_days = (np.asarray(literal["time"].values, "datetime64[D]") - np.datetime64("2021-01-01")).astype(int)
    assert int(((lit_days >= 0) & (lit_days < 365)).sum()) == 10  # January 2021 falls in 2020


def test_snap_rules():
    dekads = pd.DatetimeIndex(["2021-01-01", "2021-01-11", "2021-01-21", "2021-02-01"]) - pd.Timedelta(hours=1)
    with pytest.warns(UserWarning, match="dekad starts"):
        out, period = snap_to_periods(dekads)
    assert period == "dekad" and list(out.day) == [1, 11, 21, 1]
    five_day = pd.date_range("2017-08-01", periods=20, freq="5D")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert snap_to_periods(five_day)[1] == "none"
        assert (snap_to_periods(pd.date_range("2021-01-01", periods=6, freq="MS"))[0].day == 1).all()
    east = pd.DatetimeIndex(["2021-03-01 10:00", "2021-04-01 10:00"])  # UTC-10 midnight (Hawaii) is 10:00 UTC
    with pytest.warns(UserWarning):
        assert list(snap_to_periods(east, "month")[0].month) == [3, 4]
    with pytest.raises(InvalidInputError, match="from a month start"):
        snap_to_periods(five_day, "month")
