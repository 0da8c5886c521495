"""The tile grid: an area of interest becomes fixed 10 m tiles in its local UTM zone(s).

A :class:`Grid` is one UTM zone's pixel lattice: ``epsg``, an origin (default ``x = 0``,
``y = 10 000 000`` m, so rows and columns are never negative in either hemisphere), the pixel size
(10 m) and the tile side in pixels. Tile ``(row, col)`` covers x in ``[ox + col*T, ox + (col+1)*T)``
and y in ``(oy - (row+1)*T, oy - row*T]`` with ``T = tile_size * resolution`` metres, so neighbours
share edges exactly and a tile's id never depends on the AOI that produced it.

An AOI spanning several UTM zones (or both hemispheres) is cut along the zone borders and each piece
gets the grid of its own zone: tiles of neighbouring zones overlap geographically near the border but
each pixel is exact in its own CRS (no reprojection of the imagery). Zone exceptions (Norway,
Svalbard) are not applied: the plain 6-degree zones are used everywhere.

Values and planning arithmetic only: outlines are read by :mod:`cropmap.io.outlines`.
"""


from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

import numpy as np
import pyproj
import shapely
from affine import Affine
from shapely.geometry.base import BaseGeometry

from cropmap.errors import ConfigError, EmptyAOIError

__all__ = ["Grid", "Tile", "utm_epsg", "tile_from_id", "tiles_for_geometry", "iter_tiles", "estimate_tiles",
           "feature_tile_pairs", "tiles_meeting"]

_ID = re.compile(r"^(?P<epsg>\d{4,5})-(?P<res>\d+(?:\.\d+)?)m-(?P<size>\d+)px_r(?P<row>\d+)c(?P<col>\d+)$")


@dataclass(frozen=True)
class Grid:
    """One zone's tile lattice. Metres, EPSG code of a projected CRS (UTM: 326zz north, 327zz south)."""

    epsg: int
    resolution: float = 10.0
    tile_size: int = 1024  # pixels per tile side
    origin_x: float = 0.0
    origin_y: float = 10_000_000.0

    def __post_init__(self) -> None:
        if self.resolution <= 0 or self.tile_size <= 0:
            raise ConfigError(f"grid resolution and tile_size must be positive, got {self.resolution}, {self.tile_size}")
        if not pyproj.CRS.from_epsg(self.epsg).is_projected:
            raise ConfigError(f"grid EPSG:{self.epsg} is not a projected CRS in metres; use a UTM zone")

    @property
    def tile_metres(self) -> float:
        return self.tile_size * self.resolution

    @property
    def id(self) -> str:
        return f"{self.epsg}-{self.resolution:g}m-{self.tile_size}px"

    def tile(self, row: int, col: int) -> "Tile":
        return Tile(self, int(row), int(col))


