"""CropNet training step time on CPU: fp32 against bf16 autocast (``TrainConfig.precision``).

One optimiser step = forward, class-weighted cross-entropy, backward, Adam step: what
:func:`cropmap.ml.train.fit_model` does per batch. The paper's CropNet (CROPNET_V1, 4.69M parameters,
8 classes) on batches of the real Victoria train series (10 bands x 73 five-day bins, normalised as
training does), batch 64 (cropmap's default), one torch thread (an experiment trains with one thread per
network, two networks at a time on 2 cores). The paths take turns step by step, so load drift hits both
alike; the first steps of each path are warm-up and not timed.

Run: .venv/bin/python bench/train_precision.py [--steps 20] [--threads 1]
Prints one JSON line per path (machine, torch, threads, median seconds per step) and the ratio, with
the minutes a 50-epoch training of 360 series (6 steps an epoch, 300 steps) takes at that rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from cropmap.core.bands import S2_BANDS
from cropmap.core.composite import median_composite
from cropmap.core.features import compute_features
from cropmap.core.season import Season
from cropmap.ml.models import CROPNET_V1, build_model
from cropmap.ml.normalisation import apply_normalisation, fit_normalisation
from cropmap.samples.victoria import read_victoria

PATHS = {"fp32": False, "bf16": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per path")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ds = read_victoria("train")
    comp = median_composite(ds["reflectance"], Season(start="08-01", end="07-31", hemisphere="south"), 2017)
    x = compute_features(comp, "2d").transpose("sample", "band", "time").values
    z = torch.from_numpy(apply_normalisation(x, fit_normalisation(x)))
    y = torch.from_numpy(ds["label"].values.astype(np.int64))
    models = {name: build_model("cropnet", n_bands=len(S2_BANDS), n_classes=8, **CROPNET_V1).train() for name in PATHS}
    opts = {name: torch.optim.Adam(m.parameters(), lr=1e-3) for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in PATHS}
    rng = np.random.default_rng(0)
    for step in range(args.warmup + args.steps):
        rows = torch.from_numpy(rng.choice(len(y), args.batch, replace=False))
        for name, bf16 in PATHS.items():
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(models[name](z[rows]), y[rows])
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
            if step >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    context = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "torch": torch.__version__, "threads": args.threads, "batch": args.batch, "steps": args.steps}
    median = {name: float(np.median(t)) for name, t in times.items()}
    for name, sec in median.items():
        print(json.dumps({"path": name, "seconds_per_step": round(sec, 4),
                          "minutes_50_epochs_360_series": round(sec * 300 / 60, 1), **context}))
    print(f"bf16 / fp32 step time: {median['bf16'] / median['fp32']:.2f} (speed-up {median['fp32'] / median['bf16']:.2f}x)")


if __name__ == "__main__":
    main()
