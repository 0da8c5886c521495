"""Training a country's model: reference labels -> points -> series from the tile cubes -> a checkpoint.

The steps of the train-model job as plain functions with small arguments (paths, settings), so that an
executor (:mod:`cropmap.jobs.executors`) can run each as one task:

- :func:`training_set`: points from the reference labels (60 m inward erosion, one point per lon/lat cell
  and class: :func:`cropmap.samples.reference.sample_reference_map` for a categorical raster,
  :func:`cropmap.samples.reference_labels.sample_label_vectors` for vector parcels or points), their
  series read from the tile cubes, written as a netCDF sample set;
- :func:`train_checkpoint`: the model trained on that set (validated on held-out whole fields) and saved
  with everything predict needs.

:class:`TrainingSettings` defaults to the paper's CropNet v1 (4.69M parameters) with the recipe measured
best (:class:`~cropmap.ml.train.TrainConfig`: Adam with a OneCycle schedule peaking at lr 3e-3, batch 64,
50 epochs, 10 % of the fields held out, last epoch kept), time shift + time scale + magnitude warp (each
p = 0.5), 60 m inward buffer, sampling on a 0.1 degree grid; the paper's own recipe is ``lr=1e-4,
batch_size=256, epochs=50, schedule="constant"``. A scenario (the DEMO's CPU-sized settings) or a run may
change any of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from pydantic import Field

from cropmap.io.config import load_legend
from cropmap.core.season import Season
from cropmap.errors import ConfigError, IncompatibleInputError
from cropmap.io import downloads, outputs, storage
from cropmap.ml.checkpoint import load_checkpoint, model_card, save_checkpoint
from cropmap.jobs.progress import Progress, log_progress
from cropmap.ml.train import TrainConfig, fit_model
from cropmap.samples.reference import (
    SamplingOptions,
    sample_reference_map,
    samples_from_cubes,
)
from cropmap.samples.reference_labels import is_vector, sample_label_vectors
from cropmap.stages.cube import open_tile_cube

__all__ = ["TrainingSettings", "TrainingSetResult", "CheckpointResult", "training_points", "training_set",
           "train_checkpoint", "TRAIN_STAGE"]

#: The progress stage of a training's epochs (:mod:`cropmap.jobs.progress`): items ``epoch <k>/<n>``.
TRAIN_STAGE = "train"


class TrainingSettings(TrainConfig):
    """How a country's model is trained: :class:`~cropmap.ml.train.TrainConfig` (the paper's model, the
    measured recipe) with all three augmentations on, and how points are drawn from the labels."""

    augment: str = "all"
    progress: bool = False  # jobs log; a progress bar per training would garble a worker's output
    erosion_m: float = Field(60.0, ge=0)
    cell_deg: float = Field(0.1, gt=0, le=10)
    per_cell: int = Field(1, ge=1)
    spacing_m: float = Field(10.0, gt=0)  # vector parcels: candidate points on this grid inside the buffer

    def train_config(self) -> TrainConfig:
        """The :class:`~cropmap.ml.train.TrainConfig` part of these settings."""
        return TrainConfig(**self.model_dump(include=set(TrainConfig.model_fields)))

    def sampling(self) -> SamplingOptions:
        return SamplingOptions(erosion_m=self.erosion_m, cell_deg=self.cell_deg, per_cell=self.per_cell,
                               seed=self.seed)


@dataclass(frozen=True)
class TrainingSetResult:
    """The sample set written by :func:`training_set`."""

    path: str
    n_samples: int
    per_class: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointResult:
    """What :func:`train_checkpoint` did: ``status`` is ``"trained"`` or ``"skipped"`` (already there)."""

    path: str
    status: str
    scores: dict = field(default_factory=dict)
    n_samples: int = 0
    model_config: dict = field(default_factory=dict)
    n_parameters: int = 0


def training_points(reference: storage.Location, *, legend_path: str | Path | None = None,
                    settings: TrainingSettings = TrainingSettings(),
                    bounds: tuple[float, float, float, float] | None = None, label_column: str | None = None,
                    area: tuple[float, float, float, float] | None = None, tiles: Sequence[str] | None = None):
    """Points from reference labels: a categorical raster
    (:func:`cropmap.samples.reference.sample_reference_map`) or vector parcels or points
    (:func:`cropmap.samples.reference_labels.sample_label_vectors`, which need ``label_column`` and a
    legend). The legend is a ``configs/legends`` YAML (default for a raster: the map's own classes).
    ``bounds``: the raster's training area (its CRS); ``area``: lon/lat box the vectors must intersect;
    ``tiles``: ids of the cubed tiles, the only ones whose vectors are sampled."""
    legend = load_legend(legend_path) if legend_path is not None else None
    if is_vector(reference):
        if label_column is None or legend is None:
            raise ConfigError(f"vector labels {reference} need a label column (--label-column) and a legend (--legend)")
        return sample_label_vectors(reference, column=label_column, legend=legend, options=settings.sampling(),
                                    spacing_m=settings.spacing_m, bounds=area, tiles=tiles)
    return sample_reference_map(reference, legend=legend, options=settings.sampling(), bounds=bounds)


def training_set(reference: storage.Location, cube_paths: Sequence[storage.Location], path: storage.Location, *,
                 region: str, legend_path: str | Path | None = None,
                 settings: TrainingSettings = TrainingSettings(),
                 bounds: tuple[float, float, float, float] | None = None, label_column: str | None = None,
                 area: tuple[float, float, float, float] | None = None,
                 tiles: Sequence[str] | None = None) -> TrainingSetResult:
    """Points from ``reference`` (:func:`training_points`), their series from the tile cubes
    (:func:`cropmap.samples.reference.samples_from_cubes`), written as a netCDF sample set at ``path`` (a
    file or a URL, published whole: :func:`cropmap.io.outputs.output_file`)."""
    points = training_points(reference, legend_path=legend_path, settings=settings, bounds=bounds,
                             label_column=label_column, area=area, tiles=tiles)
    samples = samples_from_cubes([open_tile_cube(p) for p in cube_paths], points, region=region)
    with outputs.output_file(path) as tmp:
        samples.to_netcdf(tmp, engine="h5netcdf")
    counts = np.bincount(samples["label"].values, minlength=samples.sizes["class"])
    return TrainingSetResult(str(path), int(samples.sizes["sample"]),
                             {str(n): int(c) for n, c in zip(samples["class_name"].values, counts)})


def _card_of(samples: xr.Dataset, names: list[str], season: Season, scores: dict) -> dict:
    """The model card of a checkpoint trained on ``samples``: class counts, and the countries, years,
    extent and label licence the sample set's attributes record (where it records them)."""
    counts = np.bincount(samples["label"].values, minlength=len(names))
    attrs = samples.attrs

    def listed(key: str) -> list:
        value = attrs.get(key, [])
        return [value] if isinstance(value, (str, int, np.integer)) else list(value)

    bounds = None
    if "lon" in samples.coords and "lat" in samples.coords:
        lon, lat = samples["lon"].values, samples["lat"].values
        bounds = [float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())]
    return model_card(class_names=names, season=season, scores=scores,
                      class_counts={n: int(c) for n, c in zip(names, counts)},
                      countries=[str(c) for c in listed("country")], years=[int(y) for y in listed("season_year")],
                      bounds=bounds, label_licence=attrs.get("label_licence"),
                      label_sources=[str(s) for s in listed("source")])


