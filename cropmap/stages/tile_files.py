"""Tile outputs on disk: which tiles a folder holds, and the tags, colours and class names they carry."""

from __future__ import annotations

import json
from pathlib import Path

import rasterio

from cropmap.io.storage import is_temporary

__all__ = ["list_tiles", "tile_tags", "colormap_of", "class_legend"]


def list_tiles(tile_dir: str | Path, product: str) -> list[Path]:
    """``<tile id>.<product>.tif`` files of ``tile_dir``, sorted; temporaries of interrupted runs left out."""
    return sorted(p for p in Path(tile_dir).glob(f"*.{product}.tif") if not is_temporary(p))


def tile_tags(path: str | Path) -> tuple[dict, dict]:
    """The dataset tags and the band-1 tags of a GeoTIFF."""
    with rasterio.open(path) as src:
        return src.tags(), src.tags(1)


def colormap_of(path: str | Path) -> dict | None:
    """Band 1's colour table (value -> RGBA), or None when it has none."""
    with rasterio.open(path) as src:
        try:
            return {k: tuple(v) for k, v in src.colormap(1).items()}
        except ValueError:
            return None


def class_legend(cog: str | Path) -> tuple[list[str], dict[int, tuple]]:
    """Class names (the ``class_names`` tag) and colours (value -> RGBA) of a class map."""
    with rasterio.open(cog) as src:
        names = json.loads(src.tags().get("class_names", "[]"))
        return names, {k: tuple(v) for k, v in src.colormap(1).items()}
