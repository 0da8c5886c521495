"""Sample sets by name or path: a :class:`SampleSource` (a reader, its file, a split or regions, the season
year), :func:`read_sample_set`, the one entry point experiments (and other callers) read samples
through, :func:`read_sample_file` (any sample file, its reader told by the file's suffix) and
:func:`source_bands` (the bands a file holds, read from its header where the format allows)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import xarray as xr
from pydantic import BaseModel, ConfigDict, field_validator

from cropmap.core.bands import S2_BANDS, S2_ORDER
from cropmap.errors import ConfigError
from cropmap.io.data import data_dir
from cropmap.samples.cropglobe import read_cropglobe
from cropmap.samples.sets import select_bands
from cropmap.samples.sits import read_sits
from cropmap.samples.victoria import read_victoria
from cropmap.samples.worldcereal import read_worldcereal, worldcereal_bands

__all__ = ["in_season_year", "SampleSource", "read_sample_set", "read_sample_file", "reader_for", "source_bands", "resolve_path"]

Reader = Literal["victoria", "cropglobe", "worldcereal", "sits"]
_BY_SUFFIX: dict[str, Reader] = {".parquet": "worldcereal", ".npz": "cropglobe", ".rda": "sits", ".csv": "victoria"}


class SampleSource(BaseModel):
    """Where a sample set comes from: a reader and its arguments, optionally some regions of the file.

    ``reader`` defaults to the one the ``path`` suffix names (``.parquet`` WorldCereal, ``.npz``
    CropGlobe, ``.rda`` sits, ``.csv`` a Victoria-format table). ``region`` is one region or a list.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    reader: Reader | None = None
    split: str | None = None  # victoria: train / test
    path: str | None = None  # any reader's file (relative paths: the data folder)
    region: list[str] | None = None  # keep only samples of these regions (e.g. [UGA])
    year: int  # the season year the samples are composited for
    hemisphere: Literal["north", "south"] | None = None  # default: the config season's
    # keep only the samples observed in this season year (sets of several seasons re-dated onto one time
    # axis, such as sits tibbles: their ``start_date`` gives each sample's own year)
    season_year: int | None = None

    @field_validator("region", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, str) else value

    @property
    def kind(self) -> Reader:
        """The reader: the declared one, else the path suffix's."""
        if self.reader is not None:
            return self.reader
        if self.path is None:
            raise ConfigError("a sample source needs a reader or a path")
        return reader_for(self.path)

    def describe(self) -> str:
        """A short name for messages: ``worldcereal test_public_extractions.parquet [UGA]``."""
        what = Path(self.path).name if self.path else (self.split or "train")
        return (f"{self.kind} {what}" + (f" [{', '.join(self.region)}]" if self.region else "")
                + (f" (season {self.season_year})" if self.season_year is not None else ""))


def reader_for(path: str | Path) -> Reader:
    """The reader of a sample file by its suffix; an unknown suffix raises a one-line error."""
    suffix = Path(path).suffix.lower()
    if suffix not in _BY_SUFFIX:
        raise ConfigError(f"{Path(path).name}: no sample reader for {suffix or 'no suffix'!r} files; "
                          f"known: {', '.join(f'{s} ({r})' for s, r in _BY_SUFFIX.items())}")
    return _BY_SUFFIX[suffix]


def resolve_path(path: str | Path) -> Path:
    """An absolute path as given; a relative one is tried as given, then under the data folder."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return data_dir() / path


def read_sample_file(path: str | Path, *, reader: Reader | None = None, year: int | None = None) -> xr.Dataset:
    """Any sample file as a sample set (all its bands); ``reader`` defaults to the suffix's."""
    path = resolve_path(path)
    if not path.exists():
        raise ConfigError(f"sample file {path} not found")
    kind = reader or reader_for(path)
    if kind == "victoria":
        return read_victoria(path=path)
    if kind == "cropglobe":
        return read_cropglobe(path, **({} if year is None else {"year": year}))
    if kind == "sits":
        return read_sits(path)
    return read_worldcereal(path)


def _read_all(spec: SampleSource) -> xr.Dataset:
    if spec.kind == "victoria" and spec.path is None:
        return read_victoria(spec.split or "train")
    if spec.path is None:
        raise ConfigError(f"a {spec.kind} sample source needs a path")
    return read_sample_file(spec.path, reader=spec.kind, year=spec.year)


def source_bands(spec: SampleSource) -> list[str]:
    """The bands the source's file holds, canonical order (WorldCereal: from the parquet header only)."""
    kind = spec.kind
    if kind in ("victoria", "cropglobe"):
        return list(S2_BANDS)
    if kind == "worldcereal":
        path = resolve_path(spec.path or "")
        if not path.exists():
            raise ConfigError(f"sample file {path} not found")
        return worldcereal_bands(path)
    bands = [str(b) for b in _read_all(spec)["band"].values]
    return [b for b in S2_ORDER if b in bands] + [b for b in bands if b not in S2_ORDER]


def read_sample_set(spec: SampleSource, *, bands: list[str]) -> xr.Dataset:
    """The sample set named by ``spec``, restricted to ``bands`` (and to its regions and season year)."""
    ds = _read_all(spec)
    if spec.region is not None:
        ds = ds.isel(sample=np.flatnonzero(np.isin(ds["region"].values, spec.region)))
        if ds.sizes["sample"] == 0:
            raise ConfigError(f"{spec.describe()}: no sample of region(s) {', '.join(spec.region)}")
    if spec.season_year is not None:
        ds = in_season_year(ds, spec.season_year, where=spec.describe())
    return select_bands(ds, bands, where=spec.describe())


def in_season_year(ds: xr.Dataset, year: int, *, where: str) -> xr.Dataset:
    """The samples of ``ds`` whose own series starts in ``year`` (coord ``start_date``, one per sample).

    A set without per-sample dates holds one season only: asking for a year of it is an error, as is a
    year no sample has (the message lists the years there are)."""
    if "start_date" not in ds.coords or ds["start_date"].dims != ("sample",):
        raise ConfigError(f"{where}: season_year needs per-sample start dates (a sits set); this set holds one season")
    years = ds["start_date"].values.astype("datetime64[Y]").astype(int) + 1970
    keep = np.flatnonzero(years == year)
    if keep.size == 0:
        raise ConfigError(f"{where}: no sample of season {year}; the set has {sorted(set(years.tolist()))}")
    return ds.isel(sample=keep)
