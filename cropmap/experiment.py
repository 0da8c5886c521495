"""Experiments: a grid of features x models x augmentations x seeds over a source -> target scenario.

``cropmap experiment configs/experiments/<name>.yaml`` loads an :class:`ExperimentConfig`, builds the
features of both sample sets with the SAME code inference uses (:func:`cropmap.composite.median_composite`
then :func:`cropmap.features.compute_features`), trains every run on the source, evaluates it on the
target (optionally with the target's dates moved by a few days: a controlled phenology shift on real
spectra), and writes ``<output>/<name>.md`` (mean ± std over seeds) and ``<output>/<name>.csv``.

Optional ``axes`` multiply the grid by *variants* of the data side: bin length (``bin_days``), season
span (``span``: named windows in northern-hemisphere months, moved six months for a southern season),
the hemisphere offset on/off (``hemisphere_offset``), class subsets (``classes``) and minority
subsampling (``minority``: one class cut to a fraction of the training samples, the seed's FRA -> ARG
soybean case). Each variant is composited from the same observations with the same code.

Trained networks are cached as checkpoints under ``cache_dir`` keyed by a hash of everything that
defines them, so a rerun, or another scenario with the same source and training settings (e.g.
``victoria-shifted`` after ``victoria``), only trains what is missing. ``workers: N`` trains the missing
networks in N processes (one torch thread each unless ``threads`` says otherwise) before evaluating.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import xarray as xr
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cropmap import __version__
from cropmap.augment import AUGMENTATIONS, augmenter
from cropmap.bands import S2_BANDS
from cropmap.checkpoint import load_checkpoint, save_checkpoint
from cropmap.composite import median_composite
from cropmap.errors import ConfigError
from cropmap.evaluate import scores, write_confusion
from cropmap.features import compute_features
from cropmap.harmonise import Legend, harmonise, load_legend
from cropmap.models import MODELS
from cropmap.season import Season, shift_months
from cropmap.train import TrainConfig, train_model
from cropmap.tiles_io import atomic_path, stable_hash

__all__ = ["DataSpec", "RunSpec", "Axes", "Minority", "Variant", "ExperimentConfig", "load_experiment",
           "run_experiment", "load_samples", "variants", "minority_subsample"]


class DataSpec(BaseModel):
    """Where a sample set comes from: a reader and its arguments, optionally one region of the file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reader: Literal["victoria", "cropglobe", "worldcereal"]
    split: str | None = None  # victoria: train / test
    path: str | None = None  # cropglobe / worldcereal file (relative paths: the data folder)
    region: str | None = None  # keep only samples of this region (e.g. UGA)
    year: int  # the season year the samples are composited for
    hemisphere: Literal["north", "south"] | None = None  # default: the config season's


