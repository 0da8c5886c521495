"""Labelling suggestions: points of a class map where the model is least certain or farthest out of its
training distribution, spread in space, for a user to label and train on again (active learning; sits'
``sits_uncertainty_sampling`` picks the most uncertain pixel of each window of a sampling grid).

**Priority.** Two rankings, each on one of the map's sidecar COGs (same grid as the class COG):

- ``low_confidence``: the lowest ``confidence`` (uint8, the winning class's calibrated probability in
  percent): pixels near a decision boundary, where a label moves the boundary most;
- ``ood``: the highest ``ood`` (uint8, the Mahalanobis distance of the network's penultimate features to
  the nearest training class in percent of the training threshold, > 100 = out of distribution, capped at
  254; :mod:`cropmap.ml.ood`): pixels unlike anything trained on, where a label adds what the training set
  lacks. Used only when the OOD COG is given; ``ood_share`` of the points come from it (first), the rest
  from the confidence ranking.

Ties (uint8 values: many pixels share the lowest confidence) are broken by a seeded hash of the pixel
(:func:`cropmap.samples.reference._keys`), not reading order, so no corner of the map is favoured.

**Spread.** At least ``min_distance_m`` between any two points (a Poisson-disc rule, greedy in priority
order), and at most one candidate per square cell of that side: the most uncertain pixel of each cell, as
sits does per window. Cells alone would allow two points on either side of a cell edge a pixel apart; the
distance rule alone would need every pixel as a candidate. With both, memory is one candidate per cell
(a 100,000 x 100,000 px map at 10 m with cells of 500 m: 4 million candidates), and neighbouring
uncertain pixels, which are usually one confused field, give one point, not many.

The points are written in the stratified sample's format (:func:`cropmap.stages.area.write_sample`):
the same ``id``, ``stratum``, ``map_class``, ``row``/``col``, ``x``/``y``, ``lon``/``lat`` and
``reference_class`` (empty, to be labelled), plus ``design`` (:data:`SUGGESTION_DESIGN`, so that the area estimate
can refuse the file: it is not a probability sample), ``reason``, ``confidence``, ``ood`` and ``rank``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from rasterio.warp import transform as transform_points

from cropmap.errors import DataNotFoundError, InvalidInputError
from cropmap.samples.reference import _keys
from cropmap.stages.area import SUGGESTION_DESIGN, MapStrata
from cropmap.stages.predict import NODATA

__all__ = ["sidecar_path", "suggest_points"]

_RANKINGS = ("ood", "low_confidence")


def sidecar_path(class_map: str | Path, product: str) -> Path:
    """The ``product`` COG beside a class COG: ``<name>_class.tif`` -> ``<name>_<product>.tif``."""
    path = Path(class_map)
    stem = path.name[: -len("_class.tif")] if path.name.endswith("_class.tif") else path.stem
    return path.with_name(f"{stem}_{product}.tif")


def _check_grid(src, ref, name: str) -> None:
    if (src.width, src.height) != (ref.width, ref.height) or src.transform != ref.transform or src.crs != ref.crs:
        raise InvalidInputError(f"{name} is not on the class map's grid ({src.width}x{src.height} {src.crs} vs "
                                f"{ref.width}x{ref.height} {ref.crs}): give the COG of the same map")


def _cell_best(cell_rows: np.ndarray, cell_cols: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Index of the smallest ``keys`` entry ``(p,)`` int64 of each cell (``cell_rows``, ``cell_cols``
    ``(p,)``: the cells of one block, a few hundred), ``(m,)``; the first on a tie. No sort of the pixels
    (the slow part of a lexsort by cell and key): a per-cell minimum, then the pixels that reach it."""
    rows, cols = cell_rows - cell_rows.min(), cell_cols - cell_cols.min()
    local = rows * (int(cols.max()) + 1) + cols
    best = np.full(int(local.max()) + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, local, keys)
    hit = np.flatnonzero(keys == best[local])
    _, first = np.unique(local[hit], return_index=True)
    return hit[first]


