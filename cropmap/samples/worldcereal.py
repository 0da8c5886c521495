"""WorldCereal point extractions (parquet) as sample sets, and the WorldCereal legends.

:func:`read_worldcereal` reads the wide (``OPTICAL-B02-ts0-10m`` ...) and the long (one row per sample
and timestamp, ``S2-L2A-B02`` ...) layouts; labels go through the legends in ``worldcereal/legend/``
(:func:`worldcereal_legend`). The result is the sample-set structure of :mod:`cropmap.samples.sets`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

from cropmap.core.bands import S2_ORDER, require_bands
from cropmap.errors import ConfigError, IncompatibleInputError, InvalidInputError
from cropmap.io.data import data_file
from cropmap.samples.periods import Period, snap_to_periods
from cropmap.samples.sets import make_sample_set

__all__ = ["WORLDCEREAL_NODATA", "read_worldcereal", "worldcereal_bands", "worldcereal_legend"]

#: The no-data value of WorldCereal and openEO uint16 bands.
WORLDCEREAL_NODATA = 65535
_WIDE_COL = re.compile(r"^OPTICAL-(B\d{2}|B8A)-ts(\d+)-\d+m$")
_LONG_COL = re.compile(r"^S2-L2A-(B\d{2}|B8A)$")
_EWOC_COLUMNS = ("label_full", "sampling_label", "finetune_class", "LC_label",
                 "level_1", "level_2", "level_3", "level_4", "level_5")


# --------------------------------------------------------------------------- legends
@lru_cache(maxsize=16)
def worldcereal_legend(name: str = "label_full", *, folder: str | None = None) -> dict[int, str]:
    """WorldCereal ``ewoc_code`` (int, e.g. ``1101060000``) -> class name.

    ``name`` is a column of ``crop_type_class_mappings_ewoc.csv`` (``label_full``, ``sampling_label``,
    ``finetune_class``, ``LC_label``, ``level_1`` ... ``level_5``) or a mapping of
    ``class_mappings.json`` (``CROPTYPE24``, ``LANDCOVER10``, ...). ``folder`` overrides the legend
    folder (default ``worldcereal/legend`` under :func:`cropmap.io.data.data_dir`).
    """
    def _path(file: str) -> Path:
        return Path(folder) / file if folder else data_file(f"worldcereal/legend/{file}")

    if name in _EWOC_COLUMNS:
        # the file starts with a byte-order mark; codes are written "11-01-06-000-0"
        table = pd.read_csv(_path("crop_type_class_mappings_ewoc.csv"), sep=";", encoding="utf-8-sig",
                            dtype=str, keep_default_na=False)
        codes = table["ewoc_code"].str.replace("-", "", regex=False).astype(np.int64)
        return {int(c): n for c, n in zip(codes, table[name]) if n}
    mappings = json.loads(_path("class_mappings.json").read_text())
    if name not in mappings:
        raise ConfigError(f"unknown WorldCereal legend {name!r}; use one of "
                          f"{', '.join((*_EWOC_COLUMNS, *mappings))}")
    return {int(code): label for code, label in mappings[name].items()}


@lru_cache(maxsize=2)
def _legacy_croptypes(folder: str | None = None) -> tuple[dict[int, int], dict[int, str]]:
    """Legacy ``CROPTYPE_LABEL`` (e.g. 1200) -> ``ewoc_code``, and ewoc code -> the legacy name.

    From ``wc2eurocrops_map_legacy_croptype_codes.csv``. The names (``"Permanent grass crops"`` ->
    ``permanent_grass_crops``) stand in for the few codes the ewoc legend lacks (13-00-00-000-0).
    """
    file = "wc2eurocrops_map_legacy_croptype_codes.csv"
    path = Path(folder) / file if folder else data_file(f"worldcereal/legend/{file}")
    table = pd.read_csv(path, dtype=str)
    codes = table["ewoc_code"].str.replace("-", "", regex=False).astype(np.int64).tolist()
    names = table["name"].str.strip().str.lower().str.replace(r"[^a-z0-9]+", "_", regex=True).str.strip("_")
    return (dict(zip(table["croptype"].astype(np.int64).tolist(), codes)),
            dict(zip(reversed(codes), reversed(names.tolist()))))


def _class_table(codes: np.ndarray, legend: dict[int, str]) -> tuple[np.ndarray, list[str]]:
    """Labels indexing the class names present, ordered by their smallest ewoc code."""
    names = np.array([legend.get(int(c), "unknown") for c in codes], dtype=object)
    first_code: dict[str, int] = {}
    for code, name in zip(codes.tolist(), names):
        first_code[name] = min(first_code.get(name, code), code)
    class_names = sorted(first_code, key=lambda n: (first_code[n], n))
    index = {n: i for i, n in enumerate(class_names)}
    return np.array([index[n] for n in names], dtype=np.int64), class_names


# --------------------------------------------------------------------------- WorldCereal
def _region_from_ref_id(ref_id: pd.Series) -> np.ndarray:
    # "2017_UGA_WFP-field-survey_POLY_111" -> "UGA"; the token is kept as written ("AF", "BE")
    return ref_id.astype(str).str.split("_").str[1].fillna("").to_numpy(dtype=object)


def _dekad(ts: pd.Timestamp) -> int:
    """Dekad number since year 0 (dekads start on days 1, 11 and 21 of each month)."""
    return (ts.year * 12 + ts.month - 1) * 3 + min((ts.day - 1) // 10, 2)


def _step_grid(anchor: pd.Timestamp, n: int, cadence: str, *, last: bool) -> pd.DatetimeIndex:
    """``n`` step dates of a month or dekad grid; ``anchor`` is the last step (``last``) or the first."""
    back = n - 1 if last else 0
    if cadence == "dekad":
        k = _dekad(anchor) - back + np.arange(n)
    else:  # month starts: every third dekad
        k = 3 * (anchor.year * 12 + anchor.month - 1 - back + np.arange(n))
    months = k // 3
    return pd.DatetimeIndex(pd.to_datetime(
        {"year": months // 12, "month": months % 12 + 1, "day": (k % 3) * 10 + 1}))


def _wide_times(table: pd.DataFrame, n_time: int, cadence: str, period: Period) -> pd.DatetimeIndex:
    if "start_date" not in table:
        raise InvalidInputError("a wide WorldCereal table needs a start_date column to date its time steps")
    # start/end dates are period starts too, and may be stored shifted by a time zone like timestamps
    snap = "dekad" if period == "auto" else period  # one date has no spacing to tell month from dekad
    starts = pd.DatetimeIndex(pd.to_datetime(table["start_date"]).unique())
    starts = snap_to_periods(starts, snap, where="start_date")[0].unique()
    ends = pd.DatetimeIndex(pd.to_datetime(table["end_date"]).unique()) if "end_date" in table else starts[:0]
    ends = snap_to_periods(ends, snap, where="end_date")[0].unique()
    if len(starts) != 1 or len(ends) > 1:
        raise IncompatibleInputError(
            f"rows have {len(starts)} start_date and {len(ends)} end_date values; a sample set shares "
            "one time axis: read each group separately (filter the table first)")
    if cadence not in ("auto", "month", "dekad"):
        raise ConfigError(f"cadence must be 'auto', 'month' or 'dekad', got {cadence!r}")
    start = pd.Timestamp(starts[0])
    if not len(ends):  # no end_date: step k is start + k steps
        if cadence == "auto":
            raise InvalidInputError("no end_date column to tell the time step: pass cadence='month' or 'dekad'")
        return _step_grid(start, n_time, cadence, last=False)
    # The last step is end_date. The window starts at start_date, usually step 0; the dekadal
    # prometheo file carries one empty step before it (its ts0 is no data in every band and meteo).
    end = pd.Timestamp(ends[0])
    for option in ("month", "dekad") if cadence == "auto" else (cadence,):
        if option == "month" and end.day != 1:
            continue
        grid = _step_grid(end, n_time, option, last=True)
        if start in grid:
            return grid
    raise InvalidInputError(f"{n_time} steps ending {end.date()} do not reach start_date {start.date()} on a "
                      f"{'month or dekad' if cadence == 'auto' else cadence} grid: pass cadence=")


def _read_wide(table: pd.DataFrame, cadence: str, period: Period) -> tuple[np.ndarray, pd.DatetimeIndex, list[str], pd.DataFrame]:
    cols: dict[tuple[str, int], str] = {}
    for col in table.columns:
        if m := _WIDE_COL.match(col):
            cols[(m.group(1), int(m.group(2)))] = col
    bands = [b for b in S2_ORDER if any(k[0] == b for k in cols)]
    n_time = max(t for _, t in cols) + 1
    needed = [f"{b}@ts{t}" for b in bands for t in range(n_time)]
    require_bands([f"{b}@ts{t}" for b, t in cols], needed, where="WorldCereal wide table (band@timestep)")
    raw = np.stack([table[[cols[(b, t)] for b in bands]].to_numpy() for t in range(n_time)], axis=1)
    return raw, _wide_times(table, n_time, cadence, period), bands, table


def _read_long(table: pd.DataFrame, period: Period) -> tuple[np.ndarray, pd.DatetimeIndex, list[str], pd.DataFrame]:
    band_cols = {m.group(1): c for c in table.columns if (m := _LONG_COL.match(c))}
    bands = [b for b in S2_ORDER if b in band_cols]
    stamps = pd.DatetimeIndex(pd.to_datetime(table["timestamp"]))
    table = table.assign(timestamp=snap_to_periods(stamps, period, where="timestamp")[0])
    times = pd.DatetimeIndex(np.sort(table["timestamp"].unique()))
    samples = pd.Index(table["sample_id"].unique())
    if table.duplicated(["sample_id", "timestamp"]).any():
        raise InvalidInputError("long WorldCereal table has several rows for one sample and timestamp")
    raw = np.full((len(samples), len(times), len(bands)), WORLDCEREAL_NODATA, dtype=np.float64)
    i = samples.get_indexer(table["sample_id"])
    t = times.get_indexer(table["timestamp"])
    raw[i, t] = table[[band_cols[b] for b in bands]].to_numpy(np.float64)
    # first row of each sample, in the order of ``samples`` (unique() keeps first appearance too)
    per_sample = table.drop_duplicates("sample_id").reset_index(drop=True)
    return raw, times, bands, per_sample


def worldcereal_bands(path: str | Path) -> list[str]:
    """The S2 bands a WorldCereal extraction holds (wide or long), canonical order, from the parquet
    header alone (no row is read)."""
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    found = {m.group(1) for c in names if (m := _WIDE_COL.match(c) or _LONG_COL.match(c))}
    return [b for b in S2_ORDER if b in found]


def read_worldcereal(
    path: str | Path,
    *,
    layout: Literal["auto", "wide", "long"] = "auto",
    bands: Sequence[str] | None = None,
    legend: str = "label_full",
    cadence: Literal["auto", "month", "dekad"] = "auto",
    scale: float = 1e-4,
    region: str | None = None,
    legend_folder: str | Path | None = None,
    period: Period = "auto",
) -> xr.Dataset:
    """A WorldCereal point extraction (parquet) as a sample set.

    Layouts (``layout="auto"`` tells them apart by their columns):

    - **wide**: one row per sample, columns ``OPTICAL-{band}-ts{k}-{res}m``; step ``k`` is dated
      ``start_date`` + k months or dekads (``cadence``; ``"auto"`` matches ``end_date``).
    - **long**: one row per sample and ``timestamp``, columns ``S2-L2A-{band}``.

    Values are reflectance x 10000 (``scale`` converts them), 65535 = no data -> NaN. ``bands``
    (default: every S2 band in the file, in canonical order) missing from the file raise
    :class:`~cropmap.errors.MissingBandError` naming them. Labels: the row's ``ewoc_code`` (or, in
    the legacy prometheo files, ``CROPTYPE_LABEL`` translated through
    ``wc2eurocrops_map_legacy_croptype_codes.csv``) mapped to names with
    :func:`worldcereal_legend` ``(legend)``; codes the legend lacks become ``"unknown"``; classes are
    ordered by ewoc code. ``region`` is the country token of ``ref_id`` as written (``UGA``, ``SSD``,
    ``BEL``; ``AF`` for the pan-African One Acre Fund points, ``BE`` in the prometheo files) unless
    ``region`` overrides it. Extra coords: ``sample`` (``sample_id``), ``ewoc_code``.

    Dates are period starts (:func:`cropmap.samples.periods.snap_to_periods`): timestamps stored as local
    midnight in UTC (``2017-04-30 22:00`` for May) are moved to the nearest month or dekad start, with a
    warning; ``period`` declares the cadence (``"month"``, ``"dekad"``) or keeps the dates (``"none"``).
    """
    path = Path(path)
    table = pd.read_parquet(path)
    is_long = "timestamp" in table.columns and any(_LONG_COL.match(c) for c in table.columns)
    is_wide = any(_WIDE_COL.match(c) for c in table.columns)
    if layout == "auto":
        if not (is_long or is_wide):
            raise InvalidInputError(f"{path.name}: neither OPTICAL-Bxx-tsK-... (wide) nor timestamp + S2-L2A-Bxx "
                              "(long) columns: not a WorldCereal extraction")
        layout = "long" if is_long else "wide"
    if layout == "wide":
        raw, times, found, per_sample = _read_wide(table, cadence, period)
    elif layout == "long":
        raw, times, found, per_sample = _read_long(table, period)
    else:
        raise ConfigError(f"layout must be 'auto', 'wide' or 'long', got {layout!r}")
    wanted = list(bands) if bands is not None else found
    require_bands(found, wanted, where=f"{path.name}")
    raw = raw[:, :, [found.index(b) for b in wanted]]
    values = np.where(raw == WORLDCEREAL_NODATA, np.nan, raw).astype(np.float32) * np.float32(scale)

    folder = str(legend_folder) if legend_folder is not None else None
    if "ewoc_code" in per_sample:
        codes = per_sample["ewoc_code"].to_numpy(np.int64)
    elif "CROPTYPE_LABEL" in per_sample:
        to_ewoc, fallback_names = _legacy_croptypes(folder)
        codes = np.array([to_ewoc.get(int(c), 0) for c in per_sample["CROPTYPE_LABEL"]], dtype=np.int64)
    else:
        raise InvalidInputError(f"{path.name}: no ewoc_code or CROPTYPE_LABEL column to take labels from")
    names = worldcereal_legend(legend, folder=folder)
    if "ewoc_code" not in per_sample:
        names = {**fallback_names, **names}
    labels, class_names = _class_table(codes, names)
    ds = make_sample_set(
        values,
        times=times,
        bands=wanted,
        labels=labels,
        class_names=class_names,
        region=region if region is not None else _region_from_ref_id(per_sample["ref_id"]).tolist(),
        lat=per_sample["lat"].to_numpy(float) if "lat" in per_sample else None,
        lon=per_sample["lon"].to_numpy(float) if "lon" in per_sample else None,
        source=str(path),
    )
    if "sample_id" in per_sample:
        ds = ds.assign_coords(sample=per_sample["sample_id"].astype(str).to_numpy())
    ds.attrs["layout"] = layout
    return ds.assign_coords(ewoc_code=("sample", codes))

