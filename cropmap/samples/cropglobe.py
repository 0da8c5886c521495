"""CropGlobe feature files (the paper's data set, ``median_S2_{ISO3}_month1-12_day5.npz``) as sample sets."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cropmap.core.bands import S2_BANDS
from cropmap.errors import InvalidInputError
from cropmap.samples.sets import make_sample_set

__all__ = ["read_cropglobe", "CROPGLOBE_CLASSES"]

#: Class order of the CropGlobe ``lbl`` arrays.
CROPGLOBE_CLASSES: tuple[str, ...] = ("corn", "soybeans", "rice", "wheat", "sugarcane", "cotton", "other")


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
            raise InvalidInputError(f"{path.name}: CropGlobe file lacks array(s) {sorted(missing)}")
        fea, lbl = npz["fea"], npz["lbl"]
    if fea.ndim != 3 or fea.shape[1] != len(S2_BANDS):
        raise InvalidInputError(f"{path.name}: fea must be (N, 10, time), got {fea.shape}")
    n_time = fea.shape[2]
    first = {73: f"{year}-01-01", 43: f"{year}-05-01"}.get(n_time)
    if first is None:
        raise InvalidInputError(f"{path.name}: expected 73 (full year) or 43 (May-Nov) time bins, got {n_time}")
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
