"""Experiments: a grid of features x models x augmentations x seeds over a source -> target scenario.

``cropmap experiment configs/experiments/<name>.yaml`` loads an :class:`ExperimentConfig`, builds the
features of both sample sets with the SAME code inference uses (:func:`cropmap.composite.median_composite`
then :func:`cropmap.features.compute_features`), trains every run on the source, evaluates it on the
target (optionally with the target's dates moved by a few days: a controlled phenology shift on real
spectra), and writes ``<output>/<name>.md`` (mean ± std over seeds) and ``<output>/<name>.csv``.

Trained networks are cached as checkpoints under ``cache_dir`` keyed by a hash of everything that
defines them, so a rerun, or another scenario with the same source and training settings (e.g.
``victoria-shifted`` after ``victoria``), only trains what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
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
from cropmap.harmonise import harmonise, load_legend
from cropmap.season import Season
from cropmap.train import TrainConfig, train_model
from cropmap.tiles_io import atomic_path

__all__ = ["DataSpec", "RunSpec", "ExperimentConfig", "load_experiment", "run_experiment", "load_samples"]

_TORCH_MODELS = ("cropnet", "cropnet-code", "cropnet1d")


class DataSpec(BaseModel):
    """Where a sample set comes from: a reader and its arguments, optionally one region of the file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reader: Literal["victoria", "cropglobe", "worldcereal"]
    split: str | None = None  # victoria: train / test
    path: str | None = None  # cropglobe / worldcereal file (relative paths: the data folder)
    region: str | None = None  # keep only samples of this region (e.g. UGA)
    year: int  # the season year the samples are composited for


class RunSpec(BaseModel):
    """One line of the grid; ``augment`` lists the augmentations to try (each a run)."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    features: Literal["2d", "1d", "harmonic"]
    model: Literal["cropnet", "cropnet-code", "cropnet1d", "rf"]
    augment: list[str] = ["none"]
    augment_copies: int = Field(4, ge=1)  # rf only: augmented copies added to the training set


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
    threads: int | None = None
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
            unknown = set(spec.augment) - set(AUGMENTATIONS)
            if unknown:
                raise ConfigError(f"unknown augmentation(s) {sorted(unknown)}; choose from {list(AUGMENTATIONS)}")
            if (spec.model == "rf") != (spec.features != "2d"):
                raise ConfigError(f"model {spec.model} cannot take {spec.features} features "
                                  "(networks take '2d', the forest '1d' or 'harmonic')")
        TrainConfig(**cfg.train)  # fail now, not after an hour of training
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


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _std(v: pd.Series) -> float:
    return float(v.std(ddof=1)) if len(v) > 1 else 0.0


def run_experiment(cfg: ExperimentConfig, *, command: str = "", log=print) -> pd.DataFrame:
    """Run the grid; write the Markdown table, the CSV and the confusion matrices; return the rows."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    context = cfg.context_season or cfg.season
    source = load_samples(cfg.source, bands=cfg.bands)
    target = load_samples(cfg.target, bands=cfg.bands)
    if cfg.legend:
        legend = load_legend(cfg.legend)
        source, target = harmonise(source, legend), harmonise(target, legend)
    class_names = [str(c) for c in source["class_name"].values]
    if class_names != [str(c) for c in target["class_name"].values]:
        raise ConfigError("source and target legends differ: give a legend mapping both onto one class list")
    colours = [str(c) for c in source["class_colour"].values] if "class_colour" in source.coords else None
    n_classes, y_src, y_tgt = len(class_names), source["label"].values.astype(int), target["label"].values.astype(int)

    start = _window_start(context, cfg.season, cfg.source.year)
    src_context = _composite(source, context, cfg.source.year)
    src_season = _composite(source, cfg.season, cfg.source.year)
    x_full = _matrix(src_context)
    if not np.allclose(x_full[:, :, start:start + cfg.season.n_bins], _matrix(src_season), equal_nan=True):
        raise ConfigError("the context season's composite does not contain the season's composite")
    tgt = {d: _composite(target, cfg.season, cfg.target.year, d) for d in cfg.target_shifts_days}
    log(f"{cfg.name}: source {len(y_src)} samples, target {len(y_tgt)}, {n_classes} classes, "
        f"{cfg.season.n_bins} bins (context {context.n_bins}, window at {start})")

    out_dir = Path(cfg.output)
    cache = Path(cfg.cache_dir).expanduser()
    rows: list[dict] = []
    for seed in cfg.seeds:  # seed-major: a cut run has whole seeds first
        for spec in cfg.runs:
            for aug in spec.augment:
                t0 = time.perf_counter()
                label = f"{spec.features}/{spec.model}/{aug}"
                if spec.model == "rf":
                    proba_of, info = _run_forest(cfg, spec, aug, seed, x_full, start, src_season, y_src, tgt, n_classes)
                else:
                    proba_of, info = _run_network(cfg, spec, aug, seed, x_full, start, y_src, tgt, n_classes,
                                                  class_names, colours, cache)
                for shift, proba in proba_of.items():
                    s = scores(y_tgt, proba.argmax(1), class_names=class_names)
                    rows.append({"features": spec.features, "model": spec.model, "augment": aug, "seed": seed,
                                 "shift_days": shift, "oa": s["oa"], "macro_f1": s["macro_f1"], "kappa": s["kappa"],
                                 **{f"f1_{k}": v for k, v in s["f1"].items()}, **info,
                                 "seconds": time.perf_counter() - t0})
                    if seed == cfg.seeds[0] and shift == 0:
                        write_confusion(np.asarray(s["confusion"]), class_names,
                                        out_dir / cfg.name / f"confusion_{label.replace('/', '_')}.csv",
                                        title=f"{cfg.name} {label} seed {seed}")
                log(f"  {label} seed {seed}: " + ", ".join(
                    f"{r['shift_days']:+d} d OA {r['oa']:.3f}" for r in rows[-len(proba_of):])
                    + f" ({time.perf_counter() - t0:.0f} s{', cached' if info.get('cached') else ''})")
                frame = pd.DataFrame(rows)
                _write_outputs(cfg, frame, out_dir, command)  # after every run: a cut run still reports
    return frame


