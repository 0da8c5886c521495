"""The job's steps as plain functions with small, serialisable arguments: what the Prefect flows call.

Each function does one step of ``map-country`` / ``train-model`` / ``build-cube`` on paths and ids (no
arrays cross a task boundary), so the flows in ``flows/`` stay wiring and every step can be run and
tested without Prefect. Outputs are keyed by the country config's hash: ``<root>/<code>/<hash>/...``,
so a changed config never reuses stale tiles, and a rerun of the same config resumes. ``root`` and
every output location may be a local folder or an fsspec URL such as ``s3://bucket/runs``
(:mod:`cropmap.storage`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rasterio.windows import from_bounds

from cropmap import storage
from cropmap.config import CountryConfig, load_country
from cropmap.errors import IncompatibleInputError
from cropmap.tiles_io import stable_hash

__all__ = ["DEMO_TRAINING", "resolve_country", "config_hash",
           "run_dir", "country_tiles", "build_tile", "training_points",
           "training_set", "train_checkpoint", "score_class_map"]

#: CPU-sized training settings of the DEMO (the train-model flow's defaults, ``cropmap demo run``): a few
#: hundred samples (one per 0.0005 degree cell and class, 60 m eroded), 30 epochs, all three phenology
#: augmentations (the west half holds only ~68 distinct series: augmentation is what keeps the net from
#: memorising them; east-half OA 0.769 without, 0.839 with, see docs/demo.md) and a SLIM CropNet
#: (32-64 channels, stride 2: ~0.1M parameters, not the paper's 4.7M) so that training takes well under
#: a minute on 2 shared cores.
DEMO_TRAINING: dict = {"cell_deg": 0.0005, "per_cell": 1, "epochs": 30, "lr": 1e-3, "batch_size": 64,
                       "augment": "all",
                       "model_options": {"channels": [32, 32, 64, 64], "first_stride": 2, "pool_after": [],
                                         "dropout": 0.2}}


def resolve_country(country: str, *, configs_dir: str | Path | None = None) -> CountryConfig:
    """The validated config of ``country``; for ``DEMO`` the demo is built first if missing.

    An unknown or malformed code (``"../etc"``, ``""``, ``"arg"``) raises
    :class:`~cropmap.errors.UnknownCountryError` listing the known ones, before anything else runs.
    """
    config = load_country(country, configs_dir)  # validates the code first
    if config.code == "DEMO":
        from cropmap.demo import build_demo, demo_country

        return demo_country(build_demo(), configs_dir=configs_dir)
    return config


def config_hash(config: CountryConfig, *extra: object) -> str:
    """16 hex digits of the config (and ``extra`` settings) that change the outputs."""
    return stable_hash([config.model_dump(mode="json"), *[_plain(e) for e in extra]])


def _plain(value: object) -> object:
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def run_dir(root: storage.Location, config: CountryConfig, *extra: object) -> storage.Location:
    """``<root>/<code>/<config hash>``: where one configuration's outputs live (a ``Path``, or a URL
    when ``root`` is one)."""
    return storage.join(root, config.code, config_hash(config, *extra))


def country_tiles(config: CountryConfig, *, tile_limit: int | None = None,
                  bounds: tuple[float, float, float, float] | None = None,
                  reference: storage.Location | None = None) -> list[str]:
    """Ids of the country's tiles (sorted), optionally only those intersecting ``bounds`` (metres, the
    tiles' CRS) or the extent of the raster ``reference``, and at most ``tile_limit`` of them."""
    from rasterio.warp import transform_bounds

    from cropmap.grid import tiles_for_aoi

    tiles = tiles_for_aoi(config, tile_size=config.tile_size)
    if reference is not None:
        with storage.open_raster(reference) as ds:
            crs, extent = ds.crs, tuple(ds.bounds)
        boxes = {epsg: transform_bounds(crs, f"EPSG:{epsg}", *extent) for epsg in {t.grid.epsg for t in tiles}}
        tiles = [t for t in tiles if _overlaps(t.bounds, boxes[t.grid.epsg])]
    if bounds is not None:
        tiles = [t for t in tiles if _overlaps(t.bounds, bounds)]
    return [t.id for t in tiles][:tile_limit]


