"""Vector labels checked against a run's plan before any tile is cubed, and the tiles they need.

Cubing a country's tiles takes hours; a label file that cannot train the run must fail before that, in
one line. :func:`check_vector_labels` reads the file once (geometry, the label column, any date columns)
and checks, in this order:

1. the label column exists (the error lists the columns there);
2. the legend knows every code of the labels on the country's tiles
   (:func:`cropmap.samples.reference_labels.label_targets`);
3. the tiles: only those under the footprints of the labels the legend keeps (parcels or points, any
   CRS: :func:`cropmap.core.grid.tiles_meeting`), not under their bounding box; the labels on none of
   the country's tiles are counted;
4. the labels' season years, where the file carries dates: typed Date/DateTime fields, text columns
   named ``*date*`` holding ISO 8601 dates (WorldCereal's ``valid_date``, openEO GFMap's
   ``start_date``/``end_date``), integer ``year`` columns. A feature's date is the middle of its dates;
   its season year is that of the season window (its hemisphere's) holding that date; a date between
   two windows may belong to either (a winter crop seen in January is harvested in the next season, a
   late survey reports the last one), so it is ``"2022/2023"`` and either year fits. A file without
   dates claims nothing.

The caller (:func:`cropmap.jobs.labels.check_training_labels`) compares those years with the run's.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
import shapely
from pyproj import Transformer

from cropmap.core.grid import Tile, feature_tile_pairs
from cropmap.core.harmonise import Legend
from cropmap.core.season import Season
from cropmap.samples.reference_labels import label_targets, read_label_vectors

__all__ = ["LabelCheck", "date_columns", "season_years_of", "check_vector_labels"]

_DATE_NAME = re.compile(r"date", re.IGNORECASE)
_YEAR_NAME = re.compile(r"^(year|yr|season_?year|campaign|annee|jahr|anno|jaar)$|_year$", re.IGNORECASE)
_YEARS = (1950, 2100)  # integers outside these are not years (codes, counts)


@dataclass(frozen=True)
class LabelCheck:
    """What :func:`check_vector_labels` found: the tiles under the kept labels, how many labels were kept
    (``n_used``: on the tiles) and left (``n_outside``: on none of them; ``n_dropped``: no geometry, no
    label, or dropped by the legend), and the used labels' season years (empty: the file has no dates)."""

    source: str
    tiles: list[Tile]
    n_features: int
    n_used: int
    n_outside: int
    n_dropped: int
    season_years: dict[str, int] = field(default_factory=dict)  # "2021" or "2022/2023" -> labels
    date_columns: tuple[str, ...] = ()


def _field_types(path: Path) -> dict[str, str]:
    """Column name -> ``"date"``, ``"int"``, ``"text"`` or ``"other"``, from the file's schema alone."""
    if path.suffix.lower() in (".parquet", ".geoparquet"):
        def kind(t: pa.DataType) -> str:
            return ("date" if pa.types.is_timestamp(t) or pa.types.is_date(t) else "int" if pa.types.is_integer(t)
                    else "text" if pa.types.is_string(t) or pa.types.is_large_string(t) else "other")
        return {f.name: kind(f.type) for f in pq.read_schema(path)}
    info = pyogrio.read_info(path)
    return {str(n): ("date" if str(d).startswith("datetime64") else "int" if str(d).startswith("int")
                     else "text" if d == "object" else "other") for n, d in zip(info["fields"], info["dtypes"])}


def date_columns(path: str | Path) -> tuple[list[str], list[str]]:
    """``(date columns, year columns)`` of a vector label file, by type and name (module docstring)."""
    types = _field_types(Path(path))
    dates = [n for n, k in types.items() if k == "date" or (k == "text" and _DATE_NAME.search(n))]
    years = [n for n, k in types.items() if k in ("int", "text") and _YEAR_NAME.search(n) and n not in dates]
    return dates, years


def _as_days(values: np.ndarray) -> np.ndarray:
    """``datetime64[D]`` of a column's values (NaT where a value is not an ISO 8601 date)."""
    if np.issubdtype(np.asarray(values).dtype, np.datetime64):
        return np.asarray(values).astype("datetime64[D]")
    text = pd.Series(values, dtype=object).astype("string").str.strip()
    parsed = pd.to_datetime(text, errors="coerce", format="ISO8601", utc=True)
    return parsed.dt.tz_localize(None).to_numpy().astype("datetime64[D]")