@dataclass(frozen=True)
class Tile:
    """Tile ``(row, col)`` of ``grid``: an exact ``tile_size x tile_size`` pixel box in ``grid.epsg``."""

    grid: Grid
    row: int
    col: int

    @property
    def id(self) -> str:
        """Stable id, e.g. ``32633-10m-1024px_r0473c0054`` (parse back with :func:`tile_from_id`)."""
        return f"{self.grid.id}_r{self.row:04d}c{self.col:04d}"

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` in metres of ``grid.epsg``."""
        g, t = self.grid, self.grid.tile_metres
        xmin, ymax = g.origin_x + self.col * t, g.origin_y - self.row * t
        return xmin, ymax - t, xmin + t, ymax

    @property
    def shape(self) -> tuple[int, int]:
        """``(y, x)`` pixels."""
        return self.grid.tile_size, self.grid.tile_size

    @property
    def transform(self) -> Affine:
        """Pixel-corner affine transform (north up)."""
        xmin, _, _, ymax = self.bounds
        return Affine(self.grid.resolution, 0.0, xmin, 0.0, -self.grid.resolution, ymax)

    @property
    def crs(self) -> str:
        return f"EPSG:{self.grid.epsg}"

    def lonlat_bbox(self) -> tuple[float, float, float, float]:
        """The tile's footprint as a lon/lat bbox (degrees), for catalog searches."""
        poly = shapely.segmentize(shapely.box(*self.bounds), self.grid.tile_metres / 8)
        to_ll = pyproj.Transformer.from_crs(self.grid.epsg, 4326, always_xy=True)
        return shapely.transform(poly, lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1]))).bounds


def tile_from_id(tile_id: str) -> Tile:
    """The :class:`Tile` named by ``tile_id`` (inverse of :attr:`Tile.id`)."""
    m = _ID.match(tile_id)
    if m is None:
        raise ConfigError(f"{tile_id!r} is not a tile id like '32633-10m-1024px_r0473c0054'")
    grid = Grid(int(m["epsg"]), resolution=float(m["res"]), tile_size=int(m["size"]))
    return grid.tile(int(m["row"]), int(m["col"]))


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the plain 6-degree UTM zone holding ``(lon, lat)`` (WGS 84)."""
    zone = min(int((lon + 180) // 6) + 1, 60)
    return (32600 if lat >= 0 else 32700) + zone


def _zone_pieces(geom: BaseGeometry) -> list[tuple[int, BaseGeometry]]:
    """``(epsg, piece)`` for each UTM zone and hemisphere the lon/lat geometry touches."""
    w, s, e, n = geom.bounds
    pieces = []
    for zone in range(max(int((w + 180) // 6) + 1, 1), min(int((e + 180) // 6) + 1, 60) + 1):
        lon0 = -180 + 6 * (zone - 1)
        for base, lat0, lat1 in ((32600, 0.0, 90.0), (32700, -90.0, 0.0)):
            if n < lat0 or s > lat1:
                continue
            piece = shapely.intersection(geom, shapely.box(lon0, lat0, lon0 + 6, lat1))
            if not piece.is_empty and piece.area > 0:
                pieces.append((base + zone, piece))
    return pieces


#: Candidate tile boxes tested at once: a zone's bounding box is walked in bands of rows this size, so
#: that a small tile size over a large outline costs time in proportion to its tiles, never one array of
#: every cell of the bounding box.
_CELLS_PER_BAND = 1 << 16


def _in_zone(piece: BaseGeometry, epsg: int) -> BaseGeometry:
    """The lon/lat ``piece`` in the metres of ``epsg``."""
    to_utm = pyproj.Transformer.from_crs(4326, epsg, always_xy=True)
    # densify first: straight lon/lat edges are curves in UTM
    dense = shapely.segmentize(piece, 0.05)
    return shapely.transform(dense, lambda xy: np.column_stack(to_utm.transform(xy[:, 0], xy[:, 1])))


def _piece_tiles(grid: Grid, local: BaseGeometry) -> Iterator[Tile]:
    """The tiles of ``grid`` that ``local`` (in ``grid.epsg``) intersects, by row then column."""
    xmin, ymin, xmax, ymax = local.bounds
    t = grid.tile_metres
    first_row, last_row = math.floor((grid.origin_y - ymax) / t), math.floor((grid.origin_y - ymin) / t)
    width = math.floor((xmax - grid.origin_x) / t) - math.floor((xmin - grid.origin_x) / t) + 1
    band = max(1, _CELLS_PER_BAND // width)
    shapely.prepare(local)
    for top in range(first_row, last_row + 1, band):
        bottom = min(top + band - 1, last_row)
        # the outline within these rows: its x extent picks the columns (a diagonal country's band is narrow)
        strip = shapely.clip_by_rect(local, xmin, grid.origin_y - (bottom + 1) * t, xmax, grid.origin_y - top * t)
        if strip.is_empty:
            continue
        sx0, _, sx1, _ = strip.bounds
        cols = np.arange(math.floor((sx0 - grid.origin_x) / t), math.floor((sx1 - grid.origin_x) / t) + 1)
        rr, cc = (a.ravel() for a in np.meshgrid(np.arange(top, bottom + 1), cols, indexing="ij"))
        x0 = grid.origin_x + cc * t
        y1 = grid.origin_y - rr * t
        boxes = shapely.box(x0, y1 - t, x0 + t, y1)
        # touching along an edge only is not an intersection worth a tile
        hit = shapely.intersects(local, boxes) & ~shapely.touches(local, boxes)
        yield from (grid.tile(r, c) for r, c in zip(rr[hit], cc[hit]))


def iter_tiles(geom: BaseGeometry, *, tile_size: int = 1024, resolution: float = 10.0) -> Iterator[Tile]:
    """The tiles of :func:`tiles_for_geometry`, in the same order (EPSG, row, col), made as they are
    needed: taking the first ``n`` builds only those (and the bands of rows before them)."""
    for epsg, piece in sorted(_zone_pieces(geom), key=lambda p: p[0]):
        yield from _piece_tiles(Grid(epsg, resolution=resolution, tile_size=tile_size), _in_zone(piece, epsg))


def estimate_tiles(geom: BaseGeometry, *, tile_size: int = 1024, resolution: float = 10.0) -> int:
    """About how many tiles :func:`tiles_for_geometry` gives the lon/lat ``geom``, without making one: per
    UTM zone piece and polygon, its area in the zone's metres over a tile's, plus the rim of tiles its
    outline crosses (half its length over a tile's side) and one. Cheap whatever the tile size, so a
    plan can be refused before it is built."""
    side = tile_size * resolution
    total = 0.0
    for epsg, piece in _zone_pieces(geom):
        polygons = shapely.get_parts(_in_zone(piece, epsg))
        total += float(shapely.area(polygons).sum()) / side**2 + float(shapely.length(polygons).sum()) / (2 * side)
        total += len(polygons)
    return math.ceil(total)


def tiles_for_geometry(geom: BaseGeometry, *, tile_size: int = 1024, resolution: float = 10.0,
                       limit: int | None = None) -> list[Tile]:
    """Tiles (sorted by EPSG, row, col) that intersect the lon/lat (EPSG:4326) geometry ``geom``, on each
    touched zone's grid; with ``limit``, the first ``limit`` of them, the rest never made
    (:func:`iter_tiles`). Only planning: no raster is read. A geometry that intersects no tile raises
    :class:`EmptyAOIError`.
    """
    tiles = list(islice(iter_tiles(geom, tile_size=tile_size, resolution=resolution), limit))
    if not tiles:
        raise EmptyAOIError("the AOI intersects no tile (is it empty, or a line/point?); "
                            "give a polygon or bbox with an area")
    return tiles



def feature_tile_pairs(geometry: np.ndarray, crs: pyproj.CRS | str | int,
                       tiles: list[Tile]) -> tuple[np.ndarray, np.ndarray]:
    """Every (feature, tile) pair of a feature of ``geometry`` (shapely array in ``crs``: parcels, points,
    any mix) that intersects one of ``tiles``, as two index arrays.

    Each zone's tiles are tested against the features reprojected into that zone, so the answer follows
    the features' own footprints, not their bounding box (labels in two corners of a country meet the
    tiles under them, not the country between). Missing or empty geometries meet nothing.
    """
    geometry = np.asarray(geometry, dtype=object)
    usable = np.flatnonzero(~shapely.is_missing(geometry) & ~shapely.is_empty(geometry))
    pairs: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0, np.int64), np.zeros(0, np.int64))]
    if usable.size == 0 or not tiles:
        return pairs[0]
    # the features' boxes in lon/lat, from their corners: enough to pick the features near a zone
    box = shapely.bounds(geometry[usable])
    lon, lat = pyproj.Transformer.from_crs(crs, 4326, always_xy=True).transform(
        box[:, [0, 2, 0, 2]].ravel(), box[:, [1, 1, 3, 3]].ravel())
    lon, lat = np.asarray(lon).reshape(-1, 4), np.asarray(lat).reshape(-1, 4)
    by_zone: dict[int, list[int]] = {}
    for i, tile in enumerate(tiles):
        by_zone.setdefault(tile.grid.epsg, []).append(i)
    for epsg, idx in by_zone.items():
        boxes = np.array([tiles[i].bounds for i in idx])
        # only the features near the zone are reprojected into it: far off, a UTM projection degenerates
        w, s, e, n = pyproj.Transformer.from_crs(epsg, 4326, always_xy=True).transform_bounds(
            boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max(), densify_pts=21)
        margin = 0.1  # degrees: corner boxes of curved features may be a little off
        near = (lat.min(axis=1) <= n + margin) & (lat.max(axis=1) >= s - margin)
        if w <= e:  # a box across the antimeridian (w > e) keeps every feature
            near &= (lon.min(axis=1) <= e + margin) & (lon.max(axis=1) >= w - margin)
        cand = usable[near]
        if cand.size == 0:
            continue
        to_zone = pyproj.Transformer.from_crs(crs, epsg, always_xy=True)
        local = shapely.transform(geometry[cand], lambda xy: np.column_stack(to_zone.transform(xy[:, 0], xy[:, 1])))
        feature, tile = shapely.STRtree(shapely.box(*boxes.T)).query(local, predicate="intersects")
        pairs.append((cand[feature], np.asarray(idx)[tile]))
    return np.concatenate([f for f, _ in pairs]), np.concatenate([t for _, t in pairs])


def tiles_meeting(geometry: np.ndarray, crs: pyproj.CRS | str | int, tiles: list[Tile]) -> tuple[list[Tile], np.ndarray]:
    """The ``tiles`` that a feature of ``geometry`` intersects (:func:`feature_tile_pairs`), in their given
    order, and per feature whether it meets any of them."""
    feature, tile = feature_tile_pairs(geometry, crs, tiles)
    met = np.zeros(len(geometry), bool)
    met[feature] = True
    return [tiles[i] for i in np.unique(tile)], met
