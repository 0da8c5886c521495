"""Sample sets by name: a :class:`SampleSource` (a reader, its file, a split or region, the season year)
and :func:`read_sample_set`, the one entry point experiments (and other callers) read samples through."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import xarray as xr
from pydantic import BaseModel, ConfigDict

from cropmap.errors import ConfigError
from cropmap.io.data import data_dir
from cropmap.samples.cropglobe import read_cropglobe
from cropmap.samples.sets import select_bands
from cropmap.samples.victoria import read_victoria
from cropmap.samples.worldcereal import read_worldcereal

__all__ = ["SampleSource", "read_sample_set"]


class SampleSource(BaseModel):
    """Where a sample set comes from: a reader and its arguments, optionally one region of the file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reader: Literal["victoria", "cropglobe", "worldcereal"]
    split: str | None = None  # victoria: train / test
    path: str | None = None  # cropglobe / worldcereal file (relative paths: the data folder)
    region: str | None = None  # keep only samples of this region (e.g. UGA)
    year: int  # the season year the samples are composited for
    hemisphere: Literal["north", "south"] | None = None  # default: the config season's



def read_sample_set(spec: SampleSource, *, bands: list[str]) -> xr.Dataset:
    """The sample set named by ``spec``, restricted to ``bands``."""
    path = None if spec.path is None else (Path(spec.path) if Path(spec.path).is_absolute() else data_dir() / spec.path)
    if spec.reader == "victoria":
        ds = read_victoria(spec.split or "train")
    elif spec.reader == "cropglobe":
        ds = read_cropglobe(path, year=spec.year)
    else:
        ds = read_worldcereal(path)
    if spec.region is not None:
        ds = ds.isel(sample=np.flatnonzero(ds["region"].values == spec.region))
        if ds.sizes["sample"] == 0:
            raise ConfigError(f"{spec.reader} {spec.path or spec.split}: no sample of region {spec.region!r}")
    return select_bands(ds, bands, where=f"{spec.reader} samples")
