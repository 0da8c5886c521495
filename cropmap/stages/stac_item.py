"""The STAC Item describing a country's mosaics, and the Collection of a map folder's items.

Extensions: projection v2.0.0, raster v1.1.0, file v2.1.0 (size and sha2-256 multihash of every
asset) and classification v1.1.0 (the newest whose schema is in reach: pystac defaults to v2.0.0,
whose field names differ; v1.1.0 has no nodata flag, so nodata is declared as a class of value 255
carrying ``"nodata": true``, the v2.0.0 field, and in ``raster:bands``). The scenes a map was made
from are ``derived_from`` links to their STAC items (when the cubes recorded their hrefs), besides
their ids in ``cropmap:source_items``; a national map's item gathers the provenance of its zones'
items (:func:`merge_provenance`) and links its model's STAC MLM item (:data:`MODEL_ITEM`, a
``derived_from`` link carrying ``mlm:name``, as the MLM extension asks). Every item carries the map's
licence (:data:`LICENSE`, with ``license`` links to it and to the Sentinel data's legal notice) and the
credit that notice asks for (``cropmap:attribution``, also in ``providers``). Validated offline by
:mod:`cropmap.io.stac_validation`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
import json
from dataclasses import dataclass
from pathlib import Path

import pystac
import rasterio
from pystac.extensions.projection import ProjectionExtension
from rasterio.warp import transform_geom

from cropmap import __version__
from cropmap.core.season import Season
from cropmap.errors import IncompatibleInputError, MosaicError
from cropmap.io.outputs import atomic_path
from cropmap.stages.predict import NODATA
from cropmap.stages.predict_provenance import read_run_file
from cropmap.stages.stac_assets import add_file_info, add_product_assets, multihash_sha256
from cropmap.stages.tile_files import class_legend, list_tiles, tile_tags

__all__ = ["write_stac_item", "ood_flagged_share", "has_mapped_pixel", "EMPTY", "write_stac_collection", "multihash_sha256", "CLASSIFICATION_SCHEMA",
           "COLLECTION_FILE", "LICENSE", "SENTINEL_LEGAL_NOTICE", "MODEL_ITEM", "Provenance", "merge_provenance",
           "season_years", "scene_years", "copernicus_attribution", "credit_line", "model_item_link"]

#: The classification extension version written (its schema is in ../shared/data/stac_schemas).
CLASSIFICATION_SCHEMA = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
#: The Collection of a map folder.
COLLECTION_FILE = "collection.json"
#: Licence of the maps. A map is a work derived from Copernicus Sentinel-2 data, whose legal notice lets
#: anyone reproduce, distribute and adapt them for any lawful use, free of charge, on condition that the
#: source is credited and the modification stated ("Contains modified Copernicus Sentinel data <year>").
#: CC BY 4.0 grants the same uses on the same one condition, so whoever reuses a map passes the credit on,
#: and it is an SPDX identifier that STAC readers understand. "Apache-2.0", this software's licence, is
#: no licence for data. The training labels' own licence is in the model card (``cropmap:model_card``).
LICENSE = "CC-BY-4.0"
LICENSE_URL = "https://creativecommons.org/licenses/by/4.0/"
#: The terms of the source scenes: the ``license`` link of Sentinel-2 L2A items (Planetary Computer's).
SENTINEL_LEGAL_NOTICE = "https://sentinel.esa.int/documents/247904/690755/Sentinel_Data_Legal_Notice"
#: The STAC MLM item of a map folder's model (:func:`cropmap.stages.model_item.write_mlm_item`), beside
#: the maps; a map folder holds the maps of one model and its options (``CountryRun.map_dir``).
MODEL_ITEM = "model.mlm.json"


def season_years(start: str, end: str) -> list[int]:
    """The calendar years from ``start`` to ``end`` (ISO dates or datetimes): those of the scenes of a map
    whose season spans them (a cube reads only the scenes inside its season's window)."""
    return list(range(int(start[:4]), int(end[:4]) + 1))


def scene_years(tags: Mapping[str, str]) -> list[int]:
    """The calendar years of a map's scenes from its COG's ``season`` and ``season_year`` tags (the years
    of its season's window); [] without them."""
    try:
        first, last = Season(**json.loads(tags["season"])).window(int(tags["season_year"]))
    except (KeyError, ValueError, TypeError):
        return []
    return season_years(first.isoformat(), last.isoformat())


def copernicus_attribution(years: Iterable[int]) -> str:
    """The credit the Copernicus Sentinel legal notice asks of a product made from modified Sentinel data:
    ``Contains modified Copernicus Sentinel data 2017-2018`` (a range when the years follow each other)."""
    years = sorted({int(y) for y in years})
    if len(years) > 1 and years == list(range(years[0], years[-1] + 1)):
        return f"Contains modified Copernicus Sentinel data {years[0]}-{years[-1]}"
    return " ".join(["Contains modified Copernicus Sentinel data", ", ".join(str(y) for y in years)]).strip()


def credit_line(years: Iterable[int]) -> str:
    """The attribution and the map's licence as one line (the quicklook's, the run summary's)."""
    return f"{copernicus_attribution(years)}; map licence {LICENSE}"


def model_item_link(model_item: Mapping, href: str) -> dict:
    """The ``derived_from`` link of a map to the STAC MLM item ``model_item`` (its JSON) at ``href``, named
    by its ``mlm:name`` as the MLM extension asks of the items a model's inference made."""
    name = model_item.get("properties", {}).get("mlm:name")
    return {"rel": "derived_from", "href": href, "type": "application/geo+json",
            "title": f"the model{f' {name}' if name else ''} (STAC MLM item)", **({"mlm:name": name} if name else {})}


@dataclass(frozen=True)
class Provenance:
    """What a map was made from, gathered from the STAC items of its parts (a national map's zones) for
    :func:`write_stac_item`: the ``cropmap:`` ``properties`` (model card, options, run key, tiles, source
    items), the scenes' ``source_hrefs``, the span of the parts' seasons (``start``, ``end``, ISO) and the
    parts whose provenance is ``unknown`` (no item)."""

    properties: dict
    source_hrefs: tuple[str, ...] = ()
    start: str | None = None
    end: str | None = None
    unknown: tuple[str, ...] = ()


def merge_provenance(items: Mapping[str, Mapping | None]) -> Provenance:
    """The provenance of a map made of parts (part name -> its STAC item's JSON, None when it has none):
    one model card, options and run key (parts predicted with another checkpoint or options raise
    :class:`IncompatibleInputError`), every tile and source item, every scene's ``derived_from`` href."""
    known = {part: item for part, item in items.items() if item is not None}
    keys = {part: item.get("properties", {}).get("cropmap:run_key") for part, item in known.items()}
    if len(set(keys.values()) - {None}) > 1:
        raise IncompatibleInputError("the parts of the map come from different runs (run keys " + ", ".join(
            f"{part} {key}" for part, key in sorted(keys.items())) + "); mosaic the zones of one run")
    props: dict = {}
    tiles: set[str] = set()
    sources: set[str] = set()
    hrefs: set[str] = set()
    for item in known.values():
        p = item.get("properties", {})
        for key in ("cropmap:model_card", "cropmap:options", "cropmap:run_key"):
            if p.get(key) is not None:
                props.setdefault(key, p[key])
        tiles.update(p.get("cropmap:tiles", []))
        sources.update(p.get("cropmap:source_items", []))
        # the scenes, not another part's model link (that one carries mlm:name)
        hrefs.update(link["href"] for link in item.get("links", [])
                     if link.get("rel") == "derived_from" and "mlm:name" not in link)
    if known:
        props.update({"cropmap:tiles": sorted(tiles), "cropmap:source_items": sorted(sources)})
    spans = [(i.get("properties", {}).get("start_datetime"), i.get("properties", {}).get("end_datetime"))
             for i in known.values()]
    starts, ends = [s for s, _ in spans if s], [e for _, e in spans if e]
    return Provenance(props, tuple(sorted(hrefs)), min(starts, default=None), max(ends, default=None),
                      tuple(sorted(part for part, item in items.items() if item is None)))


def _providers(attribution: str) -> list[dict]:
    # the EU licenses the scenes and is no producer of the map: the notice asks that nothing suggest it endorses it
    return [{"name": "Copernicus Sentinel-2 (European Union, ESA)", "roles": ["licensor"],
             "url": SENTINEL_LEGAL_NOTICE,
             "description": "the source scenes, under the Legal notice on the use of Copernicus Sentinel Data and "
                            f"Service Information; {attribution}"},
            {"name": "cropmap", "roles": ["processor", "producer"],
             "description": f"crop type map made with cropmap {__version__} from the modified scenes, licensed {LICENSE}"}]


def _license_links() -> list[pystac.Link]:
    return [pystac.Link("license", LICENSE_URL, media_type="text/html", title=f"{LICENSE}: the map"),
            pystac.Link("license", SENTINEL_LEGAL_NOTICE, media_type="application/pdf",
                        title="Legal notice on the use of Copernicus Sentinel Data and Service Information: "
                              "the source scenes")]


def ood_flagged_share(cog: str | Path) -> float | None:
    """Share (0..1) of the valid pixels of an ``ood`` COG above 100 (beyond the training threshold), read
    block by block; None if it holds no valid pixel."""
    valid = flagged = 0
    with rasterio.open(cog) as src:
        for _, window in src.block_windows(1):
            v = src.read(1, window=window)
            ok = v != NODATA
            valid += int(ok.sum())
            flagged += int((ok & (v > 100)).sum())
    return round(flagged / valid, 6) if valid else None


#: ``cropmap:status`` of an item whose class map holds no mapped pixel at all (all nodata): never "complete".
EMPTY = "empty"


def has_mapped_pixel(cog: str | Path) -> bool:
    """Whether the class COG holds any pixel that is not nodata (blocks read until the first one)."""
    with rasterio.open(cog) as src:
        return any(bool((src.read(1, window=window) != NODATA).any()) for _, window in src.block_windows(1))


def write_stac_item(cogs: dict[str, Path], path: str | Path, *, name: str, tile_dir: str | Path | None = None,
                    quicklook: Path | None = None, missing: Mapping[str, str] | None = None,
                    provenance: Provenance | None = None, model_link: Mapping | None = None) -> Path:
    """A STAC Item (JSON) describing the mosaics: geometry (EPSG:4326), season as start/end
    datetimes, projection extension (code, shape, transform, bbox), the product COGs and their label
    sidecars as assets (:func:`cropmap.stages.stac_assets.add_product_assets`: raster bands, classes,
    QGIS styles and GDAL ``.aux.xml``), and the
    provenance under ``cropmap:*`` (model card, run options, source items, tiles, software version): from
    ``tile_dir``'s run file and tiles, or the ``provenance`` of the map's parts (:func:`merge_provenance`;
    their seasons widen the item's datetimes), with ``model_link`` (:func:`model_item_link`) to the model.
    The licence (:data:`LICENSE`, ``license`` links) and the Copernicus credit of the scenes' years
    (``cropmap:attribution``, ``providers``). Asset hrefs are relative to the item. No timestamps: a rerun
    writes the same bytes.

    ``missing`` (tile id or zone -> why) are parts of the run that the map lacks (failed tiles or
    zones): the item then says ``cropmap:status: "partial"`` and lists them under
    ``cropmap:missing``, so a map with holes never reads as a whole one; a class map without a single
    mapped pixel says ``"empty"`` (:data:`EMPTY`) and why under ``cropmap:reason``; else ``"complete"``."""
    path = Path(path)
    with rasterio.open(cogs["class"]) as src:
        crs, transform, shape, bounds, tags = src.crs, src.transform, (src.height, src.width), src.bounds, src.tags()
    ring = [(bounds.left, bounds.bottom), (bounds.right, bounds.bottom), (bounds.right, bounds.top),
            (bounds.left, bounds.top), (bounds.left, bounds.bottom)]
    geom = transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]}, precision=7)
    lons, lats = zip(*geom["coordinates"][0])
    props: dict = {"cropmap:software_version": __version__, "license": LICENSE,
                   "cropmap:status": "partial" if missing else "complete"}
    if "ood" in cogs:  # the share of mapped pixels beyond the training threshold: where not to trust the map
        props["cropmap:ood_flagged_share"] = ood_flagged_share(cogs["ood"])
    if missing:
        props["cropmap:missing"] = [{"part": k, "reason": v} for k, v in sorted(missing.items())]
    if not has_mapped_pixel(cogs["class"]):  # all nodata: whatever else it is, never a map to use
        props["cropmap:status"] = EMPTY
        props["cropmap:reason"] = ("every pixel is nodata: no pixel of the tiles had enough observed bins "
                                   "(predict's max_filled_fraction) or a valid series")
    for key in ("model_name", "season", "season_year", "model_season", "season_offset_months"):
        if key in tags:  # the season and model the map stands for, also without a run file
            props[f"cropmap:{key}"] = json.loads(tags[key]) if key in ("season", "model_season") else tags[key]
    source_hrefs: set[str] = set()
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
    record = read_run_file(tile_dir)
    if record is not None:
        props.update({"cropmap:model_card": record.get("model_card"), "cropmap:options": record.get("options"),
                      "cropmap:run_key": record.get("run_key")})
    if tile_dir is not None:
        sources, tiles = set(), []
        for tile in list_tiles(Path(tile_dir), "class"):
            t, _ = tile_tags(tile)
            tiles.append(t.get("tile_id", tile.name.split(".")[0]))
            sources.update(json.loads(t.get("source_items", "[]")))
            source_hrefs.update(json.loads(t.get("source_hrefs", "[]")))
        props.update({"cropmap:tiles": tiles, "cropmap:source_items": sorted(sources)})
    if provenance is not None:
        props.update(provenance.properties)
        source_hrefs.update(provenance.source_hrefs)
        if provenance.unknown:  # parts without an item: what they were made from is not in this one
            props["cropmap:provenance_unknown"] = list(provenance.unknown)
        if start is not None and provenance.start and provenance.end:  # zones of both hemispheres
            start, end = min(start, provenance.start), max(end, provenance.end)
    if start is None:  # STAC needs a date; without a season there is none to give
        raise MosaicError(f"{cogs['class'].name} carries no season; was it written by cropmap predict?")
    props["cropmap:attribution"] = copernicus_attribution(season_years(start, end))
    props["providers"] = _providers(props["cropmap:attribution"])
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
    add_product_assets(item, cogs, resolution=abs(transform.a), names=names, colours=colours)
    if quicklook is not None:
        item.add_asset("quicklook", pystac.Asset(href=f"./{quicklook.name}", media_type=pystac.MediaType.PNG,
                                                 roles=["overview"], title="quicklook with legend"))
        add_file_info(item.assets["quicklook"], quicklook)
    for href in sorted(source_hrefs):
        item.add_link(pystac.Link("derived_from", href, media_type=pystac.MediaType.JSON, title="source scene"))
    if model_link is not None:
        link = dict(model_link)
        item.add_link(pystac.Link(link.pop("rel"), link.pop("href"), media_type=link.pop("type", None),
                                  title=link.pop("title", None), extra_fields=link))
    for link in _license_links():
        item.add_link(link)
    # classification v1.1.0 (in reach for validation) instead of pystac's default v2.0.0
    item.stac_extensions = sorted({CLASSIFICATION_SCHEMA if "/classification/" in e else e
                                   for e in item.stac_extensions})
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(item.to_dict(include_self_link=False), indent=2) + "\n")
    return path


