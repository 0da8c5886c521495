"""Scoring a class map against a reference map of the same grid: OA, macro-F1, kappa, per-class F1, and
how well the map's confidence and out-of-distribution (OOD) layers pick out its wrong pixels."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window, from_bounds

from cropmap.io.config import load_legend
from cropmap.errors import IncompatibleInputError
from cropmap.io import downloads, storage
from cropmap.ml.evaluate import error_detection, scores

__all__ = ["score_class_map"]


def _class_names(ds) -> dict[int, str]:
    tags = {**ds.tags(), **ds.tags(1)}
    if "class_names" in tags:
        return dict(enumerate(json.loads(tags["class_names"])))
    return {int(k[6:]): v for k, v in tags.items() if k.startswith("class_") and k[6:].isdigit()}


def score_class_map(class_map: storage.Location, reference: storage.Location, *,
                    bounds: tuple[float, float, float, float] | None = None,
                    legend_path: str | Path | None = None, warp: bool = False,
                    layers: Mapping[str, storage.Location] | None = None) -> dict:
    """OA, balanced accuracy, macro-F1, kappa, per-class F1 and recall, and the confusion of a class map against a
    reference map (:func:`cropmap.ml.evaluate.scores`).

    Both rasters (files or URLs) must share CRS and pixel size, unless ``warp``: then the map is read
    onto the reference's grid with nearest-neighbour resampling (GDAL's warper), e.g. a national map
    in an equal-area CRS against a UTM reference. ``bounds`` (metres, the reference's CRS) limits the
    comparison, e.g. to the part kept out of training. Reference classes are named by their
    ``class_<value>`` tags and mapped by the legend (default: same names); the map's by its
    ``class_names`` tag. Pixels that are nodata in either are left out (``n_unmapped`` counts reference
    pixels the map left as nodata).

    ``layers``: the map's ``confidence`` and/or ``ood`` COGs (same grid as the class map), read like it;
    ``error_detection`` then holds, per layer, :func:`~cropmap.ml.evaluate.error_detection` of its
    distrust score (100 - confidence; the OOD score as is) against the scored pixels' errors, and
    ``ood_flagged`` the share of scored pixels with an OOD score over 100.
    """
    legend = load_legend(legend_path) if legend_path is not None else None
    with downloads.open_raster(reference) as ref, downloads.open_raster(class_map) as src, \
            _on_grid_of(src, ref, warp) as cm:
        if ref.crs != cm.crs or not np.allclose(ref.res, cm.res):
            raise IncompatibleInputError(f"{class_map} ({cm.crs}, {cm.res} m) and the reference {reference} "
                                         f"({ref.crs}, {ref.res} m) differ in CRS or pixel size; warp one first")
        box = bounds or tuple(ref.bounds)
        window = from_bounds(*box, ref.transform).round_offsets().round_lengths()
        truth = ref.read(1, window=window, boundless=True, fill_value=ref.nodata if ref.nodata is not None else 255)
        left, top = ref.window_transform(window) * (0, 0)
        pred_window = from_bounds(left, top - truth.shape[0] * ref.res[1], left + truth.shape[1] * ref.res[0], top,
                                  cm.transform).round_offsets().round_lengths()
        pred = _read_padded(cm, pred_window)
        ref_names, map_names, ref_nodata = _class_names(ref), _class_names(src), ref.nodata
        extra = {}
        for name, location in (layers or {}).items():
            with downloads.open_raster(location) as layer_src, _on_grid_of(layer_src, ref, warp) as layer:
                extra[name] = _read_padded(layer, pred_window)
    index = {n: i for i, n in map_names.items()}
    lookup = np.full(256, -1, dtype=np.int64)
    for value, name in ref_names.items():
        target = legend.target_of(name) if legend is not None else name
        if target in index:
            lookup[value] = index[target]
    y_true = lookup[truth.astype(np.int64) % 256]
    has_truth = (y_true >= 0) if ref_nodata is None else (y_true >= 0) & (truth != ref_nodata)
    valid = has_truth & (pred != 255)
    n_classes = max(map_names) + 1
    names = [map_names.get(i, str(i)) for i in range(n_classes)]
    out = scores(y_true[valid], pred[valid].astype(np.int64), class_names=names)
    out["class_names"] = names  # the rows and columns of "confusion"
    out["n_unmapped"] = int((has_truth & (pred == 255)).sum())
    out["bounds"] = [float(v) for v in box]
    if extra and valid.any():  # a map that misses the scored area has no errors to detect
        right = y_true[valid] == pred[valid]
        detect = {}
        for name, values in extra.items():
            v = values[valid]
            if (v == 255).any():
                raise IncompatibleInputError(f"the {name} layer has no data where the class map has: not the same map")
            detect[name] = error_detection(100.0 - v if name == "confidence" else v.astype(np.float64), right)
        out["error_detection"] = detect
        if "ood" in extra:
            out["ood_flagged"] = float((extra["ood"][valid] > 100).mean())
    return out


@contextlib.contextmanager
def _on_grid_of(src, ref, warp: bool):
    if not warp or (src.crs == ref.crs and np.allclose(src.res, ref.res)):
        yield src
        return
    with WarpedVRT(src, crs=ref.crs, transform=ref.transform, width=ref.width, height=ref.height,
                   resampling=Resampling.nearest, nodata=255) as vrt:
        yield vrt


def _read_padded(ds, window: Window) -> np.ndarray:
    """Band 1 in ``window``, 255 where the window lies outside the raster (a boundless read, which
    warped datasets do not allow)."""
    out = np.full((int(window.height), int(window.width)), 255, dtype=np.uint8)
    inner = window.intersection(Window(0, 0, ds.width, ds.height)) if _overlap(window, ds) else None
    if inner is not None:
        r0, c0 = int(inner.row_off - window.row_off), int(inner.col_off - window.col_off)
        out[r0:r0 + int(inner.height), c0:c0 + int(inner.width)] = ds.read(1, window=inner)
    return out


def _overlap(window: Window, ds) -> bool:
    return (window.col_off < ds.width and window.row_off < ds.height and window.col_off + window.width > 0
            and window.row_off + window.height > 0)
