"""Training samples from reference crop maps (a categorical raster: USDA CDL, France's RPG rasterised, ...).

Three steps, done window by window so memory is bounded by ``SamplingOptions.window``, never by the map:

1. **Erosion at field borders.** A pixel is kept only if every pixel whose centre lies within
   ``erosion_m`` (default 60 m) of its centre holds the same raster value. Nodata, and by default the
   area outside the raster, count as another value. Erosion looks at raster values, not at the mapped
   classes: two fields of different source codes are separate fields even if both become "wheat".
2. **Sampling on a regular geographic grid.** Kept pixels fall into lon/lat cells of ``cell_deg``
   (default 0.1 degree, the seed's choice); up to ``per_cell`` pixels are taken per cell and class. The
   choice is pseudo-random but deterministic: each pixel gets a key hashed from its (row, col) and
   ``seed``, and the smallest keys win, so the result does not depend on the window size.
3. **Classes mapped to the model's legend.** Raster value -> source class name (the raster's band tags
   ``class_<value>``, as cropmap's maps and the demo's reference carry them, or ``value_names``) -> the
   model's class through a :class:`cropmap.core.harmonise.Legend` (``configs/legends/*.yaml``). Values that
   map to nothing are not sampled (they still count for the erosion).

:func:`sample_reference_map` returns a table of points; :func:`samples_from_cubes` extracts their pixel
series from tile cubes into a sample set (:func:`cropmap.samples.sets.make_sample_set`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field
from pyproj import CRS, Transformer
from rasterio.windows import Window
from scipy import ndimage

from cropmap.core.harmonise import Legend
from cropmap.errors import ConfigError, IncompatibleInputError, InvalidInputError
from cropmap.samples.sets import make_sample_set

__all__ = ["SamplingOptions", "erosion_footprint", "eroded", "raster_value_names", "legend_from_raster",
           "sample_reference_map", "samples_from_cubes"]

_BIG = 2**52  # beyond any class code, and exact as the float scipy turns ``cval`` into
_UNKNOWN = -1  # nodata, or outside the raster when edges are dropped


class SamplingOptions(BaseModel):
    """How points are drawn from a reference map.

    erosion_m: metres kept clear of any other value around a sampled pixel (0: no erosion).
    cell_deg: side of the lon/lat sampling cells, degrees. per_cell: points per cell and class.
    seed: changes which pixels are drawn. drop_edges: pixels within ``erosion_m`` of the raster's edge
    are dropped (what lies beyond is unknown). window: pixels per side of a processing window.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    erosion_m: float = Field(60.0, ge=0)
    cell_deg: float = Field(0.1, gt=0, le=10)
    per_cell: int = Field(1, ge=1)
    seed: int = 0
    drop_edges: bool = True
    window: int = Field(2048, ge=16)


