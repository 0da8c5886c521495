"""Experiment configs: a source -> target scenario and its grid (features x models x augmentations x
data axes x seeds), validated from YAML (``configs/experiments/*.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from cropmap.core.bands import S2_BANDS, S2_ORDER
from cropmap.core.season import Season
from cropmap.errors import ConfigError, one_line
from cropmap.io.config import load_legend, read_yaml_mapping
from cropmap.ml.augment import AUGMENTATIONS
from cropmap.ml.models import MODELS
from cropmap.ml.train import TrainConfig
from cropmap.samples.sources import SampleSource, source_bands
from cropmap.samples.splits import SplitSpec

__all__ = ["RunSpec", "Minority", "Axes", "ExperimentConfig", "load_experiment", "resolve_bands", "run_training",
           "recipe_text", "STATED_RECIPE"]

#: the training settings whose defaults have changed since experiment configs exist (2026-12-06, ml/train.py:
#: lr 1e-4 -> 1e-3 -> 3e-3, batch 256 -> 64, epochs 50 -> 40 -> 50, val_fraction 0.2 -> 0.1, schedule
#: constant -> onecycle, epoch_choice best -> last): every network run states them, so that rerunning a file
#: never trains a newer recipe than the one its tables were made with
STATED_RECIPE = ("epochs", "lr", "batch_size", "val_fraction", "schedule", "epoch_choice")
#: the TrainConfig fields that are not the recipe: what a run varies (model, augmentation, seed) and where it runs
_NOT_RECIPE = {"model", "augment", "seed", "device", "progress"}


def _not_empty(value: list) -> list:
    if not value:  # the grid is a product of these lists: an empty one runs nothing and writes no table
        raise ValueError("an empty list runs nothing; give at least one")
    return value


_T = TypeVar("_T")
#: a list of the grid's axes (seeds, runs, ...): at least one value
NonEmpty = Annotated[list[_T], AfterValidator(_not_empty)]


class RunSpec(BaseModel):
    """One line of the grid; ``augment`` lists the augmentations to try (each a run)."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    features: Literal["2d", "1d", "harmonic"]
    model: str  # a name of cropmap.ml.models.MODELS, or "rf"
    augment: NonEmpty[str] = ["none"]
    augment_copies: int = Field(4, ge=1)  # rf only: augmented copies added to the training set
    model_options: dict[str, Any] = {}  # networks: merged over train.model_options for this run only
    recipe: str = ""  # a name for this run's training settings (a table column when any run names one)
    train: dict[str, Any] = {}  # networks: merged over the config's train for this run only (lr, batch_size, ...)


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
    # the target's season year: only its samples of that year (cross-year: train on Y-1, score on Y);
    # needs a target set of several seasons with per-sample start dates (sits)
    target_year: list[int] | None = None