def _as_years(values: np.ndarray) -> np.ndarray:
    """Float years of a column's values (NaN where a value is not a plausible year)."""
    years = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(float)
    return np.where((years >= _YEARS[0]) & (years <= _YEARS[1]) & (years == np.floor(years)), years, np.nan)


def season_years_of(day: dt.date, season: Season) -> tuple[int, ...]:
    """The season year whose window of ``season`` holds ``day``; for a day between two windows, the years
    of both (the one before and the one after)."""
    years = [y for y in (day.year - 1, day.year) if season.window(y)[0] <= day <= season.window(y)[1]]
    if years:
        return (years[-1],)
    before = max(y for y in (day.year - 2, day.year - 1, day.year) if season.window(y)[1] < day)
    return before, before + 1


def _season_years(extra: dict[str, np.ndarray], dates: list[str], years: list[str], lat: np.ndarray,
                  season_for: Callable[[str], Season]) -> np.ndarray:
    """Each feature's season year(s) as text ("2021", "2022/2023"; None without a date): from the middle of
    its dates, else from a year column."""
    out = np.full(len(lat), None, dtype=object)
    if dates:
        stacked = np.stack([_as_days(extra[c]) for c in dates])
        days = np.where(np.isnat(stacked), np.nan, stacked.astype("int64").astype(float))  # days since 1970
        valid = ~np.isnan(days).all(axis=0)
        middle = np.full(len(lat), np.nan)
        middle[valid] = (np.nanmin(days[:, valid], axis=0) + np.nanmax(days[:, valid], axis=0)) / 2
        epoch = dt.date(1970, 1, 1)
        memo: dict[tuple[int, str], str] = {}  # dates repeat: each (day, hemisphere) is solved once
        for i in np.flatnonzero(valid):
            key = (int(middle[i] // 1), "north" if lat[i] >= 0 else "south")
            if key not in memo:
                found = season_years_of(epoch + dt.timedelta(days=key[0]), season_for(key[1]))
                memo[key] = "/".join(str(y) for y in found)
            out[i] = memo[key]
    for c in years:  # a year column is the season year as given
        given = _as_years(extra[c])
        for i in np.flatnonzero((out == None) & ~np.isnan(given)):  # noqa: E711 - elementwise
            out[i] = str(int(given[i]))
    return out


def check_vector_labels(path: str | Path, *, column: str, legend: Legend, tiles: Sequence[Tile],
                        season_for: Callable[[str], Season]) -> LabelCheck:
    """Check vector labels against a run and find the ``tiles`` (the run's) under them (module docstring).
    ``season_for(hemisphere)``: the run's season there. Raises :class:`~cropmap.errors.InvalidInputError`
    for a missing column or unknown codes; no tile under the labels is an empty ``tiles``, for the caller
    to word."""
    dates, years = date_columns(path)
    vectors = read_label_vectors(path, column, extra=[*dates, *years])
    dates, years = [c for c in dates if c in vectors.extra], [c for c in years if c in vectors.extra]
    geometry, values = vectors.geometry, vectors.values
    keep = ~shapely.is_missing(geometry) & ~shapely.is_empty(geometry) & ~pd.isna(values)
    # the codes are checked on the labels on the country's tiles: those elsewhere never reach training
    tiles = list(tiles)
    feature, tile = feature_tile_pairs(np.where(keep, geometry, None), vectors.crs, tiles)
    on_tiles = np.unique(feature)
    n_met = on_tiles.size
    if on_tiles.size:
        _, targets = label_targets(values[on_tiles], legend, column=column, name=Path(path).name)
        on_tiles = on_tiles[np.array([t is not None for t in targets], dtype=bool)]
    # the tiles under the labels the legend keeps (a dropped class needs no cube)
    used_tiles = [tiles[i] for i in np.unique(tile[np.isin(feature, on_tiles)])]
    found: dict[str, int] = {}
    if on_tiles.size and (dates or years):
        centroids = shapely.centroid(geometry[on_tiles])
        _, lat = Transformer.from_crs(vectors.crs, "EPSG:4326", always_xy=True).transform(
            shapely.get_x(centroids), shapely.get_y(centroids))
        extra = {c: v[on_tiles] for c, v in vectors.extra.items()}
        per_label = _season_years(extra, dates, years, np.asarray(lat, float), season_for)
        found = dict(sorted(Counter(y for y in per_label if y is not None).items()))
    n_outside = int(keep.sum() - n_met)
    return LabelCheck(str(path), used_tiles, len(values), int(on_tiles.size), n_outside,
                      len(values) - n_outside - int(on_tiles.size), found, tuple([*dates, *years] if found else ()))
