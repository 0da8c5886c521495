"""Calibrated confidence: temperature scaling and its reliability measures.

A network's softmax is not a probability of being right. :func:`fit_temperature` finds the single
temperature ``T > 0`` that minimises the negative log-likelihood of ``softmax(logits / T)`` on held-out
(validation) samples (Guo et al. 2017); it changes confidences, never the winning class. The fitted T is
kept only when the validation set supports it: on a small validation split that the network gets almost
all right, the fit sharpens a softmax that is already calibrated and raises the ECE of new data
(measured on Victoria, docs/results/splits-calibration-ood.md), so T = 1 unless the NLL gain survives a
bootstrap of the validation samples.
:func:`expected_calibration_error` and :func:`reliability_table` measure how far confidence is from
accuracy (equal-width confidence bins); :func:`ece_noise_floor` is the ECE that sampling alone gives a
perfectly calibrated model on as many samples (below it, no calibration can show a gain);
:func:`reliability_png` draws the diagram.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from cropmap.errors import InvalidInputError
from cropmap.io.outputs import atomic_path
from cropmap.io import outputs

__all__ = ["CALIBRATION_RULE", "fit_temperature", "softmax_t", "expected_calibration_error", "ece_noise_floor",
           "reliability_table", "reliability_png"]


#: How :func:`fit_temperature` decides, by default: part of a cached checkpoint's identity (a checkpoint
#: calibrated under another rule holds another temperature).
CALIBRATION_RULE = {"fit": "nll", "keep_if_bootstrap_gain": 0.95}


def softmax_t(logits, temperature: float = 1.0):
    """``softmax(logits / temperature)`` row-wise, ``(N, C)`` float32; ``temperature`` must be positive
    and finite (T = 0 would make every row NaN). An array goes through float64; a torch tensor stays a
    tensor on its device, in float32 (the predict stage's products on a GPU)."""
    if not np.isfinite(temperature) or temperature <= 0:
        raise InvalidInputError(f"softmax temperature must be a positive number, got {temperature}")
    torch = sys.modules.get("torch")  # a tensor exists only if torch is loaded: no import here for arrays
    if torch is not None and isinstance(logits, torch.Tensor):
        return torch.softmax(logits.float() / float(temperature), dim=1)
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    return np.exp(log_softmax(z, axis=1)).astype(np.float32)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, bounds: tuple[float, float] = (0.05, 20.0),
                    confidence: float = CALIBRATION_RULE["keep_if_bootstrap_gain"], n_boot: int = 1000,
                    seed: int = 0) -> float:
    """The temperature minimising the mean NLL of ``softmax(logits / T)`` for ``labels`` ``(N,)``, or 1.0
    when the validation samples do not support moving away from the raw softmax.

    ``logits``: ``(N, C)`` raw network outputs. Searched on log T within ``bounds`` (bounded Brent).
    Kept only if the mean per-sample NLL gain over T = 1 is positive in a share ``confidence`` of
    ``n_boot`` bootstrap resamples of the samples (``seed``); ``confidence=0`` keeps any fit. When
    every sample is already classified right, the NLL keeps falling as T -> 0 and the search would return
    the lower bound: a sharpening the validation set cannot justify. T = 1 is returned then.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise InvalidInputError(f"fit_temperature: logits (N, C) and labels (N,), got {logits.shape}, {labels.shape}")
    if not 0.0 <= confidence < 1.0:
        raise InvalidInputError(f"fit_temperature: confidence must be in [0, 1), got {confidence}")
    if (logits.argmax(axis=1) == labels).all():
        return 1.0
    rows = np.arange(len(labels))

    def sample_nll(t: float) -> np.ndarray:
        return -log_softmax(logits / t, axis=1)[rows, labels]

    best = minimize_scalar(lambda log_t: float(sample_nll(np.exp(log_t)).mean()), bounds=tuple(np.log(bounds)),
                           method="bounded", options={"xatol": 1e-4})
    t = float(np.exp(best.x))
    if confidence > 0:
        gain = sample_nll(1.0) - sample_nll(t)
        draws = np.random.default_rng(seed).integers(0, len(gain), size=(n_boot, len(gain)))
        if (gain[draws].mean(axis=1) > 0).mean() < confidence:
            return 1.0
    return t


def _confidence_bins(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """The equal-width bin ``[k/n, (k+1)/n)`` (the last closed) of each confidence, as ``k``."""
    return np.minimum((conf * n_bins).astype(int), n_bins - 1)


def reliability_table(proba: np.ndarray, labels: np.ndarray, *, n_bins: int = 10) -> pd.DataFrame:
    """Per confidence bin ``[k/n, (k+1)/n)`` (the last closed): ``lower``, ``upper``, ``count``,
    ``confidence`` (mean winning probability), ``accuracy`` (share right); NaN rows of ``proba`` skipped."""
    proba = np.asarray(proba, dtype=np.float64)
    ok = ~np.isnan(proba).any(axis=1)
    proba, labels = proba[ok], np.asarray(labels)[ok]
    conf, right = proba.max(1), proba.argmax(1) == labels
    k = _confidence_bins(conf, n_bins)
    rows = []
    for b in range(n_bins):
        m = k == b
        rows.append({"lower": b / n_bins, "upper": (b + 1) / n_bins, "count": int(m.sum()),
                     "confidence": float(conf[m].mean()) if m.any() else np.nan,
                     "accuracy": float(right[m].mean()) if m.any() else np.nan})
    return pd.DataFrame(rows)


def expected_calibration_error(proba: np.ndarray, labels: np.ndarray, *, n_bins: int = 10) -> float:
    """ECE: sum over confidence bins of (share of samples) x |accuracy - mean confidence|, in 0..1."""
    table = reliability_table(proba, labels, n_bins=n_bins)
    used = table[table["count"] > 0]
    return float((used["count"] * (used["accuracy"] - used["confidence"]).abs()).sum() / used["count"].sum())


def ece_noise_floor(proba: np.ndarray, *, n_bins: int = 10, n_draws: int = 1000, seed: int = 0) -> float:
    """The mean ECE of a perfectly calibrated model with these confidences on as many samples.

    ``proba``: ``(N, C)`` probabilities (NaN rows skipped). Each of ``n_draws`` draws (``seed``) makes
    sample ``i`` right with probability ``max(proba[i])``, so accuracy equals confidence in expectation,
    and bins as :func:`expected_calibration_error` does. An ECE at or below this figure is sampling noise:
    ~0.02 for 400 targets at 95 % accuracy, shrinking as ``1 / sqrt(N)``.
    """
    proba = np.asarray(proba, dtype=np.float64)
    conf = proba[~np.isnan(proba).any(axis=1)].max(axis=1)
    if len(conf) == 0:
        raise InvalidInputError("ece_noise_floor: no sample without NaN")
    k = _confidence_bins(conf, n_bins)
    right = np.random.default_rng(seed).random((n_draws, len(conf))) < conf
    total = np.zeros(n_draws)
    for b in np.unique(k):
        m = k == b
        total += np.abs(right[:, m].sum(axis=1) - conf[m].sum())  # = count x |accuracy - confidence|
    return float(total.mean() / len(conf))


def reliability_png(tables: dict[str, pd.DataFrame], path: str | Path, *, title: str = "") -> Path:
    """A reliability diagram (accuracy against mean confidence per bin, one line per table, the diagonal
    is perfect calibration) written whole to ``path`` (PNG); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
    for name, table in tables.items():
        used = table[table["count"] > 0]
        ax.plot(used["confidence"], used["accuracy"], marker="o", label=name)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (mean of bin)", ylabel="accuracy", title=title)
    ax.legend(loc="upper left", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return path