def _overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and a[2] > b[0] and a[1] < b[3] and a[3] > b[1]


def build_tile(config: CountryConfig, tile_id: str, cube_dir: storage.Location) -> dict:
    """Search the catalog and build one tile's cube (:func:`cropmap.cube.build_cubes`); a complete
    cube is skipped. Returns ``{tile_id, path, status, reason, n_items}``."""
    from cropmap.cube import build_cubes
    from cropmap.grid import tile_from_id

    (result,) = build_cubes(config, cube_dir, tiles=[tile_from_id(tile_id)])
    return {"tile_id": result.tile_id, "path": str(result.path), "status": result.status,
            "reason": result.reason, "n_items": result.n_items}


def training_points(reference: str | Path, *, legend_path: str | Path | None = None,
                    cell_deg: float = 0.1, per_cell: int = 1, erosion_m: float = 60.0, seed: int = 0,
                    bounds: tuple[float, float, float, float] | None = None):
    """Points from a reference crop map (:func:`cropmap.labels.sample_reference_map`); the legend is a
    ``configs/legends`` YAML (default: the map's own classes)."""
    from cropmap.harmonise import load_legend
    from cropmap.labels import SamplingOptions, sample_reference_map

    legend = load_legend(legend_path) if legend_path is not None else None
    options = SamplingOptions(erosion_m=erosion_m, cell_deg=cell_deg, per_cell=per_cell, seed=seed)
    return sample_reference_map(reference, legend=legend, options=options, bounds=bounds)


def training_set(reference: str | Path, cube_paths: Sequence[storage.Location], path: storage.Location, *,
                 region: str, legend_path: str | Path | None = None, cell_deg: float = 0.1, per_cell: int = 1,
                 erosion_m: float = 60.0, seed: int = 0,
                 bounds: tuple[float, float, float, float] | None = None) -> dict:
    """Points from ``reference`` (:func:`training_points`), their series from the tile cubes
    (:func:`cropmap.labels.samples_from_cubes`), written as a netCDF sample set at ``path`` (a file or a
    URL, published whole: :func:`cropmap.storage.output_file`). Returns the path and the sample count
    per class."""
    from cropmap.cube import open_tile_cube
    from cropmap.labels import samples_from_cubes

    points = training_points(reference, legend_path=legend_path, cell_deg=cell_deg, per_cell=per_cell,
                             erosion_m=erosion_m, seed=seed, bounds=bounds)
    samples = samples_from_cubes([open_tile_cube(p) for p in cube_paths], points, region=region)
    with storage.output_file(path) as tmp:
        samples.to_netcdf(tmp, engine="h5netcdf")
    counts = np.bincount(samples["label"].values, minlength=samples.sizes["class"])
    return {"path": str(path), "n_samples": int(samples.sizes["sample"]),
            "per_class": {str(n): int(c) for n, c in zip(samples["class_name"].values, counts)}}