def _candidates(strata: MapStrata, layers: dict[str, Path], cell_px: int, seed: int) -> dict[str, pd.DataFrame]:
    """Per ranking, the best pixel of each ``cell_px`` square cell: ``row``, ``col``, ``map_class``,
    ``confidence``, ``ood`` (NODATA where absent) and ``key`` (smaller = more urgent). Block by block."""
    found: dict[str, list[pd.DataFrame]] = {r: [] for r in _RANKINGS}
    with rasterio.open(strata.path) as cls_src:
        srcs = {p: rasterio.open(path) for p, path in layers.items()}
        try:
            for product, src in srcs.items():
                _check_grid(src, cls_src, Path(layers[product]).name)
            n_cells_x = -(-cls_src.width // cell_px)
            for _, window in cls_src.block_windows(1):
                block = cls_src.read(1, window=window)
                values = {p: s.read(1, window=window) for p, s in srcs.items()}
                rows, cols = np.indices(block.shape)
                rows, cols = rows.ravel() + int(window.row_off), cols.ravel() + int(window.col_off)
                conf = values["confidence"].ravel()
                ood = values["ood"].ravel() if "ood" in values else np.full(conf.size, NODATA, np.uint8)
                mapped = (block.ravel() != NODATA) & (conf != NODATA)
                # the tie-break: 32 bits of a seeded hash of the pixel, below the uint8 value
                tie = (_keys(rows, cols, seed) >> np.uint64(32)).astype(np.int64)
                primary = {"low_confidence": conf.astype(np.int64), "ood": 255 - ood.astype(np.int64)}
                usable = {"low_confidence": mapped, "ood": mapped & (ood != NODATA)}
                cells = (rows // cell_px) * n_cells_x + cols // cell_px
                for ranking in (_RANKINGS if "ood" in values else ("low_confidence",)):
                    keep = np.flatnonzero(usable[ranking])
                    if not keep.size:
                        continue
                    keys = (primary[ranking][keep] << 32) | tie[keep]
                    best = keep[_cell_best(rows[keep] // cell_px, cols[keep] // cell_px, keys)]
                    found[ranking].append(pd.DataFrame({
                        "cell": cells[best], "row": rows[best], "col": cols[best], "map_class": block.ravel()[best],
                        "confidence": conf[best], "ood": ood[best], "key": (primary[ranking][best] << 32) | tie[best]}))
        finally:
            for src in srcs.values():
                src.close()
    out = {}
    for ranking, parts in found.items():
        table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["cell", "row", "col", "key"])
        # a cell straddling two blocks has a candidate from each: keep its best, then most urgent first
        table = table.sort_values(["key", "row", "col"], kind="stable").drop_duplicates("cell")
        out[ranking] = table.reset_index(drop=True)
    return out


def _spread(tables: list[tuple[str, pd.DataFrame, int]], min_px: float) -> pd.DataFrame:
    """Greedy in priority order: a candidate is taken unless a taken point lies closer than ``min_px``
    pixels; ``tables`` are (reason, candidates sorted by urgency, how many to take), taken in turn."""
    grid: dict[tuple[int, int], list[tuple[int, int]]] = {}  # taken points by cell of side min_px
    side = max(min_px, 1.0)
    taken = []
    for reason, table, wanted in tables:
        got = 0
        for rec in table.itertuples(index=False):
            if got >= wanted:
                break
            gr, gc = int(rec.row // side), int(rec.col // side)
            near = (p for dr in (-1, 0, 1) for dc in (-1, 0, 1) for p in grid.get((gr + dr, gc + dc), ()))
            # closer than the distance, or the same pixel (both rankings may hold it; a distance of 0)
            if any(0 == (d2 := (r - rec.row) ** 2 + (c - rec.col) ** 2) or d2 < min_px ** 2 for r, c in near):
                continue
            grid.setdefault((gr, gc), []).append((rec.row, rec.col))
            taken.append({"reason": reason, "row": rec.row, "col": rec.col, "map_class": rec.map_class,
                          "confidence": rec.confidence, "ood": rec.ood})
            got += 1
    return pd.DataFrame(taken, columns=["reason", "row", "col", "map_class", "confidence", "ood"])


def suggest_points(strata: MapStrata, *, n: int, confidence: str | Path, ood: str | Path | None = None,
                   min_distance_m: float = 500.0, ood_share: float = 0.5, seed: int = 0) -> pd.DataFrame:
    """Up to ``n`` points of the class map of ``strata`` to label (module docstring): ``round(n *
    ood_share)`` of the highest ``ood`` (when the OOD COG is given), the rest of the lowest ``confidence``,
    no two closer than ``min_distance_m`` metres (pixel centres). Fewer when the map has no room for ``n``
    points that far apart (the caller says so).

    Returns the columns of :func:`cropmap.stages.area.draw_sample` (``reference_class`` empty) plus
    ``design`` (:data:`SUGGESTION_DESIGN`), ``reason`` (``ood`` / ``low_confidence``), ``confidence`` and ``ood``
    (the COGs' uint8 values; ``ood`` 255 where there is no OOD COG) and ``rank`` (0 = most urgent of its
    reason); rows in the order taken. The same seed gives the same points.
    """
    if n < 1:
        raise InvalidInputError(f"n = {n}: ask for at least one suggested point")
    if not 0.0 <= ood_share <= 1.0:
        raise InvalidInputError(f"ood_share = {ood_share}: give a fraction between 0 and 1")
    if not min_distance_m >= 0:
        raise InvalidInputError(f"min_distance_m = {min_distance_m}: give a distance >= 0 metres")
    layers = {"confidence": Path(confidence)} | ({"ood": Path(ood)} if ood is not None else {})
    for product, path in layers.items():
        if not path.exists():
            raise DataNotFoundError(f"{product} COG {path} not found; map with the {product} product "
                                    f"(`cropmap mosaic` writes <name>_{product}.tif beside the class map)")
    with rasterio.open(strata.path) as src:
        pixel_m = abs(src.transform.a)
        transform = src.transform
    min_px = min_distance_m / pixel_m
    cell_px = max(1, int(np.floor(min_px)))
    found = _candidates(strata, layers, cell_px, seed)
    n_ood = int(round(n * ood_share)) if ood is not None else 0
    picked = _spread([("ood", found["ood"], n_ood), ("low_confidence", found["low_confidence"], n - n_ood)], min_px)
    picked["rank"] = picked.groupby("reason").cumcount()
    rows, cols = picked["row"].to_numpy(np.int64), picked["col"].to_numpy(np.int64)
    xs, ys = (np.asarray(v, dtype=float) for v in rasterio.transform.xy(transform, rows, cols)) \
        if len(rows) else (np.zeros(0), np.zeros(0))
    lon, lat = transform_points(strata.crs, "EPSG:4326", xs, ys) if len(xs) else ([], [])
    classes = picked["map_class"].to_numpy(np.int64)
    return pd.DataFrame({
        "id": np.arange(len(picked)), "stratum": [strata.names[k] for k in classes], "map_class": classes,
        "row": rows, "col": cols, "x": xs, "y": ys, "lon": np.round(lon, 7), "lat": np.round(lat, 7),
        "reference_class": "", "design": SUGGESTION_DESIGN, "reason": picked["reason"].to_numpy(str),
        "confidence": picked["confidence"].to_numpy(np.int64), "ood": picked["ood"].to_numpy(np.int64),
        "rank": picked["rank"].to_numpy(np.int64)})
