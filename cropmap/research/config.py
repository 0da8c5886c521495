"""Experiment configs: a source -> target scenario and its grid (features x models x augmentations x
data axes x seeds), validated from YAML (``configs/experiments/*.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cropmap.core.bands import S2_BANDS
from cropmap.core.season import Season
from cropmap.errors import ConfigError
from cropmap.ml.augment import AUGMENTATIONS
from cropmap.ml.models import MODELS
from cropmap.ml.train import TrainConfig
from cropmap.samples.sources import SampleSource

__all__ = ["RunSpec", "Minority", "Axes", "ExperimentConfig", "load_experiment"]


class RunSpec(BaseModel):
    """One line of the grid; ``augment`` lists the augmentations to try (each a run)."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    features: Literal["2d", "1d", "harmonic"]
    model: str  # a name of cropmap.ml.models.MODELS, or "rf"
    augment: list[str] = ["none"]
    augment_copies: int = Field(4, ge=1)  # rf only: augmented copies added to the training set
    model_options: dict[str, Any] = {}  # networks: merged over train.model_options for this run only


class Minority(BaseModel):
    """Cut one class of the SOURCE to ``fraction`` of the training samples (seeded by the run's seed)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    class_name: str = Field(alias="class")
    fraction: float = Field(gt=0, lt=1)


class Axes(BaseModel):
    """Data-side grid axes; every axis given multiplies the grid. Mappings name their values (the
    names label the tables); ``null`` means "as the base config" (all classes, no subsampling)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    span: dict[str, tuple[str, str]] | None = None  # name -> (start, end) "MM-DD", northern-hemisphere months
    hemisphere_offset: list[bool] | None = None  # move the span 6 months for a southern season (default on)
    bin_days: list[int] | None = None
    classes: dict[str, list[str] | None] | None = None
    minority: dict[str, Minority | None] | None = None


class ExperimentConfig(BaseModel):
    """A scenario and its grid (validated from YAML)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    source: SampleSource
    target: SampleSource
    season: Season
    context_season: Season | None = None  # the full-year series augmentation reads (default: season)
    bands: list[str] = list(S2_BANDS)
    legend: str | None = None  # configs/legends/*.yaml, relative to the config file
    target_shifts_days: list[int] = [0]
    seeds: list[int] = [0, 1, 2]
    train: dict[str, Any] = {}
    forest: dict[str, Any] = {"n_estimators": 500}
    runs: list[RunSpec]
    axes: Axes | None = None
    threads: int | None = None
    workers: int = Field(1, ge=1)  # processes training networks in parallel
    output: str = "docs/results"
    cache_dir: str = "~/.cache/cropmap/experiments"


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment YAML; paths in it are resolved relative to the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"experiment config {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        if raw.get("legend"):
            raw["legend"] = str((path.parent / raw["legend"]).resolve())
        cfg = ExperimentConfig(**raw)
        for spec in cfg.runs:
            if spec.model != "rf" and spec.model not in MODELS:
                raise ConfigError(f"unknown model {spec.model!r}; choose one of {', '.join(MODELS)}, rf")
            unknown = set(spec.augment) - set(AUGMENTATIONS)
            if unknown:
                raise ConfigError(f"unknown augmentation(s) {sorted(unknown)}; choose from {list(AUGMENTATIONS)}")
            if (spec.model == "rf") != (spec.features != "2d"):
                raise ConfigError(f"model {spec.model} cannot take {spec.features} features "
                                  "(networks take '2d', the forest '1d' or 'harmonic')")
        TrainConfig(**cfg.train)  # fail now, not after an hour of training
        from cropmap.research.variants import (
            variants,  # the grid's seasons, defined beside it
        )

        variants(cfg)  # seasons that cannot be built or sit off the context's bins fail now too
        return cfg
    except (ValidationError, TypeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: invalid experiment config: {err}") from err
