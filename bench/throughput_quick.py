"""CropNet inference throughput (pixels per second) on CPU, for the country arithmetic in docs/scaling.md.

Forward passes only (eval mode, ``torch.inference_mode``), on the real Victoria series (test split,
10 bands) cut to the first 43 five-day bins (the length of the ARG season, 11-01..05-31), repeated up
to the batch size. Weights are untrained: throughput does not depend on them. Runs each model at 1
and 2 torch threads (this machine has 2 cores; a Kubernetes CPU worker thread = one core), and on
CUDA too when torch sees a GPU (bf16 autocast, as cropmap.stages.predict does). Also counts the FLOPs of one
pixel's forward pass (torch.utils.flop_counter), from which a GPU's rate can be bounded.

Run: .venv/bin/python bench/throughput_quick.py [--seconds 3] [--batch 4096] [--record]
``--record`` writes CropNet v1's 1-thread CPU rate (``cpu_px_per_s_per_vcpu``) and FLOPs per pixel
(``cropnet_gflop_per_px``) into the cost figures (cropmap.jobs.cost_model.record_figure).
Prints a table and one JSON line per configuration (with the context: machine, torch, threads).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time

import numpy as np
import torch

from cropmap.ml.models import build_model, count_parameters
from cropmap.samples.victoria import read_victoria

N_BINS = 43


def _batch(size: int) -> np.ndarray:
    ds = read_victoria("test")
    var = next(v for v in ds.data_vars if set(ds[v].dims) == {"sample", "time", "band"})
    x = ds[var].transpose("sample", "band", "time").values[:, :, :N_BINS].astype(np.float32)
    x = (x - x.mean(axis=(0, 2), keepdims=True)) / x.std(axis=(0, 2), keepdims=True)
    return np.resize(x, (size, *x.shape[1:]))  # repeats the 400 real series


def _rate(model: torch.nn.Module, x: torch.Tensor, seconds: float, device: str) -> tuple[float, int]:
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        model(x)  # warm-up (allocations, cuDNN/oneDNN kernel choice)
        if device == "cuda":
            torch.cuda.synchronize()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model(x)
            n += 1
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    return n * x.shape[0] / elapsed, n


def _flops_per_pixel(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Floating-point operations of one pixel's forward pass (torch's counter: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x[:16])
    return counter.get_total_flops() / 16


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per configuration")
    ap.add_argument("--batch", type=int, default=4096, help="pixels per forward pass (PredictOptions default)")
    ap.add_argument("--record", action="store_true", help="write CropNet v1's figures into the cost model")
    args = ap.parse_args()
    host = _batch(args.batch)
    context = {"machine": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__,
               "cpu": platform.processor() or platform.machine(), "batch": args.batch, "bins": N_BINS,
               "bands": host.shape[1], "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(json.dumps({"context": context}))
    configs = [("cpu", t) for t in (1, 2) if t <= (os.cpu_count() or 1)]
    if torch.cuda.is_available():
        configs.append(("cuda", torch.get_num_threads()))
    print(f"{'model':<13} {'params':>9} {'device':>6} {'threads':>7} {'pixels/s':>11} {'GFLOP/px':>9}")
    for name in ("cropnet", "cropnet-code"):
        model = build_model(name, n_bands=host.shape[1], n_classes=7).eval()
        flops = _flops_per_pixel(model, torch.from_numpy(host).unsqueeze(1))
        for device, threads in configs:
            torch.set_num_threads(threads)
            rate, passes = _rate(model.to(device), torch.from_numpy(host).unsqueeze(1).to(device),
                                 args.seconds, device)
            rec = {"model": name, "params": count_parameters(model), "device": device, "threads": threads,
                   "pixels_per_s": round(rate), "passes": passes,
                   "gflop_per_pixel": round(flops / 1e9, 3), "gflop_per_s": round(rate * flops / 1e9, 1)}
            print(f"{name:<13} {rec['params']:>9} {device:>6} {threads:>7} {rate:>11,.0f} "
                  f"{rec['gflop_per_pixel']:>9}")
            print(json.dumps(rec))
            if args.record and name == "cropnet" and device == "cpu" and threads == 1:
                _record(rec, args)


def _record(rec: dict, args) -> None:
    """CropNet v1's fp32 px/s on one thread and its GFLOP per pixel, as cost-model figures."""
    import sys

    from cropmap.jobs.cost_model import record_figure

    command = "python bench/throughput_quick.py " + " ".join(sys.argv[1:])
    load = round(os.getloadavg()[0], 2)
    record_figure("cpu_px_per_s_per_vcpu", rec["pixels_per_s"], unit="px/s per vCPU, CropNet v1 fp32, 43 bins",
                  source=f"bench/throughput_quick.py, 1 thread, batch {args.batch}, forward pass only, load {load}",
                  command=command)
    record_figure("cropnet_gflop_per_px", rec["gflop_per_pixel"], unit="GFLOP per pixel, CropNet v1, 43 bins x 10 bands",
                  source="torch.utils.flop_counter in bench/throughput_quick.py", command=command)


if __name__ == "__main__":
    main()
