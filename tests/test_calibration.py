"""Calibrated confidence: temperature scaling fitted on validation, stored in the checkpoint, applied at
predict, and lowering the ECE on the real Victoria test split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cropmap.core.composite import median_composite
from cropmap.core.season import Season
from cropmap.ml.calibration import (
    expected_calibration_error,
    fit_temperature,
    reliability_png,
    reliability_table,
    softmax_t,
)
from cropmap.ml.checkpoint import load_checkpoint, save_checkpoint
from cropmap.ml.train import TrainConfig, predict_logits, fit_model
from cropmap.samples.victoria import read_victoria

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SEASON = Season(start="08-01", end="07-31", hemisphere="south")


def _matrix(split: str) -> tuple[np.ndarray, np.ndarray]:
    ds = read_victoria(split)
    comp = median_composite(ds["reflectance"], SEASON, 2017)
    return comp.transpose("sample", "band", "time").values, ds["label"].values.astype(int)


def test_ece_and_temperature_match_plain_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 5)) * 4
    labels = np.where(rng.random(400) < 0.6, logits.argmax(1), rng.integers(0, 5, 400))  # overconfident
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    conf, right = p.max(1), p.argmax(1) == labels
    ece = sum(abs(right[m].mean() - conf[m].mean()) * m.mean()
              for b in range(10) if (m := (np.minimum(np.floor(conf * 10), 9) == b)).any())
    assert expected_calibration_error(p, labels) == pytest.approx(ece, abs=1e-9)
    assert reliability_table(p, labels)["count"].sum() == 400
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    def nll(t: float) -> float:
        z = logits / t
        z = z - z.max(1, keepdims=True)
        return float((np.log(np.exp(z).sum(1)) - z[np.arange(400), labels]).mean())

    nll = [nll(t) for t in grid]
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(grid[int(np.argmin(nll))], rel=5e-3) and t > 1  # overconfident: T > 1


def test_a_validation_set_without_errors_keeps_the_temperature_at_one():
    """All right: the NLL falls towards T -> 0 (a plain NumPy check below), so the bounded search would
    sharpen to its bound, 0.05; nothing on the validation set supports that, so T stays 1."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(300, 4))
    labels = logits.argmax(1)
    z = lambda t: logits / t - (logits / t).max(1, keepdims=True)  # noqa: E731
    nll = [float((np.log(np.exp(z(t)).sum(1)) - z(t)[np.arange(300), labels]).mean()) for t in (1.0, 0.5, 0.1)]
    assert nll[0] > nll[1] > nll[2]  # what the search would follow
    assert fit_temperature(logits, labels) == 1.0
    labels[0] = (labels[0] + 1) % 4  # one error: the fit is identifiable again
    assert fit_temperature(logits, labels) != 1.0


def _drawn(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """80 samples of 8 classes whose labels are drawn from softmax(logits): calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(80, 8)) * 8
    p = softmax_t(logits).astype(np.float64)
    return logits, np.array([rng.choice(8, p=row / row.sum()) for row in p])


def test_a_calibrated_softmax_keeps_the_temperature_at_one():
    """On 80 calibrated samples, 84 % right, the best-NLL temperature moves away from 1 by chance alone
    (the ``confidence=0`` fit: 1.23); the bootstrap of its NLL gain does not support it, so T stays 1
    (such chance fits sharpened Victoria's CropNet and raised its test ECE). A network three times too
    sure of itself, on a sample of the same size, is still corrected."""
    logits, labels = _drawn(3)
    assert 0.8 < np.mean(labels == logits.argmax(1)) < 0.9
    assert fit_temperature(logits, labels, confidence=0.0) > 1.15  # the fit alone moves T
    assert fit_temperature(logits, labels) == 1.0
    logits, labels = _drawn(1)
    assert 2.5 < fit_temperature(3 * logits, labels) < 3.5


def test_temperature_in_checkpoint_lowers_test_ece(shared_data, tmp_path):
    x, y = _matrix("train")
    x_test, y_test = _matrix("test")
    cfg = TrainConfig(model="cropnet1d", model_options={"channels": [16] * 4}, epochs=15, lr=3e-3, schedule="constant",
                      batch_size=32, val_fraction=0.2, epoch_choice="best", progress=False, device="cpu", seed=0)
    result = fit_model(x, y, window_start=0, n_bins=SEASON.n_bins, n_classes=8, config=cfg)
    assert result.temperature == result.val_scores["temperature"] != 1.0
    path = save_checkpoint(tmp_path / "m.pt", model=result.model, model_name="cropnet1d",
                           model_config=result.model_config, feature_kind="2d",
                           bands=[f"b{i}" for i in range(10)], season=SEASON, n_bins=SEASON.n_bins,
                           normalisation=result.normalisation, class_names=[str(i) for i in range(8)],
                           class_colours=None, config={}, scores=result.val_scores, temperature=result.temperature)
    ckpt = load_checkpoint(path)
    assert ckpt.temperature == pytest.approx(result.temperature)
    calibrated, raw = ckpt.predict_proba(x_test), ckpt.predict_proba(x_test, calibrated=False)
    # applied at predict: exactly softmax(logits / T), the same winners
    logits = predict_logits(ckpt.model, ckpt.normalise(x_test))
    np.testing.assert_allclose(calibrated, softmax_t(logits, ckpt.temperature), atol=1e-5)
    np.testing.assert_allclose(raw, softmax_t(logits, 1.0), atol=1e-5)
    assert (calibrated.argmax(1) == raw.argmax(1)).all()
    before, after = expected_calibration_error(raw, y_test), expected_calibration_error(calibrated, y_test)
    print(f"T={ckpt.temperature:.3f} OA={np.mean(raw.argmax(1) == y_test):.3f} test ECE {before:.4f} -> {after:.4f}")
    assert after < before
    png = reliability_png({"softmax": reliability_table(raw, y_test), "calibrated": reliability_table(calibrated, y_test)},
                          tmp_path / "rel.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ece_noise_floor_is_the_binomial_expectation():
    """Every sample at confidence c: a calibrated model's ECE is E|X/n - c|, X ~ Binomial(n, c), computed
    exactly here (scipy's pmf), and it shrinks as 1 / sqrt(n)."""
    from scipy.stats import binom

    from cropmap.ml.calibration import ece_noise_floor

    c = 0.93
    for n in (50, 400):
        proba = np.zeros((n, 3))
        proba[:, 0], proba[:, 1:] = c, (1 - c) / 2
        x = np.arange(n + 1)
        exact = float((binom.pmf(x, n, c) * np.abs(x / n - c)).sum())
        assert ece_noise_floor(proba, n_draws=20000) == pytest.approx(exact, rel=0.03)
    big = np.tile(proba[:1], (1600, 1))
    assert ece_noise_floor(big) == pytest.approx(ece_noise_floor(proba) / 2, rel=0.1)
