"""Bayesian spatial smoothing of class probabilities (as sits' ``sits_smooth``): :func:`bayes_smooth`.

Each pixel's class probabilities are taken to logits, and each class's logit is replaced by its posterior
mean under a normal prior estimated from the pixel's neighbourhood (Camara et al., sits, "Bayesian
smoothing"):

- the logit of class ``k`` at a pixel, ``x = log(p_k / (sum(p) - p_k))``, probabilities clipped to
  ``[eps, 1 - eps]`` of the pixel's total first (a 0 would be an infinite logit);
- the neighbourhood: the ``window x window`` pixels centred on it (itself included) that hold data;
  of their class-``k`` logits the highest ``ceil(neigh_fraction * n)`` are kept (``neigh_fraction = 1``:
  all) and give the prior's mean ``m`` and variance ``s`` (sample variance, ``n - 1``);
- the posterior mean ``w * x + (1 - w) * m`` with ``w = s / (s + smoothness)``: ``smoothness`` is the
  prior variance of a logit; a pixel whose neighbours disagree among themselves (``s`` large, an edge
  between two fields) keeps its own value, a pixel in a homogeneous neighbourhood takes the neighbours'
  mean. That is what preserves field edges while cleaning salt-and-pepper inside fields;
- back through the logistic function, then normalised so a pixel's probabilities sum to 1 (sits leaves
  them unnormalised; the class decision, the argmax, is the same either way).

Pixels without data (``NaN``) are never neighbours and stay without data. Unlike sits, which mirrors the
image at its edges, the edge of the array is an edge of the data: a caller that smooths a large image
window by window passes each window with a halo of ``window // 2`` pixels of its neighbours
(:mod:`cropmap.stages.smoothing`), and the result is the same as smoothing the whole image at once.
Pure NumPy, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cropmap.errors import ConfigError

__all__ = ["BayesSmoothing", "bayes_smooth", "logits"]


@dataclass(frozen=True)
class BayesSmoothing:
    """Parameters of :func:`bayes_smooth`; the defaults are sits' (``sits_smooth``, sits 1.5)."""

    #: Side of the square neighbourhood, pixels (odd, 3-33).
    window: int = 9
    #: Fraction of the neighbours, highest logits first, that estimate the prior (0 < f <= 1).
    neigh_fraction: float = 0.5
    #: Prior variance of a class logit: larger smooths less.
    smoothness: float = 20.0

    def __post_init__(self) -> None:
        if not (3 <= self.window <= 33 and self.window % 2 == 1):
            raise ConfigError(f"smoothing window must be an odd number of pixels from 3 to 33, got {self.window}")
        if not 0.0 < self.neigh_fraction <= 1.0:
            raise ConfigError(f"smoothing neigh_fraction must be in (0, 1], got {self.neigh_fraction}")
        if not self.smoothness > 0.0:
            raise ConfigError(f"smoothing smoothness (a variance) must be > 0, got {self.smoothness}")

    @property
    def halo(self) -> int:
        """Pixels of context a window needs on each side (``window // 2``)."""
        return self.window // 2


def logits(probs: np.ndarray, *, eps: float = 1e-6) -> np.ndarray:
    """``log(p / (sum(p) - p))`` per class of ``probs`` ``(class, y, x)`` (any scale: percent, 0-1), each
    probability clipped to ``[eps, 1 - eps]`` of its pixel's total; float64, NaN where ``probs`` is NaN."""
    probs = np.asarray(probs, dtype=np.float64)
    share = np.clip(probs / probs.sum(axis=0, keepdims=True), eps, 1.0 - eps)
    return np.log(share / (1.0 - share))


def bayes_smooth(probs: np.ndarray, params: BayesSmoothing = BayesSmoothing(), *, eps: float = 1e-6,
                 rows_per_step: int = 32) -> np.ndarray:
    """Smoothed probabilities of ``probs`` ``(class, y, x)`` (any positive scale; a pixel with a NaN in
    any class has no data): float32 ``(class, y, x)`` summing to 1 per pixel, NaN where there is no data.

    ``eps``: the clip before the logits (:func:`logits`). Memory: about three copies of
    ``rows_per_step x x x window**2 x class`` float64 values at a time (32 rows of 512 px, window 9,
    8 classes: 3 x 85 MB), besides the input and output.
    """
    lg = logits(probs, eps=eps)
    lg[:, np.isnan(lg).any(axis=0)] = np.nan  # a pixel is data in every class or in none
    c, ny, nx = lg.shape
    leg = params.halo
    padded = np.full((c, ny + 2 * leg, nx + 2 * leg), np.nan)
    padded[:, leg:leg + ny, leg:leg + nx] = lg
    out = np.full(lg.shape, np.nan)
    for r0 in range(0, ny, rows_per_step):
        r1 = min(ny, r0 + rows_per_step)
        out[:, r0:r1] = _posterior(padded[:, r0:r1 + 2 * leg], lg[:, r0:r1], params)
    p = 1.0 / (1.0 + np.exp(-out))
    return (p / p.sum(axis=0, keepdims=True)).astype(np.float32)


def _posterior(padded: np.ndarray, centre: np.ndarray, params: BayesSmoothing) -> np.ndarray:
    """Posterior mean logits of ``centre`` ``(class, rows, x)`` from ``padded`` (the same rows with
    ``window // 2`` pixels of context, NaN = no data, on every side)."""
    w = params.window
    c, ny, nx = centre.shape
    nbh = sliding_window_view(padded, (w, w), axis=(1, 2)).reshape(c, ny, nx, w * w)
    n = np.sum(~np.isnan(nbh), axis=-1)
    k = np.ceil(params.neigh_fraction * n).astype(np.int64)
    mean, var = np.zeros(k.shape), np.zeros(k.shape)
    if params.neigh_fraction >= 1.0:  # every neighbour kept: no ordering needed
        many = k >= 2
        mean[many], var[many] = np.nanmean(nbh[many], axis=-1), np.nanvar(nbh[many], axis=-1, ddof=1)
    else:  # one partial sort per number of neighbours kept (inside the image: one; at edges and nodata: a few)
        lowest_first = np.where(np.isnan(nbh), np.inf, -nbh)  # highest logits first, no data last
        for kept in np.unique(k[k >= 2]):
            where = k == kept
            high = -np.partition(lowest_first[where], kept - 1, axis=-1)[:, :kept]
            mean[where], var[where] = high.mean(axis=-1), high.var(axis=-1, ddof=1)
    weight = var / (var + params.smoothness)
    # fewer than two neighbours kept: no variance to weigh with, the pixel keeps its own value
    return np.where(k >= 2, weight * centre + (1.0 - weight) * mean, centre)
