"""Areas of interest: country outlines, GeoJSON files and lon/lat boxes as geometries, and their tiles.

Outlines work offline: Natural Earth 1:110m from ``naturalearth_lowres/naturalearth_lowres.shp`` in the
shared data folder (:func:`cropmap.io.data.data_file`), a GeoJSON file (EPSG:4326), or a lon/lat bbox.
The tiling itself is :func:`cropmap.core.grid.tiles_for_geometry`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyogrio
import shapely
from shapely.geometry.base import BaseGeometry

from cropmap.core.grid import Tile, tiles_for_geometry
from cropmap.errors import ConfigError, EmptyAOIError
from cropmap.io.config import CountryConfig, OutlineConfig
from cropmap.io.data import data_file

__all__ = ["load_aoi", "tiles_for_aoi", "NATURAL_EARTH"]

#: Relative path (under the data folder) of the offline country outlines.
NATURAL_EARTH = "naturalearth_lowres/naturalearth_lowres.shp"


def load_aoi(aoi: CountryConfig | OutlineConfig | str | Path | tuple | BaseGeometry) -> BaseGeometry:
    """The AOI as a lon/lat (EPSG:4326) shapely geometry.

    Accepts a country config, an outline config, a GeoJSON path (FeatureCollection, Feature or
    geometry; features are unioned), a ``(west, south, east, north)`` bbox or a shapely geometry.
    """
    if isinstance(aoi, CountryConfig):
        aoi = aoi.outline
    if isinstance(aoi, BaseGeometry):
        geom = aoi
    elif isinstance(aoi, OutlineConfig):
        if aoi.natural_earth is not None:
            geom = _natural_earth(aoi.natural_earth)
        elif aoi.geojson is not None:
            geom = _read_geojson(Path(aoi.geojson))
        else:
            geom = shapely.box(*aoi.bbox)
    elif isinstance(aoi, (str, Path)):
        geom = _read_geojson(Path(aoi))
    elif isinstance(aoi, (tuple, list)) and len(aoi) == 4:
        try:
            geom = shapely.box(*OutlineConfig(bbox=tuple(aoi)).bbox)
        except ValueError as err:  # pydantic's ValidationError
            raise ConfigError(f"bad AOI bbox {tuple(aoi)}: {err}") from err
    else:
        raise ConfigError(f"unsupported AOI {aoi!r}: give a country config, GeoJSON path or lon/lat bbox")
    if geom.is_empty:
        raise EmptyAOIError("the AOI geometry is empty")
    return shapely.make_valid(geom)


def _natural_earth(name: str) -> BaseGeometry:
    meta, _, geoms, fields = pyogrio.raw.read(data_file(NATURAL_EARTH), columns=["name", "iso_a3"])
    names, isos = fields
    # France and Norway carry iso_a3 "-99" in this edition, so names are the primary key
    hit = [i for i, (n, c) in enumerate(zip(names, isos)) if n == name or c == name]
    if not hit:
        raise ConfigError(f"no Natural Earth country named {name!r} in {NATURAL_EARTH} "
                          f"(examples: {', '.join(sorted(names)[:5])}, ...)")
    return shapely.union_all(shapely.from_wkb([geoms[i] for i in hit]))


def _read_geojson(path: Path) -> BaseGeometry:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read GeoJSON AOI {path}: {err}") from err
    feats = doc.get("features") if doc.get("type") == "FeatureCollection" else [doc]
    geoms = [shapely.geometry.shape(f.get("geometry", f)) for f in feats if f.get("geometry", f)]
    if not geoms:
        raise EmptyAOIError(f"GeoJSON AOI {path} holds no geometry")
    return shapely.union_all(geoms)



def tiles_for_aoi(
    aoi: CountryConfig | OutlineConfig | str | Path | tuple | BaseGeometry,
    *,
    tile_size: int | None = None,
    resolution: float = 10.0,
) -> list[Tile]:
    """Tiles (sorted by EPSG, row, col) that intersect the AOI (:func:`load_aoi`), on each touched
    zone's grid (:func:`cropmap.core.grid.tiles_for_geometry`).

    ``tile_size`` defaults to the country config's ``tile_size`` (else 1024 pixels). Only planning:
    no raster is read. An AOI that intersects no tile raises :class:`EmptyAOIError`.
    """
    if tile_size is None:
        tile_size = aoi.tile_size if isinstance(aoi, CountryConfig) else 1024
    return tiles_for_geometry(load_aoi(aoi), tile_size=tile_size, resolution=resolution)
