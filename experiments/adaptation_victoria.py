"""Issue 36 parts 1-2 on Victoria: shift estimate and AdaBN against test dates moved by a known shift.

Victoria train (400) -> Victoria test (400), 8 classes, the season and loading of
configs/experiments/victoria-reference-recipe.yaml, CropNet 2D with the default recipe (TrainConfig's:
OneCycle to lr 3e-3, batch 64, 50 epochs, 10 % held out, last epoch, augmentation ``all``). The test
dates are moved by ``--shifts`` days (the runner's ``_composite``: the same spectra on later dates) and
each seed's network is scored four ways: ``none`` (as is), ``shift`` (the shift estimated from the
unlabelled target, :func:`cropmap.ml.shift_estimate.estimate_shift`, undone by re-compositing the target's
dated observations ``-estimate`` days: :func:`cropmap.ml.shift_estimate.estimate_shift_dated`), ``bn``
(AdaBN on the target as it is, :func:`cropmap.ml.adabn.adapt_batchnorm`) and ``shift+bn`` (AdaBN on the
realigned target). Prints the tables of docs/results/adaptation.md; writes the scores and estimates as CSV under ``--out``.

    .venv/bin/python experiments/adaptation_victoria.py [--seeds 0 1 2] [--shifts -30 -20 0 20 30]
        [--precision bf16] [--workers 2] [--cache /tmp/hG-cache] [--train-only]

Trained networks are cached (the runner's cache key) so a rerun only scores.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cropmap.ml.adabn import adapt_checkpoint
from cropmap.ml.calibration import expected_calibration_error
from cropmap.ml.checkpoint import load_checkpoint
from cropmap.ml.evaluate import scores as score_labels
from cropmap.ml.shift_estimate import CRITERIA, best_shift, candidate_shifts, realign_dated, shifted
from cropmap.research import runner
from cropmap.research.config import RunSpec, load_experiment

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "experiments" / "victoria-reference-recipe.yaml"
#: the default recipe (TrainConfig's defaults, stated as the runner asks) with the augmentation it won with
RECIPE = {"lr": 0.003, "batch_size": 64, "epochs": 50, "val_fraction": 0.1, "epoch_choice": "last",
          "schedule": "onecycle"}


def experiment(seeds: list[int], shifts: list[int], precision: str, workers: int, cache: Path):
    """The Victoria scenario as an ExperimentConfig with one run: CropNet 2D, default recipe, augment all."""
    base = load_experiment(CONFIG)
    spec = RunSpec(features="2d", model="cropnet", augment=["all"], recipe=f"default-{precision}",
                   train={**RECIPE, "precision": precision})
    return base.model_copy(update={"name": "adaptation-victoria", "train": {}, "runs": [spec], "seeds": seeds,
                                   "target_shifts_days": shifts, "workers": workers, "threads": 1,
                                   "cache_dir": str(cache)})


def _figures(proba: np.ndarray, y: np.ndarray, class_names: list[str]) -> dict:
    s = score_labels(y, proba.argmax(1), class_names=class_names)
    return {"oa": s["oa"], "macro_f1": s["macro_f1"], "balanced_accuracy": s["balanced_accuracy"],
            "ece": expected_calibration_error(proba, y)}


def evaluate_seed(job: dict) -> tuple[list[dict], list[dict]]:
    """One seed: every true shift scored none / shift / bn / shift+bn, and every criterion's estimate by
    the dated re-composite (and, with ``resample``, by resampling the matrices) on ``est_pixels`` seeded
    target pixels. Returns (score rows, estimate rows)."""
    torch.set_num_threads(1)
    ckpt = load_checkpoint(job["path"])
    y, names, year = job["y"], job["class_names"], job["year"]
    bin_days = float(ckpt.season.bin_days)
    candidates = candidate_shifts(60.0, bin_days)
    sample = np.sort(np.random.default_rng(job["seed"]).choice(len(y), min(job["est_pixels"], len(y)), replace=False))
    paths = ("dated", "resample") if job["resample"] else ("dated",)
    rows, est_rows = [], []
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=job["bf16"]):
        for true in job["shifts"]:
            t0 = time.perf_counter()
            # the target as the runner made it: the test observations' dates moved by +true days
            obs = job["obs"].assign_coords(time=job["obs"]["time"] + np.timedelta64(true, "D"))
            x_none = job["matrices"][true]
            proba = {("dated", d): ckpt.predict_proba(realign_dated(obs.isel(sample=sample), d, checkpoint=ckpt,
                                                                    year=year), device="cpu") for d in candidates}
            if job["resample"]:
                proba.update({("resample", d): ckpt.predict_proba(shifted(x_none[sample], d, bin_days=bin_days),
                                                                  device="cpu") for d in candidates})
            estimate = {}
            for path in paths:
                for crit in CRITERIA:
                    e = best_shift(lambda d, path=path: proba[(path, d)], candidates, criterion=crit,
                                   n_pixels=len(sample))
                    estimate[(path, crit)] = e.days
                    est_rows.append({"seed": job["seed"], "true_days": true, "path": path, "criterion": crit,
                                     "estimate_days": e.days, "scores": " ".join(f"{v:.4f}" for v in e.scores)})
            est = estimate[("dated", job["criterion"])]
            x_shift = realign_dated(obs, est, checkpoint=ckpt, year=year)
            base = {"seed": job["seed"], "true_days": true, "estimate_days": est, "criterion": job["criterion"]}
            rows.append({**base, "method": "none", **_figures(ckpt.predict_proba(x_none, device="cpu"), y, names)})
            rows.append({**base, "method": "shift", **_figures(ckpt.predict_proba(x_shift, device="cpu"), y, names)})
            rows.append({**base, "method": "bn",
                         **_figures(adapt_checkpoint(ckpt, x_none).predict_proba(x_none, device="cpu"), y, names)})
            rows.append({**base, "method": "shift+bn",
                         **_figures(adapt_checkpoint(ckpt, x_shift).predict_proba(x_shift, device="cpu"), y, names)})
            print(f"seed {job['seed']} true {true:+d} d: estimate {est:+g} d; " + ", ".join(
                f"{r['method']} {r['oa']:.3f}" for r in rows[-4:]) + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    return rows, est_rows


def _pm(values: pd.Series) -> str:
    return f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0:.3f}"


def summary(scores: pd.DataFrame, estimates: pd.DataFrame, criterion: str) -> str:
    """Markdown: the figures (mean ± std over seeds) per true shift and method, and the estimates."""
    out = ["| true shift (d) | method | OA | macro-F1 | balanced acc. | ECE |", "|---|---|---|---|---|---|"]
    for (true, method), g in scores.groupby(["true_days", "method"], sort=False):
        out.append(f"| {true:+d} | {method} | {_pm(g.oa)} | {_pm(g.macro_f1)} | {_pm(g.balanced_accuracy)} | {_pm(g.ece)} |")
    out += ["", "| path | criterion | " + " | ".join(f"{t:+d} d" for t in sorted(estimates.true_days.unique()))
            + " | within 5 d |", "|---|---|" + "---|" * (estimates.true_days.nunique() + 1)]
    for (path, crit), g in estimates.groupby(["path", "criterion"], sort=False):
        cells = [" / ".join(f"{v:+g}" for v in g[g.true_days == t].sort_values("seed").estimate_days)
                 for t in sorted(g.true_days.unique())]
        hit = (abs(g.estimate_days - g.true_days) <= 5).sum()
        out.append(f"| {path} | {crit}{' (used)' if crit == criterion and path == 'dated' else ''} | "
                   + " | ".join(cells) + f" | {hit}/{len(g)} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--shifts", type=int, nargs="+", default=[-30, -20, 0, 20, 30])
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"],
                        help="training steps' arithmetic, and the scoring passes' (bf16 autocast)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/hG-cache"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/hG-cache"), help="the CSVs of scores and estimates")
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--score-only", action="store_true", help="train nothing: score the seeds trained so far")
    parser.add_argument("--est-pixels", type=int, default=200, help="target pixels the shift is estimated on")
    parser.add_argument("--resample", action="store_true", help="also estimate by resampling the matrices")
    parser.add_argument("--criterion", default="information", choices=CRITERIA,
                        help="the criterion whose estimate the shift and shift+bn rows use")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = experiment(args.seeds, args.shifts, args.precision, args.workers, args.cache)
    bands, _ = runner.resolve_bands(cfg)
    cfg = cfg.model_copy(update={"bands": bands})
    source = runner.read_sample_set(cfg.source, bands=bands)
    target = runner.read_sample_set(cfg.target, bands=bands)
    (variant,) = runner.variants(cfg)
    prep = runner._prepare(cfg, variant, source, target)
    if not args.score_only:
        t0 = time.perf_counter()
        runner._train_in_parallel(cfg, [prep], args.cache, print)
        print(f"training done in {time.perf_counter() - t0:.0f} s")
    if args.train_only:
        return 0
    spec = cfg.runs[0]
    keep = np.arange(len(prep.y_src))
    matrices = {d: runner._matrix(c) for d, c in prep.tgt.items()}
    jobs = []
    for seed in args.seeds:
        path = runner._network_job(cfg, prep, spec, "all", seed, keep, args.cache)["path"]
        done = path.with_name(f"{path.stem}-adapt-{args.criterion}-{args.est_pixels}px"
                              f"{'-resample' if args.resample else ''}-{'_'.join(map(str, args.shifts))}.pkl")
        if path.exists():  # --score-only: the seeds trained so far
            jobs.append(dict(path=path, done=done, seed=seed, obs=target["reflectance"], y=prep.y_tgt,
                             class_names=prep.class_names, shifts=args.shifts, year=cfg.target.year,
                             matrices=matrices, criterion=args.criterion, est_pixels=args.est_pixels,
                             resample=args.resample, bf16=args.precision == "bf16"))
    todo = [job for job in jobs if not job["done"].exists()]
    t0 = time.perf_counter()
    if todo:
        with ProcessPoolExecutor(max_workers=min(args.workers, len(todo)), mp_context=get_context("spawn")) as pool:
            for job, part in zip(todo, pool.map(evaluate_seed, todo)):
                pd.to_pickle(part, job["done"])  # scored once: a rerun only tabulates
        print(f"scored {len(todo)} seeds in {time.perf_counter() - t0:.0f} s")
    parts = [pd.read_pickle(job["done"]) for job in jobs]
    scores = pd.DataFrame([r for rows, _ in parts for r in rows])
    estimates = pd.DataFrame([r for _, rows in parts for r in rows])
    args.out.mkdir(parents=True, exist_ok=True)
    scores.to_csv(args.out / "adaptation-victoria.csv", index=False)
    estimates.to_csv(args.out / "adaptation-victoria-estimates.csv", index=False)
    print(summary(scores, estimates, args.criterion))
    return 0


if __name__ == "__main__":
    sys.exit(main())
