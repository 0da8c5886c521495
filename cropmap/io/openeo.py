"""openEO netCDF cubes (``t, y, x`` variables ``S2-L2A-B04`` ...) as ``(time, band, y, x)`` reflectance."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rioxarray  # noqa: F401 - registers the .rio accessor
import xarray as xr

from cropmap.core.bands import S2_ORDER, canonical_band, require_bands
from cropmap.errors import InvalidInputError

__all__ = ["read_openeo_cube", "OPENEO_NODATA"]

#: The no-data values of openEO uint16 bands.
OPENEO_NODATA = (0, 65535)


def _openeo_band(name: str) -> str | None:
    # "S2-L2A-B04" -> "B04"; "S2-L2A-AOT", "S1-SIGMA0-VV", "slope" -> None
    short = re.sub(r"^S2(-L2A)?[-_]", "", name)
    if short == name and not re.fullmatch(r"B\d{1,2}A?|SCL", name):
        return None
    band = canonical_band(short)
    return band if band in (*S2_ORDER, "SCL") else None


def read_openeo_cube(
    path: str | Path,
    *,
    bands: Sequence[str] | None = None,
    scale: float = 1e-4,
    nodata: Sequence[float] = OPENEO_NODATA,
    chunks: dict | None = None,
) -> xr.DataArray:
    """An openEO netCDF cube (``t, y, x`` variables ``S2-L2A-B04`` ...) as ``(time, band, y, x)``.

    Returns float32 surface reflectance 0..1 (values x ``scale``; ``nodata`` values and NaN -> NaN),
    ``band`` in canonical names and order (``B01`` ... ``B12``), the CRS written with rioxarray, and
    the scene classification kept apart as coord ``scl`` ``(time, y, x)`` float32 (NaN = none) when
    the file has one: ``median_composite(cube, season, year, valid=valid_from_scl(cube.scl))``.
    Other variables (S1, DEM, meteo, AOT) are ignored. ``bands`` absent from the file raise
    :class:`~cropmap.errors.MissingBandError`. ``chunks`` (e.g. ``{}``) opens it lazily with Dask.
    """
    path = Path(path)
    ds = xr.open_dataset(path, chunks=chunks, decode_coords="all")
    found = {b: v for v in ds.data_vars if (b := _openeo_band(str(v)))}
    available = [b for b in S2_ORDER if b in found]
    wanted = list(bands) if bands is not None else available
    require_bands(available, wanted, where=path.name)
    if not wanted:
        raise InvalidInputError(f"{path.name}: no Sentinel-2 reflectance band among {list(ds.data_vars)}")

    def _clean(var: str) -> xr.DataArray:
        da = ds[var].astype(np.float32)
        return da.where(~da.isin(list(nodata)))

    time_dim = "t" if "t" in ds.dims else "time"
    cube = xr.concat([_clean(found[b]) for b in wanted], dim="band", coords="minimal", compat="override")
    cube = (cube * np.float32(scale)).assign_coords(band=wanted).rename({time_dim: "time"})
    cube = cube.transpose("time", "band", "y", "x").drop_vars("crs", errors="ignore")
    if "SCL" in found:
        scl = ds[found["SCL"]].astype(np.float32).rename({time_dim: "time"}).transpose("time", "y", "x")
        cube = cube.assign_coords(scl=scl.drop_vars("crs", errors="ignore"))
    cube.name = "reflectance"
    cube.attrs = {"units": "surface reflectance (0-1)", "source": str(path)}
    if "crs" in ds.variables:
        wkt = ds["crs"].attrs.get("crs_wkt") or ds["crs"].attrs.get("spatial_ref")
        if wkt:
            cube = cube.rio.write_crs(wkt)
    return cube

