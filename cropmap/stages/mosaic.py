"""Tile predictions -> one Cloud Optimized GeoTIFF per product, a STAC Item and a quicklook.

Pipeline (memory bounded by a block, never by the country):

1. :func:`tile_grid`: the tiles' footprints on one pixel grid (same CRS, resolution, aligned origins),
   no pixel read;
2. :func:`write_vrt`: a GDAL VRT that places every tile at its pixel offset (nodata where no tile);
3. :func:`write_cog`: rio-cogeo copies the VRT block by block into a COG (DEFLATE, internal
   overviews: ``mode`` for classes, ``average`` for confidence and probabilities, nodata ignored),
   validated with ``cog_validate(strict=True)``;
4. :func:`write_stac_item` (projection, raster and classification extensions, provenance, every COG's
   label sidecars as assets) and :func:`write_quicklook` (PNG read from the overviews, with a legend).

Products: ``class``, ``confidence``, ``probability`` (one band per class, when the tiles were predicted
with ``PredictOptions.probabilities`` or smoothing) and ``ood``, each mosaicked when the tiles have it.
With spatial smoothing (``PredictOptions.smoothing``, or the ``smoothing`` argument) the class,
confidence and probability COGs are those of the zone's probabilities smoothed window by window across
tile edges (:func:`cropmap.stages.smoothing.smooth_zone`); the tile GeoTIFFs stay unsmoothed.

Everything is written to a temporary name and renamed; the outputs hold no timestamps, so a rerun on
the same tiles writes byte-identical files. With an object store (``s3://...``) for the tiles or the
maps, :func:`mosaic_tiles` downloads the tiles to a scratch folder, builds the mosaic there the same
way and uploads each output whole (:mod:`cropmap.io.storage`): the COGs are the same bytes either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from affine import Affine
from rio_cogeo.cogeo import cog_translate, cog_validate
from rio_cogeo.profiles import cog_profiles

from cropmap.core.smoothing import BayesSmoothing
from cropmap.errors import DataNotFoundError, IncompatibleInputError, MosaicError, StorageError
from cropmap.io import downloads, outputs, storage
from cropmap.io.storage import is_temporary
from cropmap.io.outputs import atomic_path, scratch_path
from cropmap.stages.gis_styles import sidecars, write_gis_styles
from cropmap.stages.predict import NODATA, RUN_FILE
from cropmap.stages.quicklook import write_quicklook
from cropmap.stages.smoothing import SMOOTHED_PRODUCTS, run_smoothing, smooth_zone
from cropmap.stages.stac_item import write_stac_collection, write_stac_item
from cropmap.stages.tile_files import colormap_of, list_tiles, tile_tags

__all__ = [
    "MosaicResult",
    "TileGrid",
    "OVERVIEW_RESAMPLING",
    "tile_grid",
    "write_vrt",
    "write_cog",
    "write_stac_item",
    "write_quicklook",
    "mosaic_tiles",
]

#: Overview resampling per product: a class is never averaged.
OVERVIEW_RESAMPLING = {"class": "mode", "confidence": "average", "probability": "average", "ood": "average"}


@dataclass(frozen=True)
class TileGrid:
    """The mosaic's grid: union of the tiles' footprints on their common pixel grid.

    ``offsets[i]`` is the (column, row) of tile ``paths[i]``'s upper-left pixel in the mosaic.
    """

    crs: rasterio.crs.CRS
    transform: Affine
    width: int
    height: int
    count: int
    paths: tuple[Path, ...]
    offsets: tuple[tuple[int, int], ...]
    shapes: tuple[tuple[int, int], ...]  # (height, width) of each tile

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) in the CRS units (metres)."""
        t = self.transform
        return (t.c, t.f + self.height * t.e, t.c + self.width * t.a, t.f)


@dataclass(frozen=True)
class MosaicResult:
    """What :func:`mosaic_tiles` wrote: ``Path`` s, or URLs for an object store."""

    cogs: dict[str, storage.Location]
    stac_item: storage.Location | None
    quicklook: storage.Location | None
    tile_ids: tuple[str, ...]
    collection: storage.Location | None = None  # the map folder's STAC Collection (collection.json)


