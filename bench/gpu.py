"""Inference on one GPU, end to end and alone (issue 35 part 6): px/s per GPU from a cube on disk to classes,
confidence and OOD, the forward pass alone, and GPU utilisation, in one call of a few minutes.

A real-shaped 1,024 px tile cube (43 bins x 10 bands, reflectance on the 1e-4 grid of the scenes' digital
numbers, stored as ``cropmap cube`` stores it: int16, :func:`cropmap.stages.cube_encoding.int16_store_encoding`) is
written to local disk; a CropNet v1 checkpoint (untrained weights: the speed does not depend on them; OOD
statistics fitted on its own features) is saved and loaded as a predict task loads it. Cases, each timed
``--repeat`` times after a warm-up, taking turns:

- ``end_to_end``: :func:`cropmap.stages.inference.infer_cube` on the whole tile, OOD on (the default), bf16
  autocast (the CUDA default), batches sized by the default memory budget and by ``--budget-mb``;
- ``forward``: the forward pass alone on device-resident batches of the same size (bf16, channels_last
  and not), after ``torch.cuda.synchronize``;
- ``host``: :func:`cropmap.stages.inference.host_block` over the tile (what the GPU's host does per pixel);
- ``compile`` (with ``--compile``): the forward pass under ``torch.compile``.

GPU utilisation is sampled every 100 ms with ``nvidia-smi`` during the end-to-end case. On a machine
without CUDA the script runs the same cases on the CPU with ``--rows`` rows (a smoke test of the script).

    .venv/bin/python bench/gpu.py [--rows 1024] [--repeat 3] [--budget-mb 1024 8192] [--compile] [--out DIR]

Prints one JSON line per case (device name, torch and CUDA versions) and writes them to ``DIR/gpu.jsonl``;
record the figures in docs/performance.md ("GPU inference").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/predict.py's real-shaped cube


def _checkpoint(folder: Path, cube_path: Path, device: torch.device):
    """A CropNet v1 checkpoint for the cube's bands and season, saved and loaded as a predict task does."""
    from cropmap.core.season import Season
    from cropmap.ml.checkpoint import load_checkpoint, save_checkpoint
    from cropmap.ml.models import build_model, forward_pass
    from cropmap.ml.ood import fit_ood
    from cropmap.stages.predict import open_cube

    cube = open_cube(cube_path)
    season = Season.from_attrs(cube.attrs)
    model = build_model("cropnet", n_bands=10, n_classes=8).eval()
    norm = {"method": "log1p_standard", "scale": 10000.0, "mean": [6.5] * 10, "std": [1.0] * 10}
    x = np.nan_to_num(cube.isel(y=slice(0, 1), x=slice(0, 512)).values.transpose(2, 3, 1, 0).reshape(-1, 10, season.n_bins))
    z = (np.log1p(np.clip(x, 0, None) * 1e4) - 6.5).astype(np.float32)
    logits, feats = forward_pass(model, z)
    ood = fit_ood(feats.astype(np.float64), logits.argmax(1))
    path = save_checkpoint(folder / "cropnet_v1.pt", model=model, model_name="cropnet",
                           model_config={"n_bands": 10, "n_classes": 8}, feature_kind="2d",
                           bands=[str(b) for b in cube.band.values], season=season, n_bins=season.n_bins,
                           normalisation=norm, class_names=[f"c{i}" for i in range(8)], class_colours=None,
                           config={}, scores={}, ood=ood)
    return load_checkpoint(path)


class _Utilisation:
    """``nvidia-smi`` GPU utilisation (%) sampled every 100 ms while in the ``with`` block."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return

    def __enter__(self):
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=None, help="rows of the 1,024 px wide tile (default 1024 on CUDA, "
                    "64 on a CPU)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--budget-mb", type=int, nargs="+", default=[1024, 8192], help="predict memory budgets")
    ap.add_argument("--compile", action="store_true", help="also time the forward pass under torch.compile")
    ap.add_argument("--out", default=os.environ.get("OUT") or tempfile.mkdtemp(prefix="cropmap-bench-gpu-"))
    args = ap.parse_args()
    from predict import _host_cube, host_pass

    from cropmap.stages.inference import infer_cube
    from cropmap.stages.predict import PredictOptions, open_cube

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    rows = args.rows or (1024 if cuda else 64)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cropmap-gpu-"))
    t0 = time.perf_counter()
    path = _host_cube(work, rows, encoding="int16")
    ckpt = _checkpoint(work, path, device)
    print(f"# cube {rows} x 1024 px and checkpoint ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    context = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
               "cuda": torch.version.cuda, "rows": rows, "bins": 43, "bands": 10}
    mpx = rows * 1024 / 1e6
    results = []

    def emit(row: dict) -> None:
        row = {**row, **context}
        results.append(row)
        print(json.dumps(row), flush=True)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    cases = {f"end_to_end_budget_{mb}": PredictOptions(device=device.type, ood=True, memory_budget_mb=mb)
             for mb in args.budget_mb}
    infer_cube(ckpt, open_cube(path, stored=True), options=next(iter(cases.values())))  # warm-up
    times: dict[str, list[float]] = {name: [] for name in cases}
    utilisation: dict[str, list[float]] = {name: [] for name in cases}
    host_times: list[float] = []
    for _ in range(args.repeat):  # the cases take turns
        for name, options in cases.items():
            with _Utilisation() if cuda else _NoSampling() as util:
                sync()
                t = time.perf_counter()
                maps = infer_cube(ckpt, open_cube(path, stored=True), options=options)
                sync()
                times[name].append(time.perf_counter() - t)
            utilisation[name] += util.samples
        c0 = time.process_time()
        host_pass(ckpt, path, pin=cuda)
        host_times.append(time.process_time() - c0)
    for name, options in cases.items():
        best = statistics.median(times[name])
        emit({"case": name, "px_per_s": round(rows * 1024 / best), "s_per_mpx": round(best / mpx, 3),
              "batch": ckpt.batch_size_for(options.memory_budget_mb * 2**20),
              "gpu_util_mean_pct": round(statistics.mean(utilisation[name]), 1) if utilisation[name] else None,
              "mapped_share": round(float((maps["label"].values != 255).mean()), 4)})
    emit({"case": "host_block", "host_cpu_s_per_mpx": round(statistics.median(host_times) / mpx, 3)})

    batch = ckpt.batch_size_for(max(args.budget_mb) * 2**20)
    x = torch.rand(batch, 10, 43, device=device)
    for layout in ("contiguous", "channels_last"):
        model = ckpt.inference_model(device, channels_last=layout == "channels_last")
        variants = {"eager": model.forward}
        if args.compile:
            variants["compile"] = torch.compile(model.forward)
        for label, fn in variants.items():
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
                fn(x)  # warm-up (and compile)
                sync()
                runs = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    for _ in range(5):
                        fn(x)
                    sync()
                    runs.append((time.perf_counter() - t) / 5)
            emit({"case": f"forward_{label}_{layout}_bf16", "batch": batch,
                  "px_per_s": round(batch / statistics.median(runs))})
    (out / "gpu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))


class _NoSampling:
    samples: list[float] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


if __name__ == "__main__":
    main()