def write_stac_collection(out_dir: str | Path, *, collection_id: str, description: str | None = None) -> Path:
    """``<out_dir>/collection.json``: a STAC Collection of every STAC Item JSON in ``out_dir``
    (extent: the union of their bboxes and seasons), each item rewritten to belong to it (its
    ``collection`` field and ``collection``/``parent`` links, relative). Items are sorted by id and
    nothing holds a timestamp: a rerun writes the same bytes. Returns the collection's path."""
    out_dir = Path(out_dir)
    items = []
    for path in sorted(out_dir.glob("*.json")):
        if path.name == COLLECTION_FILE or path.name.startswith("."):
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if data.get("type") == "Feature" and "stac_version" in data and not any(
                "/mlm/" in e for e in data.get("stac_extensions", [])):  # a model's MLM item is no map
            items.append((path, data))
    if not items:
        raise MosaicError(f"{out_dir} holds no STAC item to make a collection of; run `cropmap mosaic` first")
    bboxes = [d["bbox"] for _, d in items]
    starts = [d["properties"].get("start_datetime") or d["properties"].get("datetime") for _, d in items]
    ends = [d["properties"].get("end_datetime") or d["properties"].get("datetime") for _, d in items]
    extent = pystac.Extent(
        pystac.SpatialExtent([[min(b[0] for b in bboxes), min(b[1] for b in bboxes),
                               max(b[2] for b in bboxes), max(b[3] for b in bboxes)]]),
        pystac.TemporalExtent([[pystac.utils.str_to_datetime(min(starts)), pystac.utils.str_to_datetime(max(ends))]]))
    collection = pystac.Collection(
        id=collection_id, description=description or f"cropmap crop type maps ({collection_id})", extent=extent,
        license=LICENSE, title=f"cropmap {collection_id}")
    summaries = sorted({d["properties"].get("cropmap:model_name", "") for _, d in items} - {""})
    if summaries:
        collection.summaries.add("cropmap:model_name", summaries)
    record = collection.to_dict(include_self_link=False)
    record["stac_extensions"] = []
    record["links"] = [{"rel": "item", "href": f"./{p.name}", "type": "application/geo+json", "title": d["id"]}
                       for p, d in sorted(items, key=lambda x: x[1]["id"])]
    record["links"] += [link.to_dict() for link in _license_links()]
    for path, data in items:
        data["collection"] = collection_id
        data["links"] = [link for link in data.get("links", []) if link.get("rel") not in ("collection", "parent")]
        data["links"] += [{"rel": rel, "href": f"./{COLLECTION_FILE}", "type": "application/json"}
                          for rel in ("collection", "parent")]
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=2) + "\n")
    target = out_dir / COLLECTION_FILE
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return target