def train_checkpoint(samples_path: storage.Location, path: storage.Location, *,
                     settings: TrainingSettings = TrainingSettings(), threads: int | None = None,
                     progress: Progress | None = None) -> CheckpointResult:
    """Train a model on a sample set of season composites (:func:`training_set`) and save its checkpoint.

    The set carries the cubes' season attributes. Both locations may be URLs. A complete checkpoint at
    ``path`` is kept (rerun = resume). ``threads`` caps torch's intra-op threads while training (1 is
    fastest for a small net on a busy machine). ``progress``: told each epoch (stage :data:`TRAIN_STAGE`,
    item ``epoch <k>/<n>``, status its training loss and validation macro-F1; default: a log line each).
    """
    report = progress or log_progress
    if storage.exists(path):
        report(TRAIN_STAGE, "checkpoint", "skipped: already trained", total=1)
        done = load_checkpoint(path)
        return CheckpointResult(str(path), "skipped", done.scores, model_config=done.model_config,
                                n_parameters=sum(p.numel() for p in done.model.parameters()))
    samples = xr.load_dataset(downloads.local_copy(samples_path), engine="h5netcdf")
    refl = samples["reflectance"]
    attrs = refl.attrs if any(k.startswith("season_") for k in refl.attrs) else samples.attrs
    if not any(k.startswith("season_") for k in attrs):
        raise IncompatibleInputError("the sample set carries no season attributes; build it from tile cubes")
    season = Season.from_attrs(attrs)
    x = refl.transpose("sample", "band", "time").values.astype(np.float32)
    names = [str(n) for n in samples["class_name"].values]
    colours = [str(c) for c in samples["class_colour"].values] if "class_colour" in samples.coords else None
    config = settings.train_config()
    before = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        result = fit_model(x, samples["label"].values, window_start=0, n_bins=x.shape[2],
                             n_classes=len(names), config=config, bin_days=season.bin_days,
                             groups=samples["field"].values if "field" in samples.coords else None,
                             on_epoch=lambda row: report(
                                 TRAIN_STAGE, f"epoch {row['epoch'] + 1}/{row['epochs']}",
                                 f"loss {row['train_loss']:.3f}, validation macro-F1 {row['val_macro_f1']:.3f}",
                                 total=row["epochs"]))
    finally:
        torch.set_num_threads(before)
    scores = {**result.val_scores, "seconds": round(result.seconds, 1)}
    save_checkpoint(path, model=result.model, model_name=config.model, model_config=result.model_config,
                    feature_kind="2d", bands=[str(b) for b in samples["band"].values], season=season,
                    n_bins=x.shape[2], normalisation=result.normalisation, temperature=result.temperature,
                    ood=result.ood, class_names=names, class_colours=colours,
                    config=config.model_dump(mode="json"), scores=scores,
                    year=int(attrs["season_year"]) if str(attrs.get("season_year", "")).strip() else None,
                    card=_card_of(samples, names, season, scores))
    return CheckpointResult(str(path), "trained", scores, int(x.shape[0]), result.model_config,
                            sum(p.numel() for p in result.model.parameters()))
