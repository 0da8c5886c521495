"""The results of an experiment grid as ``<output>/<name>.md`` (mean ± std over seeds) and ``.csv``."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pandas as pd
import torch

from cropmap import __version__
from cropmap.io.outputs import atomic_path
from cropmap.ml.train import TrainConfig
from cropmap.research.config import Axes, ExperimentConfig, recipe_text, run_training
from cropmap.research.variants import Variant

__all__ = ["write_report"]


def _mean_std(v: pd.Series) -> str:
    """``mean ± std`` over seeds; a single seed has no spread to show."""
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def _trust_table(frame: pd.DataFrame, keys: list[str], shifts: list[int]) -> list[str]:
    """Calibration and error detection per run and shift: ECE before -> after temperature scaling (and the
    ECE a perfectly calibrated model would show on as many targets, :func:`~cropmap.ml.calibration.ece_noise_floor`), the
    AUROC of the OOD score and of 1 - top probability for "this target is misclassified", and the OA of
    the 80 % / 95 % least doubtful targets by each (:func:`cropmap.ml.evaluate.error_detection`)."""
    if "conf_auroc_errors" not in frame.columns:
        return []
    lines = ["", "Confidence and the out-of-distribution (OOD) score as detectors of the misclassified targets "
             "(over seeds as above; \"kept 80 %\": OA of the 80 % of targets the detector trusts most; "
             "forests have no OOD score):", "",
             "| " + " | ".join(k.replace("_", " ") for k in keys) + " | shift d | ECE raw -> calibrated (noise floor) | AUROC errors: OOD | confidence "
             "| OA kept 80 %: OOD | confidence | OA kept 95 %: OOD | confidence | OOD flagged |",
             "|" + "---|" * (len(keys) + 9)]
    for key, g in frame.groupby(keys, sort=False):
        for sh in shifts:
            r = g[g.shift_days == sh]
            col = (lambda c: _mean_std(r[c].dropna()) if c in r and r[c].notna().any() else "—")
            cells = [col(c) for c in ("ood_auroc_errors", "conf_auroc_errors", "ood_oa_at_80", "conf_oa_at_80",
                                      "ood_oa_at_95", "conf_oa_at_95", "ood_flagged")]
            lines.append("| " + " | ".join(str(k) for k in key) + f" | {sh:+d} | {col('ece_raw')} -> {col('ece')} ({col('ece_floor')}) | "
                         + " | ".join(cells) + " |")
    return lines


def _lowest_recall(rows: pd.DataFrame) -> str:
    """The class with the lowest mean recall over the seeds, and that recall (``recall_<class>`` columns)."""
    recalls = rows[[c for c in rows.columns if c.startswith("recall_")]].mean()
    recalls = recalls.dropna()
    if recalls.empty:
        return "—"
    worst = recalls.idxmin()
    return f"{worst.removeprefix('recall_')} {recalls[worst]:.3f}"


def write_report(cfg: ExperimentConfig, grid: list[Variant], frame: pd.DataFrame, out_dir: Path,
                   command: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv = out_dir / f"{cfg.name}.csv"
    with atomic_path(csv) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.4f")
    shifts = sorted(frame["shift_days"].unique())
    axes = [a for a in Axes.model_fields if a in frame.columns]  # the axes this grid varies, in order
    recipe = ["recipe"] if "recipe" in frame.columns else []
    if recipe:
        frame = frame.assign(recipe=frame["recipe"].fillna(""))
    keys = ["split", *axes, *recipe, "features", "model", "augment"]
    head = "| " + " | ".join(["split (test)"] + [a.replace("_", " ") for a in axes] + recipe
                             + ["features", "model", "augmentation"]) + " | " + \
        " | ".join(f"OA {s:+d} d" if s else "OA" for s in shifts) + \
        " | balanced acc. (0 d) | macro-F1 (0 d) | kappa (0 d) | lowest class recall (0 d) | s / model |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for key, g in frame.groupby(keys, sort=False):
        cells = []
        for s in shifts:
            cells.append(_mean_std(g.loc[g.shift_days == s, "oa"]))
        z = g[g.shift_days == (0 if 0 in shifts else shifts[0])]
        secs = g.drop_duplicates("seed")["train_seconds"].dropna()
        lines.append("| " + " | ".join(str(k) for k in key) + " | " + " | ".join(cells)
                     + f" | {_mean_std(z.balanced_accuracy)} | {_mean_std(z.macro_f1)} | {_mean_std(z.kappa)}"
                     + f" | {_lowest_recall(z)} | {secs.mean():.0f} |")
    lines += _trust_table(frame, keys, shifts)
    if axes:
        lines += ["", "Variants (season the samples are composited onto, and classes):", ""]
        lines += [f"- {v.label}: {v.season.describe()}"
                  + (f"; target {v.target_season.describe()}" if v.target_season != v.season else "")
                  + (f"; classes {list(v.classes)}" if v.classes else "")
                  + (f"; {v.minority.class_name} cut to {v.minority.fraction:.1%} of the training samples"
                     if v.minority else "") for v in grid]
    train = TrainConfig(**cfg.train)
    recipes = sorted({(r.recipe, tuple(sorted(r.train.items()))) for r in cfg.runs if r.recipe})
    # every setting each network trained with, defaults included: a table stays readable after they change
    as_run: dict[str, list[str]] = {}
    for r in cfg.runs:
        if r.model != "rf":
            as_run.setdefault(recipe_text(run_training(cfg, r)), []).append(r.recipe or f"{r.features}/{r.model}")
    base = grid[0]
    text = "\n".join([
        f"# Experiment `{cfg.name}`", "", cfg.description.strip(), "",
        "Produced by:", "", "```", command or f"cropmap experiment configs/experiments/{cfg.name}.yaml", "```", "",
        (f"Mean ± std over seeds {cfg.seeds} ({len(frame.seed.unique())} seeds)" if len(frame.seed.unique()) > 1
         else f"One seed ({frame.seed.iloc[0]}, no spread)") + " of the test overall accuracy "
        f"(OA), balanced accuracy (the mean of the classes' recalls) and macro-F1 over the target's classes, "
        f"Cohen's kappa, and the class the model recalls least. Per-seed and per-class figures (F1, recall): "
        f"`{cfg.name}.csv`; confusion matrices (first seed, unshifted): `{cfg.name}/`.", "",
        *lines, "",
        "Settings:", "",
        (f"- source: {cfg.source.model_dump(exclude_none=True)}, split {cfg.split.describe()}: the runs train on "
         "the training part and are scored on the held-out part (every row of the table)" if cfg.split else
         f"- source: {cfg.source.model_dump(exclude_none=True)}; target: {cfg.target.model_dump(exclude_none=True)}"),
        f"- season: {cfg.season.describe()}"
        + (f"; target season: {base.target_season.describe()}" if base.target_season != base.season else "")
        + "; context for augmentation: "
        f"{(cfg.context_season or cfg.season).describe()}; bands: {', '.join(cfg.bands or ['(defaults)'])}",
        f"- target dates moved by {cfg.target_shifts_days} days (then composited like any input)",
        "- networks: Adam "
        + (f"lr {train.lr}" if train.schedule == "constant"
           else f"with a {train.schedule} schedule peaking at lr {train.lr}")
        + f", batch {train.batch_size}, {train.epochs} epochs, weight decay "
        f"{train.weight_decay}, class-balanced cross-entropy, stratified validation split {train.val_fraction} "
        "of the source (never augmented), "
        + ("best-validation-macro-F1 epoch kept" if train.epoch_choice == "best" else "last epoch kept")
        + (", even batches" if train.batching == "even" else "")
        + "; log1p + per-band standardisation from the training split",
        *[f"- recipe {name}: {dict(train_items)} over the networks' settings" for name, train_items in recipes],
        *[f"- trained as ({', '.join(dict.fromkeys(runs))}): {text}" for text, runs in as_run.items()],
        f"- forest: {cfg.forest}, balanced class weights; augmented forests get augmented copies of the series",
        f"- cropmap {__version__}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, device "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'}, {cfg.workers} training process(es)",
        "",
    ])
    md = out_dir / f"{cfg.name}.md"
    with atomic_path(md) as tmp:
        tmp.write_text(text)