def tile_grid(paths: Sequence[str | Path]) -> TileGrid:
    """Check that the tile GeoTIFFs share one pixel grid and place them on it (metadata only).

    Raises :class:`IncompatibleInputError` for another CRS, resolution, band count or dtype, a tile
    off the common pixel grid, or two tiles that overlap.
    """
    if not paths:
        raise DataNotFoundError("no tile outputs to mosaic; run `cropmap predict` first")
    metas = []
    for p in paths:
        with rasterio.open(p) as src:
            metas.append((Path(p), src.crs, src.transform, src.width, src.height, src.count, src.dtypes[0]))
    first = metas[0]
    res_x, res_y = first[2].a, first[2].e
    for path, crs, t, _, _, count, dtype in metas[1:]:
        if crs != first[1] or (t.a, t.e, t.b, t.d) != (res_x, res_y, 0.0, 0.0) or count != first[5] or dtype != first[6]:
            raise IncompatibleInputError(
                f"{path.name}: CRS {crs}, pixel size ({t.a}, {t.e}), {count} x {dtype} differ from "
                f"{first[0].name} ({first[1]}, ({res_x}, {res_y}), {first[5]} x {first[6]}); "
                "mosaic tiles of one grid (one UTM zone) at a time"
            )
    x0 = min(m[2].c for m in metas)
    y0 = max(m[2].f for m in metas)
    offsets, shapes = [], []
    for path, _, t, w, h, _, _ in metas:
        col, row = (t.c - x0) / res_x, (t.f - y0) / res_y
        if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
            raise IncompatibleInputError(f"{path.name} is off the pixel grid of the other tiles by a fraction of a pixel")
        offsets.append((int(round(col)), int(round(row))))
        shapes.append((h, w))
    width = max(c + s[1] for (c, _), s in zip(offsets, shapes))
    height = max(r + s[0] for (_, r), s in zip(offsets, shapes))
    _check_overlaps(offsets, shapes, [m[0] for m in metas])
    return TileGrid(first[1], Affine(res_x, 0.0, x0, 0.0, res_y, y0), width, height, first[5],
                    tuple(m[0] for m in metas), tuple(offsets), tuple(shapes))


def _check_overlaps(offsets: list[tuple[int, int]], shapes: list[tuple[int, int]], paths: list[Path]) -> None:
    """Raise if two tile rectangles share a pixel. Vectorised per tile: O(n^2) comparisons in NumPy,
    about a second for 10,000 tiles, with memory O(n) (no country-sized pixel map)."""
    col, row = np.array(offsets, dtype=np.int64).T.reshape(2, -1)
    h, w = np.array(shapes, dtype=np.int64).T.reshape(2, -1)
    for i in range(len(offsets)):
        j = np.arange(i + 1, len(offsets))
        hit = (col[j] < col[i] + w[i]) & (col[i] < col[j] + w[j]) & (row[j] < row[i] + h[i]) & (row[i] < row[j] + h[j])
        if hit.any():
            raise IncompatibleInputError(
                f"{paths[i].name} overlaps {paths[j[hit][0]].name}; each pixel must come from one tile")


