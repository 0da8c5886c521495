"""Area estimation on a class map: a stratified random sample of its pixels to be labelled, the
labels read from a reference map where one stands in for the labellers (the DEMO), and the
area-adjusted estimates with 95 % confidence intervals (:mod:`cropmap.core.area_estimation`) written
as CSV and markdown.

Strata are the mapped classes; nodata pixels (255) are outside the population. The map is read
block by block (memory: one block), twice for a sample: once to count the pixels of each class,
once to find the pixels drawn (uniformly without replacement among the pixels of each stratum,
from ``numpy.random.default_rng(seed)``). Areas are per country (the map's whole extent);
:func:`zonal_areas` (:mod:`cropmap.stages.area_zonal`) gives the mapped (pixel-count) hectares per
class in each polygon of any layer of admin units (provinces) and the share of each unit mapped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from rasterio.warp import transform as transform_points

from cropmap.core.area_estimation import Z95, AreaEstimate, allocate, stratified_estimate
from cropmap.errors import DataNotFoundError, InvalidInputError
from cropmap.io.outputs import atomic_path
from cropmap.ml.evaluate import write_matrix_png
from cropmap.stages.area_figures import class_colours, plot_area_estimates
# the zonal hectares live in their own module; named here too so that every area product is one import away
from cropmap.stages.area_zonal import map_class_names, write_zonal_report, zonal_areas
from cropmap.stages.predict import NODATA
from cropmap.stages.tile_files import colormap_of

__all__ = ["MapStrata", "map_strata", "draw_sample", "label_from_reference", "write_sample", "read_sample",
           "estimate_areas", "area_table", "write_area_report", "default_allocation", "check_sample_on_map",
           "zonal_areas", "write_zonal_report", "SUGGESTION_DESIGN", "refuse_suggestions"]

SAMPLE_COLUMNS = ["id", "stratum", "map_class", "row", "col", "x", "y", "lon", "lat", "reference_class"]


@dataclass(frozen=True)
class MapStrata:
    """The strata of a class map: ``pixels[k]`` mapped pixels of class ``k`` (``names[k]``), the pixel
    area in hectares, and the map's CRS."""

    path: Path
    names: tuple[str, ...]
    pixels: np.ndarray
    pixel_ha: float
    crs: rasterio.crs.CRS

    @property
    def area_ha(self) -> np.ndarray:
        """Mapped area per class in hectares, ``(k,)``."""
        return self.pixels * self.pixel_ha


def _windows(src):
    for _, window in src.block_windows(1):
        yield window, src.read(1, window=window)


def map_strata(class_map: str | Path) -> MapStrata:
    """Count the mapped pixels of each class of ``class_map`` (a class COG in a projected CRS, metres)."""
    path = Path(class_map)
    if not path.exists():
        raise DataNotFoundError(f"class map {path} not found; run `cropmap mosaic` first")
    with rasterio.open(path) as src:
        names = map_class_names(src)
        if not src.crs or not src.crs.is_projected:
            raise InvalidInputError(f"{path.name}: areas need a projected CRS in metres, got {src.crs}")
        counts = np.zeros(256, dtype=np.int64)
        for _, block in _windows(src):
            counts += np.bincount(block.ravel(), minlength=256)
        pixel_ha = abs(src.transform.a * src.transform.e) / 1e4
        crs = src.crs
    extra = np.flatnonzero(counts[len(names):NODATA])
    if extra.size:
        raise InvalidInputError(f"{path.name} holds values {list(extra + len(names))} past its {len(names)} classes")
    return MapStrata(path, names, counts[:len(names)], pixel_ha, crs)


