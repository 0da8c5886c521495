"""The assets of a map's STAC Item: every product COG with its raster bands and classes, and every label
sidecar beside it (:mod:`cropmap.stages.gis_styles`), each with its size and checksum (file extension).

Asset keys: ``<product>`` (``class``, ``confidence``, ``probability``, ``ood``; role ``data``), then
``<product>_style`` for its QGIS style (``.qml``, roles ``style`` and ``metadata``) and ``<product>_aux``
for its GDAL PAM sidecar (``.aux.xml``: category names, colour table, units, valid range; role
``metadata``), so a bare download of the item's assets shows names and units, not numbers.

- ``class``: ``classification:classes`` (value, name, colour, and nodata 255 as a class with ``"nodata":
  true``) and one ``raster:bands`` entry;
- ``probability``: one ``raster:bands`` entry per class in class order, each with the class's ``name``
  and a ``description`` (the band fields of STAC 1.1, which raster v1.1.0 allows beside its own), and
  ``classification:classes`` saying which class each band is (value ``v`` = band ``v + 1``);
- ``confidence``, ``ood``: unit ``percent`` (OOD: of the training threshold; > 100 out of distribution).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pystac
import rasterio
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension

from cropmap.stages.gis_styles import aux_path, qml_path
from cropmap.stages.predict import NODATA

__all__ = ["multihash_sha256", "add_file_info", "add_product_assets", "PRODUCT_TITLES"]

#: The title of each product's asset.
PRODUCT_TITLES = {"class": "crop class", "confidence": "confidence (percent)",
                  "probability": "class probabilities (percent, one band per class)",
                  "ood": "distance from the training features (percent of the training threshold; > 100: out of "
                         "distribution)"}


def multihash_sha256(path: str | Path) -> str:
    """The file extension's ``file:checksum``: a sha2-256 multihash (``1220`` + 64 hex digits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "1220" + digest.hexdigest()


def add_file_info(asset: pystac.Asset, path: Path) -> None:
    """``file:size`` (bytes) and ``file:checksum`` of ``path`` on ``asset``."""
    ext = FileExtension.ext(asset, add_if_missing=True)
    ext.size, ext.checksum = path.stat().st_size, multihash_sha256(path)


def _slug(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z_-]+", "-", text).strip("-") or "class"


def _classes(names: Sequence[str], colours: Mapping[int, Sequence[int]]) -> list[Classification]:
    classes = [Classification.create(value=i, description=n, name=_slug(n),
                                     color_hint="{:02X}{:02X}{:02X}".format(*tuple(colours.get(i, (0, 0, 0)))[:3]))
               for i, n in enumerate(names)]
    return classes + [Classification({"value": NODATA, "description": "no data", "name": "nodata", "nodata": True})]


def _add(item: pystac.Item, key: str, path: Path, **asset) -> pystac.Asset:
    item.add_asset(key, pystac.Asset(href=f"./{path.name}", **asset))
    add_file_info(item.assets[key], path)
    return item.assets[key]


def add_product_assets(item: pystac.Item, cogs: Mapping[str, Path], *, resolution: float, names: Sequence[str],
                       colours: Mapping[int, Sequence[int]]) -> None:
    """Add each product COG of ``cogs`` (product -> path beside the item) and its sidecars to ``item``
    (see the module docstring); ``resolution``: pixel size in metres; ``names``/``colours``: the classes
    in value order and their RGB (:func:`cropmap.stages.tile_files.class_legend`)."""
    for product, cog in cogs.items():
        with rasterio.open(cog) as src:
            count = src.count
        asset = _add(item, product, cog, media_type=pystac.MediaType.COG, roles=["data"],
                     title=PRODUCT_TITLES.get(product, product))
        bands = [RasterBand.create(nodata=NODATA, data_type=DataType.UINT8, spatial_resolution=resolution,
                                   unit=None if product == "class" else "percent") for _ in range(count)]
        if product == "probability":
            for value, band in enumerate(bands):  # band value + 1 is class value's probability
                band.properties.update(name=_slug(names[value]) if value < len(names) else f"band_{value + 1}",
                                       description=f"probability of {names[value] if value < len(names) else '?'} "
                                                   "(percent)")
        RasterExtension.ext(asset, add_if_missing=True).bands = bands
        if product in ("class", "probability"):
            ClassificationExtension.ext(asset, add_if_missing=True).classes = _classes(names, colours)
        style, aux = qml_path(cog), aux_path(cog)
        if style.exists():
            _add(item, f"{product}_style", style, media_type="text/xml", roles=["style", "metadata"],
                 title=f"QGIS style of the {product} COG (QGIS loads it with the COG)")
        if aux.exists():
            _add(item, f"{product}_aux", aux, media_type="application/xml", roles=["metadata"],
                 title=f"GDAL sidecar of the {product} COG (band names, units, valid range"
                       f"{', class names and colours' if product == 'class' else ''})")
