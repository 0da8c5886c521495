"""A sample set of dated observations composited onto a season: what training reads.

:func:`season_sample_set` takes any sample set (:mod:`cropmap.samples.sets`: real dates, 0..1
reflectance), keeps the bands asked for, optionally moves its dates (a southern series taken six months
earlier for a northern window, the paper's offset), and composites it onto the season's bins with the
one compositing function cubes use (:func:`cropmap.core.composite.median_composite`). The result has the
layout of a sample set drawn from tile cubes (``reflectance (sample, time=bins, band)`` with the season
attributes), so :func:`cropmap.jobs.training.train_checkpoint` trains a checkpoint of exactly that
season and those bands from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from cropmap.core.composite import median_composite
from cropmap.core.season import Season
from cropmap.errors import IncompatibleInputError
from cropmap.samples.sets import select_bands

__all__ = ["season_sample_set"]


def season_sample_set(samples: xr.Dataset, season: Season, year: int, *, bands: Sequence[str] | None = None,
                      shift_days: int = 0, max_filled_fraction: float = 1.0) -> xr.Dataset:
    """``samples`` composited onto ``season`` of season year ``year``: ``reflectance`` ``(sample, time, band)``
    on the season's bins, ``filled_fraction`` per sample, the season attributes and ``season_year``.

    ``bands``: the bands kept, in that order (default: all); ``shift_days``: added to every date first;
    ``max_filled_fraction``: samples with more interpolated bins than this are left out (as predict
    leaves such pixels unmapped). Raises :class:`IncompatibleInputError` when no sample has an
    observation in the window (the dates or the shift do not fit the season)."""
    if bands is not None:
        samples = select_bands(samples, bands)
    times = samples["time"].values + np.timedelta64(int(shift_days), "D")
    samples = samples.assign_coords(time=times)
    comp = median_composite(samples["reflectance"], season, year)
    filled = comp["filled_fraction"].values
    keep = filled <= max_filled_fraction
    if not keep.any():
        first, last = season.window(year)
        raise IncompatibleInputError(
            f"no sample has observations in {first}..{last} within max_filled_fraction {max_filled_fraction}: "
            f"the samples' dates (shifted {shift_days} d) run {str(times.min())[:10]}..{str(times.max())[:10]}")
    out = samples.drop_vars("reflectance").drop_dims("time")
    out = out.assign(reflectance=comp.drop_vars("filled_fraction").transpose("sample", "time", "band"),
                     filled_fraction=("sample", filled.astype(np.float32)))
    out = out.isel(sample=np.flatnonzero(keep))
    attrs = {**season.to_attrs(), "season_year": int(year), "date_shift_days": int(shift_days)}
    out["reflectance"].attrs.update({"units": "surface reflectance (0-1)", **attrs})
    out.attrs.update(attrs)
    return out