def _run_network(cfg, spec, aug, seed, x_full, start, y_src, tgt, n_classes, class_names, colours, cache):
    train_cfg = TrainConfig(**{**cfg.train, "model": spec.model, "augment": aug, "seed": seed})
    key = _key(cfg.source.model_dump(), cfg.season.model_dump(), (cfg.context_season or cfg.season).model_dump(),
               cfg.bands, class_names, train_cfg.model_dump(exclude={"progress", "device"}), __version__)
    path = cache / f"{spec.model}-{aug}-s{seed}-{key}.pt"
    cached = path.exists()
    if not cached:
        result = train_model(x_full, y_src, window_start=start, n_bins=cfg.season.n_bins, n_classes=n_classes,
                             config=train_cfg, bin_days=cfg.season.bin_days)
        save_checkpoint(path, model=result.model, model_name=spec.model, model_config=result.model_config,
                        feature_kind="2d", bands=cfg.bands, season=cfg.season, n_bins=cfg.season.n_bins,
                        normalisation=result.normalisation, class_names=class_names, class_colours=colours,
                        config={"experiment": cfg.name, "train": train_cfg.model_dump()},
                        scores={**result.val_scores, "train_seconds": result.seconds})
    ckpt = load_checkpoint(path)
    proba = {d: ckpt.predict_proba(_matrix(c)) for d, c in tgt.items()}
    return proba, {"val_macro_f1": ckpt.scores["val_macro_f1"], "best_epoch": ckpt.scores["best_epoch"],
                   "train_seconds": ckpt.scores.get("train_seconds"), "cached": cached}


