"""Labelled pixel time series ("sample sets"): the one structure every reader returns.

A sample set is an :class:`xarray.Dataset`:

- ``reflectance`` ``(sample, time, band)`` float32, surface reflectance 0..1, NaN = no data;
- coords ``time`` (real dates, ``datetime64[ns]``), ``band`` (canonical names: ``B02`` ... ``B12``
  for Sentinel-2, sensor names otherwise), ``label`` ``(sample,)`` int16 index into ``class_name``,
  ``region`` ``(sample,)`` str (ISO3 country or area), ``lat``/``lon`` ``(sample,)`` degrees (NaN if
  unknown), ``class_name`` ``(class,)`` str and optionally ``class_colour`` ``(class,)`` ``#rrggbb``.

Readers: :mod:`cropmap.samples.victoria`, :mod:`~cropmap.samples.cropglobe`,
:mod:`~cropmap.samples.worldcereal`, :mod:`~cropmap.samples.sits`; samples drawn from reference maps:
:mod:`~cropmap.samples.reference`; one entry point by name: :mod:`~cropmap.samples.sources`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from cropmap.core.bands import require_bands
from cropmap.errors import IncompatibleInputError

__all__ = ["make_sample_set", "select_bands"]


def make_sample_set(
    reflectance: np.ndarray,
    *,
    times: Sequence | np.ndarray,
    bands: Sequence[str],
    labels: np.ndarray,
    class_names: Sequence[str],
    region: str | Sequence[str],
    lat: np.ndarray | None = None,
    lon: np.ndarray | None = None,
    class_colours: Sequence[str] | None = None,
    source: str = "",
) -> xr.Dataset:
    """Build a sample set from a ``(sample, time, band)`` reflectance array (0..1, NaN = no data)."""
    reflectance = np.asarray(reflectance, dtype=np.float32)
    n, n_time, n_band = reflectance.shape
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise IncompatibleInputError(f"labels: expected shape ({n},), got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise IncompatibleInputError(f"labels must index class_names (0..{len(class_names) - 1})")
    regions = np.full(n, region, dtype=object) if isinstance(region, str) else np.asarray(region, dtype=object)
    nan = np.full(n, np.nan)
    coords = {
        "time": pd.to_datetime(np.asarray(times)).values.astype("datetime64[ns]"),
        "band": list(bands),
        "label": ("sample", labels.astype(np.int16)),
        "region": ("sample", regions.astype(str)),
        "lat": ("sample", nan if lat is None else np.asarray(lat, dtype=float)),
        "lon": ("sample", nan if lon is None else np.asarray(lon, dtype=float)),
        "class_name": ("class", list(class_names)),
    }
    if class_colours is not None:
        coords["class_colour"] = ("class", list(class_colours))
    if len(coords["time"]) != n_time or len(bands) != n_band:
        raise IncompatibleInputError(f"reflectance {reflectance.shape} does not match {n_time} times x {n_band} bands")
    ds = xr.Dataset({"reflectance": (("sample", "time", "band"), reflectance)}, coords=coords)
    ds["reflectance"].attrs["units"] = "surface reflectance (0-1)"
    ds.attrs["source"] = source
    return ds


def select_bands(samples: xr.Dataset, bands: Sequence[str], *, where: str = "sample set") -> xr.Dataset:
    """The sample set restricted to ``bands`` (in that order); a missing band raises an error naming it."""
    require_bands(samples["band"].values.tolist(), bands, where=where)
    return samples.sel(band=list(bands))