class RunSpec(BaseModel):
    """One line of the grid; ``augment`` lists the augmentations to try (each a run)."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    features: Literal["2d", "1d", "harmonic"]
    model: str  # a name of cropmap.models.MODELS, or "rf"
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


@dataclass(frozen=True)
class Variant:
    """One point of the axes grid: the season it composites onto and the class selection it trains on."""

    values: tuple[tuple[str, str], ...]  # (axis, value name), in axis order; empty without axes
    season: Season  # the source's (the model's)
    context: Season
    target_season: Season  # the target's: the source's, or six months later across hemispheres
    classes: tuple[str, ...] | None = None
    minority: Minority | None = None

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values)

    @property
    def slug(self) -> str:
        return "_".join(f"{k}-{v}" for k, v in self.values).replace("/", "-").replace(" ", "")


class ExperimentConfig(BaseModel):
    """A scenario and its grid (validated from YAML)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    source: DataSpec
    target: DataSpec
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
        variants(cfg)  # seasons that cannot be built or sit off the context's bins fail now too
        return cfg
    except (ValidationError, TypeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: invalid experiment config: {err}") from err


def load_samples(spec: DataSpec, *, bands: list[str]) -> xr.Dataset:
    """The sample set named by ``spec``, restricted to ``bands``."""
    from cropmap.data import data_dir
    from cropmap.samples import read_cropglobe, read_victoria, select_bands

    path = None if spec.path is None else (Path(spec.path) if Path(spec.path).is_absolute() else data_dir() / spec.path)
    if spec.reader == "victoria":
        ds = read_victoria(spec.split or "train")
    elif spec.reader == "cropglobe":
        ds = read_cropglobe(path, year=spec.year)
    else:
        from cropmap.readers import read_worldcereal

        ds = read_worldcereal(path)
    if spec.region is not None:
        ds = ds.isel(sample=np.flatnonzero(ds["region"].values == spec.region))
        if ds.sizes["sample"] == 0:
            raise ConfigError(f"{spec.reader} {spec.path or spec.split}: no sample of region {spec.region!r}")
    return select_bands(ds, bands, where=f"{spec.reader} samples")


def _composite(ds: xr.Dataset, season: Season, year: int, shift_days: int = 0) -> xr.DataArray:
    refl = ds["reflectance"]
    if shift_days:  # the phenology happens shift_days later: the same spectra on later dates
        refl = refl.assign_coords(time=refl["time"] + np.timedelta64(shift_days, "D"))
    return median_composite(refl, season, year)


def _matrix(composite: xr.DataArray) -> np.ndarray:
    return compute_features(composite, "2d").transpose("sample", "band", "time").values


def _flat(composite: xr.DataArray, kind: str) -> np.ndarray:
    return compute_features(composite, kind).transpose("sample", "feature").values


def _window_start(context: Season, season: Season, year: int) -> int:
    edges, inner = context.bin_edges(year), season.bin_edges(year)
    hit = np.flatnonzero(edges[:-1] == inner[0])
    if hit.size == 0 or hit[0] + season.n_bins > context.n_bins or season.bin_days != context.bin_days:
        raise ConfigError(f"season {season.describe()} does not sit on the bins of the context season "
                          f"{context.describe()}")
    return int(hit[0])


def _mean_std(v: pd.Series) -> str:
    """``mean ± std`` over seeds; a single seed has no spread to show."""
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def variants(cfg: ExperimentConfig) -> list[Variant]:
    """The grid's data variants: the product of the config's axes (one variant, the base, without).

    The season of a variant takes ``span`` (northern months; both moved by six months when the base
    season is southern and ``hemisphere_offset`` is on, the default) and ``bin_days``; without a span
    axis it keeps the base season's window. The target's season is the same, unless the target lies in
    the other hemisphere (``target.hemisphere``): then it is six months later (offset on) or the same
    months (off). Its context (the series augmentation reads) is the config's ``context_season`` with
    the variant's bin length, else the season itself. The season year is always the data spec's
    ``year``. Raises :class:`ConfigError` for a season that sits off its context's bins, or a target
    season of another length.
    """
    base, axes = cfg.season, cfg.axes or Axes()
    options: list[tuple[str, list[tuple[str, Any]]]] = []
    if axes.span:
        options.append(("span", list(axes.span.items())))
    if axes.hemisphere_offset:
        options.append(("hemisphere_offset", [("on" if v else "off", v) for v in axes.hemisphere_offset]))
    if axes.bin_days:
        options.append(("bin_days", [(str(b), b) for b in axes.bin_days]))
    if axes.classes:
        options.append(("classes", list(axes.classes.items())))
    if axes.minority:
        options.append(("minority", list(axes.minority.items())))
    north = (base.start, base.end) if base.hemisphere == "north" else (
        shift_months(base.start, 6), shift_months(base.end, 6))
    out = []
    for combo in itertools.product(*(values for _, values in options)):
        chosen = {axis: value for (axis, _), (_, value) in zip(options, combo)}
        bins = int(chosen.get("bin_days", base.bin_days))
        if "span" in chosen or "hemisphere_offset" in chosen:
            start, end = chosen.get("span", north)
            if base.hemisphere == "south" and chosen.get("hemisphere_offset", True):
                start, end = shift_months(start, 6), shift_months(end, 6)
        else:
            start, end = base.start, base.end
        try:
            season = Season(start=start, end=end, bin_days=bins, hemisphere=base.hemisphere)
        except ValidationError as err:
            raise ConfigError(f"experiment {cfg.name}: bad season {start}..{end}: {err}") from err
        target_season = season
        target_hemisphere = cfg.target.hemisphere or base.hemisphere
        if target_hemisphere != base.hemisphere:
            offset = 6 if chosen.get("hemisphere_offset", True) else 0
            target_season = Season(start=shift_months(start, offset), end=shift_months(end, offset),
                                   bin_days=bins, hemisphere=target_hemisphere)
            if target_season.n_bins != season.n_bins:
                raise ConfigError(f"experiment {cfg.name}: the target season {target_season.describe()} has "
                                  f"another length than the source's {season.describe()}")
        if cfg.context_season is not None:
            context = cfg.context_season.model_copy(update={"bin_days": bins})
            _window_start(context, season, cfg.source.year)
        else:
            context = season
        classes = chosen.get("classes")
        out.append(Variant(values=tuple((axis, name) for (axis, _), (name, _) in zip(options, combo)),
                           season=season, context=context, target_season=target_season,
                           classes=None if classes is None else tuple(classes),
                           minority=chosen.get("minority")))
    return out


def minority_subsample(labels: np.ndarray, minority: Minority, class_names: list[str],
                       rng: np.random.Generator) -> np.ndarray:
    """Indices (sorted) of the samples kept when ``minority.class_name`` is cut to ``minority.fraction``
    of the kept samples: all samples of the other classes and ``k`` random members of the class,
    ``k / (others + k) ~ fraction`` (at least 2, so a stratified validation split still works)."""
    if minority.class_name not in class_names:
        raise ConfigError(f"minority class {minority.class_name!r} is not among the classes {class_names}")
    c = class_names.index(minority.class_name)
    members, others = np.flatnonzero(labels == c), np.flatnonzero(labels != c)
    k = max(2, int(round(minority.fraction * len(others) / (1 - minority.fraction))))
    if k < len(members):
        members = rng.choice(members, k, replace=False)
    return np.sort(np.concatenate([others, members]))


@dataclass
class _Prepared:
    """One variant's composited sample sets (features are cut from these per run)."""

    variant: Variant
    class_names: list[str]
    colours: list[str] | None
    y_src: np.ndarray
    y_tgt: np.ndarray
    x_full: np.ndarray  # (sample, band, context bin) reflectance
    start: int  # the season window's first bin in x_full
    src_season: xr.DataArray
    tgt: dict[int, xr.DataArray]  # shift (days) -> target composite


def _select_classes(source: xr.Dataset, target: xr.Dataset, classes: tuple[str, ...]) -> tuple[xr.Dataset, xr.Dataset]:
    names = [str(c) for c in source["class_name"].values]
    missing = sorted(set(classes) - set(names))
    if missing:
        raise ConfigError(f"class subset {list(classes)}: {missing} not among the classes {names}")
    colours = None
    if "class_colour" in source.coords:
        colours = [str(source["class_colour"].values[names.index(c)]) for c in classes]
    legend = Legend(name="subset", classes=list(classes), colours=colours, keep_unmapped=True)
    return harmonise(source, legend), harmonise(target, legend)


def _prepare(cfg: ExperimentConfig, variant: Variant, source: xr.Dataset, target: xr.Dataset) -> _Prepared:
    if variant.classes is not None:
        source, target = _select_classes(source, target, variant.classes)
    class_names = [str(c) for c in source["class_name"].values]
    if class_names != [str(c) for c in target["class_name"].values]:
        raise ConfigError("source and target legends differ: give a legend mapping both onto one class list")
    colours = [str(c) for c in source["class_colour"].values] if "class_colour" in source.coords else None
    season, context = variant.season, variant.context
    start = _window_start(context, season, cfg.source.year)
    src_context = _composite(source, context, cfg.source.year)
    src_season = _composite(source, season, cfg.source.year)
    x_full = _matrix(src_context)
    # the window holds the season's own composite, so an unaugmented run trains on exactly the features
    # the target gets; the context differs from it only where a short last bin or a gap at the window's
    # edge is composited over a wider range
    x_full[:, :, start:start + season.n_bins] = _matrix(src_season)
    tgt = {d: _composite(target, variant.target_season, cfg.target.year, d) for d in cfg.target_shifts_days}
    return _Prepared(variant, class_names, colours, source["label"].values.astype(int),
                     target["label"].values.astype(int), x_full, start, src_season, tgt)


def _training_rows(cfg: ExperimentConfig, prep: _Prepared, seed: int) -> np.ndarray:
    """The source samples a run of ``seed`` trains on (all, unless the variant subsamples a minority)."""
    if prep.variant.minority is None:
        return np.arange(len(prep.y_src))
    return minority_subsample(prep.y_src, prep.variant.minority, prep.class_names, np.random.default_rng([seed, 7]))


def run_experiment(cfg: ExperimentConfig, *, command: str = "", log=print) -> pd.DataFrame:
    """Run the grid; write the Markdown table, the CSV and the confusion matrices; return the rows."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    source = load_samples(cfg.source, bands=cfg.bands)
    target = load_samples(cfg.target, bands=cfg.bands)
    if cfg.legend:
        legend = load_legend(cfg.legend)
        source, target = harmonise(source, legend), harmonise(target, legend)
    prepared = [_prepare(cfg, v, source, target) for v in variants(cfg)]
    for prep in prepared:
        v = prep.variant
        log(f"{cfg.name}{' [' + v.label + ']' if v.values else ''}: source {len(prep.y_src)} samples, target "
            f"{len(prep.y_tgt)}, {len(prep.class_names)} classes, {v.season.n_bins} bins "
            f"(context {v.context.n_bins}, window at {prep.start})")

    out_dir = Path(cfg.output)
    cache = Path(cfg.cache_dir).expanduser()
    if cfg.workers > 1:
        _train_in_parallel(cfg, prepared, cache, log)
    rows: list[dict] = []
    for seed in cfg.seeds:  # seed-major: a cut run has whole seeds first
        for prep in prepared:
            v = prep.variant
            keep = _training_rows(cfg, prep, seed)
            for spec in cfg.runs:
                for aug in spec.augment:
                    t0 = time.perf_counter()
                    label = f"{spec.features}/{spec.model}/{aug}"
                    if spec.model == "rf":
                        proba_of, info = _run_forest(cfg, prep, spec, aug, seed, keep)
                    else:
                        proba_of, info = _run_network(cfg, prep, spec, aug, seed, keep, cache)
                    for shift, proba in proba_of.items():
                        s = scores(prep.y_tgt, proba.argmax(1), class_names=prep.class_names)
                        rows.append({**({"variant": v.label, **dict(v.values)} if v.values else {}),
                                     "features": spec.features,
                                     "model": spec.model, "augment": aug, "seed": seed, "shift_days": shift,
                                     "n_train": int(len(keep)), "oa": s["oa"], "macro_f1": s["macro_f1"],
                                     "kappa": s["kappa"], **{f"f1_{k}": val for k, val in s["f1"].items()}, **info,
                                     "seconds": time.perf_counter() - t0})
                        if seed == cfg.seeds[0] and shift == 0:
                            name = label.replace("/", "_") + (f"_{v.slug}" if v.values else "")
                            write_confusion(np.asarray(s["confusion"]), prep.class_names,
                                            out_dir / cfg.name / f"confusion_{name}.csv",
                                            title=" ".join(filter(None, (cfg.name, label, v.label, f"seed {seed}"))))
                    log(f"  {label}{' [' + v.label + ']' if v.values else ''} seed {seed}: " + ", ".join(
                        f"{r['shift_days']:+d} d OA {r['oa']:.3f}" for r in rows[-len(proba_of):])
                        + f" ({time.perf_counter() - t0:.0f} s{', cached' if info.get('cached') else ''})")
                    frame = pd.DataFrame(rows)
                    # after every run: a cut run still reports
                    _write_outputs(cfg, [p.variant for p in prepared], frame, out_dir, command)
    return frame


def _network_job(cfg: ExperimentConfig, prep: _Prepared, spec: RunSpec, aug: str, seed: int, keep: np.ndarray,
                 cache: Path) -> dict:
    """Everything one network training needs (picklable), and the checkpoint path it is cached at."""
    v = prep.variant
    options = {**cfg.train.get("model_options", {}), **spec.model_options}
    train_cfg = TrainConfig(**{**cfg.train, "model": spec.model, "augment": aug, "seed": seed, "model_options": options})
    parts = [cfg.source.model_dump(), v.season.model_dump(), v.context.model_dump(), cfg.bands, prep.class_names,
             train_cfg.model_dump(exclude={"progress", "device"}), __version__,
             v.minority.model_dump() if v.minority else None]
    path = cache / f"{spec.model}-{aug}-s{seed}-{stable_hash(parts)}.pt"
    return {"path": path, "x_full": prep.x_full[keep], "y": prep.y_src[keep], "start": prep.start,
            "season": v.season, "train": train_cfg, "bands": cfg.bands, "class_names": prep.class_names,
            "colours": prep.colours, "experiment": cfg.name}


def _train_network(job: dict, threads: int | None = None) -> Path:
    """Train one network and cache its checkpoint (atomic); returns the path."""
    if threads:
        torch.set_num_threads(threads)
    season, train_cfg = job["season"], job["train"]
    result = train_model(job["x_full"], job["y"], window_start=job["start"], n_bins=season.n_bins,
                         n_classes=len(job["class_names"]), config=train_cfg, bin_days=season.bin_days)
    save_checkpoint(job["path"], model=result.model, model_name=train_cfg.model, model_config=result.model_config,
                    feature_kind="2d", bands=job["bands"], season=season, n_bins=season.n_bins,
                    normalisation=result.normalisation, class_names=job["class_names"],
                    class_colours=job["colours"], config={"experiment": job["experiment"], "train": train_cfg.model_dump()},
                    scores={**result.val_scores, "train_seconds": result.seconds})
    return job["path"]


def _train_in_parallel(cfg: ExperimentConfig, prepared: list[_Prepared], cache: Path, log) -> None:
    """Train every network of the grid that is not cached yet, ``cfg.workers`` at a time."""
    jobs = []
    for seed in cfg.seeds:
        for prep in prepared:
            keep = _training_rows(cfg, prep, seed)
            for spec in cfg.runs:
                if spec.model == "rf":
                    continue
                for aug in spec.augment:
                    job = _network_job(cfg, prep, spec, aug, seed, keep, cache)
                    if not job["path"].exists():
                        job["train"] = job["train"].model_copy(update={"progress": False})
                        jobs.append(job)
    if not jobs:
        return
    log(f"training {len(jobs)} networks in {cfg.workers} processes")
    # spawn, not fork: a forked child inherits torch's thread pools and can deadlock in them
    with ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train_network, job, cfg.threads or 1): job for job in jobs}
        for done, future in enumerate(as_completed(futures), 1):
            path = future.result()  # a failed training stops the grid with its error
            log(f"  [{done}/{len(jobs)}] trained {path.name}")


def _run_network(cfg, prep, spec, aug, seed, keep, cache):
    job = _network_job(cfg, prep, spec, aug, seed, keep, cache)
    cached = job["path"].exists()
    if not cached:
        _train_network(job)
    ckpt = load_checkpoint(job["path"])
    proba = {d: ckpt.predict_proba(_matrix(c)) for d, c in prep.tgt.items()}
    return proba, {"val_macro_f1": ckpt.scores["val_macro_f1"], "best_epoch": ckpt.scores["best_epoch"],
                   "train_seconds": ckpt.scores.get("train_seconds"), "cached": cached}


def _run_forest(cfg, prep, spec, aug, seed, keep):
    from cropmap.models.forest import build_forest, forest_predict_proba

    season = prep.variant.season
    src_season = prep.src_season.isel(sample=keep)
    x_full, y_src = prep.x_full[keep], prep.y_src[keep]
    x, y = _flat(src_season, spec.features), y_src
    if aug != "none":  # forests cannot augment online: add augmented copies of the series instead
        transform = augmenter(aug, bin_days=season.bin_days)
        rng = np.random.default_rng(seed)
        copies = []
        for _ in range(spec.augment_copies):
            m = transform(x_full, start=prep.start, n_bins=season.n_bins, rng=rng)
            copies.append(_flat(src_season.copy(data=np.transpose(m, (0, 2, 1))), spec.features))
        x, y = np.concatenate([x, *copies]), np.concatenate([y] + [y_src] * spec.augment_copies)
    t0 = time.perf_counter()
    forest = build_forest(seed=seed, n_jobs=cfg.threads, **cfg.forest).fit(x, y)
    n_classes = len(prep.class_names)
    proba = {d: forest_predict_proba(forest, _flat(c, spec.features), n_classes) for d, c in prep.tgt.items()}
    return proba, {"train_seconds": time.perf_counter() - t0, "cached": False}


def _write_outputs(cfg: ExperimentConfig, grid: list[Variant], frame: pd.DataFrame, out_dir: Path,
                   command: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv = out_dir / f"{cfg.name}.csv"
    with atomic_path(csv) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.4f")
    shifts = sorted(frame["shift_days"].unique())
    axes = [a for a in Axes.model_fields if a in frame.columns]  # the axes this grid varies, in order
    keys = [*axes, "features", "model", "augment"]
    head = "| " + " | ".join([a.replace("_", " ") for a in axes] + ["features", "model", "augmentation"]) + " | " + \
        " | ".join(f"OA {s:+d} d" if s else "OA" for s in shifts) + " | macro-F1 (0 d) | kappa (0 d) | s / model |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for key, g in frame.groupby(keys, sort=False):
        cells = []
        for s in shifts:
            cells.append(_mean_std(g.loc[g.shift_days == s, "oa"]))
        z = g[g.shift_days == (0 if 0 in shifts else shifts[0])]
        secs = g.drop_duplicates("seed")["train_seconds"].dropna()
        lines.append("| " + " | ".join(str(k) for k in key) + " | " + " | ".join(cells)
                     + f" | {_mean_std(z.macro_f1)} | {_mean_std(z.kappa)}"
                     + f" | {secs.mean():.0f} |")
    if axes:
        lines += ["", "Variants (season the samples are composited onto, and classes):", ""]
        lines += [f"- {v.label}: {v.season.describe()}"
                  + (f"; target {v.target_season.describe()}" if v.target_season != v.season else "")
                  + (f"; classes {list(v.classes)}" if v.classes else "")
                  + (f"; {v.minority.class_name} cut to {v.minority.fraction:.1%} of the training samples"
                     if v.minority else "") for v in grid]
    train = TrainConfig(**cfg.train)
    base = grid[0]
    text = "\n".join([
        f"# Experiment `{cfg.name}`", "", cfg.description.strip(), "",
        "Produced by:", "", "```", command or f"cropmap experiment configs/experiments/{cfg.name}.yaml", "```", "",
        (f"Mean ± std over seeds {cfg.seeds} ({len(frame.seed.unique())} seeds)" if len(frame.seed.unique()) > 1
         else f"One seed ({frame.seed.iloc[0]}, no spread)") + " of the test overall accuracy "
        f"(OA), macro-F1 over the target's classes and Cohen's kappa. Per-seed and per-class figures: "
        f"`{cfg.name}.csv`; confusion matrices (first seed, unshifted): `{cfg.name}/`.", "",
        *lines, "",
        "Settings:", "",
        f"- source: {cfg.source.model_dump(exclude_none=True)}; target: {cfg.target.model_dump(exclude_none=True)}",
        f"- season: {cfg.season.describe()}"
        + (f"; target season: {base.target_season.describe()}" if base.target_season != base.season else "")
        + "; context for augmentation: "
        f"{(cfg.context_season or cfg.season).describe()}; bands: {', '.join(cfg.bands)}",
        f"- target dates moved by {cfg.target_shifts_days} days (then composited like any input)",
        f"- networks: Adam lr {train.lr}, batch {train.batch_size}, {train.epochs} epochs, weight decay "
        f"{train.weight_decay}, class-balanced cross-entropy, stratified validation split {train.val_fraction} "
        "of the source (never augmented), best-validation-macro-F1 epoch kept; log1p + per-band standardisation "
        "from the training split",
        f"- forest: {cfg.forest}, balanced class weights; augmented forests get augmented copies of the series",
        f"- cropmap {__version__}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, device "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'}, {cfg.workers} training process(es)",
        "",
    ])
    md = out_dir / f"{cfg.name}.md"
    with atomic_path(md) as tmp:
        tmp.write_text(text)