def _run_forest(cfg, spec, aug, seed, x_full, start, src_season, y_src, tgt, n_classes):
    from cropmap.models.forest import build_forest, forest_predict_proba

    x = _flat(src_season, spec.features)
    y = y_src
    if aug != "none":  # forests cannot augment online: add augmented copies of the series instead
        transform = augmenter(aug, bin_days=cfg.season.bin_days)
        rng = np.random.default_rng(seed)
        copies = []
        for _ in range(spec.augment_copies):
            m = transform(x_full, start=start, n_bins=cfg.season.n_bins, rng=rng)
            copies.append(_flat(src_season.copy(data=np.transpose(m, (0, 2, 1))), spec.features))
        x, y = np.concatenate([x, *copies]), np.concatenate([y] + [y_src] * spec.augment_copies)
    t0 = time.perf_counter()
    forest = build_forest(seed=seed, n_jobs=cfg.threads, **cfg.forest).fit(x, y)
    proba = {d: forest_predict_proba(forest, _flat(c, spec.features), n_classes) for d, c in tgt.items()}
    return proba, {"train_seconds": time.perf_counter() - t0, "cached": False}


def _write_outputs(cfg: ExperimentConfig, frame: pd.DataFrame, out_dir: Path, command: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv = out_dir / f"{cfg.name}.csv"
    with atomic_path(csv) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.4f")
    shifts = sorted(frame["shift_days"].unique())
    head = "| features | model | augmentation | " + " | ".join(
        f"OA {s:+d} d" if s else "OA" for s in shifts) + " | macro-F1 (0 d) | kappa (0 d) | s / model |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (feat, model, aug), g in frame.groupby(["features", "model", "augment"], sort=False):
        cells = []
        for s in shifts:
            v = g.loc[g.shift_days == s, "oa"]
            cells.append(f"{v.mean():.3f} ± {_std(v):.3f}")
        z = g[g.shift_days == (0 if 0 in shifts else shifts[0])]
        secs = g.drop_duplicates("seed")["train_seconds"].dropna()
        lines.append(f"| {feat} | {model} | {aug} | " + " | ".join(cells)
                     + f" | {z.macro_f1.mean():.3f} ± {_std(z.macro_f1):.3f} | {z.kappa.mean():.3f} ± {_std(z.kappa):.3f}"
                     + f" | {secs.mean():.0f} |")
    train = TrainConfig(**cfg.train)
    text = "\n".join([
        f"# Experiment `{cfg.name}`", "", cfg.description.strip(), "",
        "Produced by:", "", "```", command or f"cropmap experiment configs/experiments/{cfg.name}.yaml", "```", "",
        f"Mean ± std over seeds {cfg.seeds} ({len(frame.seed.unique())} seeds) of the test overall accuracy "
        f"(OA), macro-F1 over the target's classes and Cohen's kappa. Per-seed and per-class figures: "
        f"`{cfg.name}.csv`; confusion matrices (first seed, unshifted): `{cfg.name}/`.", "",
        *lines, "",
        "Settings:", "",
        f"- source: {cfg.source.model_dump(exclude_none=True)}; target: {cfg.target.model_dump(exclude_none=True)}",
        f"- season: {cfg.season.describe()}; context for augmentation: "
        f"{(cfg.context_season or cfg.season).describe()}; bands: {', '.join(cfg.bands)}",
        f"- target dates moved by {cfg.target_shifts_days} days (then composited like any input)",
        f"- networks: Adam lr {train.lr}, batch {train.batch_size}, {train.epochs} epochs, weight decay "
        f"{train.weight_decay}, class-balanced cross-entropy, stratified validation split {train.val_fraction} "
        "of the source (never augmented), best-validation-macro-F1 epoch kept; log1p + per-band standardisation "
        "from the training split",
        f"- forest: {cfg.forest}, balanced class weights; augmented forests get augmented copies of the series",
        f"- cropmap {__version__}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, device "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'}",
        "",
    ])
    md = out_dir / f"{cfg.name}.md"
    with atomic_path(md) as tmp:
        tmp.write_text(text)
