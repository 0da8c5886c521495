"""Per-zone COGs -> one national COG per product in the country's output CRS, warped window by window.

Every UTM zone's tiles are mosaicked on their own grid first (:func:`cropmap.stages.mosaic.mosaic_tiles`);
this stage warps those zone COGs into the output CRS (an equal-area CRS by default, so that pixel counts
are areas) with GDAL (``rasterio.vrt.WarpedVRT``), by windows of ``window`` x ``window`` output pixels,
several at once in threads (:func:`_warped_windows`) and written in order: memory is bounded by a few
windows, whatever the country's size. The coordinate transformation is GDAL's approximation within
``tolerance`` source pixels (GDAL's default, 1/8: exact transforms of every pixel would cost hours for a
large country); the windows are fixed by the grid, so a rerun, another thread count or another machine
writes the same bytes. Every product is warped
with ``nearest`` (:data:`WARP_RESAMPLING`): a national pixel is one zone pixel's record, so its class is the
most probable band of its probability COG and its confidence that band's percent, as in the tiles (bilinear
probabilities keep the sum of 100 but broke both on 12 % of the pixels of the Victoria tiles:
docs/outputs.md). The COG's overviews are ``mode`` and ``average``
(:data:`cropmap.stages.mosaic.OVERVIEW_RESAMPLING`); colour table, class names, band descriptions and tags
come from the zone COGs, the label sidecars are written anew (:mod:`cropmap.stages.gis_styles`).

**Zone rule** (tiles of neighbouring zones overlap near the border): an output pixel takes the value of
the zone whose plain 6-degree UTM zone (and hemisphere) contains the pixel's centre, the same rule that
cut the country into zones when it was tiled (:func:`cropmap.core.grid.tiles_for_geometry`). Where that
zone has no value (its tiles stop short, or it failed), the other zones fill in, lowest EPSG code first.
The owner zones of the overlap's pixels are looked up on a lattice (:func:`_owner_map`), the same as
transforming every pixel centre, which made the time per pixel grow with the overlap's share.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyproj
import rasterio
import shapely
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from cropmap.errors import IncompatibleInputError, MosaicError
from cropmap.io import downloads, outputs, storage
from cropmap.io.storage import TEMP_MARK
from cropmap.io.outputs import atomic_path
from cropmap.stages.mosaic import OVERVIEW_RESAMPLING, MosaicResult, write_cog
from cropmap.stages.quicklook import write_quicklook
from cropmap.stages.gis_styles import sidecars
from cropmap.stages.stac_item import (MODEL_ITEM, Provenance, merge_provenance, model_item_link, season_years,
                                      write_stac_collection, write_stac_item)
from cropmap.stages.predict import NODATA
from cropmap.stages.tile_files import colormap_of, list_tiles, tile_tags

__all__ = ["WARP_RESAMPLING", "national_grid", "owner_zone", "write_national_cog", "national_mosaic", "tiles_by_zone"]

#: GDAL block cache of a national mosaic (MB): with it, peak memory stays flat whatever the area.
GDAL_CACHE_MB = 128
#: Most windows warped at once by default: each thread holds two windows and its own zone handles.
MAX_THREADS = 8
#: Lattice step (pixels) of the zone-rule lookup (:func:`_owner_map`): cells of 320 m at 10 m.
OWNER_STEP = 32
#: Warping of each product: none is interpolated, so the products of a pixel stay one pixel's (the class
#: the top probability, the confidence its percent).
WARP_RESAMPLING = {"class": Resampling.nearest, "confidence": Resampling.nearest,
                   "probability": Resampling.nearest, "ood": Resampling.nearest}


def owner_zone(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """EPSG code of the plain UTM zone (and hemisphere) holding each (lon, lat) point (vectorised
    :func:`cropmap.core.grid.utm_epsg`)."""
    zone = np.clip(np.floor((np.asarray(lon) + 180.0) / 6.0).astype(np.int64) + 1, 1, 60)
    return np.where(np.asarray(lat) >= 0, 32600, 32700) + zone


def tiles_by_zone(tile_dir: str | Path) -> dict[int, list[str]]:
    """``{epsg: tile ids}`` of the class tiles in a local folder, by each tile's own CRS (a header read
    each); a tile without an EPSG code raises :class:`IncompatibleInputError`."""
    zones: dict[int, list[str]] = {}
    for path in list_tiles(tile_dir, "class"):
        with rasterio.open(path) as src:
            epsg = src.crs.to_epsg() if src.crs else None
        if epsg is None:
            raise IncompatibleInputError(f"{path.name} has no EPSG CRS; tiles are on UTM grids")
        zones.setdefault(epsg, []).append(path.name.split(".")[0])
    return dict(sorted(zones.items()))


def national_grid(zone_cogs: Sequence[str | Path], crs: str, *, resolution: float = 10.0
                  ) -> tuple[Affine, int, int]:
    """``(transform, width, height)`` of the output grid covering every zone COG in ``crs``: square
    pixels of ``resolution`` metres, the origin on a multiple of the resolution (reruns and countries
    that share an output CRS share the pixel lattice)."""
    boxes = []
    for path in zone_cogs:
        with rasterio.open(path) as src:
            boxes.append(transform_bounds(src.crs, crs, *src.bounds, densify_pts=101))
    left, bottom = min(b[0] for b in boxes), min(b[1] for b in boxes)
    right, top = max(b[2] for b in boxes), max(b[3] for b in boxes)
    left, bottom = math.floor(left / resolution) * resolution, math.floor(bottom / resolution) * resolution
    right, top = math.ceil(right / resolution) * resolution, math.ceil(top / resolution) * resolution
    width, height = round((right - left) / resolution), round((top - bottom) / resolution)
    return Affine(resolution, 0.0, left, 0.0, -resolution, top), width, height


def write_national_cog(zone_cogs: Mapping[int, str | Path], path: str | Path, *, crs: str, product: str,
                       resolution: float = 10.0, window: int = 2048, blocksize: int = 512,
                       tolerance: float = 0.125, threads: int | None = None,
                       on_window: Callable[[int, int], None] | None = None) -> Path:
    """Warp the zone COGs of one product (``{epsg: path}``) into a validated COG at ``path`` in ``crs``
    (see the module docstring for the zone rule); returns ``path``. ``on_window(k, n)``: after the k-th of
    the n windows is written (a job's progress). ``threads`` windows are warped at
    once (default: the machine's CPUs, at most :data:`MAX_THREADS`); the bytes do not depend on it."""
    if not zone_cogs:
        raise MosaicError(f"no zone COG of {product} to make a national map from")
    epsgs = sorted(zone_cogs)
    metas = {}
    for e in epsgs:
        with rasterio.open(zone_cogs[e]) as src:
            metas[e] = (src.count, src.dtypes[0], src.crs)
    counts = {m[0] for m in metas.values()}
    if len(counts) != 1 or {m[1] for m in metas.values()} != {"uint8"}:
        raise IncompatibleInputError(f"{product} zone COGs differ in band count or dtype: "
                                     + ", ".join(f"EPSG:{e} {m[0]} x {m[1]}" for e, m in metas.items()))
    count = counts.pop()
    transform, width, height = national_grid([zone_cogs[e] for e in epsgs], crs, resolution=resolution)
    first = zone_cogs[epsgs[0]]
    tags, _ = tile_tags(first)
    with rasterio.open(first) as src:
        band_tags = [src.tags(b) for b in range(1, count + 1)]
        descriptions = list(src.descriptions)
    colormap = colormap_of(first) if product == "class" else None
    path = Path(path)
    # the warped raster is a step, not an output: a hidden temporary name beside the COG, removed after
    staged = path.with_name(f".{path.stem}.warped{TEMP_MARK}{path.suffix}")
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": "uint8", "crs": crs,
               "transform": transform, "nodata": NODATA, "tiled": True, "blockxsize": blocksize,
               "blockysize": blocksize, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
    with atomic_path(staged) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            warp = {"crs": crs, "transform": transform, "width": width, "height": height, "nodata": NODATA,
                    "resampling": WARP_RESAMPLING.get(product, Resampling.nearest), "src_nodata": NODATA,
                    "tolerance": tolerance}
            windows = [Window(col, row, min(window, width - col), min(window, height - row))
                       for row in range(0, height, window) for col in range(0, width, window)]
            for k, (win, data) in enumerate(_warped_windows(zone_cogs, warp, windows, count, threads=threads), 1):
                dst.write(data, window=win)
                if on_window is not None:
                    on_window(k, len(windows))
            dst.update_tags(**tags)
            for b in range(1, count + 1):
                dst.update_tags(b, **band_tags[b - 1])
                if descriptions[b - 1]:
                    dst.set_band_description(b, descriptions[b - 1])
            if colormap:
                dst.write_colormap(1, colormap)
        # GDAL reports a full disk while warping only as log lines, leaving a short file
        outputs.check_raster(tmp, what=f"the national {product} raster for {path.name}", last_block_only=True)
        keep = {k: v for k, v in tags.items() if k not in ("tiles", "product")}
        write_cog(tmp, path, resampling=OVERVIEW_RESAMPLING.get(product, "average"), blocksize=blocksize,
                  colormap=colormap, tags={**keep, "product": product, "zones": ",".join(f"EPSG:{e}" for e in epsgs),
                                           "zone_rule": "pixel centre's UTM zone, then lowest EPSG"})
    staged.unlink(missing_ok=True)
    return path


def _warped_windows(zone_cogs: Mapping[int, str | Path], warp: dict, windows: Sequence[Window], count: int, *,
                    threads: int | None = None) -> Iterator[tuple[Window, np.ndarray]]:
    """``(window, (count, h, w) uint8)`` of every window, in order, ``threads`` windows warped at once.

    GDAL releases the GIL while it reads and warps, so the threads run at once; a GDAL dataset is not
    thread-safe, so each thread opens its own zone COGs and ``WarpedVRT`` (``warp``: its keywords) and its
    own lon/lat transformer. GDAL fits its approximate transformation per read request, so a pixel's value
    depends on the windows (fixed by the grid), never on which thread reads one or when. At most two
    windows per thread are in flight: memory stays bounded by the window."""
    threads = max(1, threads or min(os.cpu_count() or 1, MAX_THREADS))
    footprints = {}
    for e, cog in zone_cogs.items():
        with rasterio.open(cog) as src:
            footprints[e] = _footprint(src, warp["crs"])
    local, opened, lock = threading.local(), [], threading.Lock()

    def one(win: Window) -> np.ndarray:
        if not hasattr(local, "vrts"):  # this thread's first window
            vrts = {}
            for e in sorted(zone_cogs):
                src = rasterio.open(zone_cogs[e])
                with lock:
                    opened.append(src)
                vrt = WarpedVRT(src, **warp)
                with lock:
                    opened.append(vrt)
                vrts[e] = (src, vrt, footprints[e])
            local.vrts, local.to_lonlat = vrts, pyproj.Transformer.from_crs(warp["crs"], 4326, always_xy=True)
        return _combine(local.vrts, win, warp["transform"], local.to_lonlat, count)

    try:
        with ThreadPoolExecutor(threads, thread_name_prefix="cropmap-national") as pool:
            pending: deque = deque()
            for win in windows:
                pending.append((win, pool.submit(one, win)))
                if len(pending) >= 2 * threads:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()
    finally:
        for handle in reversed(opened):  # each VRT before its source
            handle.close()


def _combine(vrts: dict, win: Window, transform: Affine, to_lonlat: pyproj.Transformer, count: int) -> np.ndarray:
    """One output window: each zone's warped values, the owner zone's where it has one."""
    out = np.full((count, int(win.height), int(win.width)), NODATA, dtype=np.uint8)
    box = shapely.box(*rasterio.windows.bounds(win, transform))
    reads = {e: vrt.read(window=win) for e, (_, vrt, footprint) in vrts.items() if footprint.intersects(box)}
    if not reads:
        return out
    if len(reads) == 1:
        return next(iter(reads.values()))
    for e in sorted(reads):  # any zone, lowest EPSG first, where the pixel is still empty ...
        data = reads[e]
        out = np.where((out == NODATA) & (data != NODATA), data, out)
    valid = {e: (data != NODATA).any(axis=0) for e, data in reads.items()}
    overlap = np.sum(list(valid.values()), axis=0) >= 2  # ... and the owner zone's in the overlap
    rows, cols = np.flatnonzero(overlap.any(axis=1)), np.flatnonzero(overlap.any(axis=0))
    if rows.size:  # the overlap's bounding box within the window: a strip along the border
        box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        at = rasterio.windows.transform(win, transform) * Affine.translation(int(cols[0]), int(rows[0]))
        owner = _owner_map(at, int(rows[-1] + 1 - rows[0]), int(cols[-1] + 1 - cols[0]), to_lonlat)
        for e, data in reads.items():
            take = overlap[box] & (owner == e) & valid[e][box]
            out[(slice(None), *box)] = np.where(take, data[(slice(None), *box)], out[(slice(None), *box)])
    return out


def _owner_map(transform: Affine, height: int, width: int, to_lonlat: pyproj.Transformer,
               step: int = OWNER_STEP) -> np.ndarray:
    """``(height, width)`` int32: :func:`owner_zone` of every pixel centre of a raster at ``transform``,
    the same as transforming every centre, at the cost of a lattice and the boundary's cells.

    The centres on a lattice every ``step`` pixels are transformed; a lattice cell whose four corners share
    one owner is that owner's throughout (a zone boundary is a meridian or the equator: within a few
    hundred metres a straight line in the output CRS, which cannot enter and leave a cell through one
    edge without changing a corner's owner); the centres of the other cells are transformed one by one."""
    def exact(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        return owner_zone(*to_lonlat.transform(*(transform * (c + 0.5, r + 0.5)))).astype(np.int32)

    lat_rows = np.unique(np.r_[np.arange(0, height, step), height - 1])
    lat_cols = np.unique(np.r_[np.arange(0, width, step), width - 1])
    if lat_rows.size < 2 or lat_cols.size < 2:  # one row or column: every centre
        return exact(*np.indices((height, width), dtype=float))
    grid = exact(*np.meshgrid(lat_rows.astype(float), lat_cols.astype(float), indexing="ij"))
    same = (grid[:-1, :-1] == grid[1:, :-1]) & (grid[:-1, :-1] == grid[:-1, 1:]) & (grid[:-1, :-1] == grid[1:, 1:])
    cell = np.ix_(np.minimum(np.searchsorted(lat_rows, np.arange(height), side="right") - 1, lat_rows.size - 2),
                  np.minimum(np.searchsorted(lat_cols, np.arange(width), side="right") - 1, lat_cols.size - 2))
    owner = grid[cell]
    rows, cols = np.nonzero(~same[cell])
    if rows.size:
        owner[rows, cols] = exact(rows.astype(float), cols.astype(float))
    return owner


def _footprint(src, crs: str):
    """The raster's outline (its data box, densified) in ``crs``: which windows it can reach."""
    left, bottom, right, top = src.bounds
    ring = shapely.segmentize(shapely.box(left, bottom, right, top), max(right - left, top - bottom) / 64)
    to_dst = pyproj.Transformer.from_crs(src.crs, crs, always_xy=True)
    return shapely.transform(ring, lambda xy: np.column_stack(to_dst.transform(xy[:, 0], xy[:, 1])))


def _zone_item(class_cog: storage.Location) -> dict | None:
    """The STAC item :func:`cropmap.stages.mosaic.mosaic_tiles` wrote beside a zone's class COG
    (``<name>_class.tif`` -> ``<name>.json``), if it is there and describes that COG; else None."""
    text = str(class_cog)
    if not text.endswith("_class.tif"):
        return None
    try:
        item = json.loads(storage.read_bytes(text[: -len("_class.tif")] + ".json"))
    except (OSError, ValueError):
        return None
    href = item.get("assets", {}).get("class", {}).get("href") if isinstance(item, dict) else None
    return item if href == f"./{storage.basename(class_cog)}" else None


def _zone_provenance(zone_products: Mapping[int, Mapping[str, storage.Location]]) -> Provenance:
    """The provenance of the zones' items (:func:`cropmap.stages.stac_item.merge_provenance`); zones whose
    COGs were predicted with another checkpoint or options (their ``cropmap_run_key`` tags differ) raise
    :class:`IncompatibleInputError`: one national map, one model. An item of another run than its COG
    counts as none."""
    keys, items = {}, {}
    for epsg, products in sorted(zone_products.items()):
        with downloads.open_raster(products["class"]) as src:
            keys[epsg] = src.tags().get("cropmap_run_key")
        item = _zone_item(products["class"])
        stale = item is not None and keys[epsg] and item.get("properties", {}).get("cropmap:run_key") not in (None, keys[epsg])
        items[f"EPSG:{epsg}"] = None if stale else item
    if len(set(keys.values()) - {None}) > 1:
        raise IncompatibleInputError("the zone COGs were predicted with different checkpoints or options (run keys "
                                     + ", ".join(f"EPSG:{e} {k}" for e, k in keys.items())
                                     + "); mosaic the zones of one run")
    return merge_provenance(items)


def _model_link(out_dir: storage.Location) -> dict | None:
    """The link to the STAC MLM item of the folder's model (:data:`MODEL_ITEM`), if the folder holds one."""
    location = storage.join(out_dir, MODEL_ITEM)
    try:
        item = json.loads(storage.read_bytes(location)) if storage.exists(location) else None
    except (OSError, ValueError):
        return None
    is_mlm = isinstance(item, dict) and any("/mlm/" in e for e in item.get("stac_extensions", []))
    return model_item_link(item, f"./{MODEL_ITEM}") if is_mlm else None


def national_mosaic(zone_products: Mapping[int, Mapping[str, storage.Location]], out_dir: storage.Location, *,
                    name: str, crs: str, resolution: float = 10.0, window: int = 2048,
                    missing: Mapping[str, str] | None = None, threads: int | None = None,
                    place: str | None = None,
                    on_window: Callable[[str, int, int], None] | None = None) -> MosaicResult:
    """The national COG of every product the zones share (``{epsg: {product: zone COG}}``), then its STAC
    item and quicklook, in ``out_dir`` (a folder or an fsspec URL: remote zone COGs are read from local
    copies and the outputs built in a scratch folder, then uploaded whole, the item last). ``missing``
    (tile or zone -> why): what the run could not map, recorded in the item as a ``partial`` map. The item
    carries the provenance of the zones' items (:func:`_zone_provenance`; zones of different runs are refused
    before any warp) and links the model's MLM item when ``out_dir`` holds one (:data:`MODEL_ITEM`).
    ``threads``: windows warped at once (:func:`write_national_cog`). ``place``: the quicklook's title names the
    map by it (the country's name and code), else by the file's. ``on_window(product, k, n)``: after each
    window, the k-th of the n of all products (a job's progress)."""
    products = [p for p in OVERVIEW_RESAMPLING if all(p in zp for zp in zone_products.values())]
    if "class" not in products:
        raise MosaicError(f"{name}: the zones share no class COG to make a national map from")
    out_dir = storage.as_location(out_dir)
    provenance = _zone_provenance(zone_products)
    # GDAL's block cache would otherwise grow with the area read, up to 5 % of the machine's memory.
    # The zone COGs' .aux.xml label sidecars are for GIS users, not inputs: read without them, a zone COG
    # gives the same national COG beside its sidecar (a disk) as from a downloaded copy (a bucket)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, GDAL_PAM_ENABLED="NO"), \
            tempfile.TemporaryDirectory(prefix="cropmap-national-") as scratch:
        local_out = out_dir if isinstance(out_dir, Path) else Path(scratch)
        cogs: dict[str, Path] = {}
        for i, product in enumerate(products):
            zones = {e: downloads.local_copy(zp[product]) for e, zp in zone_products.items()}
            done = (None if on_window is None else  # every product has the same windows: the grid's
                    lambda k, n, i=i, product=product: on_window(product, i * n + k, len(products) * n))
            cogs[product] = write_national_cog(zones, local_out / f"{name}_{product}.tif", crs=crs, product=product,
                                               resolution=resolution, window=window, threads=threads, on_window=done)
        years = season_years(provenance.start, provenance.end) if provenance.start and provenance.end else None
        png = write_quicklook(cogs["class"], local_out / f"{name}_quicklook.png", years=years,
                              place=place)
        item = write_stac_item(cogs, local_out / f"{name}.json", name=name, quicklook=png, missing=missing,
                               provenance=provenance, model_link=_model_link(out_dir))
        collection = write_stac_collection(local_out, collection_id=name.split("_")[0])
        if local_out == out_dir:
            return MosaicResult(cogs, item, png, (), collection)
        published = {p: outputs.publish(c, storage.join(out_dir, c.name)) for p, c in cogs.items()}
        for c in cogs.values():
            for sidecar in sidecars(c):
                outputs.publish(sidecar, storage.join(out_dir, sidecar.name))
        png_url = outputs.publish(png, storage.join(out_dir, png.name))
        item_url = outputs.publish(item, storage.join(out_dir, item.name))
        return MosaicResult(published, item_url, png_url, (),
                            outputs.publish(collection, storage.join(out_dir, collection.name)))
