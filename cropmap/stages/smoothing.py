"""A zone's probability mosaic -> smoothed class, confidence and probability rasters: :func:`smooth_zone`.

The zone mosaic (:func:`cropmap.stages.mosaic.mosaic_tiles`) calls it when the run smooths
(``PredictOptions.smoothing``): the tiles' probabilities are read window by window from the zone's
probability VRT (all tiles on one pixel grid), each window with a halo of ``window // 2`` pixels of its
neighbours (tiles included), smoothed (:func:`cropmap.core.smoothing.bayes_smooth`), the halo dropped.
Every pixel so sees the same neighbourhood as if the zone were smoothed in one piece: no seam at tile
edges, by construction. The zone's edge and nodata pixels (255) are no neighbours; neighbouring UTM
zones are separate mosaics, so a zone border is not smoothed across. Memory: one window (``blocksize``
squared plus its halo, x classes x window**2 float64 values per row step), never the zone.

Outputs, uint8, nodata 255, on the VRT's grid: ``class`` (argmax of the smoothed probabilities),
``confidence`` (their maximum, percent) and ``probability`` (one band per class, percent, rounded: a
pixel's bands sum to 100 within rounding).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from cropmap.core.smoothing import BayesSmoothing, bayes_smooth
from cropmap.stages.inference import NODATA
from cropmap.stages.predict_options import PredictOptions
from cropmap.stages.predict_provenance import read_run_file

__all__ = ["SMOOTHED_PRODUCTS", "run_smoothing", "smooth_zone", "smooth_percent"]

#: The products that come from the smoothed probabilities.
SMOOTHED_PRODUCTS = ("class", "confidence", "probability")


def run_smoothing(tile_dir: str | Path) -> BayesSmoothing | None:
    """The smoothing of the run whose tiles are in ``tile_dir``: its ``run.json``'s predict options
    (:meth:`PredictOptions.smoother`); None without a ``run.json`` or when the run does not smooth."""
    record = read_run_file(tile_dir)
    if record is None:
        return None
    options = record.get("options") or {}
    return PredictOptions(**{k: v for k, v in options.items() if k in PredictOptions.model_fields}).smoother()


def smooth_percent(probs: np.ndarray, params: BayesSmoothing) -> dict[str, np.ndarray]:
    """Smooth uint8 percent probabilities ``(class, y, x)`` (255: nodata in any band) in one piece:
    ``{"class": (y, x), "confidence": (y, x), "probability": (class, y, x)}``, uint8, nodata 255.

    A stored 0 % is read as 0.5 % (the half step of the percent rounding), so its logit is finite and not
    far beyond its neighbours' (sits clips at 1e-6, which on percent values would make every 0 an outlier).
    """
    missing = (probs == NODATA).any(axis=0)
    values = np.maximum(probs.astype(np.float64), 0.5)
    values[:, missing] = np.nan
    smoothed = bayes_smooth(values, params)
    top = np.nan_to_num(smoothed, nan=-1.0)
    label = top.argmax(axis=0).astype(np.uint8)
    confidence = np.rint(top.max(axis=0) * 100.0).astype(np.uint8)
    percent = np.rint(np.nan_to_num(smoothed, nan=0.0) * 100.0).astype(np.uint8)
    label[missing], confidence[missing], percent[:, missing] = NODATA, NODATA, NODATA
    return {"class": label, "confidence": confidence, "probability": percent}


def smooth_zone(probability: str | Path, out: Mapping[str, Path], params: BayesSmoothing, *,
                blocksize: int = 512) -> dict[str, Path]:
    """Smooth the zone's probability raster ``probability`` (a VRT of the probability tiles, uint8 percent,
    one band per class) window by window and write ``out[product]`` (GeoTIFFs, products of
    :data:`SMOOTHED_PRODUCTS`) on its grid; ``blocksize`` (a multiple of 16) is the side of a window and of
    the GeoTIFFs' blocks. Returns ``out``."""
    halo = params.halo
    with rasterio.open(probability) as src:
        height, width, count = src.height, src.width, src.count
        profile = {"driver": "GTiff", "dtype": "uint8", "nodata": NODATA, "height": height, "width": width,
                   "crs": src.crs, "transform": src.transform, "compress": "deflate", "zlevel": 1,
                   "tiled": True, "blockxsize": blocksize, "blockysize": blocksize}
        dsts = {p: rasterio.open(out[p], "w", **profile, count=count if p == "probability" else 1)
                for p in SMOOTHED_PRODUCTS}
        try:
            for r0 in range(0, height, blocksize):
                for c0 in range(0, width, blocksize):
                    h, w = min(blocksize, height - r0), min(blocksize, width - c0)
                    block = _read_with_halo(src, r0, c0, h, w, halo)
                    result = smooth_percent(block, params)
                    inner = (slice(halo, halo + h), slice(halo, halo + w))
                    for product, data in result.items():
                        data = data[(Ellipsis, *inner)]
                        dsts[product].write(data if data.ndim == 3 else data[None], window=Window(c0, r0, w, h))
        finally:
            for dst in dsts.values():
                dst.close()
    return dict(out)


def _read_with_halo(src, r0: int, c0: int, h: int, w: int, halo: int) -> np.ndarray:
    """The window ``(r0, c0, h, w)`` of ``src`` with ``halo`` pixels around it, nodata beyond the raster."""
    rows = (max(0, r0 - halo), min(src.height, r0 + h + halo))
    cols = (max(0, c0 - halo), min(src.width, c0 + w + halo))
    data = src.read(window=Window(cols[0], rows[0], cols[1] - cols[0], rows[1] - rows[0]))
    pad = ((0, 0), (rows[0] - (r0 - halo), r0 + h + halo - rows[1]), (cols[0] - (c0 - halo), c0 + w + halo - cols[1]))
    return np.pad(data, pad, constant_values=NODATA)