def train_checkpoint(samples_path: storage.Location, path: storage.Location, *, train_config: dict | None = None,
                     threads: int | None = None) -> dict:
    """Train a model on a sample set of season composites (:func:`training_set`) and save its checkpoint.

    The set carries the cubes' season attributes; ``train_config``: :class:`cropmap.train.TrainConfig`
    fields. Both locations may be URLs. A complete checkpoint at ``path`` is kept (rerun = resume).
    ``threads`` caps torch's intra-op threads while training (1 is fastest for a small net on a busy
    machine). Returns the path and scores.
    """
    import xarray as xr
    from cropmap.checkpoint import save_checkpoint
    from cropmap.season import Season
    from cropmap.train import TrainConfig, train_model

    config = TrainConfig(**(train_config or {}))
    if storage.exists(path):
        from cropmap.checkpoint import load_checkpoint

        return {"path": str(path), "scores": load_checkpoint(path).scores, "status": "skipped"}
    samples = xr.load_dataset(storage.local_copy(samples_path), engine="h5netcdf")
    refl = samples["reflectance"]
    attrs = refl.attrs if any(k.startswith("season_") for k in refl.attrs) else samples.attrs
    if not any(k.startswith("season_") for k in attrs):
        raise IncompatibleInputError("the sample set carries no season attributes; build it from tile cubes")
    season = Season.from_attrs(attrs)
    x = refl.transpose("sample", "band", "time").values.astype(np.float32)
    names = [str(n) for n in samples["class_name"].values]
    colours = [str(c) for c in samples["class_colour"].values] if "class_colour" in samples.coords else None
    import torch

    before = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        result = train_model(x, samples["label"].values, window_start=0, n_bins=x.shape[2],
                             n_classes=len(names), config=config, bin_days=season.bin_days)
    finally:
        torch.set_num_threads(before)
    scores = {**result.val_scores, "seconds": round(result.seconds, 1)}
    save_checkpoint(path, model=result.model, model_name=config.model, model_config=result.model_config,
                    feature_kind="2d", bands=[str(b) for b in samples["band"].values], season=season,
                    n_bins=x.shape[2], normalisation=result.normalisation, class_names=names,
                    class_colours=colours, config=config.model_dump(mode="json"), scores=scores)
    return {"path": str(path), "scores": scores, "n_samples": int(x.shape[0]), "status": "trained"}


def _class_names(ds) -> dict[int, str]:
    tags = {**ds.tags(), **ds.tags(1)}
    if "class_names" in tags:
        return dict(enumerate(json.loads(tags["class_names"])))
    return {int(k[6:]): v for k, v in tags.items() if k.startswith("class_") and k[6:].isdigit()}


def score_class_map(class_map: storage.Location, reference: storage.Location, *,
                    bounds: tuple[float, float, float, float] | None = None,
                    legend_path: str | Path | None = None) -> dict:
    """OA, macro-F1, kappa, per-class F1 and confusion of a class map against a reference map.

    Both rasters (files or URLs) must share CRS and pixel size. ``bounds`` (metres) limits the
    comparison, e.g. to the part kept out of training. Reference classes are named by their
    ``class_<value>`` tags and mapped by the legend (default: same names); the map's by its
    ``class_names`` tag. Pixels that are nodata in either are left out (``n_unmapped`` counts reference
    pixels the map left as nodata).
    """
    from cropmap.evaluate import scores
    from cropmap.harmonise import load_legend

    legend = load_legend(legend_path) if legend_path is not None else None
    with storage.open_raster(reference) as ref, storage.open_raster(class_map) as cm:
        if ref.crs != cm.crs or not np.allclose(ref.res, cm.res):
            raise IncompatibleInputError(f"{class_map} ({cm.crs}, {cm.res} m) and the reference {reference} "
                                         f"({ref.crs}, {ref.res} m) differ in CRS or pixel size; warp one first")
        box = bounds or tuple(ref.bounds)
        window = from_bounds(*box, ref.transform).round_offsets().round_lengths()
        truth = ref.read(1, window=window, boundless=True, fill_value=ref.nodata if ref.nodata is not None else 255)
        left, top = ref.window_transform(window) * (0, 0)
        pred_window = from_bounds(left, top - truth.shape[0] * ref.res[1], left + truth.shape[1] * ref.res[0], top,
                                  cm.transform).round_offsets().round_lengths()
        pred = cm.read(1, window=pred_window, boundless=True, fill_value=255)
        ref_names, map_names, ref_nodata = _class_names(ref), _class_names(cm), ref.nodata
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
    out = scores(y_true[valid], pred[valid].astype(np.int64), class_names=[map_names.get(i, str(i))
                                                                        for i in range(n_classes)])
    out["n_unmapped"] = int((has_truth & (pred == 255)).sum())
    out["bounds"] = [float(v) for v in box]
    return out
