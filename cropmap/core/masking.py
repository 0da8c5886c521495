"""Validity masks from the Sentinel-2 L2A scene classification layer (SCL)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from scipy import ndimage

__all__ = ["DEFAULT_INVALID_SCL", "valid_from_scl"]

#: SCL classes dropped by default: 0 no data, 1 saturated/defective, 3 cloud shadow,
#: 8 cloud medium probability, 9 cloud high probability, 10 thin cirrus, 11 snow/ice.
DEFAULT_INVALID_SCL: tuple[int, ...] = (0, 1, 3, 8, 9, 10, 11)
# Classes that are grown by ``dilate_pixels`` (cloud edges are the usual leak).
_CLOUDY_SCL = (3, 8, 9, 10)


def valid_from_scl(
    scl: xr.DataArray,
    *,
    invalid: Sequence[int] = DEFAULT_INVALID_SCL,
    dilate_pixels: int = 0,
) -> xr.DataArray:
    """Boolean validity (True = usable) from an SCL array.

    ``scl``: any dims (e.g. ``(time, y, x)`` or ``(sample, time)``); NaN counts as no data.
    ``dilate_pixels`` > 0 grows cloud and shadow classes by that many pixels in ``(y, x)`` (needs
    those dims). Lazy when ``scl`` is Dask-backed (dilation then runs per chunk, so it does not
    cross chunk borders).
    """
    codes = scl.fillna(0)
    bad = codes.isin(list(invalid))
    if dilate_pixels > 0:
        if not {"y", "x"} <= set(scl.dims):
            raise ValueError("SCL dilation needs y and x dims")
        cloudy = codes.isin(list(_CLOUDY_SCL))
        structure = np.ones((2 * dilate_pixels + 1,) * 2, dtype=bool)

        def _grow(block: np.ndarray) -> np.ndarray:
            flat = block.reshape(-1, *block.shape[-2:])
            grown = np.stack([ndimage.binary_dilation(b, structure) for b in flat])
            return grown.reshape(block.shape)

        grown = xr.apply_ufunc(_grow, cloudy.transpose(..., "y", "x"), dask="parallelized",
                               output_dtypes=[bool])
        bad = bad | grown.transpose(*bad.dims)
    return ~bad
