"""Class harmonisation between legends by a YAML mapping (``configs/legends/*.yaml``).

A legend file::

    name: victoria-crops
    classes: [cereals, oilseeds, legumes, other]        # the shared class list, in order
    colours: ["#f5d742", "#e8e83a", "#4fa34f", "#999999"]   # optional
    mapping:                                             # source class name -> shared name (null: drop)
      cereals: cereals
      canola: oilseeds
      water: null

Source names absent from ``mapping`` are dropped, unless ``keep_unmapped: true`` and the name is itself
a shared class. Names are compared case-insensitively.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from pydantic import BaseModel, ConfigDict, model_validator

from cropmap.errors import ConfigError

__all__ = ["Legend", "harmonise"]


class Legend(BaseModel):
    """A shared class list and the mapping of other legends' names onto it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = ""
    classes: list[str]
    colours: list[str] | None = None
    mapping: dict[str, str | None] = {}
    keep_unmapped: bool = True
    other: str | None = None  # every name neither mapped nor kept goes to this class ("everything else")

    @model_validator(mode="after")
    def _check(self) -> "Legend":
        if len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
            raise ValueError("classes must hold at least two distinct names")
        if self.colours is not None and len(self.colours) != len(self.classes):
            raise ValueError(f"{len(self.colours)} colours for {len(self.classes)} classes")
        unknown = {v for v in self.mapping.values() if v is not None} - set(self.classes)
        if unknown:
            raise ValueError(f"mapping targets {sorted(unknown)} are not among classes {self.classes}")
        if self.other is not None and self.other not in self.classes:
            raise ValueError(f"other: {self.other!r} is not among classes {self.classes}")
        return self

    def target_of(self, name: str) -> str | None:
        """The shared class of a source class name, or None when it is dropped.

        Order: an explicit ``mapping`` entry (``null`` drops), then the name itself when it is a class and
        ``keep_unmapped``, then ``other`` (everything else), else dropped.
        """
        lowered = {k.lower(): v for k, v in self.mapping.items()}
        if name.lower() in lowered:
            return lowered[name.lower()]
        if self.keep_unmapped and name in self.classes:
            return name
        return self.other


def harmonise(samples: xr.Dataset, legend: Legend) -> xr.Dataset:
    """The sample set relabelled onto ``legend.classes``; samples of dropped classes are removed.

    ``samples``: a sample set (:mod:`cropmap.samples.sets`) with ``label`` indexing ``class_name``.
    Raises :class:`ConfigError` if no sample survives.
    """
    names = [str(n) for n in samples["class_name"].values]
    lookup = np.array([legend.classes.index(t) if (t := legend.target_of(n)) is not None else -1 for n in names])
    new = lookup[samples["label"].values.astype(int)]
    keep = np.flatnonzero(new >= 0)
    if keep.size == 0:
        raise ConfigError(f"legend {legend.name!r} maps none of the classes {names}")
    out = samples.isel(sample=keep).drop_vars(["class_name", "class_colour"], errors="ignore")
    out = out.drop_dims("class", errors="ignore")
    out = out.assign_coords(label=("sample", new[keep].astype(np.int16)), class_name=("class", legend.classes))
    if legend.colours is not None:
        out = out.assign_coords(class_colour=("class", legend.colours))
    return out
