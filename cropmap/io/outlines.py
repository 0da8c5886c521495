"""Areas of interest: country outlines, GeoJSON files and lon/lat boxes as geometries, and their tiles.

Outlines work offline: Natural Earth 1:110m from ``naturalearth_lowres/naturalearth_lowres.shp`` in the
shared data folder (:func:`cropmap.io.data.data_file`), a GeoJSON file (EPSG:4326), or a lon/lat bbox.
The tiling itself is :func:`cropmap.core.grid.tiles_for_geometry`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import pyogrio
import pyproj
import shapely
import shapely.errors
from shapely.geometry.base import BaseGeometry

from cropmap.core.grid import Tile, estimate_tiles, iter_tiles, tiles_for_geometry
from cropmap.core.season import Season
from cropmap.errors import ConfigError, EmptyAOIError, PlanTooLargeError, one_line
from cropmap.io.config import CountryConfig, OutlineConfig
from cropmap.io.data import data_file

__all__ = ["load_aoi", "outline_parts", "part_plans", "PartPlan", "check_plan_size", "plan_tiles", "tiles_for_aoi",
           "tiles_for_area", "split_antimeridian", "NATURAL_EARTH"]

#: Relative path (under the data folder) of the offline country outlines.
NATURAL_EARTH = "naturalearth_lowres/naturalearth_lowres.shp"


def load_aoi(aoi: CountryConfig | OutlineConfig | str | Path | tuple | BaseGeometry, *,
             parts: tuple[str, ...] | None = None) -> BaseGeometry:
    """The AOI as a lon/lat (EPSG:4326) shapely geometry.

    Accepts a country config, an outline config, a GeoJSON path (FeatureCollection, Feature or
    geometry; features are unioned), a ``(west, south, east, north)`` bbox or a shapely geometry. An
    outline with named parts gives the union of the selected ones (:func:`outline_parts`).
    """
    if isinstance(aoi, CountryConfig):
        aoi = aoi.outline
    if isinstance(aoi, OutlineConfig) and aoi.parts:
        return shapely.union_all([g for _, g in outline_parts(aoi, parts)])
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
            raise ConfigError(f"bad AOI bbox {tuple(aoi)}: {one_line(err)}") from err
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
    if not isinstance(doc, dict):
        raise ConfigError(f"GeoJSON AOI {path} is not a GeoJSON object (a {type(doc).__name__})")
    feats = doc.get("features") if doc.get("type") == "FeatureCollection" else [doc]
    try:
        geoms = [shapely.geometry.shape(f.get("geometry", f)) for f in feats or [] if f.get("geometry", f)]
    except (AttributeError, KeyError, TypeError, ValueError, shapely.errors.GEOSException) as err:
        raise ConfigError(f"GeoJSON AOI {path} holds no valid geometry: {type(err).__name__}: {err}") from err
    if not geoms:
        raise EmptyAOIError(f"GeoJSON AOI {path} holds no geometry")
    try:
        return shapely.union_all([split_antimeridian(g) for g in geoms])
    except ConfigError as err:
        raise ConfigError(f"GeoJSON AOI {path}: {err}") from err


def split_antimeridian(geom: BaseGeometry) -> BaseGeometry:
    """``geom`` with each polygon that crosses the antimeridian cut there into a part on each side, as
    Natural Earth's outlines are; other polygons, lines and points are kept as they are.

    A polygon crosses when two consecutive vertices of a ring lie more than 180 degrees of longitude
    apart (179 -> -179.5: GeoJSON's edges take the short way round, RFC 7946 3.1.9), or when it reaches
    past +-180. Read naively, such a ring spans the whole globe the long way round. An edge along the
    antimeridian itself (180 -> -180, a world box's) is no crossing.
    """
    if isinstance(geom, shapely.GeometryCollection | shapely.MultiPolygon):
        parts = [split_antimeridian(g) for g in geom.geoms]
        return shapely.union_all(parts) if parts else geom
    if not isinstance(geom, shapely.Polygon) or geom.is_empty:
        return geom
    rings = [np.asarray(geom.exterior.coords)[:, :2]] + [np.asarray(r.coords)[:, :2] for r in geom.interiors]
    w, _, e, _ = geom.bounds
    if not any(_crosses(r[:, 0]) for r in rings) and -180 <= w and e <= 180:
        return geom
    shell = _unwrapped(rings[0])
    holes = []
    for ring in rings[1:]:
        ring = _unwrapped(ring)
        # a hole unwrapped from its own first vertex may sit a turn away from its shell
        ring[:, 0] += 360 * np.round((shell[:, 0].mean() - ring[:, 0].mean()) / 360)
        holes.append(ring)
    whole = shapely.make_valid(shapely.Polygon(shell, holes))
    sides = []
    for west in (-540.0, -180.0, 180.0):  # the globe before, at and after [-180, 180]
        side = shapely.intersection(whole, shapely.box(west, -90, west + 360, 90))
        # only the areas: a cut along the box's edge may leave slivers of line
        sides += [shapely.transform(p, lambda xy, shift=-180 - west: xy + (shift, 0))
                  for p in shapely.get_parts(side) if isinstance(p, shapely.Polygon) and p.area > 0]
    return shapely.union_all(sides)


def _crosses(lon: np.ndarray) -> bool:
    step = np.abs(np.diff(lon))
    along = (np.abs(lon[:-1]) == 180) & (np.abs(lon[1:]) == 180)
    return bool(np.any((step > 180) & ~along))


def _unwrapped(ring: np.ndarray) -> np.ndarray:
    """``ring``'s longitudes made continuous: each jump of more than 180 degrees is a crossing."""
    out = ring.astype(float).copy()
    step = np.diff(out[:, 0])
    out[1:, 0] += np.cumsum(np.where(step > 180, -360.0, np.where(step < -180, 360.0, 0.0)))
    if abs(out[-1, 0] - out[0, 0]) > 1e-9:
        # the ring winds once round the globe: it encloses a pole, and which side is inside is a guess
        raise ConfigError("a ring goes round the globe (it encloses a pole); give the outline split at the "
                          "antimeridian into closed polygons, as Natural Earth's are")
    return out


def outline_parts(outline: OutlineConfig, names: tuple[str, ...] | None = None) -> list[tuple[str, BaseGeometry]]:
    """``(name, lon/lat geometry)`` of each selected part (:meth:`OutlineConfig.selected_parts`): the
    outline clipped to the part's bbox, or its largest polygon (by area on an equal-area grid). An
    outline without parts is one part, ``"all"``."""
    whole = load_aoi(outline.model_copy(update={"parts": ()}))
    if not outline.parts:
        return [("all", whole)]
    out = []
    for part in outline.selected_parts(names):
        if part.largest:
            polygons = list(getattr(whole, "geoms", [whole]))
            geom = max(polygons, key=lambda g: shapely.transform(g, _TO_EQUAL_AREA).area)
        else:
            geom = shapely.intersection(whole, shapely.box(*part.bbox))
        if geom.is_empty or geom.area == 0:
            raise EmptyAOIError(f"outline part {part.name!r} is empty: its bbox {part.bbox} misses the outline")
        out.append((part.name, geom))
    if not out:
        raise EmptyAOIError("no outline part selected: name the parts to map")
    return out


def _TO_EQUAL_AREA(xy: np.ndarray) -> np.ndarray:
    x, y = _EQUAL_AREA.transform(xy[:, 0], xy[:, 1])
    return np.column_stack([x, y])


_EQUAL_AREA = pyproj.Transformer.from_crs(4326, 6933, always_xy=True)


@dataclass(frozen=True)
class PartPlan:
    """One line of a run's plan: an outline part's side of the equator, its tiles and its season;
    ``estimated``: ``tiles`` is :func:`cropmap.core.grid.estimate_tiles`'s, the part being too large to
    plan (:func:`check_plan_size`)."""

    part: str
    hemisphere: str
    tiles: int
    season: Season
    estimated: bool = False


def part_plans(config: CountryConfig, parts: tuple[str, ...] | None = None) -> list[PartPlan]:
    """Per selected part and hemisphere (a part crossing the equator is cut there): the tile count and
    the season (:meth:`CountryConfig.season_for`). A side over ``$CROPMAP_MAX_PLAN_TILES`` gets its
    estimate: a run limited to a few tiles (``tile_limit``) still prints its parts."""
    from cropmap.settings import get_settings

    cap = get_settings().max_plan_tiles
    plans = []
    for name, geom in outline_parts(config.outline, parts):
        for hemisphere, box in (("north", shapely.box(-180, 0, 180, 90)), ("south", shapely.box(-180, -90, 180, 0))):
            side = shapely.intersection(geom, box)
            if side.is_empty or side.area == 0:
                continue
            estimate = estimate_tiles(side, tile_size=config.tile_size)
            if estimate > cap:
                plans.append(PartPlan(name, hemisphere, estimate, config.season_for(hemisphere), estimated=True))
                continue
            n = sum(1 for t in iter_tiles(side, tile_size=config.tile_size)
                    if (t.grid.epsg // 100 == 327) == (hemisphere == "south"))
            plans.append(PartPlan(name, hemisphere, n, config.season_for(hemisphere)))
    return plans


def check_plan_size(geom: BaseGeometry, *, tile_size: int, resolution: float = 10.0, limit: int | None = None,
                    what: str = "the AOI") -> int:
    """The estimated tile count of the lon/lat ``geom`` (:func:`cropmap.core.grid.estimate_tiles`);
    :class:`PlanTooLargeError` when it, or ``limit`` (the tiles a run takes) where smaller, exceeds
    ``$CROPMAP_MAX_PLAN_TILES``. Made before any tile: a plan of millions of tiles is refused at once, not
    after it has filled the memory."""
    from cropmap.settings import get_settings

    cap = get_settings().max_plan_tiles
    estimate = estimate_tiles(geom, tile_size=tile_size, resolution=resolution)
    planned = estimate if limit is None else min(estimate, limit)
    if planned > cap:
        asked = f" (its first {limit:,} asked)" if planned == limit else ""
        raise PlanTooLargeError(
            f"{what} plans about {estimate:,} tiles of {tile_size} px{asked}, estimated from its area, more than "
            f"CROPMAP_MAX_PLAN_TILES={cap:,}; use a larger tile_size, fewer outline parts, a smaller area or "
            "a tile limit, or raise CROPMAP_MAX_PLAN_TILES")
    return estimate


def plan_tiles(
    aoi: CountryConfig | OutlineConfig | str | Path | tuple | BaseGeometry,
    *,
    tile_size: int | None = None,
    resolution: float = 10.0,
    parts: tuple[str, ...] | None = None,
    limit: int | None = None,
) -> Iterator[Tile]:
    """The AOI's tiles in :func:`tiles_for_aoi`'s order, made as they are taken
    (:func:`cropmap.core.grid.iter_tiles`), after :func:`check_plan_size` has passed the whole AOI, or its
    first ``limit`` tiles when a run takes no more: raised here, not at the first tile taken."""
    if tile_size is None:
        tile_size = aoi.tile_size if isinstance(aoi, CountryConfig) else 1024
    geom = load_aoi(aoi, parts=parts)
    what = (f"{aoi.code}'s outline" if isinstance(aoi, CountryConfig)
            else f"the AOI {aoi}" if isinstance(aoi, (str, Path)) else "the AOI")
    check_plan_size(geom, tile_size=tile_size, resolution=resolution, limit=limit, what=what)
    return iter_tiles(geom, tile_size=tile_size, resolution=resolution)


def tiles_for_aoi(
    aoi: CountryConfig | OutlineConfig | str | Path | tuple | BaseGeometry,
    *,
    tile_size: int | None = None,
    resolution: float = 10.0,
    parts: tuple[str, ...] | None = None,
    limit: int | None = None,
) -> list[Tile]:
    """Tiles (sorted by EPSG, row, col) that intersect the AOI (:func:`load_aoi`, ``parts`` of its
    outline), on each touched zone's grid (:func:`cropmap.core.grid.tiles_for_geometry`); with ``limit``,
    the first ``limit`` of them, the others never made.

    ``tile_size`` defaults to the country config's ``tile_size`` (else 1024 pixels). Only planning:
    no raster is read. An AOI that intersects no tile raises :class:`EmptyAOIError`; one that would plan
    more tiles than ``$CROPMAP_MAX_PLAN_TILES`` raises :class:`PlanTooLargeError` (:func:`check_plan_size`).
    """
    tiles = list(islice(plan_tiles(aoi, tile_size=tile_size, resolution=resolution, parts=parts, limit=limit), limit))
    if not tiles:
        raise EmptyAOIError("the AOI intersects no tile (is it empty, or a line/point?); "
                            "give a polygon or bbox with an area")
    return tiles


def tiles_for_area(config: CountryConfig, area: str | Path | tuple | BaseGeometry, *, parts: tuple[str, ...] | None = None,
                   limit: int | None = None) -> list[Tile]:
    """Tiles of a user's area inside ``config``'s country: the area (:func:`load_aoi`: a lon/lat bbox,
    a GeoJSON path, a geometry) clipped to the country's outline (``parts``).

    Raises :class:`EmptyAOIError` when the area misses the country, and :class:`ConfigError` when it
    plans more tiles than ``limit`` (default: the ``CROPMAP_MAX_AREA_TILES`` setting): a wrong bbox
    must not silently plan thousands of tiles; no more than the cap and one tiles are made, after
    :func:`check_plan_size`.
    """
    from cropmap.settings import get_settings

    geom, country = load_aoi(area), load_aoi(config, parts=parts)
    inside = shapely.intersection(geom, country)
    if inside.is_empty or inside.area == 0:
        raise EmptyAOIError(f"the area {tuple(round(v, 4) for v in geom.bounds)} lies outside {config.code} "
                            f"(its outline spans {tuple(round(v, 4) for v in country.bounds)}, lon/lat)")
    cap = get_settings().max_area_tiles if limit is None else limit
    # no more than one tile over the cap is made: a wrong bbox costs the cap, not its whole plan
    check_plan_size(inside, tile_size=config.tile_size, limit=cap + 1,
                    what=f"the area {tuple(round(v, 4) for v in geom.bounds)} inside {config.code}")
    tiles = tiles_for_geometry(inside, tile_size=config.tile_size, limit=cap + 1)
    if len(tiles) > cap:
        raise ConfigError(f"the area plans at least {len(tiles):,} tiles of {config.tile_size} px, more than "
                          f"CROPMAP_MAX_AREA_TILES={cap}; give a smaller area, or raise the setting (or --max-tiles)")
    return tiles