def write_vrt(grid: TileGrid, path: str | Path, *, colormap: dict | None = None,
              band_tags: Sequence[dict] | None = None, descriptions: Sequence[str] | None = None) -> Path:
    """A GDAL VRT placing every tile at its offset; uncovered pixels read as nodata (255)."""
    t = grid.transform
    lines = [f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">',
             f"  <SRS>{escape(grid.crs.to_wkt())}</SRS>",
             f"  <GeoTransform>{t.c!r}, {t.a!r}, 0.0, {t.f!r}, 0.0, {t.e!r}</GeoTransform>"]
    for b in range(1, grid.count + 1):
        lines.append(f'  <VRTRasterBand dataType="Byte" band="{b}">')
        lines.append(f"    <NoDataValue>{NODATA}</NoDataValue>")
        if descriptions:
            lines.append(f"    <Description>{escape(descriptions[b - 1])}</Description>")
        if colormap and b == 1:
            lines.append("    <ColorInterp>Palette</ColorInterp>\n    <ColorTable>")
            for i in range(256):
                c = colormap.get(i, (0, 0, 0, 0))
                lines.append(f'      <Entry c1="{c[0]}" c2="{c[1]}" c3="{c[2]}" c4="{c[3]}"/>')
            lines.append("    </ColorTable>")
        if band_tags:
            lines.append("    <Metadata>")
            lines += [f"      <MDI key={quoteattr(k)}>{escape(str(v))}</MDI>" for k, v in band_tags[b - 1].items()]
            lines.append("    </Metadata>")
        for p, (c, r), (h, w) in zip(grid.paths, grid.offsets, grid.shapes):
            lines += ["    <SimpleSource>",
                      f'      <SourceFilename relativeToVRT="0">{escape(str(Path(p).resolve()))}</SourceFilename>',
                      f"      <SourceBand>{b}</SourceBand>",
                      f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>',
                      f'      <DstRect xOff="{c}" yOff="{r}" xSize="{w}" ySize="{h}"/>',
                      "    </SimpleSource>"]
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_cog(source: str | Path, path: str | Path, *, resampling: str, blocksize: int = 512,
              colormap: dict | None = None, tags: dict | None = None) -> Path:
    """Copy ``source`` (a VRT or raster) block by block into a validated COG at ``path``.

    DEFLATE, ``blocksize`` x ``blocksize`` internal tiles (a multiple of 16), overviews by
    ``resampling`` down to one block, band tags and descriptions forwarded, dataset ``tags`` added.
    With a ``product`` tag (class, confidence, probability, ood) the GIS labels are written beside it
    (:func:`cropmap.stages.gis_styles.write_gis_styles`: ``<path>.aux.xml`` and a ``.qml`` style).
    Raises :class:`MosaicError` if ``rio_cogeo.cogeo.cog_validate(strict=True)`` rejects the result.
    """
    if blocksize % 16:
        raise MosaicError(f"blocksize must be a multiple of 16, got {blocksize}")
    profile = {**cog_profiles.get("deflate"), "blockxsize": blocksize, "blockysize": blocksize}
    path = Path(path)
    with rasterio.open(source) as src:
        longest = max(src.width, src.height)
    # overviews until the LONGER side fits one block: rio-cogeo's default stops at the shorter side, so a
    # strip (a country 530 x 260 px at 10 m) got none and failed validation
    levels = max(0, int(np.ceil(np.log2(longest / blocksize)))) if longest > blocksize else 0
    with atomic_path(path) as tmp:
        # in_memory=False: the intermediate raster goes to disk, never the whole country in RAM
        try:
            cog_translate(source, tmp, profile, nodata=NODATA, overview_resampling=resampling, in_memory=False,
                          overview_level=levels,
                          quiet=True, forward_band_tags=True, colormap=colormap, additional_cog_metadata=tags,
                          config={"GDAL_NUM_THREADS": "1", "GDAL_TIFF_OVR_BLOCKSIZE": str(blocksize),
                                  "GDAL_CACHEMAX": 128})
        except RasterioIOError as err:
            if "write" not in str(err).lower():  # a source that cannot be read says so itself
                raise
            # GDAL's "Write failed": the disk (or the quota) is full
            raise StorageError(f"could not write {path} (disk full or quota?): {str(err).splitlines()[0]}") from err
        valid, errors, warnings = cog_validate(tmp, strict=True, quiet=True)
        if not valid:
            raise MosaicError(f"{path.name} is not a valid COG: {'; '.join(errors + warnings)}")
    _write_labels_of(path, tags or {}, colormap)
    return path


def _write_labels_of(cog: Path, tags: dict, colormap: dict | None) -> None:
    """The GIS label sidecars of a product COG, from its ``product`` and ``class_names`` tags."""
    if "product" not in tags:
        return
    with rasterio.open(cog) as src:
        count = src.count
    write_gis_styles(cog, product=tags["product"], names=json.loads(tags.get("class_names", "[]")),
                 colormap=colormap, count=count)


