"""Experiments: a grid of features x models x augmentations x seeds over a source -> target scenario.

``cropmap experiment configs/experiments/<name>.yaml`` loads an :class:`ExperimentConfig`, builds the
features of both sample sets with the SAME code inference uses (:func:`cropmap.core.composite.median_composite`
then :func:`cropmap.core.features.compute_features`), trains every run on the source, evaluates it on the
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

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from cropmap import __version__
from cropmap.core.composite import median_composite
from cropmap.core.features import compute_features
from cropmap.core.harmonise import Legend, harmonise
from cropmap.core.season import Season
from cropmap.errors import ConfigError
from cropmap.io.config import load_legend
from cropmap.io.storage import stable_hash
from cropmap.jobs.executors import local_executor, run_all
from cropmap.ml.augment import augmenter
from cropmap.ml.calibration import CALIBRATION_RULE, ece_noise_floor, expected_calibration_error
from cropmap.ml.checkpoint import load_checkpoint, save_checkpoint
from cropmap.ml.evaluate import error_detection, scores, write_confusion
from cropmap.ml.models.forest import build_forest, forest_predict_proba
from cropmap.ml.ood import FIT_RULE as OOD_FIT_RULE
from cropmap.ml.train import fit_model
from cropmap.research.config import ExperimentConfig, RunSpec, recipe_text, resolve_bands, run_training
from cropmap.research.report import write_report
from cropmap.research.variants import (
    Variant,
    minority_subsample,
    variants,
    window_start,
)
from cropmap.samples.sources import in_season_year, read_sample_set
from cropmap.samples.splits import holdout_split

__all__ = ["run_experiment"]


def _composite(ds: xr.Dataset, season: Season, year: int, shift_days: int = 0) -> xr.DataArray:
    refl = ds["reflectance"]
    if shift_days:  # the phenology happens shift_days later: the same spectra on later dates
        refl = refl.assign_coords(time=refl["time"] + np.timedelta64(shift_days, "D"))
    return median_composite(refl, season, year)


def _matrix(composite: xr.DataArray) -> np.ndarray:
    return compute_features(composite, "2d").transpose("sample", "band", "time").values


def _flat(composite: xr.DataArray, kind: str) -> np.ndarray:
    return compute_features(composite, kind).transpose("sample", "feature").values


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
    if variant.target_year is not None:
        target = in_season_year(target, variant.target_year, where=f"{cfg.name} target {cfg.target.describe()}")
    if variant.classes is not None:
        source, target = _select_classes(source, target, variant.classes)
    class_names = [str(c) for c in source["class_name"].values]
    if class_names != [str(c) for c in target["class_name"].values]:
        raise ConfigError("source and target legends differ: give a legend mapping both onto one class list")
    colours = [str(c) for c in source["class_colour"].values] if "class_colour" in source.coords else None
    season, context = variant.season, variant.context
    start = window_start(context, season, cfg.source.year)
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
    bands, note = resolve_bands(cfg)
    log(f"{cfg.name}: {note}")
    if cfg.bands != bands:
        cfg = cfg.model_copy(update={"bands": bands})
    # with a split, the whole file is split first (every season's samples), then only the source's season
    # year trains, and a target_year axis scores each year's held-out samples: in-year and the next year
    source = read_sample_set(cfg.source.model_copy(update={"season_year": None}) if cfg.split is not None
                             else cfg.source, bands=cfg.bands)
    target = source if cfg.split is not None else read_sample_set(cfg.target, bands=cfg.bands)
    if cfg.legend:
        legend = load_legend(cfg.legend)
        source, target = harmonise(source, legend), harmonise(target, legend)
    split = "source -> target"
    if cfg.split is not None:  # one file: train on one part, score on the held-out groups
        train_idx, test_idx = holdout_split(source, cfg.split)
        source, target = source.isel(sample=train_idx), source.isel(sample=test_idx)
        if cfg.source.season_year is not None:
            source = in_season_year(source, cfg.source.season_year, where=f"{cfg.name} source")
            train_idx = np.arange(source.sizes["sample"])
        split = cfg.split.describe()
        log(f"{cfg.name}: split {split}: {len(train_idx)} training, {len(test_idx)} held-out samples")
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
                    label = f"{spec.features}/{spec.model}/{aug}" + (f"/{spec.recipe}" if spec.recipe else "")
                    if spec.model == "rf":
                        proba_of, info = _run_forest(cfg, prep, spec, aug, seed, keep)
                    else:
                        proba_of, info = _run_network(cfg, prep, spec, aug, seed, keep, cache)
                    raw_of = info.pop("raw_proba", proba_of)  # networks: before temperature scaling
                    ood_of = info.pop("ood", {})
                    for shift, proba in proba_of.items():
                        s = scores(prep.y_tgt, proba.argmax(1), class_names=prep.class_names)
                        trust = {"ece": expected_calibration_error(proba, prep.y_tgt),
                                 "ece_raw": expected_calibration_error(raw_of[shift], prep.y_tgt),
                                 "ece_floor": ece_noise_floor(proba),
                                 **_error_detection(proba, prep.y_tgt, ood_of.get(shift))}
                        rows.append({**({"variant": v.label, **dict(v.values)} if v.values else {}),
                                     "split": split, **({"recipe": spec.recipe} if spec.recipe else {}),
                                     "features": spec.features,
                                     "model": spec.model, "augment": aug, "seed": seed, "shift_days": shift,
                                     "n_train": int(len(keep)), "oa": s["oa"],
                                     "balanced_accuracy": s["balanced_accuracy"], "macro_f1": s["macro_f1"],
                                     "kappa": s["kappa"], **trust, **{f"f1_{k}": val for k, val in s["f1"].items()},
                                     **{f"recall_{k}": val for k, val in s["recall"].items()}, **info,
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
                    write_report(cfg, [p.variant for p in prepared], frame, out_dir, command)
    return frame


def _error_detection(proba: np.ndarray, y: np.ndarray, ood: np.ndarray | None) -> dict:
    """Columns ``conf_*`` (1 - top probability) and, for networks, ``ood_*`` (:meth:`Checkpoint.ood_score`)
    as detectors of the misclassified targets (:func:`cropmap.ml.evaluate.error_detection`), and ``ood_flagged``
    (share of targets over the training threshold)."""
    correct = proba.argmax(1) == y
    out = {f"conf_{k}": v for k, v in error_detection(1 - proba.max(1), correct).items()}
    ok = np.isfinite(ood) if ood is not None else np.zeros(len(y), dtype=bool)
    if ok.any():
        out.update({f"ood_{k}": v for k, v in error_detection(ood[ok], correct[ok]).items()})
        out["ood_flagged"] = float((ood[ok] > 1).mean())
    return out


def _network_job(cfg: ExperimentConfig, prep: _Prepared, spec: RunSpec, aug: str, seed: int, keep: np.ndarray,
                 cache: Path) -> dict:
    """Everything one network training needs (picklable), and the checkpoint path it is cached at."""
    v = prep.variant
    train_cfg = run_training(cfg, spec, augment=aug, seed=seed)
    parts = [cfg.source.model_dump(), v.season.model_dump(), v.context.model_dump(), cfg.bands, prep.class_names,
             train_cfg.key_fields(exclude={"progress", "device"}), __version__,
             v.minority.model_dump() if v.minority else None, CALIBRATION_RULE, OOD_FIT_RULE]
    if cfg.split is not None:  # trained on the split's training part only
        parts.append(cfg.split.model_dump())
    path = cache / f"{spec.model}-{aug}-s{seed}-{stable_hash(parts)}.pt"
    return {"path": path, "x_full": prep.x_full[keep], "y": prep.y_src[keep], "start": prep.start,
            "season": v.season, "train": train_cfg, "bands": cfg.bands, "class_names": prep.class_names,
            "colours": prep.colours, "experiment": cfg.name}


def _train_network(job: dict, threads: int | None = None) -> Path:
    """Train one network and cache its checkpoint (atomic); returns the path."""
    if threads:
        torch.set_num_threads(threads)
    season, train_cfg = job["season"], job["train"]
    result = fit_model(job["x_full"], job["y"], window_start=job["start"], n_bins=season.n_bins,
                         n_classes=len(job["class_names"]), config=train_cfg, bin_days=season.bin_days)
    save_checkpoint(job["path"], model=result.model, model_name=train_cfg.model, model_config=result.model_config,
                    feature_kind="2d", bands=job["bands"], season=season, n_bins=season.n_bins,
                    normalisation=result.normalisation, temperature=result.temperature, ood=result.ood,
                    class_names=job["class_names"],
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
    done = 0

    def report(outcome) -> None:
        nonlocal done
        if not outcome.ok:  # a failed training stops the grid with its error
            raise outcome.error
        done += 1
        log(f"  [{done}/{len(jobs)}] trained {outcome.value.name}")

    # worker processes (Dask starts them with spawn: a forked child inherits torch's thread pools and
    # can deadlock in them), one training each at a time
    with local_executor(n_workers=cfg.workers, threads=1, processes=True) as executor:
        run_all(executor, _train_network, [((job, cfg.threads or 1), {}) for job in jobs], window=cfg.workers,
                on_outcome=report)


def _run_network(cfg, prep, spec, aug, seed, keep, cache):
    job = _network_job(cfg, prep, spec, aug, seed, keep, cache)
    cached = job["path"].exists()
    if not cached:
        _train_network(job)
    ckpt = load_checkpoint(job["path"])
    matrices = {d: _matrix(c) for d, c in prep.tgt.items()}
    # one forward pass per shift gives the logits (raw and calibrated probabilities) and the OOD score
    outputs = {d: ckpt.infer(m, ood=ckpt.ood is not None) for d, m in matrices.items()}
    proba = {d: ckpt.probabilities(logits) for d, (logits, _) in outputs.items()}
    raw = {d: ckpt.probabilities(logits, calibrated=False) for d, (logits, _) in outputs.items()}
    ood = {d: score for d, (_, score) in outputs.items() if score is not None}
    return proba, {"raw_proba": raw, "ood": ood, "temperature": ckpt.temperature,
                   "val_macro_f1": ckpt.scores["val_macro_f1"], "best_epoch": ckpt.scores["best_epoch"],
                   "train_seconds": ckpt.scores.get("train_seconds"), "cached": cached,
                   "train_recipe": recipe_text(job["train"])}  # every setting it trained with, defaults included


def _run_forest(cfg, prep, spec, aug, seed, keep):
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


