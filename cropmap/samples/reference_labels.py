"""Training points from reference labels given as vectors (parcels or points), and the split by field.

Most public crop reference data are vector parcels (EuroCrops, France's RPG, WorldCereal's reference
data) or survey points (LUCAS). :func:`sample_label_vectors` turns them into the same table of points
as :func:`cropmap.samples.reference.sample_reference_map` gives for a categorical raster, so the rest of
training (:func:`cropmap.samples.reference.samples_from_cubes`) does not care which it was:

1. **Read** a GeoPackage, Shapefile (pyogrio) or GeoParquet (pyarrow; WKB geometry and the ``geo``
   metadata's CRS), one label column. Labels in any CRS are reprojected: each feature to the UTM zone of
   its centroid (the tiles' grid), a metric CRS in which the buffer is exact metres.
2. **Check the codes**: every value of the column must be known to the legend (mapped to a class, or to
   ``null`` = dropped on purpose); unknown codes give one error naming them.
3. **Buffer parcels inward** by ``erosion_m`` (default 60 m) and take candidate points on a regular
   ``spacing_m`` grid of that zone (default 10 m, the Sentinel-2 pixel; centres at ``(i + 0.5) *
   spacing_m``) inside the buffered parcel. Points are candidates as they are.
4. **Sample on a lon/lat grid** of ``cell_deg`` (the paper's 0.1 degree): up to ``per_cell`` points per cell
   and class, chosen by the same seeded hash as the raster path.

Each point keeps its ``field``: the feature it came from, or for point features (no field) a spatial
cell of ``point_group_m`` metres, so that the validation split (:func:`cropmap.ml.train.group_split`, scikit-learn's
``GroupShuffleSplit``) never has one field on both sides.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pyogrio
import shapely
from pyproj import CRS, Transformer

from cropmap.core.grid import tile_from_id, tiles_meeting
from cropmap.core.harmonise import Legend
from cropmap.errors import InvalidInputError
from cropmap.samples.reference import SamplingOptions, _keys, _pick

__all__ = ["VECTOR_SUFFIXES", "is_vector", "LabelVectors", "read_label_vectors", "label_extent",
           "label_geometry", "label_targets", "sample_label_vectors"]

#: File suffixes read as vector labels (anything else is opened as a raster).
VECTOR_SUFFIXES = (".gpkg", ".shp", ".parquet", ".geoparquet", ".geojson", ".fgb")
_QUAD_SEGS = 16  # segments per quarter circle of the inward buffer


def is_vector(path: str | Path) -> bool:
    """Whether ``path`` names vector labels (by its suffix, :data:`VECTOR_SUFFIXES`)."""
    return str(path).lower().endswith(VECTOR_SUFFIXES)


class LabelVectors:
    """Features of a label file: ``geometry`` (shapely array), ``values`` (the label column), ``crs``,
    and ``extra``: the other columns asked for (name -> array)."""

    def __init__(self, geometry: np.ndarray, values: np.ndarray, crs: CRS, source: str,
                 extra: dict[str, np.ndarray] | None = None):
        self.geometry, self.values, self.crs, self.source = geometry, values, crs, source
        self.extra = extra or {}

    def __len__(self) -> int:
        return len(self.values)


def _read_geoparquet(path: Path, column: str, extra: Sequence[str] = ()) -> LabelVectors:
    meta = pq.read_metadata(path).metadata or {}
    geo = json.loads(meta.get(b"geo", b"{}") or b"{}")
    if not geo:
        raise InvalidInputError(f"{path.name}: not a GeoParquet file (no 'geo' metadata)")
    gcol = geo.get("primary_column", "geometry")
    info = geo.get("columns", {}).get(gcol, {})
    schema = pq.read_schema(path)
    if column not in schema.names:
        raise InvalidInputError(f"{path.name}: no label column {column!r}; columns: "
                                f"{', '.join(n for n in schema.names if n != gcol)}")
    extra = [c for c in extra if c in schema.names and c not in (gcol, column)]
    table = pq.read_table(path, columns=[gcol, column, *extra])
    crs = CRS.from_user_input(info["crs"]) if info.get("crs") else CRS.from_epsg(4326)  # spec: absent = OGC:CRS84
    geometry = shapely.from_wkb(table.column(gcol).to_numpy(zero_copy_only=False))
    return LabelVectors(geometry, table.column(column).to_numpy(zero_copy_only=False), crs, str(path),
                        {c: table.column(c).to_numpy(zero_copy_only=False) for c in extra})


def read_label_vectors(path: str | Path, column: str, extra: Sequence[str] = ()) -> LabelVectors:
    """The features of ``path`` and their ``column`` (GeoPackage/Shapefile/... via pyogrio, GeoParquet via
    pyarrow), and the ``extra`` columns that exist. Errors name a missing column (and list those there) or
    a missing CRS."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"label file {path} not found")
    if path.suffix.lower() in (".parquet", ".geoparquet"):
        return _read_geoparquet(path, column, extra)
    info = pyogrio.read_info(path)
    fields = [str(f) for f in info["fields"]]
    if column not in fields:
        raise InvalidInputError(f"{path.name}: no label column {column!r}; columns: {', '.join(fields)}")
    if not info.get("crs"):
        raise InvalidInputError(f"{path.name}: the labels have no CRS; set one (e.g. ogr2ogr -a_srs)")
    extra = [c for c in extra if c in fields and c != column]
    meta, _, wkb, arrays = pyogrio.raw.read(path, columns=[column, *extra])
    read = {str(n): np.asarray(a) for n, a in zip(meta["fields"], arrays)}  # in the file's order, not ours
    return LabelVectors(shapely.from_wkb(wkb), read.pop(column), CRS.from_user_input(info["crs"]), str(path), read)


