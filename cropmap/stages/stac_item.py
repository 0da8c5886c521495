"""The STAC Item describing a country's mosaics (projection, raster and classification extensions)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pystac
import rasterio
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from rasterio.warp import transform_geom

from cropmap import __version__
from cropmap.core.season import Season
from cropmap.errors import MosaicError
from cropmap.io.storage import atomic_path
from cropmap.stages.predict import NODATA, RUN_FILE
from cropmap.stages.tile_files import class_legend, list_tiles, tile_tags

__all__ = ["write_stac_item"]


def _slug(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z_-]+", "-", text).strip("-") or "class"



def write_stac_item(cogs: dict[str, Path], path: str | Path, *, name: str, tile_dir: str | Path | None = None,
                    quicklook: Path | None = None) -> Path:
    """A STAC Item (JSON) describing the mosaics: geometry (EPSG:4326), season as start/end
    datetimes, projection extension (code, shape, transform, bbox), raster extension (nodata, data
    type, resolution) and classification extension (values, names, colours) on the assets, and the
    provenance under ``cropmap:*`` (model card, run options, source items, tiles, software version).
    Asset hrefs are relative to the item. No timestamps: a rerun writes the same bytes."""
    path = Path(path)
    with rasterio.open(cogs["class"]) as src:
        crs, transform, shape, bounds, tags = src.crs, src.transform, (src.height, src.width), src.bounds, src.tags()
    ring = [(bounds.left, bounds.bottom), (bounds.right, bounds.bottom), (bounds.right, bounds.top),
            (bounds.left, bounds.top), (bounds.left, bounds.bottom)]
    geom = transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]}, precision=7)
    lons, lats = zip(*geom["coordinates"][0])
    props: dict = {"cropmap:software_version": __version__}
    start = end = None
    if "season" in tags and tags.get("season_year"):
        first, last = Season(**json.loads(tags["season"])).window(int(tags["season_year"]))
        start, end = f"{first.isoformat()}T00:00:00Z", f"{last.isoformat()}T23:59:59Z"
    # the map's season and year, the model's (another hemisphere's window, another year) and the offset
    for key in ("season", "model_season"):
        if tags.get(key):
            props[f"cropmap:{key}"] = json.loads(tags[key])
    for key in ("season_year", "model_season_year", "season_offset_months"):
        if str(tags.get(key, "")).strip():
            props[f"cropmap:{key}"] = int(tags[key])
    run = Path(tile_dir) / RUN_FILE if tile_dir is not None else None
    if run is not None and run.exists():
        record = json.loads(run.read_text())
        props.update({"cropmap:model_card": record.get("model_card"), "cropmap:options": record.get("options"),
                      "cropmap:run_key": record.get("run_key")})
    if tile_dir is not None:
        sources, tiles = set(), []
        for tile in list_tiles(Path(tile_dir), "class"):
            t, _ = tile_tags(tile)
            tiles.append(t.get("tile_id", tile.name.split(".")[0]))
            sources.update(json.loads(t.get("source_items", "[]")))
        props.update({"cropmap:tiles": tiles, "cropmap:source_items": sorted(sources)})
    if start is None:  # STAC needs a date; without a season there is none to give
        raise MosaicError(f"{cogs['class'].name} carries no season; was it written by cropmap predict?")
    item = pystac.Item(
        id=name, geometry=geom, bbox=[min(lons), min(lats), max(lons), max(lats)], datetime=None,
        properties=props, start_datetime=pystac.utils.str_to_datetime(start),
        end_datetime=pystac.utils.str_to_datetime(end),
    )
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = crs.to_epsg()
    proj.code = f"EPSG:{epsg}" if epsg else None
    if epsg is None:
        proj.wkt2 = crs.to_wkt()
    proj.shape, proj.transform = list(shape), list(transform)[:6]
    proj.bbox = [bounds.left, bounds.bottom, bounds.right, bounds.top]
    names, colours = class_legend(cogs["class"])
    for product, cog in cogs.items():
        with rasterio.open(cog) as src:
            count = src.count
        asset = pystac.Asset(href=f"./{cog.name}", media_type=pystac.MediaType.COG, roles=["data"],
                             title={"class": "crop class", "confidence": "confidence (percent)",
                                    "probability": "class probabilities (percent)"}.get(product, product))
        item.add_asset(product, asset)
        RasterExtension.ext(asset, add_if_missing=True).bands = [
            RasterBand.create(nodata=NODATA, data_type=DataType.UINT8, spatial_resolution=abs(transform.a),
                              unit=None if product == "class" else "percent") for _ in range(count)]
        if product == "class":
            ClassificationExtension.ext(asset, add_if_missing=True).classes = [
                Classification.create(value=i, description=n, name=_slug(n),
                                      color_hint="{:02X}{:02X}{:02X}".format(*colours.get(i, (0, 0, 0))[:3]))
                for i, n in enumerate(names)]
    if quicklook is not None:
        item.add_asset("quicklook", pystac.Asset(href=f"./{quicklook.name}", media_type=pystac.MediaType.PNG,
                                                 roles=["overview"], title="quicklook with legend"))
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(item.to_dict(include_self_link=False), indent=2) + "\n")
    return path