def draw_sample(strata: MapStrata, allocation: Sequence[int], *, seed: int = 0) -> pd.DataFrame:
    """A stratified random sample of ``allocation[k]`` pixels of each class ``k`` (without
    replacement). Columns: ``id``, ``stratum`` (class name), ``map_class`` (index), ``row``/``col``
    (pixel), ``x``/``y`` (pixel centre, map CRS), ``lon``/``lat`` (EPSG:4326), ``reference_class``
    (empty: to be labelled). Rows sorted by stratum then pixel; the same seed draws the same sample."""
    alloc = np.asarray(allocation, dtype=np.int64)
    if alloc.shape != strata.pixels.shape or (alloc > strata.pixels).any() or (alloc < 0).any():
        raise InvalidInputError(f"allocation {alloc.tolist()} does not fit the mapped pixels {strata.pixels.tolist()}")
    rng = np.random.default_rng(seed)
    # the ordinal (in reading order of the blocks) of each pixel drawn, per class
    wanted = {k: np.sort(rng.choice(int(strata.pixels[k]), size=int(alloc[k]), replace=False))
              for k in range(len(alloc)) if alloc[k]}
    seen = np.zeros(len(alloc), dtype=np.int64)
    rows, cols, classes = [], [], []
    with rasterio.open(strata.path) as src:
        transform = src.transform
        for window, block in _windows(src):
            flat = block.ravel()
            for k, ordinals in wanted.items():
                where = np.flatnonzero(flat == k)
                lo, hi = np.searchsorted(ordinals, [seen[k], seen[k] + where.size])
                picked = where[ordinals[lo:hi] - seen[k]]
                seen[k] += where.size
                r, c = np.divmod(picked, block.shape[1])
                rows.append(r + int(window.row_off))
                cols.append(c + int(window.col_off))
                classes.append(np.full(picked.size, k))
    row, col, cls = (np.concatenate(v) if v else np.zeros(0, dtype=np.int64) for v in (rows, cols, classes))
    xs, ys = rasterio.transform.xy(transform, row, col)
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    lon, lat = transform_points(strata.crs, "EPSG:4326", xs, ys) if len(xs) else ([], [])
    frame = pd.DataFrame({"stratum": [strata.names[k] for k in cls], "map_class": cls, "row": row, "col": col,
                          "x": xs, "y": ys, "lon": np.round(lon, 7), "lat": np.round(lat, 7),
                          "reference_class": ""})
    frame = frame.sort_values(["map_class", "row", "col"], kind="stable").reset_index(drop=True)
    frame.insert(0, "id", np.arange(len(frame)))
    return frame


def label_from_reference(sample: pd.DataFrame, strata: MapStrata, reference: str | Path) -> pd.DataFrame:
    """Fill ``reference_class`` with the class name of ``reference`` (a raster whose ``class_<value>``
    or ``class_names`` tags name its classes) at each point: the reference map standing in for the
    labellers. Points on reference nodata get an empty label (left out of the estimate)."""
    with rasterio.open(reference) as ref:
        tags = {**ref.tags(), **ref.tags(1)}
        if "class_names" in tags:
            ref_names = dict(enumerate(json.loads(tags["class_names"])))
        else:
            ref_names = {int(k[6:]): v for k, v in tags.items() if k.startswith("class_") and k[6:].isdigit()}
        xs, ys = sample["x"].to_numpy(), sample["y"].to_numpy()
        if ref.crs != strata.crs:
            xs, ys = transform_points(strata.crs, ref.crs, xs, ys)
        values = np.array([v[0] for v in ref.sample(zip(xs, ys), indexes=1)]) if len(xs) else np.zeros(0)
        nodata = ref.nodata
    out = sample.copy()
    out["reference_class"] = ["" if (nodata is not None and v == nodata) else ref_names.get(int(v), str(int(v)))
                              for v in values]
    return out


def write_sample(sample: pd.DataFrame, path: str | Path, crs: rasterio.crs.CRS | None = None) -> Path:
    """Write the sample points as CSV (``.csv``) or a GeoPackage of points in EPSG:4326 (``.gpkg``)."""
    import pyogrio.raw
    import shapely

    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".csv":
            sample.to_csv(tmp, index=False)
        elif path.suffix == ".gpkg":
            geometry = shapely.to_wkb(shapely.points(sample["lon"].to_numpy(), sample["lat"].to_numpy()))
            fields = [c for c in sample.columns]
            pyogrio.raw.write(str(tmp), geometry=np.asarray(geometry, dtype=object),
                              field_data=[sample[c].to_numpy() for c in fields], fields=fields, crs="EPSG:4326",
                              geometry_type="Point", driver="GPKG", layer="samples")
        else:
            raise InvalidInputError(f"{path.name}: write samples as .csv or .gpkg")
    return path


#: The ``design`` column of labelling suggestions (:mod:`cropmap.stages.label_suggestions`); the stratified
#: random sample of :func:`draw_sample` has none.
SUGGESTION_DESIGN = "uncertainty"


def read_sample(path: str | Path) -> pd.DataFrame:
    """Read labelled samples (CSV or GeoPackage written by :func:`write_sample`, ``reference_class`` filled)."""
    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(f"sample file {path} not found; draw one with `cropmap area sample`")
    if path.suffix == ".gpkg":
        import pyogrio

        _, _, _, fields = pyogrio.raw.read(str(path), read_geometry=False)
        meta = pyogrio.read_info(str(path))
        frame = pd.DataFrame(dict(zip(meta["fields"], fields)))
    else:
        frame = pd.read_csv(path, keep_default_na=False, dtype={"reference_class": str})
    missing = {"map_class", "reference_class"} - set(frame.columns)
    if missing:
        raise InvalidInputError(f"{path.name} lacks the columns {sorted(missing)}")
    return frame


