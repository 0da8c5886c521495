"""The phenology shift estimate (cropmap.ml.shift_estimate) on REAL Victoria series shifted by known days."""

from __future__ import annotations

import numpy as np
import pytest

from cropmap.errors import InvalidInputError
from cropmap.ml.checkpoint import load_checkpoint
from cropmap.ml.shift_estimate import (
    CRITERIA,
    best_shift,
    candidate_shifts,
    criterion_score,
    estimate_shift_dated,
    realign_dated,
    shifted,
)
from cropmap.samples.victoria import read_victoria

YEAR = 2017


@pytest.fixture(scope="module")
def test_obs(shared_data):
    ds = read_victoria("test")
    return ds["reflectance"], ds["label"].values


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


def _later(obs, days: int):
    """The target whose crops develop ``days`` later: the same spectra on later dates (the runner's shift)."""
    return obs.assign_coords(time=obs["time"] + np.timedelta64(days, "D"))


def test_candidates_span_both_ways_in_bin_steps():
    c = candidate_shifts(60, 5)
    assert c[0] == -60 and c[-1] == 60 and len(c) == 25 and 0.0 in c
    assert candidate_shifts(12, 5) == (-10.0, -5.0, 0.0, 5.0, 10.0)
    with pytest.raises(InvalidInputError):
        candidate_shifts(60, 0)


def test_criteria_by_hand():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    assert criterion_score(p, "confidence") == pytest.approx((0.9 + 0.6 + 0.8) / 3)
    # class 0 won by rows 0, 1 (mean top 0.75), class 1 by row 2 (0.8): averaged over the 2 classes
    assert criterion_score(p, "balanced_confidence") == pytest.approx((0.75 + 0.8) / 2)
    m = p.mean(0)
    h_mean = -(m * np.log(m)).sum()
    mean_h = -(p * np.log(p)).sum(1).mean()
    assert criterion_score(p, "information") == pytest.approx(h_mean - mean_h)
    # everything sent confidently to one class of four: the balanced criterion counts the 3 unused as 0
    collapsed = np.tile([0.97, 0.01, 0.01, 0.01], (10, 1))
    assert criterion_score(collapsed, "balanced_confidence") == pytest.approx(0.97 / 4)
    with pytest.raises(InvalidInputError, match="criterion"):
        criterion_score(p, "accuracy")


def test_best_shift_takes_the_top_score_and_the_smaller_shift_on_ties():
    table = {-5.0: [[0.5, 0.5]], 0.0: [[0.9, 0.1]], 5.0: [[0.1, 0.9]]}
    e = best_shift(lambda d: np.array(table[d]), (-5.0, 0.0, 5.0), criterion="confidence", n_pixels=1)
    assert e.days == 0.0 and e.scores[0] == 0.5 and e.n_pixels == 1
    tags = e.as_tags()
    assert tags["shift_days"] == "0" and tags["shift_candidates"] == "-5,0,5" and tags["shift_criterion"] == "confidence"


def test_resampling_undoes_a_shift_inside_the_window(test_obs):
    obs, _ = test_obs
    x = obs.values.transpose(0, 2, 1)[:50]  # (sample, band, time) five-day bins
    back = shifted(shifted(x, -20, bin_days=5), 20, bin_days=5)
    np.testing.assert_allclose(back[:, :, 4:-4], x[:, :, 4:-4], rtol=1e-6)


def test_realigning_dated_observations_undoes_the_shift_exactly(test_obs, tiny):
    obs, _ = test_obs
    original = realign_dated(obs, 0, checkpoint=tiny, year=YEAR)
    for days in (-30, 20):
        target = _later(obs, days)
        assert not np.allclose(realign_dated(target, 0, checkpoint=tiny, year=YEAR), original)
        np.testing.assert_array_equal(realign_dated(target, days, checkpoint=tiny, year=YEAR), original)
    # a cube's layout (time, band, y, x) gives the same pixels in row-major order
    cube = obs.isel(sample=slice(0, 12)).data.reshape(3, 4, *obs.shape[1:]).transpose(2, 3, 0, 1)
    import xarray as xr

    cube = xr.DataArray(cube, dims=("time", "band", "y", "x"), coords={"time": obs["time"], "band": obs["band"]})
    np.testing.assert_array_equal(realign_dated(cube, 0, checkpoint=tiny, year=YEAR), original[:12])


@pytest.mark.parametrize("true_days", [-30, 20])
def test_a_known_shift_of_real_series_is_found_within_one_bin(test_obs, tiny, true_days):
    """A small CropNet trained on Victoria's train split; the test split's dates moved by ``true_days``.
    This under-trained net (8-16 channels, 25 full-batch epochs, no augmentation) is found by the class-
    balanced confidence; information maximisation (the default, measured on the trained
    default CropNet: docs/results/adaptation.md) sends it to the window's edge."""
    obs, _ = test_obs
    e = estimate_shift_dated(tiny, _later(obs, true_days), year=YEAR, max_days=40, criterion="balanced_confidence",
                             device="cpu")
    assert len(e.candidates) == 17
    assert abs(e.days - true_days) <= 5, (e.days, dict(zip(e.candidates, e.scores)))


def test_unknown_criterion_and_empty_target_are_refused(test_obs, tiny):
    obs, _ = test_obs
    with pytest.raises(InvalidInputError, match="criterion"):
        estimate_shift_dated(tiny, obs, year=YEAR, criterion="nope", max_days=5)
    assert set(CRITERIA) == {"information", "confidence", "balanced_confidence"}
