"""The phenology shift of a target, estimated from its unlabelled pixels.

A target whose crops develop ``d`` days later than the source's shows at date ``t + d`` what the source
showed at ``t`` (the convention of :mod:`cropmap.ml.augment`'s time shift). For each candidate ``d`` (from
``-max_days`` to ``+max_days`` in steps of one bin, :func:`candidate_shifts`) the target is read ``d`` days
later, classified by the source model, and scored by a criterion of the predictions alone
(:func:`criterion_score`); the best candidate is the estimate (:class:`ShiftEstimate`). Two ways to read
the target ``d`` days later:

- :func:`estimate_shift_dated` re-composites the target's DATED observations with their dates moved by
  ``-d`` (:func:`realign_dated`): the same operation that moves a season, so a right estimate undoes the
  shift exactly; use it whenever the dated observations are at hand (sample sets, a cube's scenes);
- :func:`estimate_shift` resamples composited matrices (``(N, band, time)``, e.g. a tile's features) at
  ``t + d / bin_days`` (:func:`shifted`), repeating the edge values beyond the season window.

Criteria (:data:`CRITERIA`; the default chosen by measurement, docs/results/adaptation.md):

- ``information`` (default): information maximisation ``H(mean p) - mean H(p)`` (nats): confident pixels
  AND the classes used in balance, so a shift that sends every pixel to one confident class does not win;
- ``confidence``: the mean winning probability (no balance term);
- ``balanced_confidence``: the mean over the classes of the mean winning probability of the pixels
  predicted as that class (a class nobody is predicted as counts 0): class-balance-aware confidence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from cropmap.core.composite import median_composite
from cropmap.core.features import compute_features
from cropmap.errors import InvalidInputError
from cropmap.ml.augment import resample_window

__all__ = ["CRITERIA", "ShiftEstimate", "candidate_shifts", "criterion_score", "best_shift", "estimate_shift",
           "estimate_shift_dated", "realign_dated", "shifted"]

CRITERIA = ("information", "confidence", "balanced_confidence")


@dataclass(frozen=True)
class ShiftEstimate:
    """``days``: the estimated shift (+: the target's crops are that many days later than the source's);
    ``candidates`` (days) and ``scores`` (the criterion's value at each); ``criterion``; ``n_pixels`` used."""

    days: float
    candidates: tuple[float, ...]
    scores: tuple[float, ...]
    criterion: str
    n_pixels: int

    def as_tags(self) -> dict[str, str]:
        """The estimate and its criterion curve as text tags (a GeoTIFF's, a STAC item's properties)."""
        return {"shift_days": f"{self.days:g}", "shift_criterion": self.criterion,
                "shift_candidates": ",".join(f"{d:g}" for d in self.candidates),
                "shift_scores": ",".join(f"{s:.5f}" for s in self.scores), "shift_pixels": str(self.n_pixels)}


def candidate_shifts(max_days: float, step_days: float) -> tuple[float, ...]:
    """``-k * step .. +k * step`` days with ``k = floor(max_days / step_days)`` (0 always among them)."""
    if step_days <= 0 or max_days < 0:
        raise InvalidInputError(f"shift candidates need step_days > 0 and max_days >= 0, got {step_days}, {max_days}")
    k = int(np.floor(max_days / step_days + 1e-9))
    return tuple(float(i * step_days) for i in range(-k, k + 1))


def criterion_score(proba: np.ndarray, criterion: str) -> float:
    """The criterion (:data:`CRITERIA`) of class probabilities ``(N, classes)``; higher is better."""
    p = np.asarray(proba, dtype=np.float64)
    if criterion == "confidence":
        return float(p.max(1).mean())
    if criterion == "balanced_confidence":
        top, won = p.max(1), p.argmax(1)
        return float(sum(top[won == c].mean() for c in np.unique(won)) / p.shape[1])
    if criterion == "information":
        p = np.clip(p, 1e-12, 1.0)
        mean = p.mean(0)
        return float(-(mean * np.log(mean)).sum() + (p * np.log(p)).sum(1).mean())
    raise InvalidInputError(f"shift criterion {criterion!r}: expected one of {', '.join(CRITERIA)}")


def best_shift(predict: Callable[[float], np.ndarray], candidates: Sequence[float], *, criterion: str,
               n_pixels: int) -> ShiftEstimate:
    """The candidate whose probabilities ``predict(d)`` ``(N, classes)`` (the target read ``d`` days
    later, classified) score best under ``criterion``; ties go to the smallest ``|d|``."""
    if criterion not in CRITERIA:
        raise InvalidInputError(f"shift criterion {criterion!r}: expected one of {', '.join(CRITERIA)}")
    candidates = tuple(float(d) for d in candidates)
    scores = tuple(criterion_score(predict(d), criterion) for d in candidates)
    best = max(range(len(candidates)), key=lambda i: (round(scores[i], 12), -abs(candidates[i])))
    return ShiftEstimate(candidates[best], candidates, scores, criterion, n_pixels)


def shifted(x: np.ndarray, days: float, *, bin_days: float) -> np.ndarray:
    """``x`` ``(N, band, time)`` read ``days`` later: bin ``t`` takes the value at ``t + days / bin_days``
    (edge values beyond the window), float32. ``shifted(target, d)`` undoes a shift of ``+d`` days."""
    n, _, t = x.shape
    pos = np.broadcast_to(np.arange(t, dtype=np.float64) + days / bin_days, (n, t))
    return resample_window(np.asarray(x, dtype=np.float32), pos)


def _sample_rows(n: int, max_pixels: int, seed: int) -> np.ndarray:
    if n > max_pixels:
        return np.sort(np.random.default_rng(seed).choice(n, max_pixels, replace=False))
    return np.arange(n)


def estimate_shift(checkpoint, x: np.ndarray, *, max_days: float = 60.0, step_days: float | None = None,
                   criterion: str = "information", max_pixels: int = 20_000, seed: int = 0,
                   **infer: object) -> ShiftEstimate:
    """The shift of the target pixels ``x`` ``(N, band, time)`` (reflectance 0..1 on the checkpoint's season
    bins; rows holding a NaN are left out) against ``checkpoint``'s source, reading ``x`` later by
    :func:`shifted`, among :func:`candidate_shifts` (``step_days`` default: one bin). At most ``max_pixels``
    rows are used (a seeded sample). ``infer``: options of
    :meth:`~cropmap.ml.checkpoint.Checkpoint.predict_proba` (device, batch_size). Raises
    :class:`InvalidInputError` without a usable pixel or for an unknown criterion."""
    x = np.asarray(x, dtype=np.float32)
    x = x[np.isfinite(x).all(axis=(1, 2))]
    if not len(x):
        raise InvalidInputError("no target pixel with a complete series to estimate the shift from")
    x = x[_sample_rows(len(x), max_pixels, seed)]
    bin_days = float(checkpoint.season.bin_days)
    return best_shift(lambda d: checkpoint.predict_proba(shifted(x, d, bin_days=bin_days), **infer),
                      candidate_shifts(max_days, step_days or bin_days), criterion=criterion, n_pixels=len(x))


def realign_dated(obs: xr.DataArray, days: float, *, checkpoint, year: int) -> np.ndarray:
    """The target's dated observations ``obs`` (dims ``time`` (dates) and ``band``, every other dim a
    pixel: ``(sample, time, band)`` or ``(time, band, y, x)``; reflectance 0..1) read ``days`` later:
    their dates moved by ``-days``, median-composited on the checkpoint's season of season year ``year``
    and cut to its bands. Returns ``(N, band, time)`` float32, pixels in ``obs``'s order (row-major over
    the non-time, non-band dims). ``days`` is rounded to whole days."""
    obs = obs.sel(band=list(checkpoint.bands))
    pixel_dims = [d for d in obs.dims if d not in ("time", "band")]
    if pixel_dims != ["sample"]:
        obs = obs.stack(sample=pixel_dims).transpose("sample", "time", "band")
    if days:
        obs = obs.assign_coords(time=obs["time"] - np.timedelta64(int(round(days)), "D"))
    composite = median_composite(obs, checkpoint.season, year)
    return compute_features(composite, "2d").transpose("sample", "band", "time").values.astype(np.float32)


def estimate_shift_dated(checkpoint, obs: xr.DataArray, *, year: int, max_days: float = 60.0,
                         step_days: float | None = None, criterion: str = "information", max_pixels: int = 20_000,
                         seed: int = 0, **infer: object) -> ShiftEstimate:
    """The shift of the target's dated observations ``obs`` (see :func:`realign_dated`; season year
    ``year``) against ``checkpoint``'s source: each candidate re-composites the observations with their
    dates moved by ``-d``, so the right candidate reproduces the source's timing exactly (no edge
    padding but where the observations end). Pixels whose realigned series holds a NaN are left out of
    the score; at most ``max_pixels`` pixels (a seeded sample). Other arguments as :func:`estimate_shift`."""
    pixel_dims = [d for d in obs.dims if d not in ("time", "band")]
    stacked = obs if pixel_dims == ["sample"] else obs.stack(sample=pixel_dims).transpose("sample", "time", "band")
    keep = _sample_rows(stacked.sizes["sample"], max_pixels, seed)
    stacked = stacked.isel(sample=keep)

    def predict(d: float) -> np.ndarray:
        x = realign_dated(stacked, d, checkpoint=checkpoint, year=year)
        x = x[np.isfinite(x).all(axis=(1, 2))]
        if not len(x):
            raise InvalidInputError(f"no target pixel with a complete series {d:g} days later")
        return checkpoint.predict_proba(x, **infer)

    return best_shift(predict, candidate_shifts(max_days, step_days or float(checkpoint.season.bin_days)),
                      criterion=criterion, n_pixels=len(keep))