def refuse_suggestions(sample: pd.DataFrame) -> None:
    """Raise :class:`InvalidInputError` if ``sample`` (as :func:`read_sample` reads it)
    holds suggested points (a ``design`` column of :data:`SUGGESTION_DESIGN`): chosen where the map is least sure, they
    are no probability sample, and the stratified estimator would count the map's errors many times over."""
    if "design" in sample.columns and (sample["design"].astype(str) == SUGGESTION_DESIGN).any():
        raise InvalidInputError("these are labelling suggestions (design uncertainty), not a probability sample: "
                                "train on them (`cropmap train --labels`); estimate areas from a stratified "
                                "sample (`cropmap area sample` without --design)")


def estimate_areas(strata: MapStrata, sample: pd.DataFrame) -> tuple[AreaEstimate, dict]:
    """The Olofsson et al. (2014) estimates from a labelled sample of this map; also returns notes
    (``n_unlabelled``: samples left out for an empty label; ``unknown_labels``: reference names that
    are not map classes, which are left out too and listed).

    Raises :class:`InvalidInputError` naming what to label: a sample without any reference label yet,
    or a mapped class with fewer than two labelled sample units (its variance is undefined).
    """
    index = {n: i for i, n in enumerate(strata.names)}
    refuse_suggestions(sample)
    labels = sample["reference_class"].fillna("").astype(str).str.strip()  # a GeoPackage's NULL: no label
    unlabelled = labels == ""
    if unlabelled.all():
        raise InvalidInputError(f"the sample has no reference labels yet ({len(sample)} units, reference_class empty): "
                                "fill reference_class of each point with the class seen on the ground or in imagery "
                                f"(one of {', '.join(strata.names)}), then estimate again")
    unknown = sorted(set(labels[~unlabelled]) - set(index))
    keep = ~unlabelled & labels.isin(list(index))
    k = len(strata.names)
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (sample.loc[keep, "map_class"].astype(int).to_numpy(),
                       labels[keep].map(index).to_numpy()), 1)
    labelled = counts.sum(axis=1)
    thin = [f"{strata.names[i]} ({labelled[i]})" for i in range(k) if strata.pixels[i] > 0 and labelled[i] < 2]
    if thin:
        raise InvalidInputError(f"mapped classes with fewer than 2 labelled sample units: {', '.join(thin)}; "
                                f"{int(unlabelled.sum())} of {len(sample)} units have no reference_class and "
                                f"{int((~unlabelled & ~keep).sum())} name no map class: label at least 2 per "
                                "mapped class, or draw more with `cropmap area sample`")
    return stratified_estimate(counts, strata.area_ha), {"n_unlabelled": int(unlabelled.sum()),
                                                         "unknown_labels": unknown, "n_used": int(keep.sum())}


def area_table(strata: MapStrata, est: AreaEstimate) -> pd.DataFrame:
    """One row per class: mapped and adjusted area (ha) with 95 % CI, user's and producer's accuracy with CI."""
    return pd.DataFrame({
        "class": strata.names, "mapped_pixels": strata.pixels, "mapped_ha": np.round(strata.area_ha, 2),
        "sample_n": est.counts.sum(axis=1).astype(int),
        "area_ha": np.round(est.area, 2), "area_ci95_ha": np.round(Z95 * est.area_se, 2),
        "area_low_ha": np.round(est.area - Z95 * est.area_se, 2),
        "area_high_ha": np.round(est.area + Z95 * est.area_se, 2),
        "users_accuracy": np.round(est.users, 4), "users_ci95": np.round(Z95 * est.users_se, 4),
        "producers_accuracy": np.round(est.producers, 4), "producers_ci95": np.round(Z95 * est.producers_se, 4),
    })