def label_extent(path: str | Path) -> tuple[tuple[float, float, float, float], CRS]:
    """(left, bottom, right, top) of the features of a vector label file, and its CRS."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".geoparquet"):
        meta = json.loads((pq.read_metadata(path).metadata or {}).get(b"geo", b"{}"))
        info = meta.get("columns", {}).get(meta.get("primary_column", "geometry"), {})
        crs = CRS.from_user_input(info["crs"]) if info.get("crs") else CRS.from_epsg(4326)
        if info.get("bbox"):
            return tuple(info["bbox"]), crs
        table = pq.read_table(path, columns=[meta.get("primary_column", "geometry")])
        return tuple(shapely.total_bounds(shapely.from_wkb(table.column(0).to_numpy(zero_copy_only=False)))), crs
    info = pyogrio.read_info(path, force_total_bounds=True)
    return tuple(float(v) for v in info["total_bounds"]), CRS.from_user_input(info["crs"])


def label_geometry(path: str | Path) -> tuple[np.ndarray, CRS]:
    """The geometries of a vector label file (shapely array) and their CRS, without any column."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"label file {path} not found")
    if path.suffix.lower() in (".parquet", ".geoparquet"):
        meta = json.loads((pq.read_metadata(path).metadata or {}).get(b"geo", b"{}") or b"{}")
        gcol = meta.get("primary_column", "geometry")
        info = meta.get("columns", {}).get(gcol, {})
        crs = CRS.from_user_input(info["crs"]) if info.get("crs") else CRS.from_epsg(4326)
        return shapely.from_wkb(pq.read_table(path, columns=[gcol]).column(0).to_numpy(zero_copy_only=False)), crs
    meta, _, wkb, _ = pyogrio.raw.read(path, columns=[])
    if not meta.get("crs"):
        raise InvalidInputError(f"{path.name}: the labels have no CRS; set one (e.g. ogr2ogr -a_srs)")
    return shapely.from_wkb(wkb), CRS.from_user_input(meta["crs"])


