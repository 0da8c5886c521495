"""The seed's three feature types, computed from a composite.

Input everywhere: a composite from :func:`cropmap.core.composite.median_composite` with dims ``time`` and
``band`` (plus any others: ``sample`` or ``y, x``), surface reflectance 0..1.

- ``"2d"`` :func:`median_2d`: the band x time matrix, dims ``(..., band, time)`` (CropNet's input).
- ``"1d"`` :func:`median_1d`: the same values flattened to ``(..., feature)``, band-major.
- ``"harmonic"`` :func:`harmonic_coefficients`: a least-squares Fourier fit per band,
  ``(..., feature)``.

±inf in the composite is no data, NaN in every feature, as NaN is: never a value a model sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import xarray as xr

from cropmap.core.bands import require_bands
from cropmap.errors import ConfigError

__all__ = [
    "FeatureKind",
    "HARMONIC_BANDS",
    "median_2d",
    "median_1d",
    "harmonic_coefficients",
    "harmonic_design",
    "compute_features",
]

FeatureKind = Literal["2d", "1d", "harmonic"]

#: Default bands of the harmonic features: 7 bands x (1 + 2 x 2) terms = 35 values, as in the seed.
#: Visible, one red-edge, NIR and both SWIR bands: the spectral regions that separate crops, one each.
HARMONIC_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B08", "B11", "B12")


def median_2d(composite: xr.DataArray) -> xr.DataArray:
    """The "2D median" matrix: dims ``(..., band, time)``, float32 (±inf as NaN)."""
    return _finite(composite.transpose(..., "band", "time"))


def _finite(values: xr.DataArray) -> xr.DataArray:
    """``values`` as a new float32 array with ±inf made NaN (lazy when ``values`` is)."""
    out = values.astype(np.float32)  # always a new array
    if isinstance(out.data, np.ndarray):  # in place on that copy: no second block-sized array
        np.copyto(out.data, np.float32(np.nan), where=np.isinf(out.data))
        return out
    return out.where(~np.isinf(out))


def median_1d(composite: xr.DataArray) -> xr.DataArray:
    """The "1D median" vector: the 2D matrix flattened band-major to ``(..., feature)``.

    Feature names are ``"{band}_t{bin:02d}"``.
    """
    matrix = median_2d(composite)
    names = [f"{b}_t{t:02d}" for b in matrix.band.values for t in range(matrix.sizes["time"])]
    flat = matrix.stack(feature=("band", "time")).drop_vars(["feature", "band", "time"])
    return flat.assign_coords(feature=names)


def harmonic_design(days: np.ndarray, n_harmonics: int, period_days: float) -> np.ndarray:
    """Design matrix ``(time, 1 + 2 * n_harmonics)``: ``1, cos(w t), sin(w t), cos(2 w t), ...``.

    ``days``: time in days from the season start; ``w = 2 pi / period_days``.
    """
    w = 2 * np.pi * np.asarray(days, dtype=np.float64) / period_days
    cols = [np.ones_like(w)]
    for k in range(1, n_harmonics + 1):
        cols += [np.cos(k * w), np.sin(k * w)]
    return np.stack(cols, axis=1)


def harmonic_coefficients(
    composite: xr.DataArray,
    *,
    bands: Sequence[str] = HARMONIC_BANDS,
    n_harmonics: int = 2,
    period_days: float = 365.25,
) -> xr.DataArray:
    """Least-squares Fourier coefficients per band over the season.

    For each band: ``c0 + sum_k a_k cos(k w t) + b_k sin(k w t)``, ``t`` in days since the first bin,
    ``w = 2 pi / period_days`` (annual by default). Returns ``(..., feature)`` float32 with
    ``len(bands) * (1 + 2 * n_harmonics)`` features named ``"{band}_c0"``, ``"{band}_cos1"``,
    ``"{band}_sin1"`` ...; NaN where the series is NaN.
    """
    require_bands(composite.band.values.tolist(), bands, where="harmonic features")
    days = (composite.time.values - composite.time.values[0]) / np.timedelta64(1, "D")
    design = harmonic_design(days, n_harmonics, period_days)
    solve = np.linalg.pinv(design).astype(np.float32)  # (terms, time)
    terms = ["c0"] + [f"{f}{k}" for k in range(1, n_harmonics + 1) for f in ("cos", "sin")]
    coef = xr.DataArray(solve, dims=("term", "time"), coords={"term": terms})
    fitted = xr.dot(coef, _finite(composite.sel(band=list(bands))), dim="time")
    fitted = fitted.transpose(..., "band", "term")
    names = [f"{b}_{t}" for b in bands for t in terms]
    flat = fitted.stack(feature=("band", "term")).drop_vars(["feature", "band", "term"])
    return flat.assign_coords(feature=names).astype(np.float32)


def compute_features(composite: xr.DataArray, kind: FeatureKind, **options) -> xr.DataArray:
    """Dispatch to the feature function named by ``kind`` (``"2d"``, ``"1d"`` or ``"harmonic"``)."""
    if kind == "2d":
        return median_2d(composite)
    if kind == "1d":
        return median_1d(composite)
    if kind == "harmonic":
        return harmonic_coefficients(composite, **options)
    raise ConfigError(f"unknown feature kind {kind!r}; use '2d', '1d' or 'harmonic'")
