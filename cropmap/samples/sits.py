"""sits sample tibbles (R ``.rda`` files) as sample sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cropmap.core.bands import require_bands
from cropmap.errors import IncompatibleInputError, InvalidInputError
from cropmap.samples.sets import make_sample_set

__all__ = ["read_sits"]


def read_sits(path: str | Path, *, region: str = "BRA-MT") -> xr.Dataset:
    """A sits sample tibble (``.rda``) as a sample set; bands keep the sensor's names, upper-cased.

    ``samples_mt_9classes.rda``: 2115 MODIS series x 23 dates (16-day) x 6 bands (``MIR``, ``BLUE``,
    ``NIR``, ``RED``, ``EVI``, ``NDVI``; reflectances 0..1 and the two indices -1..1), 9 classes
    (sorted by name). The samples come from different seasons (2000s-2010s), all on the same MODIS
    day-of-year steps: ``time`` holds the dates of the most frequent season, coord ``start_date``
    ``(sample,)`` the real first date of each sample (its k-th value was observed
    ``time[k] - time[0]`` later, within a day across leap years).
    """
    import rdata  # only this reader needs it

    path = Path(path)
    # R data frames, tibbles and Dates kept as plain dicts/arrays: 10x faster than 2000 DataFrames
    keep = {cls: (lambda obj, attrs: obj) for cls in ("data.frame", "tbl_df", "tbl", "Date")}
    objects = rdata.conversion.convert(rdata.parser.parse_file(str(path)),
                                       constructor_dict={**rdata.conversion.DEFAULT_CLASS_MAP, **keep})
    tibbles = [v for v in objects.values() if isinstance(v, dict) and "time_series" in v]
    if len(tibbles) != 1:
        raise InvalidInputError(f"{path.name}: expected one sits sample tibble with a time_series column")
    tibble = {str(k): v for k, v in tibbles[0].items()}
    series = [{str(k): np.asarray(v) for k, v in s.items()} for s in tibble["time_series"]]
    columns = [c for c in series[0] if c != "Index"]
    lengths = {len(s["Index"]) for s in series}
    if len(lengths) != 1:
        raise IncompatibleInputError(f"{path.name}: series of different lengths {sorted(lengths)}")
    for s in series:
        require_bands(s, columns, where=f"{path.name} time_series")
    values = np.stack([np.stack([s[c] for c in columns], axis=-1) for s in series]).astype(np.float32)
    # R "Date": days since 1970-01-01
    days = np.stack([s["Index"] for s in series]).astype(np.int64)
    offsets = days - days[:, :1]
    reference = pd.Series(days[:, 0]).mode().iloc[0]
    ref_offsets = offsets[np.flatnonzero(days[:, 0] == reference)[0]]
    if np.abs(offsets - ref_offsets).max() > 1:
        raise IncompatibleInputError(f"{path.name}: samples are not on common time steps")
    epoch = np.datetime64("1970-01-01", "D")
    names = np.asarray(tibble["label"]).astype(str)
    class_names = sorted(set(names))
    index = {n: i for i, n in enumerate(class_names)}
    ds = make_sample_set(
        values,
        times=(epoch + reference + ref_offsets).astype("datetime64[ns]"),
        bands=[c.upper() for c in columns],
        labels=np.array([index[n] for n in names]),
        class_names=class_names,
        region=region,
        lat=np.asarray(tibble["latitude"], dtype=float),
        lon=np.asarray(tibble["longitude"], dtype=float),
        source=str(path),
    )
    ds["reflectance"].attrs["units"] = "reflectance 0-1 (indices EVI/NDVI -1..1)"
    return ds.assign_coords(start_date=("sample", (epoch + days[:, 0]).astype("datetime64[ns]")))

