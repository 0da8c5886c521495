"""A tile cube store as xarray, rioxarray and odc-geo read it with no extra argument: its layout
(:func:`cube_template`: coordinates, CF attributes, grid mapping), its metadata consolidated once it is
written (:func:`consolidate`), and the one reader of new and older stores (:func:`open_store`).

``xr.open_zarr(path)`` of a cube built by :func:`cropmap.stages.cube.build_tile_cube` gives ``spatial_ref``
as a coordinate (each data variable lists it in its CF ``coordinates`` attribute and names it in
``grid_mapping``), so ``ds.rio.crs`` and ``ds.odc.geobox`` are the tile's; the metadata is consolidated (in
the root ``zarr.json``), so an open reads one object and warns of nothing. Cubes written before either
(``spatial_ref`` a data variable, nothing consolidated) still open through :func:`open_store`, or with
``xr.open_zarr(path, consolidated=False, decode_coords="all")``.
"""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import rioxarray  # noqa: F401 - registers the .rio accessor
import xarray as xr
import zarr

from cropmap.core.grid import Tile
from cropmap.core.season import Season
from cropmap.io import storage

__all__ = ["CONVENTIONS", "cf_attributes", "cube_template", "pixel_centres", "consolidate", "open_store"]

#: Root attributes added after ``config_hash`` (they describe the format, not what the cube depends on).
CONVENTIONS = {"Conventions": "CF-1.8"}


def cf_attributes(season: Season) -> dict[str, dict[str, str]]:
    """CF attributes of the cube's variables, by variable name: reflectance is unitless ("1")."""
    return {
        "reflectance": {"long_name": "surface reflectance (Sentinel-2 L2A, bottom of atmosphere): median of the bin, "
                                     "interpolated over bins without observation (filled_fraction)",
                        "standard_name": "surface_bidirectional_reflectance", "units": "1"},
        "filled_fraction": {"long_name": "share of the pixel's (bin, band) values interpolated, not observed "
                                         "(1 = never observed)", "units": "1"},
        "time": {"long_name": f"start of {season.bin_days}-day bin", "standard_name": "time", "axis": "T",
                 "comment": "bin i holds the dates of [time[i], time[i+1]); the last bin ends with the season "
                            "(root attribute bin_edges)"},
        "band": {"long_name": "Sentinel-2 band"},
    }


def cube_template(tile: Tile, season: Season, year: int, *, bands: tuple[str, ...], chunk: int) -> xr.Dataset:
    """The store's layout, data not computed: ``reflectance`` ``(time, band, y, x)`` and ``filled_fraction``
    ``(y, x)`` as float32 placeholders chunked (all bins, 1 band, ``chunk`` x ``chunk`` pixels), pixel-centre
    ``y`` / ``x`` in metres of the tile's CRS, ``spatial_ref`` (CF grid mapping with the GeoTransform) as
    a coordinate of both, and the CF attributes of :func:`cf_attributes`."""
    n = season.n_bins
    refl = da.zeros((n, len(bands), *tile.shape), dtype=np.float32, chunks=(n, 1, chunk, chunk))
    frac = da.zeros(tile.shape, dtype=np.float32, chunks=chunk)
    # band names as variable-length strings: Zarr v3 has no stable fixed-width unicode type
    ds = xr.Dataset({"reflectance": (("time", "band", "y", "x"), refl), "filled_fraction": (("y", "x"), frac)},
                    coords={"time": season.bin_starts(year), "band": np.array(list(bands), dtype=object),
                            "y": pixel_centres(tile, "y"), "x": pixel_centres(tile, "x")})
    # not "crs"/"transform" attributes: rioxarray strips those as legacy georeferencing;
    # write_coordinate_system: the x / y axis, units and names
    ds = ds.rio.write_crs(tile.crs).rio.write_transform(tile.transform).rio.write_coordinate_system()
    for name, attrs in cf_attributes(season).items():
        ds[name].attrs.update(attrs)
    for name in ds.data_vars:
        # an attribute, not rioxarray's encoding: the cube stage's own encoding of a variable replaces it
        ds[name].encoding.pop("grid_mapping", None)
        ds[name].attrs["grid_mapping"] = "spatial_ref"
        # a scalar coordinate is listed by no variable unless asked: xarray would then decode it as a data
        # variable and ds.rio.crs would be None without decode_coords="all"
        ds[name].encoding["coordinates"] = "spatial_ref"
    return ds


def pixel_centres(tile: Tile, dim: str) -> np.ndarray:
    """``(tile_size,)`` float64 pixel-centre coordinates along ``dim`` ("x": west to east, "y": north to
    south), metres of the tile's CRS."""
    xmin, _, _, ymax = tile.bounds
    r, n = tile.grid.resolution, tile.grid.tile_size
    return (xmin + (np.arange(n) + 0.5) * r) if dim == "x" else (ymax - (np.arange(n) + 0.5) * r)


def consolidate(path: storage.Location) -> None:
    """Consolidate the metadata of the written store at ``path`` (a folder or a URL) into its root ``zarr.json``.
    Call it after the last write of any attribute (zarr-python rewrites the root ``zarr.json`` without the
    consolidated copy when an attribute is set later; :func:`open_store` then reads node by node) and before
    the store is published (renamed, or its completeness marker written)."""
    with warnings.catch_warnings():
        # zarr warns that v3 has no consolidation in its spec yet; xarray and zarr-python read it, and a
        # reader without it reads node by node
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(str(storage.as_location(path)))


def open_store(path: storage.Location, **kwargs) -> xr.Dataset:
    """``xr.open_zarr`` of the cube store at ``path`` (``kwargs`` passed on) through its consolidated
    metadata, or node by node for a store written before cubes were consolidated (no warning either way)."""
    location = str(storage.as_location(path))
    try:
        return xr.open_zarr(location, consolidated=True, **kwargs)
    except (ValueError, KeyError):  # zarr: "Consolidated metadata requested ... but not found"; any other
        # problem fails again below, with its own error
        return xr.open_zarr(location, consolidated=False, **kwargs)
