"""STAC searches shared by tiles: one search per UTM zone block of 100 x 100 km and season, not per tile.

A country's tiles are grouped into blocks (:func:`search_blocks`: the tile's zone and its 100 km square
of that zone's grid, so a block never mixes zones or hemispheres, and so never seasons). Each block is
searched once (:func:`search_block`: every page of the catalog's answer) over the lon/lat box of its
tiles and the season window plus margin, and the items are written to
``<run>/searches/<block>.json`` (a GeoJSON FeatureCollection of STAC items, published whole: a rerun
reuses it). A tile then takes the items whose footprint meets it (:func:`items_for_tile`), parsed once
per block and process.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import pystac
import shapely
from shapely.geometry import shape

from cropmap.core.grid import Tile, tile_from_id
from cropmap.io import outputs, storage
from cropmap.io.stac import search_items, season_search_window
from cropmap.jobs.country_run import CountryRun

__all__ = ["BLOCK_METRES", "BlockSearch", "search_blocks", "search_block", "items_for_tile"]

#: Side of a search block in metres of the zone's grid.
BLOCK_METRES = 100_000.0


@dataclass(frozen=True)
class BlockSearch:
    """A block's search: where its items are, how many, and whether it was searched now or reused."""

    block: str
    path: str
    n_items: int
    status: str  # "searched" | "skipped"


def _block_of(tile: Tile) -> str:
    xmin, ymin, _, _ = tile.bounds
    return f"{tile.grid.epsg}_{math.floor(xmin / BLOCK_METRES)}_{math.floor(ymin / BLOCK_METRES)}"


def search_blocks(tile_ids: Sequence[str]) -> dict[str, list[str]]:
    """``{block id: tile ids}``, blocks in the order their first tile comes."""
    blocks: dict[str, list[str]] = {}
    for tile_id in tile_ids:
        blocks.setdefault(_block_of(tile_from_id(tile_id)), []).append(tile_id)
    return blocks


def block_path(run: CountryRun, block: str) -> storage.Location:
    return storage.join(run.root, "searches", f"{block}.json")


def search_block(run: CountryRun, block: str, tile_ids: Sequence[str]) -> BlockSearch:
    """Search the run's catalog once for the block's tiles (their lon/lat box, the season of their
    hemisphere plus the catalog's margin) and publish the items; a finished search is reused."""
    path = block_path(run, block)
    if storage.exists(path):
        return BlockSearch(block, str(path), len(_parse(str(path), _version(path))), "skipped")
    tiles = [tile_from_id(t) for t in tile_ids]
    boxes = [t.lonlat_bbox() for t in tiles]
    bbox = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
    catalog, season = run.config.catalog, run.season_of(tiles[0])
    start, end = season_search_window(season, run.year, catalog.margin_days)
    items = search_items(catalog, bbox=bbox, start=start, end=end)
    doc = {"type": "FeatureCollection", "bbox": list(bbox), "cropmap:window": [str(start), str(end)],
           "features": [it.to_dict(include_self_link=False) for it in items]}
    outputs.write_text(path, json.dumps(doc))
    return BlockSearch(block, str(path), len(items), "searched")


def items_for_tile(path: storage.Location, tile: Tile) -> list[pystac.Item]:
    """The items of a block's search whose footprint meets ``tile`` (copies: a caller may change them)."""
    area = shapely.box(*tile.lonlat_bbox())
    out = []
    for item, footprint in _parse(str(path), _version(path)):
        if footprint.intersects(area):
            out.append(item.clone())
    return out


def _version(path: storage.Location) -> str:
    location = storage.as_location(path)
    if not storage.is_remote(location):
        stat = location.stat()
        return f"{stat.st_mtime_ns}-{stat.st_size}"
    fs, key = storage.filesystem(location)
    info = fs.info(key)
    return str(info.get("ETag") or info.get("size"))


@functools.lru_cache(maxsize=16)
def _parse(path: str, version: str) -> list[tuple[pystac.Item, object]]:
    # once per block, file version and process: every tile of the block a worker builds reuses it
    doc = json.loads(storage.read_bytes(path))
    out = []
    for feature in doc["features"]:
        item = pystac.Item.from_dict(feature, preserve_dict=False)
        out.append((item, shape(item.geometry) if item.geometry else shapely.box(*item.bbox)))
    return out