def erosion_footprint(erosion_m: float, *, res_x: float, res_y: float) -> np.ndarray:
    """Boolean ``(2 ry + 1, 2 rx + 1)`` disc: offsets whose centre distance is within ``erosion_m`` metres."""
    ry, rx = int(erosion_m // abs(res_y)), int(erosion_m // abs(res_x))
    dy, dx = np.mgrid[-ry:ry + 1, -rx:rx + 1]
    return np.hypot(dy * res_y, dx * res_x) <= erosion_m + 1e-9


def eroded(values: np.ndarray, *, footprint: np.ndarray, nodata: float | None = None,
           outside: np.ndarray | None = None, drop_edges: bool = True) -> np.ndarray:
    """Boolean ``(y, x)``: True where every pixel under ``footprint`` holds the pixel's own value.

    ``values``: ``(y, x)`` integer class values; ``nodata`` pixels are never kept and count as another
    value. ``outside`` marks padding beyond the raster: another value when ``drop_edges``, ignored
    otherwise. Pixels beyond ``values`` itself are treated like ``outside``.
    """
    block = np.asarray(values).astype(np.int64)
    unknown = np.zeros(block.shape, bool) if nodata is None else (values == nodata)
    outside = np.zeros(block.shape, bool) if outside is None else outside
    if drop_edges:
        unknown = unknown | outside
        outside = np.zeros_like(outside)
    if block.size and (block[~unknown] < 0).any():
        raise InvalidInputError("reference map values must be non-negative class codes")
    block[unknown] = _UNKNOWN
    # Same value everywhere under the footprint <=> its minimum equals its maximum. Outside pixels are
    # neutral when edges are kept: +inf for the minimum, -inf for the maximum.
    edge_lo, edge_hi = (_UNKNOWN, _UNKNOWN) if drop_edges else (_BIG, -_BIG)
    lo = ndimage.minimum_filter(np.where(outside, _BIG, block), footprint=footprint, mode="constant", cval=edge_lo)
    hi = ndimage.maximum_filter(np.where(outside, -_BIG, block), footprint=footprint, mode="constant", cval=edge_hi)
    return (lo == hi) & (block != _UNKNOWN) & ~outside


def raster_value_names(path: str | Path) -> dict[int, str]:
    """``value -> class name`` from a raster's ``class_<value>`` tags (band 1, then dataset tags)."""
    with rasterio.open(path) as ds:
        tags = {**ds.tags(), **ds.tags(1)}
    return {int(k.removeprefix("class_")): v for k, v in tags.items()
            if k.startswith("class_") and k.removeprefix("class_").isdigit()}


def legend_from_raster(path: str | Path, value_names: Mapping[int, str] | None = None) -> Legend:
    """The raster's own legend: its class names in value order, colours from its colour table.

    ``value_names`` (value -> name) defaults to the raster's ``class_<value>`` tags.
    """
    names = dict(value_names) if value_names is not None else raster_value_names(path)
    if not names:
        raise InvalidInputError(f"{path} has no class_<value> tags; give the value names and a legend explicitly")
    values = sorted(names)
    classes = list(dict.fromkeys(names[v] for v in values))  # two codes may share a name
    colours = None
    with rasterio.open(path) as ds:
        try:
            cmap = ds.colormap(1)
        except ValueError:  # no colour table
            cmap = None
    if cmap is not None and len(classes) == len(values):
        colours = ["#{:02x}{:02x}{:02x}".format(*cmap[v][:3]) for v in values]
    return Legend(name=Path(path).stem, classes=classes, colours=colours)


def _keys(rows: np.ndarray, cols: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of (row, col, seed): a pseudo-random uint64 per pixel, the same in every window."""
    z = (rows.astype(np.uint64) << np.uint64(32)) ^ cols.astype(np.uint64)
    z = z ^ (np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15))
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _pick(table: pd.DataFrame, per_cell: int) -> pd.DataFrame:
    return table.sort_values("key", kind="stable").groupby(["cell_x", "cell_y", "label"], sort=False).head(per_cell)


class _Fields:
    """Fields of a categorical raster read window by window: 8-connected regions of one value.

    Each region of a window is named by its smallest pixel index ``row * width + col``; regions that touch
    across a window edge (diagonals included) are merged by union-find keeping the smaller name, so a
    field's id is its smallest pixel index whatever the window size. Nodata is no field (id -1).
    """

    def __init__(self, width: int, nodata: float | None):
        self.width, self.nodata = width, nodata
        self.parent: dict[int, int] = {}
        self.edges: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}

    def find(self, a: int) -> int:
        root = a
        while root in self.parent:
            root = self.parent[root]
        while a != root:  # path compression
            self.parent[a], a = root, self.parent[a]
        return root

    def _join(self, va: np.ndarray, ia: np.ndarray, vb: np.ndarray, ib: np.ndarray) -> None:
        """Merge the regions of two 1-D pixel runs that face each other (offsets -1, 0, +1)."""
        n = len(va)
        for d in (-1, 0, 1):
            a, b = slice(max(0, -d), n - max(0, d)), slice(max(0, d), n + min(0, d))
            same = (va[a] == vb[b]) & (ia[a] >= 0) & (ib[b] >= 0)
            for x, y in set(zip(ia[a][same].tolist(), ib[b][same].tolist())):
                rx, ry = self.find(x), self.find(y)
                if rx != ry:
                    self.parent[max(rx, ry)] = min(rx, ry)

    def window(self, core: np.ndarray, wr: int, wc: int, step: int) -> np.ndarray:
        """Region ids ``(h, w)`` int64 of the window at (``wr``, ``wc``), merged with its finished
        neighbours (windows are visited row by row)."""
        h, w = core.shape
        lin = (np.arange(h, dtype=np.int64)[:, None] + wr) * self.width + (np.arange(w, dtype=np.int64) + wc)
        ids = np.full(core.shape, -1, np.int64)
        for v in np.unique(core):
            if self.nodata is not None and v == self.nodata:
                continue
            regions, n = ndimage.label(core == v, structure=np.ones((3, 3), bool))
            first = np.asarray(ndimage.minimum(lin, regions, index=np.arange(1, n + 1)), dtype=np.int64)
            inside = regions > 0
            ids[inside] = first[regions[inside] - 1]
        if (left := self.edges.get((wr, wc - step))) is not None:
            self._join(left[2], left[3], core[:, 0], ids[:, 0])
        if (top := self.edges.get((wr - step, wc))) is not None:
            self._join(top[0], top[1], core[0, :], ids[0, :])
        for dc, j, k in ((-step, -1, 0), (step, 0, w - 1)):  # the windows diagonally above
            if (corner := self.edges.get((wr - step, wc + dc))) is not None:
                self._join(corner[0][j:j + 1 or None], corner[1][j:j + 1 or None], core[0, k:k + 1], ids[0, k:k + 1])
        self.edges[(wr, wc)] = (core[-1, :].copy(), ids[-1, :].copy(), core[:, -1].copy(), ids[:, -1].copy())
        return ids

    def resolve(self, ids: np.ndarray) -> np.ndarray:
        """The merged field id of each raw id."""
        uniq, inv = np.unique(np.asarray(ids, dtype=np.int64), return_inverse=True)
        return np.array([self.find(int(u)) for u in uniq], dtype=np.int64)[inv].reshape(np.shape(ids))


def _pixel_box(ds, bounds: tuple[float, float, float, float] | None) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of the pixels whose centres lie in ``bounds`` (the raster's CRS)."""
    if bounds is None:
        return 0, ds.height, 0, ds.width
    left, bottom, right, top = bounds
    inv = ~ds.transform
    cols = sorted(v for v, _ in (inv * (left, top), inv * (right, bottom)))
    rows = sorted(v for _, v in (inv * (left, top), inv * (right, bottom)))
    r0, r1 = max(0, math.ceil(rows[0] - 0.5)), min(ds.height, math.ceil(rows[1] - 0.5))
    c0, c1 = max(0, math.ceil(cols[0] - 0.5)), min(ds.width, math.ceil(cols[1] - 0.5))
    if r0 >= r1 or c0 >= c1:
        raise ConfigError(f"bounds {bounds} do not overlap the reference map")
    return r0, r1, c0, c1


def sample_reference_map(
    path: str | Path,
    *,
    legend: Legend | None = None,
    value_names: Mapping[int, str] | None = None,
    options: SamplingOptions = SamplingOptions(),
    bounds: tuple[float, float, float, float] | None = None,
) -> pd.DataFrame:
    """Training points from the categorical raster at ``path`` (see the module docstring).

    ``legend``: the model's classes (default: the raster's own, :func:`legend_from_raster`).
    ``value_names``: raster value -> source class name (default: the raster's ``class_<value>`` tags).
    ``bounds``: (left, bottom, right, top) in the raster's CRS: only pixels centred there are sampled
    (the erosion still sees their neighbours beyond it), e.g. the training half of an area.

    Returns one row per point: ``x``, ``y`` (pixel centre, metres in the raster's CRS), ``lon``, ``lat``
    (degrees, WGS 84), ``row``, ``col`` (raster pixel), ``value`` (raster value), ``label`` (index into
    ``legend.classes``), ``field`` (int64: the 8-connected region of one raster value the pixel lies in,
    named by its smallest pixel index ``row * width + col``; what the validation split groups by),
    ``class_name``; sorted by (row, col). ``attrs``: ``crs`` (WKT), ``classes``,
    ``colours``, ``source``, ``options``.
    """
    names = dict(value_names) if value_names is not None else raster_value_names(path)
    if not names:
        raise InvalidInputError(f"{path}: no class names for its values: pass value_names or tag the raster class_<value>")
    legend = legend if legend is not None else legend_from_raster(path, names)
    value_label = {v: legend.classes.index(t) for v, n in names.items() if (t := legend.target_of(n)) is not None}
    if not value_label:
        raise ConfigError(f"legend {legend.name!r} maps none of the raster's classes {sorted(set(names.values()))}")
    mapped_values = np.array(sorted(value_label))
    labels_of = np.array([value_label[v] for v in mapped_values])

    with rasterio.open(path) as ds:
        if ds.crs is None or not ds.crs.is_projected:
            raise InvalidInputError(f"{path}: the reference map needs a projected CRS in metres (erosion is in metres), "
                              f"got {ds.crs}; reproject it first")
        t = ds.transform
        if t.b != 0 or t.d != 0:
            raise InvalidInputError(f"{path}: rotated rasters are not supported; warp it north-up first")
        footprint = erosion_footprint(options.erosion_m, res_x=t.a, res_y=t.e)
        halo_y, halo_x = footprint.shape[0] // 2, footprint.shape[1] // 2
        to_ll = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True)
        r0, r1, c0, c1 = _pixel_box(ds, bounds)
        picked, fields = [], _Fields(ds.width, ds.nodata)
        for wr in range(r0, r1, options.window):
            for wc in range(c0, c1, options.window):
                h, w = min(options.window, r1 - wr), min(options.window, c1 - wc)
                # read the window plus a halo (clipped to the raster), then pad back to the halo
                pr0, pr1 = max(wr - halo_y, 0), min(wr + h + halo_y, ds.height)
                pc0, pc1 = max(wc - halo_x, 0), min(wc + w + halo_x, ds.width)
                data = ds.read(1, window=Window(pc0, pr0, pc1 - pc0, pr1 - pr0))
                pad = ((pr0 - (wr - halo_y), wr + h + halo_y - pr1), (pc0 - (wc - halo_x), wc + w + halo_x - pc1))
                outside = np.pad(np.zeros(data.shape, bool), pad, constant_values=True)
                data = np.pad(data, pad)
                keep = eroded(data, footprint=footprint, nodata=ds.nodata, outside=outside,
                              drop_edges=options.drop_edges)[halo_y:halo_y + h, halo_x:halo_x + w]
                core = data[halo_y:halo_y + h, halo_x:halo_x + w]
                keep &= np.isin(core, mapped_values)
                field_ids = fields.window(core, wr, wc, options.window)
                rr, cc = np.nonzero(keep)
                if rr.size == 0:
                    continue
                rows, cols = rr + wr, cc + wc
                values = core[rr, cc].astype(np.int64)
                xs, ys = t * (cols + 0.5, rows + 0.5)
                lon, lat = to_ll.transform(xs, ys)
                table = pd.DataFrame({
                    "x": xs, "y": ys, "lon": lon, "lat": lat, "row": rows, "col": cols, "value": values,
                    "label": labels_of[np.searchsorted(mapped_values, values)], "field": field_ids[rr, cc],
                    "cell_x": np.floor((np.asarray(lon) + 180.0) / options.cell_deg).astype(np.int64),
                    "cell_y": np.floor((np.asarray(lat) + 90.0) / options.cell_deg).astype(np.int64),
                    "key": _keys(rows, cols, options.seed),
                })
                picked.append(_pick(table, options.per_cell))  # per window first: bounded memory
        crs_wkt = ds.crs.to_wkt()
    columns = ["x", "y", "lon", "lat", "row", "col", "value", "label", "field"]
    if picked:
        points = _pick(pd.concat(picked, ignore_index=True), options.per_cell)[columns]
    else:
        points = pd.DataFrame({c: pd.Series(dtype=float if c in ("x", "y", "lon", "lat") else np.int64)
                               for c in columns})
    points = points.sort_values(["row", "col"]).reset_index(drop=True)
    points["field"] = fields.resolve(points["field"].to_numpy())
    points["label"] = points["label"].astype(np.int16)
    points["class_name"] = np.asarray(legend.classes, dtype=object)[points["label"].to_numpy(int)]
    points.attrs = {"crs": crs_wkt, "classes": list(legend.classes), "colours": legend.colours,
                    "source": str(path), "options": options.model_dump()}
    return points


def _cube_crs(cube: xr.DataArray) -> CRS:
    crs = None
    try:
        crs = cube.rio.crs
    except Exception:  # noqa: BLE001 - no rioxarray accessor data: fall back to the attributes
        crs = None
    crs = crs or cube.attrs.get("tile_crs") or cube.attrs.get("crs")
    if crs is None:
        raise IncompatibleInputError("cube has no CRS (rio.crs or a 'tile_crs' attribute); cannot place points")
    return CRS.from_user_input(crs)


def samples_from_cubes(
    cubes: Iterable[xr.DataArray],
    points: pd.DataFrame,
    *,
    class_names: list[str] | None = None,
    class_colours: list[str] | None = None,
    region: str = "",
) -> xr.Dataset:
    """The pixel series of ``points`` (from :func:`sample_reference_map`) read from tile cubes.

    ``cubes``: ``(time, band, y, x)`` reflectance cubes (e.g. :func:`cropmap.stages.cube.open_tile_cube`),
    lazy or not, with pixel-centre ``x``/``y`` coordinates on a regular grid and a CRS (``rio.crs`` or
    a ``tile_crs`` attribute); they must share ``time`` and ``band``. Points are placed by their
    ``lon``/``lat``, so the cubes' CRS may differ from the reference map's. Only the points' pixels are
    read. A point outside every cube, or whose series has no data, is left out with a warning.

    Returns a sample set ``(sample, time, band)`` float32 (:func:`cropmap.samples.sets.make_sample_set`) with
    ``label`` from the points, ``class_name`` = ``class_names`` (default ``points.attrs["classes"]``),
    ``point`` = the row of each sample in ``points``, ``field`` (when the points have one), and the cubes'
    season attributes.
    """
    class_names = list(class_names if class_names is not None else points.attrs.get("classes") or [])
    if not class_names:
        raise ConfigError("class_names missing: pass them or points from sample_reference_map")
    if class_colours is None:
        class_colours = points.attrs.get("colours")
    lon, lat = points["lon"].to_numpy(float), points["lat"].to_numpy(float)
    series, order, times, bands, season_attrs = [], [], None, None, {}
    taken = np.zeros(len(points), bool)
    for cube in cubes:
        if times is None:
            times, bands = cube["time"].values, [str(b) for b in cube["band"].values]
            season_attrs = {k: v for k, v in cube.attrs.items() if k.startswith("season_")}
        elif not (np.array_equal(times, cube["time"].values) and bands == [str(b) for b in cube["band"].values]):
            raise IncompatibleInputError("cubes differ in time bins or bands; build them with one season and band list")
        xs, ys = Transformer.from_crs("EPSG:4326", _cube_crs(cube), always_xy=True).transform(lon, lat)
        x, y = cube["x"].values, cube["y"].values
        dx, dy = x[1] - x[0], y[1] - y[0]
        col = np.floor((np.asarray(xs) - (x[0] - dx / 2)) / dx).astype(np.int64)
        row = np.floor((np.asarray(ys) - (y[0] - dy / 2)) / dy).astype(np.int64)
        inside = (col >= 0) & (col < x.size) & (row >= 0) & (row < y.size) & ~taken
        idx = np.flatnonzero(inside)
        if idx.size == 0:
            continue
        taken[idx] = True
        picked = cube.isel(y=xr.DataArray(row[idx], dims="sample"), x=xr.DataArray(col[idx], dims="sample"))
        # only the points' chunks, read in this call (the scheduler given here: dask.config is global)
        series.append(np.asarray(picked.transpose("sample", "time", "band").compute(scheduler="threads").values,
                                 dtype=np.float32))
        order.append(idx)
    if not order:
        raise IncompatibleInputError(f"none of the {len(points)} points lies in the given cubes; "
                                     "do the cubes cover the reference map's area?")
    values, idx = np.concatenate(series), np.concatenate(order)
    has_data = ~np.isnan(values).any(axis=(1, 2))
    dropped_outside, dropped_nodata = int((~taken).sum()), int((~has_data).sum())
    if dropped_outside or dropped_nodata:
        warnings.warn(f"{dropped_outside} point(s) outside every cube and {dropped_nodata} without data "
                      "were left out of the sample set", stacklevel=2)
    keep = np.argsort(idx[has_data], kind="stable")  # back in the points' order
    values, idx = values[has_data][keep], idx[has_data][keep]
    chosen = points.iloc[idx]
    out = make_sample_set(values, times=times, bands=bands, labels=chosen["label"].to_numpy(),
                          class_names=class_names, class_colours=class_colours, region=region,
                          lat=chosen["lat"].to_numpy(), lon=chosen["lon"].to_numpy(),
                          source=str(points.attrs.get("source", "")))
    out.attrs.update(season_attrs)  # the cubes' season: training refuses to mix seasons
    out = out.assign_coords(point=("sample", idx.astype(np.int64)))
    if "field" in chosen:  # what the validation split groups by: no field on both sides
        out = out.assign_coords(field=("sample", chosen["field"].to_numpy(np.int64)))
    return out