def mosaic_tiles(
    tile_dir: storage.Location,
    out_dir: storage.Location,
    *,
    name: str = "cropmap",
    products: Sequence[str] | None = None,
    blocksize: int = 512,
    stac: bool = True,
    quicklook: bool = True,
    tile_ids: Sequence[str] | None = None,
    missing: Mapping[str, str] | None = None,
    smoothing: BayesSmoothing | None | Literal["run"] = "run",
) -> MosaicResult:
    """Mosaic the tile GeoTIFFs of :func:`cropmap.stages.predict.write_tile_predictions` in ``tile_dir`` (only
    those of ``tile_ids`` when given: one UTM zone's, or one run's plan); ``missing`` (tile id -> why)
    are the plan's tiles that failed, recorded in the STAC item (:func:`~cropmap.stages.stac_item.write_stac_item`).

    Writes ``<out_dir>/<name>_<product>.tif`` (COG, uint8, nodata 255) for each product present
    (``class``, ``confidence``, ``probability``) or listed in ``products``, then ``<name>.json`` (STAC
    Item) and ``<name>_quicklook.png``. Tiles are ``<tile_id>.<product>.tif``; temporary names left by
    an interrupted run are ignored. Either folder may be an fsspec URL (``s3://bucket/...``): remote
    tiles are downloaded to a scratch folder (``$TMPDIR``, about the size of the tiles plus the COGs),
    the mosaic is built there and each output is uploaded whole, the STAC item last.

    ``smoothing``: ``"run"`` smooths as the tiles' ``run.json`` says (``PredictOptions.smoothing``; no
    ``run.json``: not at all), None never, a :class:`~cropmap.core.smoothing.BayesSmoothing` with it; the
    class, confidence and probability COGs then come from the smoothed probabilities, which the tiles must
    hold (:class:`IncompatibleInputError` otherwise).
    """
    tile_dir, out_dir = storage.as_location(tile_dir), storage.as_location(out_dir)
    if not (storage.is_remote(tile_dir) or storage.is_remote(out_dir)):
        return _mosaic_local(tile_dir, out_dir, name=name, products=products, blocksize=blocksize, stac=stac,
                             quicklook=quicklook, tile_ids=tile_ids, missing=missing, smoothing=smoothing)
    with tempfile.TemporaryDirectory(prefix="cropmap-mosaic-") as scratch:
        local_tiles = tile_dir
        if storage.is_remote(tile_dir):
            local_tiles = Path(scratch) / "tiles"
            sources = storage.list_files(tile_dir, "*.*.tif")
            if tile_ids is not None:
                wanted = set(tile_ids)
                sources = [s for s in sources if storage.basename(s).split(".")[0] in wanted]
            if not sources:
                raise DataNotFoundError(f"{tile_dir} holds no tile GeoTIFFs (*.class.tif); run `cropmap predict` first")
            run = storage.join(tile_dir, RUN_FILE)
            downloads.fetch(sources + ([run] if storage.exists(run) else []), local_tiles)
        local_out = Path(scratch) / "maps" if storage.is_remote(out_dir) else out_dir
        result = _mosaic_local(local_tiles, local_out, name=name, products=products, blocksize=blocksize,
                               stac=stac, quicklook=quicklook, tile_ids=tile_ids, missing=missing,
                               smoothing=smoothing)
        if local_out == out_dir:
            return result

        def publish(path: Path | None) -> storage.Location | None:
            return None if path is None else outputs.publish(path, storage.join(out_dir, path.name))

        # the item last: it points at the others, so it appears only when they are there
        cogs = {product: publish(path) for product, path in result.cogs.items()}
        for path in result.cogs.values():
            for sidecar in sidecars(path):
                publish(sidecar)
        png = publish(result.quicklook)
        return MosaicResult(cogs, publish(result.stac_item), png, result.tile_ids, publish(result.collection))


def _smoothed(paths: list[Path], tile_ids: tuple[str, ...], stem: Path, params: BayesSmoothing, blocksize: int,
              scratch: contextlib.ExitStack) -> dict[str, Path]:
    """The zone's smoothed class, confidence and probability rasters (scratch files removed by ``scratch``)."""
    if tuple(p.name.split(".")[0] for p in paths) != tile_ids:
        raise IncompatibleInputError(f"smoothing needs every tile's probabilities ({stem.parent} holds "
                                     f"{len(paths)} of {len(tile_ids)}); predict with smoothing on, which writes them")
    vrt = scratch.enter_context(scratch_path(stem.with_name(f"{stem.name}_smoothing.vrt")))
    write_vrt(tile_grid(paths), vrt)
    out = {p: scratch.enter_context(scratch_path(stem.with_name(f"{stem.name}_{p}.smoothed.tif")))
           for p in SMOOTHED_PRODUCTS}
    return smooth_zone(vrt, out, params, blocksize=blocksize)