class ExperimentConfig(BaseModel):
    """A scenario and its grid (validated from YAML).

    ``split`` cuts the SOURCE into a training and a held-out part (:mod:`cropmap.samples.splits`) and the
    runs are scored on the held-out part: the in-region figure of a single file. ``target`` must then be
    omitted (or equal the source). ``bands`` defaults to the canonical bands both files hold.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    source: SampleSource
    target: SampleSource
    split: SplitSpec | None = None
    season: Season
    context_season: Season | None = None  # the full-year series augmentation reads (default: season)
    bands: list[str] | None = None  # default: the canonical bands source and target both hold
    legend: str | None = None  # configs/legends/*.yaml, relative to the config file
    target_shifts_days: NonEmpty[int] = [0]
    seeds: NonEmpty[int] = [0, 1, 2]
    train: dict[str, Any] = {}
    forest: dict[str, Any] = {"n_estimators": 500}
    runs: NonEmpty[RunSpec]
    axes: Axes | None = None
    threads: int | None = None
    workers: int = Field(1, ge=1)  # processes training networks in parallel
    output: str = "docs/results"
    cache_dir: str = "~/.cache/cropmap/experiments"
    _bands_note: str = PrivateAttr("")  # where the bands came from (set by load_experiment)

    @model_validator(mode="before")
    @classmethod
    def _split_target(cls, raw):
        if isinstance(raw, dict) and raw.get("split") is not None:
            if raw.get("target") is not None and raw["target"] != raw.get("source"):
                raise ValueError("with split: the runs are scored on the held-out part of the source; omit target")
            raw = {**raw, "target": raw.get("source")}
        return raw


def resolve_bands(cfg: ExperimentConfig) -> tuple[list[str], str]:
    """The bands the experiment uses and a one-line note on where they came from.

    Given ``bands`` must all be in both files (else :class:`ConfigError` naming the missing ones and the
    file); without ``bands``, the canonical Sentinel-2 bands (``S2_BANDS`` order) both files hold.
    """
    if cfg._bands_note:  # resolved already by load_experiment
        return list(cfg.bands or []), cfg._bands_note
    have = {"source": source_bands(cfg.source), "target": source_bands(cfg.target)}
    if cfg.bands is not None:
        for side, spec in (("source", cfg.source), ("target", cfg.target)):
            missing = [b for b in cfg.bands if b not in have[side]]
            if missing:
                raise ConfigError(f"{cfg.name}: {side} {spec.describe()} lacks band(s) {', '.join(missing)} asked "
                                  f"in bands:; it has {', '.join(have[side]) or 'none'}")
        return list(cfg.bands), f"bands: {', '.join(cfg.bands)} (as configured)"
    common = [b for b in (*S2_BANDS, *(b for b in S2_ORDER if b not in S2_BANDS))
              if b in have["source"] and b in have["target"]]
    if not common:
        raise ConfigError(f"{cfg.name}: source and target hold no Sentinel-2 band in common; give bands:")
    return common, f"bands: {', '.join(common)} (not configured: the {len(common)} canonical bands both files hold)"


def run_training(cfg: ExperimentConfig, spec: RunSpec, **fields: Any) -> TrainConfig:
    """The training settings of a network run: the run's ``train`` merged over the config's, the run's
    ``model_options`` over the config's, and ``fields`` (model, augment, seed, ...) over both."""
    options = {**cfg.train.get("model_options", {}), **spec.model_options}
    return TrainConfig(**{**cfg.train, **spec.train, "model": spec.model, "model_options": options, **fields})


def recipe_text(train: TrainConfig) -> str:
    """Every setting of ``train`` that shapes the trained network (all but model, augmentation, seed and
    device), as ``name=value`` pairs in the order of :class:`TrainConfig`, the model's and the augmentation's
    options last (when given): what a report records as run."""
    settings = train.model_dump(exclude=_NOT_RECIPE)
    options = {k: settings.pop(k) for k in ("model_options", "augment_options")}
    return ", ".join(f"{k}={v}" for k, v in {**settings, **options}.items() if v != {})


def _check_stated_recipe(cfg: ExperimentConfig) -> None:
    for spec in cfg.runs:
        missing = [k for k in STATED_RECIPE if k not in {**cfg.train, **spec.train}]
        if spec.model != "rf" and missing:
            raise ConfigError(
                f"run {spec.features}/{spec.model}{f' (recipe {spec.recipe})' if spec.recipe else ''} leaves "
                f"{', '.join(missing)} to cropmap's defaults, which changed on 2026-12-06 (constant lr 1e-4, best "
                "epoch -> OneCycle to 3e-3, last epoch): state them in train: so that the file names the recipe it runs")


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment YAML; paths in it are resolved relative to the file.

    Every network run must state the :data:`STATED_RECIPE` settings (in ``train:`` or its own), and its
    legend must load (:func:`cropmap.io.config.load_legend`): both fail here, before any training.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"experiment config {path} not found")
    raw = read_yaml_mapping(path)
    try:
        if raw.get("legend"):
            raw["legend"] = str((path.parent / str(raw["legend"])).resolve())
        cfg = ExperimentConfig(**raw)
        if cfg.legend:
            load_legend(cfg.legend)
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
        for spec in cfg.runs:
            TrainConfig(**{**cfg.train, **spec.train})
        _check_stated_recipe(cfg)
        bands, note = resolve_bands(cfg)  # a band asked for but missing fails now, in one line
        cfg = cfg.model_copy(update={"bands": bands})
        cfg._bands_note = note
        from cropmap.research.variants import (
            variants,  # the grid's seasons, defined beside it
        )

        variants(cfg)  # seasons that cannot be built or sit off the context's bins fail now too
        return cfg
    except ConfigError as err:
        raise ConfigError(f"{path}: invalid experiment config: {err}") from err
    except (ValidationError, TypeError) as err:
        raise ConfigError(f"{path}: invalid experiment config: {one_line(err)}") from err