def write_area_report(strata: MapStrata, est: AreaEstimate, out_dir: str | Path, *, name: str = "area",
                      notes: dict | None = None) -> dict[str, Path]:
    """``<name>_estimates.csv`` (:func:`area_table`), ``<name>_error_matrix.csv`` (area proportions, rows
    the reference ``reference:<class>``, columns the map ``map:<class>``: the orientation of
    ``confusion.csv`` and of every matrix picture, the transpose of Olofsson's table), each with its
    picture (``.png``, :mod:`cropmap.stages.area_figures`, :func:`cropmap.ml.evaluate.write_matrix_png`),
    and ``<name>.md`` (both tables, OA with CI, the method) in ``out_dir``."""
    out_dir = Path(out_dir)
    table = area_table(strata, est)
    by_reference = est.proportions.T  # est: rows map (the strata); every matrix cropmap writes: rows reference
    matrix = pd.DataFrame(np.round(by_reference, 6), index=[f"reference:{c}" for c in strata.names],
                          columns=[f"map:{c}" for c in strata.names])
    paths = {"estimates": out_dir / f"{name}_estimates.csv", "error_matrix": out_dir / f"{name}_error_matrix.csv",
             "markdown": out_dir / f"{name}.md", "estimates_png": out_dir / f"{name}_estimates.png",
             "error_matrix_png": out_dir / f"{name}_error_matrix.png"}
    with atomic_path(paths["estimates"]) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(paths["error_matrix"]) as tmp:
        matrix.to_csv(tmp)
    plot_area_estimates(table, paths["estimates_png"], colours=class_colours(strata.names, colormap_of(strata.path)),
                        title=f"{strata.path.name}: area per class, {int(est.counts.sum())} sample units, "
                              f"OA {est.overall:.3f} +- {Z95 * est.overall_se:.3f}")
    write_matrix_png(by_reference, strata.names, paths["error_matrix_png"], fmt="{:.3f}",
                     title=f"{strata.path.name}: error matrix in area proportions")
    lines = [f"# Area estimates: {strata.path.name}", "",
             "Stratified estimator of Olofsson et al. (2014), strata = mapped classes; 95 % confidence "
             "intervals (estimate +- 1.96 SE). Areas in hectares over the whole map (per country: no "
             "province outlines used).", "",
             f"Overall accuracy: {est.overall:.4f} +- {Z95 * est.overall_se:.4f}; "
             f"{int(est.counts.sum())} labelled sample units.", ""]
    if notes:
        lines += [f"Samples without a label: {notes.get('n_unlabelled', 0)}; reference classes outside the map "
                  f"legend (left out): {', '.join(notes.get('unknown_labels', [])) or 'none'}.", ""]
    cols = ["class", "mapped_ha", "sample_n", "area_ha", "area_ci95_ha", "users_accuracy", "users_ci95",
            "producers_accuracy", "producers_ci95"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table[cols].itertuples(index=False)]
    lines += ["", "Error matrix in area proportions (rows: reference, columns: map; a row sums to the class's "
              "estimated area share):", "",
              "| reference \\ map | " + " | ".join(strata.names) + " |", "|" + "---|" * (len(strata.names) + 1)]
    lines += [f"| {n} | " + " | ".join(f"{v:.4f}" for v in row) + " |" for n, row in zip(strata.names, by_reference)]
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return paths


def check_sample_on_map(strata: MapStrata, sample: pd.DataFrame) -> None:
    """Raise :class:`InvalidInputError` unless every sample unit's ``map_class`` is the map's class at its
    ``row``/``col``: a sample drawn on another map (another model, another run) would give estimates
    for a map it does not describe."""
    if not {"row", "col"} <= set(sample.columns):
        raise InvalidInputError("the sample has no row/col columns; draw it with `cropmap area sample` on this map")
    if sample.empty:
        raise InvalidInputError("the sample holds no points; draw one with `cropmap area sample` on this map")
    from rasterio.windows import Window

    # pixel and class columns a labeller may have edited into text: such a unit lies on no stratum
    rows, cols, classes = (pd.to_numeric(sample[c], errors="coerce").fillna(-1).astype(np.int64).to_numpy()
                           for c in ("row", "col", "map_class"))
    with rasterio.open(strata.path) as src:
        inside = (rows >= 0) & (rows < src.height) & (cols >= 0) & (cols < src.width)
        values = np.array([src.read(1, window=Window(c, r, 1, 1))[0, 0] if ok else NODATA
                           for r, c, ok in zip(rows, cols, inside)])
    wrong = int((values != classes).sum())
    if wrong:
        raise InvalidInputError(f"{wrong} of {len(sample)} sample units do not lie on their stratum in "
                                f"{strata.path.name}: the sample was drawn on another map; draw a new one "
                                "with `cropmap area sample`")


def default_allocation(strata: MapStrata, total: int, minimum: int = 50) -> np.ndarray:
    """:func:`cropmap.core.area_estimation.allocate` on the map's pixel counts."""
    return allocate(strata.pixels, total, minimum=minimum)