def _mosaic_local(tile_dir: Path, out_dir: Path, *, name: str, products: Sequence[str] | None, blocksize: int,
                  stac: bool, quicklook: bool, tile_ids: Sequence[str] | None = None,
                  missing: Mapping[str, str] | None = None,
                  smoothing: BayesSmoothing | None | Literal["run"] = "run") -> MosaicResult:
    wanted = None if tile_ids is None else set(tile_ids)

    def tiles_of(product: str) -> list[Path]:
        return [p for p in list_tiles(tile_dir, product) if wanted is None or p.name.split(".")[0] in wanted]

    if not tile_dir.is_dir():
        raise DataNotFoundError(f"tile folder {tile_dir} not found; run `cropmap predict` first")
    found = {p.name.split(".")[-2] for p in tile_dir.glob("*.*.tif") if not is_temporary(p)}
    products = [p for p in OVERVIEW_RESAMPLING if p in found] if products is None else list(products)
    if "class" not in products:
        raise DataNotFoundError(f"{tile_dir} holds no class tiles (*.class.tif); run `cropmap predict` first")
    class_tiles = tiles_of("class")
    if not class_tiles:
        raise DataNotFoundError(f"{tile_dir} holds none of the {len(wanted or ())} class tiles asked for; "
                                "run `cropmap predict` first")
    tile_ids = tuple(p.name.split(".")[0] for p in class_tiles)
    keys = {p.name.split(".")[0]: tile_tags(p)[0].get("cropmap_run_key") for p in class_tiles}
    if len(set(keys.values())) > 1:  # another checkpoint or options on part of the tiles: never mix them
        first = next(iter(keys.values()))
        odd = sorted(t for t, k in keys.items() if k != first)
        raise IncompatibleInputError(
            f"{tile_dir}: tiles {', '.join(odd[:5])} were predicted with another checkpoint or options than "
            f"{next(iter(keys))}; rerun `cropmap predict` on all tiles with one checkpoint")
    params = run_smoothing(tile_dir) if smoothing == "run" else smoothing
    cogs: dict[str, Path] = {}
    with contextlib.ExitStack() as scratch:  # the smoothed rasters are steps too: removed whatever happens
        smoothed = (_smoothed(tiles_of("probability"), tile_ids, out_dir / name, params, blocksize, scratch)
                    if params is not None else {})
        for product in products:
            paths = tiles_of(product)
            if tuple(p.name.split(".")[0] for p in paths) != tile_ids:
                raise IncompatibleInputError(
                    f"{tile_dir}: the {product} tiles differ from the class tiles; rerun predict")
            grid = tile_grid(paths)
            if product in smoothed:  # the zone's smoothed raster in place of its tiles: one source, the whole grid
                grid = dataclasses.replace(grid, paths=(smoothed[product],), offsets=((0, 0),),
                                           shapes=((grid.height, grid.width),))
            tags, _ = tile_tags(paths[0])
            with rasterio.open(paths[0]) as src:
                descriptions = [d or "" for d in src.descriptions]
                band_tags = [src.tags(b) for b in range(1, src.count + 1)]
            colormap = colormap_of(paths[0]) if product == "class" else None
            keep = {k: tags[k] for k in ("class_names", "model_name", "season", "season_year", "model_season",
                                         "model_season_year", "season_offset_months", "cropmap_run_key") if k in tags}
            cog = out_dir / f"{name}_{product}.tif"
            # the VRT is a step, not an output: a hidden name, removed whatever happens (a killed run's by the next)
            with scratch_path(out_dir / f"{name}_{product}.vrt") as vrt:
                write_vrt(grid, vrt, colormap=colormap, band_tags=band_tags, descriptions=descriptions)
                smoothed_tag = ({"cropmap_smoothing": json.dumps(dataclasses.asdict(params))}
                                if product in smoothed else {})
                write_cog(vrt, cog, resampling=OVERVIEW_RESAMPLING[product], blocksize=blocksize, colormap=colormap,
                          tags={**keep, "product": product, "tiles": str(len(paths)), **smoothed_tag})
            cogs[product] = cog
    png = write_quicklook(cogs["class"], out_dir / f"{name}_quicklook.png") if quicklook else None
    item = write_stac_item(cogs, out_dir / f"{name}.json", name=name, tile_dir=tile_dir, missing=missing,
                           quicklook=png) if stac else None
    # one collection per map folder, named by the items' prefix (the country code of <code>_<epsg>)
    collection = write_stac_collection(out_dir, collection_id=name.split("_")[0]) if stac else None
    return MosaicResult(cogs, item, png, tile_ids, collection)


