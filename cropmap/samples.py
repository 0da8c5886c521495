"""Labelled pixel time series ("sample sets") and the readers of the real public sets.

A sample set is an :class:`xarray.Dataset`:

- ``reflectance`` ``(sample, time, band)`` float32, surface reflectance 0..1, NaN = no data;
- coords ``time`` (real dates, ``datetime64[ns]``), ``band`` (canonical names: ``B02`` ... ``B12``
  for Sentinel-2, sensor names otherwise), ``label`` ``(sample,)`` int16 index into ``class_name``,
  ``region`` ``(sample,)`` str (ISO3 country or area), ``lat``/``lon`` ``(sample,)`` degrees (NaN if
  unknown), ``class_name`` ``(class,)`` str and optionally ``class_colour`` ``(class,)`` ``#rrggbb``.

Readers of other layouts live in :mod:`cropmap.readers`; all return this structure, built with
:func:`make_sample_set`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cropmap.bands import S2_BANDS, require_bands
from cropmap.data import data_file
from cropmap.errors import ConfigError

__all__ = [
    "make_sample_set",
    "read_victoria",
    "read_cropglobe",
    "CROPGLOBE_CLASSES",
    "VICTORIA_START",
    "select_bands",
]

#: Assumed first date of the Victoria series (the source gives none; see the data README).
VICTORIA_START = "2017-08-01"
#: Class order of the CropGlobe ``lbl`` arrays.
CROPGLOBE_CLASSES: tuple[str, ...] = ("corn", "soybeans", "rice", "wheat", "sugarcane", "cotton", "other")


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
        raise ConfigError(f"labels: expected shape ({n},), got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ConfigError(f"labels must index class_names (0..{len(class_names) - 1})")
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
        raise ConfigError(f"reflectance {reflectance.shape} does not match {n_time} times x {n_band} bands")
    ds = xr.Dataset({"reflectance": (("sample", "time", "band"), reflectance)}, coords=coords)
    ds["reflectance"].attrs["units"] = "surface reflectance (0-1)"
    ds.attrs["source"] = source
    return ds


def select_bands(samples: xr.Dataset, bands: Sequence[str], *, where: str = "sample set") -> xr.Dataset:
    """The sample set restricted to ``bands`` (in that order); a missing band raises an error naming it."""
    require_bands(samples["band"].values.tolist(), bands, where=where)
    return samples.sel(band=list(bands))


def _rgb_to_hex(text: str) -> str:
    r, g, b = (int(v) for v in re.findall(r"\d+", text)[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def read_victoria(
    split: str = "train",
    *,
    start: str = VICTORIA_START,
    step_days: int = 5,
    folder: str | Path | None = None,
) -> xr.Dataset:
    """The Victoria (Australia) Sentinel-2 pixel series: 400 samples x 73 dates x 10 bands, 8 classes.

    ``split`` is ``"train"`` or ``"test"``. The source gives no dates: the series is placed on
    ``start + k * step_days`` (k = 0..72); change ``start`` if you know better. Column
    ``b{t*10 + band}`` holds band ``band`` (B2..B12 order of :data:`S2_BANDS`) at step ``t``,
    reflectance x 10000. ``folder`` overrides the data folder (default: :func:`cropmap.data.data_file`).
    """
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")

    def _path(name: str) -> Path:
        return Path(folder) / name if folder is not None else data_file(f"victoria_s2/{name}")

    table = pd.read_csv(_path(f"{split}_dataset.csv"))
    # "value,class,colour" where colour is "rgb(r, g, b)": split on the first two commas only
    rows = [line.split(",", 2) for line in _path("class_map.txt").read_text().splitlines()[1:] if line.strip()]
    value_cols = [c for c in table.columns if re.fullmatch(r"b\d+", c)]
    n_band = len(S2_BANDS)
    if len(value_cols) % n_band:
        raise ConfigError(f"Victoria table has {len(value_cols)} value columns, not a multiple of {n_band}")
    n_time = len(value_cols) // n_band
    ordered = [f"b{t * n_band + b}" for t in range(n_time) for b in range(n_band)]
    require_bands(table.columns, ordered, where=f"Victoria {split} table")
    values = table[ordered].to_numpy(np.float32).reshape(len(table), n_time, n_band) / np.float32(10000)
    times = pd.Timestamp(start) + pd.to_timedelta(np.arange(n_time) * step_days, unit="D")
    return make_sample_set(
        values,
        times=times,
        bands=S2_BANDS,
        labels=table["lc_id"].to_numpy(),
        class_names=[name.strip().lower() for _, name, _ in rows],
        class_colours=[_rgb_to_hex(colour) for _, _, colour in rows],
        region="AUS-VIC",
        source=f"victoria_s2/{split}_dataset.csv",
    )


def read_cropglobe(
    path: str | Path,
    *,
    year: int = 2021,
    scale: float = 1e-4,
    region: str | None = None,
) -> xr.Dataset:
    """A CropGlobe feature file as its authors publish it.

    ``path``: ``median_S2_{ISO3}_month1-12_day5.npz`` with arrays ``fea`` ``(N, 10, 73)`` (full-year
    5-day medians from Jan 1) or ``(N, 10, 43)`` (May 1 - Nov 30), and ``lbl`` ``(N,)`` indexing
    :data:`CROPGLOBE_CLASSES`. ``scale`` converts the stored values to reflectance 0..1; ``year``
    dates the bins; ``region`` defaults to the ISO3 code in the file name.
    """
    path = Path(path)
    with np.load(path) as npz:
        missing = {"fea", "lbl"} - set(npz.files)
        if missing:
            raise ConfigError(f"{path.name}: CropGlobe file lacks array(s) {sorted(missing)}")
        fea, lbl = npz["fea"], npz["lbl"]
    if fea.ndim != 3 or fea.shape[1] != len(S2_BANDS):
        raise ConfigError(f"{path.name}: fea must be (N, 10, time), got {fea.shape}")
    n_time = fea.shape[2]
    first = {73: f"{year}-01-01", 43: f"{year}-05-01"}.get(n_time)
    if first is None:
        raise ConfigError(f"{path.name}: expected 73 (full year) or 43 (May-Nov) time bins, got {n_time}")
    times = pd.Timestamp(first) + pd.to_timedelta(np.arange(n_time) * 5, unit="D")
    if region is None:
        match = re.search(r"median_S2_([A-Z]{3})_", path.name)
        region = match.group(1) if match else path.stem
    return make_sample_set(
        np.transpose(fea, (0, 2, 1)).astype(np.float32) * np.float32(scale),
        times=times,
        bands=S2_BANDS,
        labels=np.asarray(lbl).astype(np.int64),
        class_names=CROPGLOBE_CLASSES,
        region=region,
        source=str(path),
    )
