"""Splits of one sample set that do not leak: by field, by location or by spatial block.

Neighbouring pixels of one field (or the same point extracted twice, as WorldCereal files do across
surveys) are nearly the same series; a random pixel split puts them on both sides and measures memory,
not mapping. :func:`split_groups` gives every sample a group id and :func:`holdout_split` /
:func:`group_folds` keep each group whole on one side (scikit-learn's ``GroupShuffleSplit`` /
``GroupKFold`` on those ids). ``by="random"`` is the stratified pixel split, kept for comparison.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, train_test_split

from cropmap.errors import ConfigError

__all__ = ["SplitSpec", "split_groups", "holdout_split", "group_folds", "KM_PER_DEGREE"]

#: Kilometres per degree of latitude (mean Earth radius 6371.0088 km).
KM_PER_DEGREE = 6371.0088 * np.pi / 180.0


class SplitSpec(BaseModel):
    """How one sample set is cut into a training and a held-out part.

    ``by``: ``random`` (stratified by class, pixels independent), ``field`` (the sample coordinate
    ``column`` holds a field id), ``location`` (samples at the same lat/lon, rounded to ``decimals``,
    are one group) or ``block`` (square cells of ``block_km`` km on an equirectangular grid).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    by: Literal["random", "field", "location", "block"] = "block"
    test_fraction: float = Field(0.3, gt=0, lt=1)
    block_km: float = Field(10.0, gt=0)
    column: str = "field_id"
    decimals: int = Field(5, ge=0)  # location: 5 decimals ~ 1 m
    seed: int = 0

    def describe(self) -> str:
        """``block 10 km, 30 % held out, seed 0``: how a table names the split."""
        how = {"block": f"block {self.block_km:g} km", "field": f"field ({self.column})",
               "location": "location", "random": "random pixels"}[self.by]
        return f"{how}, {self.test_fraction:.0%} held out, seed {self.seed}"


def _lat_lon(samples: xr.Dataset, why: str) -> tuple[np.ndarray, np.ndarray]:
    lat, lon = samples["lat"].values.astype(float), samples["lon"].values.astype(float)
    bad = ~(np.isfinite(lat) & np.isfinite(lon))
    if bad.any():
        raise ConfigError(f"a {why} split needs lat/lon of every sample; {int(bad.sum())} of {len(lat)} have none")
    return lat, lon


def split_groups(samples: xr.Dataset, spec: SplitSpec) -> np.ndarray:
    """A group id per sample ``(sample,)`` int64: samples of one group must stay on one side.

    ``block``: x = lon * cos(lat) and y = lat in km (``KM_PER_DEGREE``), cell = (floor(x / block_km),
    floor(y / block_km)); adequate for blocks of a few to a few hundred km away from the poles.
    ``random``: every sample its own group.
    """
    n = samples.sizes["sample"]
    if spec.by == "random":
        return np.arange(n, dtype=np.int64)
    if spec.by == "field":
        if spec.column not in samples.coords:
            raise ConfigError(f"a field split needs a sample coordinate {spec.column!r}; the sample set has "
                              f"{', '.join(c for c in samples.coords if samples[c].dims == ('sample',))}")
        keys = samples[spec.column].values.astype(str)
    elif spec.by == "location":
        lat, lon = _lat_lon(samples, "location")
        keys = np.char.add(np.char.add(np.round(lat, spec.decimals).astype(str), ","),
                           np.round(lon, spec.decimals).astype(str))
    else:
        lat, lon = _lat_lon(samples, "block")
        y = lat * KM_PER_DEGREE
        x = lon * KM_PER_DEGREE * np.cos(np.radians(lat))
        cells = np.stack([np.floor(x / spec.block_km), np.floor(y / spec.block_km)], axis=1).astype(np.int64)
        keys = np.array([f"{a},{b}" for a, b in cells])
    _, groups = np.unique(keys, return_inverse=True)
    return groups.astype(np.int64)


def holdout_split(samples: xr.Dataset, spec: SplitSpec) -> tuple[np.ndarray, np.ndarray]:
    """Sorted sample indices (train, test); no group of :func:`split_groups` is on both sides.

    Grouped splits hold out about ``test_fraction`` of the GROUPS (so of the samples only on average);
    ``random`` is a class-stratified pixel split. Raises :class:`ConfigError` with fewer than two groups.
    """
    n = samples.sizes["sample"]
    index = np.arange(n)
    if spec.by == "random":
        labels = samples["label"].values
        counts = np.bincount(labels)
        strat = labels if counts[counts > 0].min() >= 2 else None
        train, test = train_test_split(index, test_size=spec.test_fraction, random_state=spec.seed, stratify=strat)
        return np.sort(train), np.sort(test)
    groups = split_groups(samples, spec)
    if len(np.unique(groups)) < 2:
        raise ConfigError(f"{spec.describe()}: all {n} samples fall in one group; choose a smaller block")
    splitter = GroupShuffleSplit(n_splits=1, test_size=spec.test_fraction, random_state=spec.seed)
    train, test = next(splitter.split(index, groups=groups))
    return np.sort(train), np.sort(test)


def group_folds(samples: xr.Dataset, spec: SplitSpec, n_folds: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_folds`` (train, test) index pairs of ``GroupKFold`` on :func:`split_groups`: every sample is
    tested once and no group is on both sides of a fold."""
    groups = split_groups(samples, spec)
    if len(np.unique(groups)) < n_folds:
        raise ConfigError(f"{spec.describe()}: {len(np.unique(groups))} groups, fewer than {n_folds} folds")
    index = np.arange(samples.sizes["sample"])
    return [(np.sort(a), np.sort(b)) for a, b in GroupKFold(n_splits=n_folds).split(index, groups=groups)]
