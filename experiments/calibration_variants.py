"""Can any temperature fitted on the validation split lower the test ECE of Victoria's CropNet? Measured on
the networks that ``cropmap experiment configs/experiments/victoria-reference-recipe.yaml --cache-dir DIR``
trained (CropNet 2D), on the Victoria test split at each of its date shifts: the best-validation-epoch
networks of every recipe, and those of the default recipe and of the two before it.

    .venv/bin/python experiments/calibration_variants.py [DIR] [--out docs/results/calibration-variants]

Temperatures (``softmax(logits / T)``, :func:`cropmap.ml.calibration.fit_temperature`):

- ``raw``: T = 1;
- ``product``: the checkpoint's own, the NLL fit on the validation split kept only when a bootstrap
  of its gain supports it;
- ``val-nll``: the same fit, always kept;
- ``val-augmented``: the NLL fit on the validation series plus 20 copies of them under the ``all``
  augmentation (shifted, stretched, warped phenology: harder samples with some errors to fit on);
- ``oracle``: the NLL fit on the unshifted TEST split itself, the best a single temperature could do
  (not available to a user; the ceiling).

Each is scored by the ECE on the test targets beside the ECE a perfectly calibrated model would show on
as many targets (:func:`cropmap.ml.calibration.ece_noise_floor`), and the validation split's accuracy
beside the test's (how much easier the samples the fit sees are). Writes ``OUT.md`` and ``OUT.csv``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from cropmap.ml.augment import augmenter
from cropmap.ml.calibration import ece_noise_floor, expected_calibration_error, fit_temperature, softmax_t
from cropmap.ml.checkpoint import load_checkpoint
from cropmap.ml.train import stratified_split
from cropmap.research import runner as R
from cropmap.research.config import load_experiment
from cropmap.research.variants import variants
from cropmap.samples.sources import read_sample_set

CONFIG = "configs/experiments/victoria-reference-recipe.yaml"
#: cropmap's default training recipe (TrainConfig) and the two before it (both 2026-12-06)
DEFAULT_RECIPES = {"reference-val10-last-onecycle3-50ep": "The default recipe",
                   "reference-val10-last-onecycle3": "The default before (40 epochs)",
                   "reference-val10-last": "The default before that (constant lr 1e-3)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", nargs="?", default="/tmp/refrecipe-cache", type=Path)
    parser.add_argument("--out", default="docs/results/calibration-variants")
    args = parser.parse_args()
    cfg = load_experiment(CONFIG)
    cfg = cfg.model_copy(update={"bands": R.resolve_bands(cfg)[0]})
    src, tgt = read_sample_set(cfg.source, bands=cfg.bands), read_sample_set(cfg.target, bands=cfg.bands)
    prep = R._prepare(cfg, variants(cfg)[0], src, tgt)
    window = slice(prep.start, prep.start + prep.variant.season.n_bins)
    targets = {d: R._matrix(c) for d, c in prep.tgt.items()}
    copies = augmenter("all", bin_days=prep.variant.season.bin_days)
    rows = []
    for seed in cfg.seeds:
        for spec in cfg.runs:
            if spec.model == "rf":
                continue
            for aug in spec.augment:
                job = R._network_job(cfg, prep, spec, aug, seed, np.arange(len(prep.y_src)), args.cache)
                if not job["path"].exists():
                    raise SystemExit(f"{job['path']} missing: run `cropmap experiment {CONFIG} --cache-dir "
                                     f"{args.cache}` first")
                ckpt = load_checkpoint(job["path"])
                _, va = stratified_split(prep.y_src, fraction=job["train"].val_fraction, seed=seed)
                y_val, x_val = prep.y_src[va], prep.x_full[va]
                val_logits = ckpt.infer(x_val[:, :, window])[0]
                rng = np.random.default_rng(seed)
                aug_logits = np.concatenate([val_logits] + [
                    ckpt.infer(copies(x_val, start=prep.start, n_bins=prep.variant.season.n_bins, rng=rng))[0]
                    for _ in range(20)])
                logits = {d: ckpt.infer(m)[0] for d, m in targets.items()}
                temps = {"raw": 1.0, "product": ckpt.temperature,
                         "val-nll": fit_temperature(val_logits, y_val, confidence=0.0),
                         "val-augmented": fit_temperature(aug_logits, np.tile(y_val, 21), confidence=0.0),
                         "oracle": fit_temperature(logits[0], prep.y_tgt, confidence=0.0)}
                for name, t in temps.items():
                    for d, lg in logits.items():
                        proba = softmax_t(lg, t)
                        rows.append({"recipe": spec.recipe, "augment": aug, "seed": seed,
                                     "epoch_choice": job["train"].epoch_choice, "temperature_fit": name,
                                     "T": t, "shift_days": d, "ece": expected_calibration_error(proba, prep.y_tgt),
                                     "ece_floor": ece_noise_floor(proba),
                                     "val_accuracy": float((val_logits.argmax(1) == y_val).mean()),
                                     "test_accuracy": float((lg.argmax(1) == prep.y_tgt).mean())})
                print(f"{spec.recipe} {aug} seed {seed}: " + ", ".join(f"{k} T={t:.2f}" for k, t in temps.items()),
                      flush=True)
    frame = pd.DataFrame(rows)
    out = Path(args.out)
    frame.to_csv(out.with_suffix(".csv"), index=False, float_format="%.4f")
    best = frame[frame.epoch_choice == "best"]
    lines = ["# Temperature fits against the test ECE (Victoria, CropNet 2D)", "",
             f"Produced by `.venv/bin/python experiments/calibration_variants.py {args.cache}` from the checkpoints of "
             f"`{CONFIG}`; what each fit is: the script's docstring. Means over the networks (per network: the "
             "CSV); the noise floor is the ECE a perfectly calibrated model with the same confidences shows on "
             "the 400 test targets.", ""]
    parts = [(f"The {best[['recipe', 'augment', 'seed']].drop_duplicates().shape[0]} best-validation-epoch "
              "networks (every recipe and augmentation)", best)]
    for recipe, name in DEFAULT_RECIPES.items():
        default = frame[(frame.recipe == recipe) & (frame.augment == "all")]
        parts.append((f"{name} ({recipe}, all three augmentations, last epoch, {default.seed.nunique()} seeds)",
                      default))
    for title, part in parts:
        lines += [f"## {title}", ""] + _table(part) + [""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


def _table(frame: pd.DataFrame) -> list[str]:
    shifts = sorted(frame.shift_days.unique())
    nets = frame.drop_duplicates(["recipe", "augment", "seed"])
    lines = ["| temperature fit | T (mean, range) | " + " | ".join(f"ECE {d:+d} d" if d else "ECE 0 d" for d in shifts)
             + " | networks with ECE below raw (0 d) |", "|---|---|" + "---|" * len(shifts) + "---|"]
    raw = frame[frame.temperature_fit == "raw"].set_index(["recipe", "augment", "seed", "shift_days"])["ece"]
    for name, g in frame.groupby("temperature_fit", sort=False):
        t = g.drop_duplicates(["recipe", "augment", "seed"])["T"]
        cells = [f"{g[g.shift_days == d].ece.mean():.3f}" for d in shifts]
        z = g[g.shift_days == 0].set_index(["recipe", "augment", "seed", "shift_days"])["ece"]
        lower = int((z < raw.loc[z.index] - 1e-9).sum())
        lines.append(f"| {name} | {t.mean():.2f} ({t.min():.2f}-{t.max():.2f}) | " + " | ".join(cells)
                     + f" | {lower} of {len(z)} |")
    floor = frame[frame.temperature_fit == "raw"]
    return lines + ["| noise floor (raw confidences) | — | " + " | ".join(
        f"{floor[floor.shift_days == d].ece_floor.mean():.3f}" for d in shifts) + " | — |", "",
        f"Validation accuracy (what the fit sees) {nets.val_accuracy.mean():.3f} "
        f"({nets.val_accuracy.min():.3f}-{nets.val_accuracy.max():.3f}) against the test's "
        f"{frame[frame.shift_days == 0].drop_duplicates(['recipe', 'augment', 'seed']).test_accuracy.mean():.3f}."]


if __name__ == "__main__":
    main()
