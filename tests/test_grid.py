"""The tile grid: exact shared edges, stable ids, per-zone grids, only tiles that touch the AOI."""

from __future__ import annotations

import json

import numpy as np
import pyproj
import pytest
import shapely

from cropmap.core.grid import Grid, tile_from_id, utm_epsg
from cropmap.errors import ConfigError, EmptyAOIError
from cropmap.io.config import load_country
from cropmap.io.outlines import load_aoi, tiles_for_aoi


def test_grid_validates():
    with pytest.raises(ConfigError, match="positive"):
        Grid(32633, tile_size=0)
    with pytest.raises(ConfigError, match="projected"):
        Grid(4326)


def test_neighbours_share_edges_exactly_and_pixels_are_10m():
    g = Grid(32633, tile_size=1000)
    t, right, below = g.tile(500, 40), g.tile(500, 41), g.tile(501, 40)
    assert t.bounds[2] == right.bounds[0] and t.bounds[1] == right.bounds[1] and t.bounds[3] == right.bounds[3]
    assert t.bounds[1] == below.bounds[3] and t.bounds[0] == below.bounds[0]
    assert t.transform.a == 10 and t.transform.e == -10 and t.shape == (1000, 1000)
    assert t.transform * (1000, 1000) == (t.bounds[2], t.bounds[1])
    assert tile_from_id(t.id) == t and t.id == "32633-10m-1000px_r0500c0040"
    with pytest.raises(ConfigError, match="not a tile id"):
        tile_from_id("../32633")


def test_utm_zones():
    assert utm_epsg(15.5, 46.5) == 32633 and utm_epsg(-58.4, -34.6) == 32721 and utm_epsg(180, 0) == 32660


def test_bbox_tiles_are_exactly_those_intersecting(tmp_path):
    bbox = (15.70, 46.55, 15.80, 46.62)
    tiles = tiles_for_aoi(bbox, tile_size=256)
    assert {t.grid.epsg for t in tiles} == {32633}
    to_utm = pyproj.Transformer.from_crs(4326, 32633, always_xy=True)
    # independent check: project a dense outline, compare with every candidate box of the tile range
    lon, lat = np.meshgrid(np.linspace(bbox[0], bbox[2], 200), np.linspace(bbox[1], bbox[3], 200))
    x, y = to_utm.transform(lon.ravel(), lat.ravel())
    size = 2560.0
    cols = {int(v // size) for v in x}
    rows = {int((10_000_000 - v) // size) for v in y}
    assert {(t.row, t.col) for t in tiles} == {(r, c) for r in rows for c in cols}
    area = shapely.unary_union([shapely.box(*t.bounds) for t in tiles])
    aoi = shapely.MultiPoint(np.column_stack([x, y]))
    assert area.covers(aoi)
    # the same ground gets the same ids from another AOI
    again = tiles_for_aoi((15.75, 46.58, 15.76, 46.59), tile_size=256)
    assert {t.id for t in again} <= {t.id for t in tiles}


def test_geojson_aoi_and_empty_aois(tmp_path):
    path = tmp_path / "aoi.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(shapely.box(4.3, 50.8, 4.4, 50.9))}]}))
    assert len(tiles_for_aoi(path, tile_size=1024)) >= 1
    (tmp_path / "none.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(EmptyAOIError):
        tiles_for_aoi(tmp_path / "none.geojson")
    with pytest.raises(EmptyAOIError, match="intersects no tile"):
        tiles_for_aoi(shapely.Point(4.3, 50.8))
    with pytest.raises(ConfigError, match="cannot read GeoJSON"):
        load_aoi(tmp_path / "missing.geojson")
    with pytest.raises(ConfigError):
        tiles_for_aoi((5, 50, 4, 51))  # west > east


def test_countries_from_natural_earth_span_zones_and_hemispheres():
    fra = tiles_for_aoi(load_country("FRA"))  # iso_a3 is -99 in Natural Earth: matched by name
    assert {32630, 32631, 32632} <= {t.grid.epsg for t in fra}  # mainland France over three zones
    assert 32622 not in {t.grid.epsg for t in fra}  # French Guiana: part of the outline, mapped when asked
    overseas = tiles_for_aoi(load_country("FRA"), parts=("metropolitan", "french-guiana"))
    assert 32622 in {t.grid.epsg for t in overseas}
    bel = tiles_for_aoi(load_country("BEL"))
    assert {t.grid.epsg for t in bel} == {32631, 32632}
    # Belgium is ~30 700 km2: 10.24 km tiles cover it with a rim, not a bounding box
    assert 30_700 / 10.24**2 < len(bel) < 1.5 * 30_700 / 10.24**2
    arg = tiles_for_aoi(load_country("ARG"))
    assert all(32718 <= t.grid.epsg <= 32722 for t in arg)  # southern hemisphere zones
    across = tiles_for_aoi((-50.1, -0.1, -49.9, 0.1), tile_size=1024)
    assert {t.grid.epsg for t in across} == {32622, 32722}
    ids = [t.id for t in bel]
    assert len(set(ids)) == len(ids) and ids == [t.id for t in tiles_for_aoi(load_country("BEL"))]
