"""A prediction's cube, checked before any pixel is read: the store (:func:`open_cube`) and its fit to
the checkpoint (:func:`check_cube`).

Both read metadata only (the store's status and chunk list, the cube's dims, coords and attrs): nothing
is computed. :mod:`cropmap.jobs.tiles` runs them on every cube of a run before the first tile is
predicted; :func:`cropmap.stages.predict.write_tile_predictions` and
:func:`cropmap.stages.inference.infer_cube` run them again on their own cube.
"""

from __future__ import annotations

import xarray as xr

from cropmap.core.season import Season
from cropmap.errors import DataNotFoundError, IncompatibleInputError
from cropmap.io import storage
from cropmap.stages.cube import FINISHED, check_chunks, cube_status, open_tile_cube

__all__ = ["open_cube", "check_cube"]


def open_cube(path: storage.Location, *, stored: bool = False) -> xr.DataArray:
    """A tile cube store (folder or URL) as a lazy ``(time, band, y, x)`` DataArray:
    :func:`cropmap.stages.cube.open_tile_cube` (the layout is documented in :mod:`cropmap.stages.cube`), with a clear
    error when the store is missing, lacks a chunk (:func:`~cropmap.stages.cube.check_chunks`) or its
    status is not complete or empty (an ``incomplete`` cube, built without some asset, is refused).
    ``stored``: the values as stored, not decoded (:func:`~cropmap.stages.cube.open_tile_cube`)."""
    status, reason = cube_status(path)
    if status == "missing":
        raise DataNotFoundError(f"tile cube {path} not found; build it first (cropmap cube ...)")
    if status not in FINISHED:
        raise DataNotFoundError(f"tile cube {path} is {status} ({reason}); rebuild it (cropmap cube, or rerun "
                                "the flow) before predicting")
    check_chunks(path)
    return open_tile_cube(path, stored=stored)


def check_cube(checkpoint, cube: xr.DataArray, *, what: str) -> int:
    """Raise :class:`IncompatibleInputError` unless the cube's bands, season and bins fit the model; the
    cube's season may be the model's or its six-month offset in the other hemisphere, in any year.
    Returns that offset in months (0 or 6).

    Reads only metadata (dims, coords, attrs): nothing is computed.
    """
    missing = {"time", "band", "y", "x"} - set(cube.dims)
    if missing:
        raise IncompatibleInputError(f"{what}: cube lacks dim(s) {sorted(missing)}; expected (time, band, y, x)")
    if "filled_fraction" not in cube.coords:
        raise IncompatibleInputError(f"{what}: cube lacks the filled_fraction coordinate of median_composite")
    if not any(k.startswith("season_") for k in cube.attrs):
        raise IncompatibleInputError(f"{what}: cube has no season attributes (Season.to_attrs)")
    return checkpoint.check_compatible(
        bands=[str(b) for b in cube["band"].values],
        season=Season.from_attrs(cube.attrs),
        n_bins=cube.sizes["time"],
        what=what,
    )
