"""Mapped hectares per admin unit: the pixel-count area of each class of a class map in each polygon of
a layer of units (provinces, districts), and how much of each unit the map covers (mapped, nodata
inside the map's extent, outside it), written as CSV, markdown and a picture. Pixel counts, not
area-adjusted (:mod:`cropmap.stages.area` gives the estimates with confidence intervals).

Every column name is snake_case (:func:`column_name`): a class called ``bare ground`` gives
``bare_ground_ha``. The map is read block by block (memory: one block).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio

from cropmap.errors import DataNotFoundError, InvalidInputError
from cropmap.io.outputs import atomic_path
from cropmap.stages.area_figures import class_colours, plot_zonal_areas
from cropmap.stages.tile_files import colormap_of

__all__ = ["column_name", "map_class_names", "zonal_areas", "write_zonal_report", "ZONAL_COLUMNS"]

#: The columns of :func:`zonal_areas` after the unit's name and the ``<class>_ha`` columns.
ZONAL_COLUMNS = ("mapped_ha", "nodata_ha", "outside_map_ha", "unit_ha", "mapped_share", "nodata_share",
                 "outside_map_share")


def map_class_names(src: rasterio.io.DatasetReader) -> tuple[str, ...]:
    """The class names of an open cropmap class map (its ``class_names`` tag, value ``k`` -> ``names[k]``)."""
    names = json.loads(src.tags().get("class_names", "[]"))
    if not names:
        raise InvalidInputError(f"{src.name} carries no class_names tag; is it a cropmap class map?")
    return tuple(names)


def column_name(text: str) -> str:
    """``text`` as a snake_case column name: lower case, each run of characters other than letters and
    digits one ``_`` (``"bare ground"`` -> ``bare_ground``), so a CSV header splits on commas alone and a
    pandas/SQL/R user can name every column bare."""
    return re.sub(r"[^0-9a-z]+", "_", text.strip().lower()).strip("_") or "_"


def zonal_areas(class_map: str | Path, units: str | Path, *, field: str) -> pd.DataFrame:
    """Pixel-count areas (hectares) of each class of ``class_map`` in each polygon of ``units`` (any
    vector file geopandas reads, any CRS: reprojected to the map's), one row per polygon, and how much of
    each unit the map covers. A pixel belongs to the polygon holding its centre (rasterio's rasterize
    rule); where polygons overlap, the later one. Read block by block.

    Columns (snake_case, :func:`column_name`): the unit's name (``field``, renamed the same way),
    ``<class>_ha`` per class, ``mapped_ha`` (their sum), ``nodata_ha`` (nodata pixels inside the unit and
    the map's extent), ``outside_map_ha`` (the unit's area beyond the map's extent, from the geometry),
    ``unit_ha`` (the polygon's area in the map's CRS), and ``mapped_share``, ``nodata_share``,
    ``outside_map_share`` (each over ``unit_ha``; empty for a polygon without area). The three shares sum
    to 1 up to the pixel-centre rule along the unit's border inside the map (of the order of that border's
    length times half a pixel); exactly for a unit whose border runs along pixel edges.
    """
    import shapely
    from pyproj import Transformer
    from rasterio.features import rasterize

    from cropmap.samples.reference_labels import read_label_vectors

    path = Path(class_map)
    if not path.exists():
        raise DataNotFoundError(f"class map {path} not found; run `cropmap mosaic` first")
    if not Path(units).exists():
        raise DataNotFoundError(f"admin units {units} not found")
    layer = read_label_vectors(units, field)  # any vector file; names a missing column or CRS
    with rasterio.open(path) as src:
        names = map_class_names(src)
        class_columns = [f"{column_name(c)}_ha" for c in names]
        columns = [column_name(field), *class_columns, *ZONAL_COLUMNS]
        clash = sorted({c for c in columns if columns.count(c) > 1})
        if clash:  # "Maize" and "maize", or a class called "mapped": one column would hide the other
            raise InvalidInputError(f"zonal columns {clash} come twice (class names {list(names)}, unit field "
                                    f"{field!r}, in snake_case): rename the classes or pick another field")
        if not src.crs or not src.crs.is_projected:
            raise InvalidInputError(f"{path.name}: areas need a projected CRS in metres, got {src.crs}")
        to_map = Transformer.from_crs(layer.crs, src.crs.to_wkt(), always_xy=True)
        geometry = shapely.transform(layer.geometry, lambda xy: np.column_stack(to_map.transform(xy[:, 0], xy[:, 1])))
        shapes = [(geom, i + 1) for i, geom in enumerate(geometry) if geom is not None and not geom.is_empty]
        k, n = len(names), len(geometry)
        counts = np.zeros((n, k + 1), dtype=np.int64)  # the last column: nodata
        for _, window in src.block_windows(1):
            block = src.read(1, window=window)
            ids = rasterize(shapes, out_shape=block.shape, transform=src.window_transform(window), fill=0,
                            dtype="int32") if shapes else np.zeros(block.shape, np.int32)
            inside = ids > 0
            cls = np.where(block[inside] < k, block[inside], k)
            counts += np.bincount((ids[inside] - 1) * (k + 1) + cls, minlength=n * (k + 1)).reshape(n, k + 1)
        pixel_ha = abs(src.transform.a * src.transform.e) / 1e4
        extent = shapely.box(*src.bounds)
    # areas on the same reprojected polygons the pixels were counted in (a self-crossing ring repaired
    # first: GEOS measures and clips only valid polygons); a missing geometry has no area
    valid = shapely.make_valid(np.asarray(geometry, dtype=object))
    unit_m2 = np.nan_to_num(shapely.area(valid))
    outside_m2 = np.clip(unit_m2 - np.nan_to_num(shapely.area(shapely.intersection(valid, extent))), 0, None)
    table = pd.DataFrame(np.round(counts[:, :k] * pixel_ha, 4), columns=class_columns)
    table.insert(0, column_name(field), np.asarray(layer.values).astype(str))
    table["mapped_ha"] = np.round(counts[:, :k].sum(axis=1) * pixel_ha, 4)
    table["nodata_ha"] = np.round(counts[:, k] * pixel_ha, 4)
    table["outside_map_ha"] = np.round(outside_m2 / 1e4, 4)
    table["unit_ha"] = np.round(unit_m2 / 1e4, 4)
    for part, ha in (("mapped", counts[:, :k].sum(axis=1) * pixel_ha), ("nodata", counts[:, k] * pixel_ha),
                     ("outside_map", outside_m2 / 1e4)):
        table[f"{part}_share"] = np.round(np.divide(ha, unit_m2 / 1e4, out=np.full(n, np.nan), where=unit_m2 > 0), 6)
    return table[columns]


def write_zonal_report(table: pd.DataFrame, out_dir: str | Path, *, class_map: str | Path,
                       name: str = "area") -> dict[str, Path]:
    """``<name>_by_unit.csv``, ``<name>_by_unit.md`` (the table of :func:`zonal_areas` on ``class_map``)
    and ``<name>_by_unit.png`` (stacked bars in the map's colours, each unit's unmapped part in white) in
    ``out_dir``."""
    out_dir = Path(out_dir)
    paths = {"by_unit": out_dir / f"{name}_by_unit.csv", "by_unit_markdown": out_dir / f"{name}_by_unit.md",
             "by_unit_png": out_dir / f"{name}_by_unit.png"}
    with atomic_path(paths["by_unit"]) as tmp:
        table.to_csv(tmp, index=False)
    with rasterio.open(class_map) as src:
        names = map_class_names(src)
    plot_zonal_areas(table, table.columns[0], paths["by_unit_png"], class_names=names,
                     class_columns=[f"{column_name(c)}_ha" for c in names],
                     colours=class_colours(names, colormap_of(class_map)),
                     title=f"{Path(class_map).name}: mapped area per unit")
    partial = table[table["mapped_share"] < 0.99]  # a unit without area (NaN share) is not listed
    lines = ["# Mapped area per unit (hectares, pixel counts of the class map)", "",
             "Pixel counts, not area-adjusted: the map's errors are in them (see the area estimates for "
             "adjusted areas with confidence intervals). `mapped_share` is the share of the unit's area "
             "(`unit_ha`) the map classifies; `nodata_share` lies inside the map's extent without a class "
             "(clouds, no scene, a failed tile), `outside_map_share` beyond the map's extent.", "",
             f"Units less than 99 % mapped: {len(partial)} of {len(table)}"
             + (f" ({', '.join(partial.iloc[:10, 0].astype(str))}{', ...' if len(partial) > 10 else ''})."
                if len(partial) else "."), "",
             "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    with atomic_path(paths["by_unit_markdown"]) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return paths