def _value_key(v) -> str:
    """A label value as the legend's mapping keys spell it: integers without a trailing ``.0``."""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def label_targets(values: np.ndarray, legend: Legend, *, column: str, name: str,
                  value_names: Mapping[str, str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each label value's key (text, integers without ``.0``) and its legend class (None: dropped on
    purpose). Codes the legend does not know, or a legend that drops them all, raise one error naming them."""
    keys = np.array([_value_key(v) for v in values], dtype=object)
    names = np.array([(value_names or {}).get(k, k) for k in keys], dtype=object)
    lowered = {k.lower() for k in legend.mapping}
    known = {n: n.lower() in lowered or n in legend.classes for n in set(names)}
    unknown = sorted({k for k, n in zip(keys, names) if not known[n]})
    if unknown:
        raise InvalidInputError(f"{name}: {column} code(s) absent from legend {legend.name!r}: "
                                f"{', '.join(unknown[:12])}{' ...' if len(unknown) > 12 else ''} "
                                f"({len(unknown)} in all); map them (to null to drop them)")
    targets = np.array([legend.target_of(n) for n in names], dtype=object)
    if not any(t is not None for t in targets):
        raise InvalidInputError(f"{name}: legend {legend.name!r} drops every {column} value; nothing to train on")
    return keys, targets


def _utm_epsg(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    zone = np.clip(np.floor((np.asarray(lon) + 180.0) / 6.0).astype(int) + 1, 1, 60)
    return np.where(np.asarray(lat) >= 0, 32600, 32700) + zone


def sample_label_vectors(
    path: str | Path,
    *,
    column: str,
    legend: Legend,
    options: SamplingOptions = SamplingOptions(),
    spacing_m: float = 10.0,
    point_group_m: float = 1000.0,
    value_names: Mapping[str, str] | None = None,
    bounds: tuple[float, float, float, float] | None = None,
    bounds_crs: str | CRS | None = None,
    tiles: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Training points from vector parcels or points (see the module docstring).

    ``column``: the label column; its values (as text, integers without ``.0``) go through
    ``value_names`` (value -> source class name, default: the value itself) and then ``legend``.
    ``bounds`` (in ``bounds_crs``, default WGS 84 degrees): only features intersecting it are used (a
    country's outline box); none there is an error. ``tiles`` (tile ids): likewise, only features meeting
    one of these tiles (the cubed ones: :func:`cropmap.core.grid.tiles_meeting`), so that no point is
    drawn where no cube is.

    Returns the columns of :func:`cropmap.samples.reference.sample_reference_map` (``x``, ``y`` metres in
    the point's UTM zone ``epsg``, ``lon``, ``lat``, ``value``, ``label``, ``class_name``) plus ``field``
    (int64: feature index, or a negative spatial-cell id for point features) and ``epsg``; ``row``/``col``
    are the point's index on the ``spacing_m`` grid of its zone. ``attrs`` as there, with ``crs`` the WKT of
    WGS 84 (points span zones; use ``lon``/``lat``).
    """
    vectors = read_label_vectors(path, column)
    name = Path(path).name
    geometry, values = vectors.geometry, vectors.values
    ok = ~shapely.is_missing(geometry) & ~shapely.is_empty(geometry) & ~pd.isna(values)
    geometry, values, fid = geometry[ok], values[ok], np.flatnonzero(ok)
    to_ll = Transformer.from_crs(vectors.crs, "EPSG:4326", always_xy=True)
    centroids = shapely.centroid(geometry)
    clon, clat = to_ll.transform(shapely.get_x(centroids), shapely.get_y(centroids))
    clon, clat = np.asarray(clon, float), np.asarray(clat, float)
    if bounds is not None:
        box_crs = CRS.from_user_input(bounds_crs) if bounds_crs is not None else CRS.from_epsg(4326)
        to_box = Transformer.from_crs(vectors.crs, box_crs, always_xy=True)
        box = shapely.box(*bounds)
        inside = shapely.intersects(shapely.transform(geometry, lambda xy: np.column_stack(
            to_box.transform(xy[:, 0], xy[:, 1]))), box)
        if not inside.any():
            raise InvalidInputError(f"{name}: none of its {len(geometry)} labelled features intersects the "
                                    f"country's area {tuple(round(b, 4) for b in bounds)}; wrong labels or country?")
        geometry, values, fid, clon, clat = geometry[inside], values[inside], fid[inside], clon[inside], clat[inside]
    if tiles is not None:
        _, inside = tiles_meeting(geometry, vectors.crs, [tile_from_id(t) for t in tiles])
        if not inside.any():
            raise InvalidInputError(f"{name}: none of its {len(geometry)} labelled features lies on the "
                                    f"{len(tiles)} given tile(s); wrong labels or country?")
        geometry, values, fid, clon, clat = geometry[inside], values[inside], fid[inside], clon[inside], clat[inside]

    keys, targets = label_targets(values, legend, column=column, name=name, value_names=value_names)
    mapped = np.array([t is not None for t in targets], dtype=bool)
    label_of = {c: i for i, c in enumerate(legend.classes)}

    tables = []
    # the inward buffer's arcs (around concave corners) are chords: buffer by the radius whose chords
    # stay erosion_m away, so that no point is nearer than erosion_m to its parcel's edge
    _reach = options.erosion_m / np.cos(np.pi / (4 * _QUAD_SEGS))
    epsgs = _utm_epsg(clon, clat)
    for epsg in np.unique(epsgs[mapped]):
        sel = np.flatnonzero(mapped & (epsgs == epsg))
        to_m = Transformer.from_crs(vectors.crs, f"EPSG:{epsg}", always_xy=True)
        back = Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)
        metric = shapely.transform(geometry[sel], lambda xy: np.column_stack(to_m.transform(xy[:, 0], xy[:, 1])))
        is_point = np.isin(shapely.get_type_id(metric), (0, 4))  # Point, MultiPoint
        for j, geom, point in zip(sel, metric, is_point):
            if point:
                pts = shapely.get_coordinates(geom)
                xs, ys = pts[:, 0], pts[:, 1]
                cx, cy = np.floor(xs / point_group_m), np.floor(ys / point_group_m)
                field = -(1 + (cx.astype(np.int64) % 100_000) * 100_000 + cy.astype(np.int64) % 100_000)
            else:
                inner = shapely.buffer(geom, -_reach, quad_segs=_QUAD_SEGS) if options.erosion_m > 0 else geom
                if inner.is_empty:
                    continue
                x0, y0, x1, y1 = inner.bounds
                cols = np.arange(np.floor(x0 / spacing_m - 0.5), np.ceil(x1 / spacing_m), dtype=np.int64)
                rows = np.arange(np.floor(y0 / spacing_m - 0.5), np.ceil(y1 / spacing_m), dtype=np.int64)
                gx, gy = np.meshgrid((cols + 0.5) * spacing_m, (rows + 0.5) * spacing_m)
                gx, gy = gx.ravel(), gy.ravel()
                hit = shapely.contains_xy(inner, gx, gy)
                xs, ys = gx[hit], gy[hit]
                field = np.full(xs.size, fid[j], dtype=np.int64)
            if xs.size == 0:
                continue
            lon, lat = back.transform(xs, ys)
            col = np.floor(xs / spacing_m).astype(np.int64)
            row = np.floor(ys / spacing_m).astype(np.int64)
            tables.append(pd.DataFrame({
                "x": xs, "y": ys, "lon": lon, "lat": lat, "row": row, "col": col,
                "value": keys[j], "label": label_of[targets[j]], "field": field, "epsg": int(epsg),
                "cell_x": np.floor((np.asarray(lon) + 180.0) / options.cell_deg).astype(np.int64),
                "cell_y": np.floor((np.asarray(lat) + 90.0) / options.cell_deg).astype(np.int64),
                # the zone in the key: the same (row, col) in two zones are different places
                "key": _keys(row + int(epsg) * 10_000_000, col, options.seed),
            }))
    if not tables:
        raise InvalidInputError(f"{name}: no labelled parcel is wider than twice the {options.erosion_m:g} m "
                                "inward buffer; nothing to sample (a smaller erosion_m?)")
    columns = ["x", "y", "lon", "lat", "row", "col", "value", "label", "field", "epsg"]
    points = _pick(pd.concat(tables, ignore_index=True), options.per_cell)[columns]
    points = points.sort_values(["epsg", "row", "col"]).reset_index(drop=True)
    points["label"] = points["label"].astype(np.int16)
    points["class_name"] = np.asarray(legend.classes, dtype=object)[points["label"].to_numpy(int)]
    points.attrs = {"crs": CRS.from_epsg(4326).to_wkt(), "classes": list(legend.classes), "colours": legend.colours,
                    "source": str(path), "options": {**options.model_dump(), "spacing_m": spacing_m,
                                                     "label_column": column}}
    return points
