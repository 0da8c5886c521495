"""Phenology augmentation of band x time matrices, applied online to each training batch.

Three transforms, each applied to a sample with its own probability (0.5 by default):

- **time shift**: the series moves by ``d ~ U[-10, +10]`` days (``+d``: the crop develops ``d`` days
  later, so a feature at bin ``t`` appears at bin ``t + d / bin_days``);
- **time scale**: the season's start and end move independently by ``U[-30, +10]`` days and the
  stretched (or squeezed) window is resampled to the bin count;
- **magnitude warping**: the series is multiplied by a smooth curve, a cubic spline through 5 evenly
  spaced knots drawn from ``N(1, 0.2)`` (one curve per sample, shared by all bands, so band ratios and
  the time axis are kept).

Shift and scale read the FULL-YEAR 5-day series and cut the season window afterwards, so they move real
observations into the window instead of padding; only beyond the ends of the full series is the edge
value repeated. Positions between bins are linearly interpolated. Everything is deterministic given the
``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import CubicSpline

from cropmap.errors import ConfigError

__all__ = ["Augmenter", "AUGMENTATIONS", "augmenter", "resample_window"]


@dataclass(frozen=True)
class Augmenter:
    """Probabilities and ranges (days, ``(low, high)`` of a uniform draw) of the three augmentations.

    ``bin_days`` is the step of the series; a range with ``low == high`` gives a fixed transform.
    """

    p_shift: float = 0.5
    p_scale: float = 0.5
    p_warp: float = 0.5
    shift_days: tuple[float, float] = (-10.0, 10.0)
    scale_days: tuple[float, float] = (-30.0, 10.0)
    warp_sigma: float = 0.2
    warp_knots: int = 5
    bin_days: int = 5

    def __post_init__(self) -> None:
        for name in ("p_shift", "p_scale", "p_warp"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"augmentation {name} must be in [0, 1], got {getattr(self, name)}")
        if self.warp_knots < 2:
            raise ConfigError("magnitude warping needs at least 2 knots")

    @property
    def is_identity(self) -> bool:
        return self.p_shift == self.p_scale == self.p_warp == 0.0

    def __call__(self, x_full: np.ndarray, *, start: int, n_bins: int, rng: np.random.Generator) -> np.ndarray:
        """Augment and cut the season window.

        ``x_full``: ``(N, band, T)`` the full-year series (reflectance, float); ``start``: the index of
        the season's first bin in it; ``n_bins``: the window length. Returns ``(N, band, n_bins)`` float32.
        """
        x_full = np.asarray(x_full, dtype=np.float32)
        n, _, t_full = x_full.shape
        if start < 0 or start + n_bins > t_full:
            raise ConfigError(f"season window [{start}, {start + n_bins}) outside the {t_full}-bin series")
        # draw every random number whether or not it is used: the stream does not depend on the p's
        u = rng.random((n, 3))
        shift = rng.uniform(*self.shift_days, n)
        lo, hi = self.scale_days
        ends = rng.uniform(lo, hi, (n, 2))
        knots = rng.normal(1.0, self.warp_sigma, (n, self.warp_knots))

        i = np.arange(n_bins, dtype=np.float64)
        first = np.where(u[:, 1] < self.p_scale, ends[:, 0], 0.0) / self.bin_days
        last = np.where(u[:, 1] < self.p_scale, ends[:, 1], 0.0) / self.bin_days
        step = ((n_bins - 1) + last - first) / max(n_bins - 1, 1)
        pos = start + first[:, None] + i[None, :] * step[:, None]
        pos -= np.where(u[:, 0] < self.p_shift, shift, 0.0)[:, None] / self.bin_days
        out = resample_window(x_full, pos)

        warp = u[:, 2] < self.p_warp
        if warp.any():
            knot_x = np.linspace(0, n_bins - 1, self.warp_knots)
            curves = CubicSpline(knot_x, knots[warp].T, axis=0)(i).T  # (n_warped, n_bins)
            out[warp] *= curves[:, None, :].astype(np.float32)
        return out


def resample_window(x_full: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``x_full`` ``(N, band, T)`` at fractional bins ``pos`` ``(N, n_bins)``.

    Positions outside ``[0, T - 1]`` take the edge value. Returns ``(N, band, n_bins)`` float32.
    """
    t_full = x_full.shape[2]
    pos = np.clip(pos, 0, t_full - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), t_full - 2) if t_full > 1 else np.zeros_like(pos, int)
    w = (pos - lo).astype(np.float32)[:, None, :]
    a = np.take_along_axis(x_full, lo[:, None, :], axis=2)
    b = np.take_along_axis(x_full, np.minimum(lo + 1, t_full - 1)[:, None, :], axis=2)
    return (a * (1 - w) + b * w).astype(np.float32)


#: The named settings of the experiments: none, shift, shift+scale, all three.
AUGMENTATIONS: dict[str, dict[str, float]] = {
    "none": {"p_shift": 0.0, "p_scale": 0.0, "p_warp": 0.0},
    "shift": {"p_shift": 0.5, "p_scale": 0.0, "p_warp": 0.0},
    "shift+scale": {"p_shift": 0.5, "p_scale": 0.5, "p_warp": 0.0},
    "shift+warp": {"p_shift": 0.5, "p_scale": 0.0, "p_warp": 0.5},
    "all": {"p_shift": 0.5, "p_scale": 0.5, "p_warp": 0.5},
}


def augmenter(name: str, *, bin_days: int = 5, **overrides: float) -> Augmenter:
    """An :class:`Augmenter` by name (see :data:`AUGMENTATIONS`), with optional overrides."""
    if name not in AUGMENTATIONS:
        raise ConfigError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}")
    return Augmenter(**{**AUGMENTATIONS[name], **overrides}, bin_days=bin_days)
