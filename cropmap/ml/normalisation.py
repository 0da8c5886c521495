"""The models' input normalisation: ``log1p(x * scale)`` then a per-band standardisation.

The mean and std come from the training split only. ``x`` is surface reflectance 0..1; ``scale``
(10000) returns it to the digital numbers the seed's log1p was made for. A checkpoint stores the
fitted statistics (:mod:`cropmap.ml.checkpoint`), so prediction normalises exactly as training did.
±inf is no data, as NaN is: it stays NaN (the clip at 0 would otherwise turn -inf into a dark pixel).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cropmap.errors import ConfigError, IncompatibleInputError

__all__ = ["fit_normalisation", "apply_normalisation"]


def fit_normalisation(x: np.ndarray, *, scale: float = 10000.0) -> dict[str, Any]:
    """Per-band statistics of ``log1p(x * scale)`` over samples and time.

    ``x``: ``(N, band, time)`` reflectance 0..1 (NaN rows are ignored). Returns a JSON-able dict
    ``{"method": "log1p_standard", "scale", "mean": [band], "std": [band]}``.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise IncompatibleInputError(f"normalisation expects (N, band, time), got {x.shape}")
    z = np.log1p(np.clip(_no_inf(x), 0, None) * scale)
    mean = np.nanmean(z, axis=(0, 2))
    std = np.nanstd(z, axis=(0, 2))
    std = np.where(std > 1e-6, std, 1.0)  # a constant band must not blow up
    return {"method": "log1p_standard", "scale": float(scale), "mean": mean.tolist(), "std": std.tolist()}


def apply_normalisation(x: np.ndarray, normalisation: dict[str, Any]) -> np.ndarray:
    """``(log1p(clip(x, 0) * scale) - mean[band]) / std[band]``, ``x`` ``(N, band, time)`` -> float32;
    NaN where ``x`` is NaN or ±inf."""
    if normalisation.get("method") != "log1p_standard":
        raise ConfigError(f"unknown normalisation method {normalisation.get('method')!r}")
    x = np.asarray(x, dtype=np.float32)
    mean = np.asarray(normalisation["mean"], dtype=np.float32)
    std = np.asarray(normalisation["std"], dtype=np.float32)
    if x.ndim != 3 or x.shape[1] != mean.size:
        raise IncompatibleInputError(f"normalisation for {mean.size} bands got input of shape {x.shape}")
    z = np.log1p(np.clip(_no_inf(x), 0, None) * np.float32(normalisation["scale"]))
    return ((z - mean[None, :, None]) / std[None, :, None]).astype(np.float32)


def _no_inf(x: np.ndarray) -> np.ndarray:
    """``x`` with ±inf as NaN (a copy only when it holds one)."""
    inf = np.isinf(x)
    return np.where(inf, np.nan, x).astype(x.dtype, copy=False) if inf.any() else x
