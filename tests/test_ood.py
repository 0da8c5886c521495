"""The out-of-distribution score: fitted on the training inputs, stored in the checkpoint, higher on the
real Victoria test pixels moved by +-20 days than on the unmoved ones, and written as a COG by predict."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from sklearn.covariance import EmpiricalCovariance
from sklearn.metrics import roc_auc_score

from cropmap.core.composite import median_composite
from cropmap.ml.checkpoint import load_checkpoint, save_checkpoint
from cropmap.ml.normalisation import apply_normalisation
from cropmap.ml.evaluate import error_detection
from cropmap.ml.ood import ood_distance
from cropmap.ml.train import TrainConfig, train_model
from cropmap.samples.victoria import read_victoria
from cropmap.stages.predict import PredictOptions, _model_input, open_cube, predict_tile
from test_predict import VIC_SEASON, VIC_YEAR, victoria_tiles

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _matrix(ds, shift_days: int = 0, year: int = VIC_YEAR) -> np.ndarray:
    """``(sample, band, bin)`` composite of the season, the dates moved by ``shift_days`` first."""
    refl = ds["reflectance"]
    refl = refl.assign_coords(time=refl["time"] + np.timedelta64(shift_days, "D"))
    return median_composite(refl, VIC_SEASON, year).transpose("sample", "band", "time").values


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    train = read_victoria("train")
    x = _matrix(train)
    cfg = TrainConfig(model="cropnet1d", model_options={"channels": [8] * 4}, epochs=2, lr=3e-3, batch_size=32,
                      progress=False, device="cpu", seed=0)
    result = train_model(x, train["label"].values, window_start=0, n_bins=VIC_SEASON.n_bins, n_classes=8, config=cfg)
    path = save_checkpoint(tmp_path_factory.mktemp("ood") / "m.pt", model=result.model, model_name="cropnet1d",
                           model_config=result.model_config, feature_kind="2d",
                           bands=[str(b) for b in train["band"].values], season=VIC_SEASON, n_bins=VIC_SEASON.n_bins,
                           normalisation=result.normalisation, class_names=[str(c) for c in train["class_name"].values],
                           class_colours=None, config={}, scores=result.val_scores, temperature=result.temperature,
                           ood=result.ood)
    return path, x, result


def test_score_matches_an_independent_mahalanobis(trained):
    path, x, result = trained
    ckpt = load_checkpoint(path)
    z = apply_normalisation(x[result.train_index], ckpt.normalisation).reshape(len(result.train_index), -1)
    # sklearn's own Mahalanobis on the same principal projection (fitted again here, not read back)
    mean = z.mean(0)
    comps = np.linalg.svd(z - mean, full_matrices=False)[2][:16]
    proj = (z - mean) @ comps.T
    lw = EmpiricalCovariance().fit(proj)
    # the discarded axes' mean variance: total variance minus the kept axes', per discarded axis
    residual_var = (z.var(0, ddof=1).sum() - proj.var(0, ddof=1).sum()) / (z.shape[1] - 16)
    ref = np.sqrt(lw.mahalanobis(proj) + (((z - mean) - proj @ comps) ** 2).sum(1) / residual_var)
    got = ood_distance(z.reshape(-1, 10, VIC_SEASON.n_bins), ckpt.ood)
    np.testing.assert_allclose(got, ref, rtol=1e-4)
    score = ckpt.ood_score(x[result.train_index])
    assert abs((score > 1).mean() - 0.01) < 0.01  # the 99th training percentile is the threshold


def test_shifted_target_scores_higher(trained):
    """The Victoria test pixels moved by +-20 days (a phenology shift on real spectra) lie farther from the
    training inputs than the unmoved ones; measured: AUROC ~0.69 / 0.72, flagged 10.5 % -> ~13 %."""
    path, _, _ = trained
    ckpt = load_checkpoint(path)
    test = read_victoria("test")
    base = ckpt.ood_score(_matrix(test))
    for shift in (-20, 20):
        moved = ckpt.ood_score(_matrix(test, shift))
        auc = roc_auc_score(np.r_[np.zeros(len(base)), np.ones(len(moved))], np.r_[base, moved])
        print(f"shift {shift:+d} d: flagged {np.mean(base > 1):.1%} -> {np.mean(moved > 1):.1%}, AUROC {auc:.3f}")
        assert np.median(moved) > np.median(base) and auc > 0.6 and np.mean(moved > 1) > np.mean(base > 1)


def test_predict_writes_the_ood_cog(trained, tmp_path):
    path, _, _ = trained
    ckpt = load_checkpoint(path)
    cubes, _ = victoria_tiles(tmp_path, rows=1, cols=1, ny=20, nx=20)
    result = predict_tile(path, cubes[0], tmp_path / "out", options=PredictOptions(ood=True, precision="fp32"))
    assert set(result.paths) == {"class", "confidence", "ood"}
    with rasterio.open(result.paths["ood"]) as src:
        got = src.read(1)
        assert src.nodata == 255 and "training threshold" in src.descriptions[0]
    cube = open_cube(cubes[0])
    expect = np.minimum(np.rint(ckpt.ood_score(_model_input(ckpt, cube.load())) * 100), 254).reshape(20, 20)
    np.testing.assert_array_equal(got, expect.astype(np.uint8))
    assert (got > 100).mean() < 0.2  # in-distribution pixels: few flagged


def _pairwise_auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + half the ties, over every pair (Mann-Whitney)."""
    pos, neg = score[positive][:, None], score[~positive][None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def test_error_detection_against_pairwise_counts(trained):
    """On the real Victoria test moved by +20 days: the AUROC of the OOD score for the misclassified pixels
    equals the pairwise count, and the kept-share accuracies equal a plain sort and cut."""
    path, _, _ = trained
    ckpt = load_checkpoint(path)
    test = read_victoria("test")
    x = _matrix(test, 20)
    correct = ckpt.predict_proba(x).argmax(1) == test["label"].values
    score = ckpt.ood_score(x)
    assert 0 < correct.sum() < len(correct)
    got = error_detection(score, correct)
    assert got["auroc_errors"] == pytest.approx(_pairwise_auroc(score.astype(np.float64), ~correct), abs=1e-9)
    for c in (80, 95):
        n = int(round(c / 100 * len(score)))
        assert got[f"oa_at_{c}"] == pytest.approx(correct[np.argsort(score, kind="stable")[:n]].mean())
    # a detector that knows the answer scores 1; one that points the wrong way scores 0
    assert error_detection((~correct).astype(float), correct)["auroc_errors"] == 1.0
    assert error_detection(correct.astype(float), correct)["auroc_errors"] == 0.0
    assert np.isnan(error_detection(score, np.ones_like(correct))["auroc_errors"])


def test_ood_product_follows_the_checkpoint_and_a_demand_it_cannot_meet_is_refused_up_front(
        demo_run, tiny_checkpoint, trained):
    """``ood`` unset: written when the checkpoint holds the statistics, not otherwise; ``ood: true`` with a
    checkpoint saved without them fails when the run is checked, before any cube is built."""
    from cropmap.errors import ConfigError
    from cropmap.jobs.tiles import check_model_fits
    from cropmap.stages.predict import load_model

    without, with_stats = load_model(tiny_checkpoint), load_model(trained[0])
    assert without.ood is None and with_stats.ood is not None
    assert PredictOptions().for_checkpoint(without).ood is False
    assert PredictOptions().for_checkpoint(with_stats).ood is True
    assert PredictOptions(ood=False).for_checkpoint(with_stats).ood is False
    asks = demo_run.model_copy(update={"predict": PredictOptions(ood=True)})
    with pytest.raises(ConfigError, match="predict.ood is true but the checkpoint"):
        check_model_fits(asks, tiny_checkpoint, demo_run.tiles()[:1])
