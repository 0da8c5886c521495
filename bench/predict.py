"""CropNet inference speed on this CPU: eager fp32 against faster paths, with prediction agreement.

Input: the 800 real Victoria series (train + test), composited with cropmap's median_composite and
normalised as a checkpoint does, shaped (N, band=10, time=73). Model: the paper's CropNet (CROPNET_V1,
4.69M parameters, 8 classes), from ``--checkpoint`` or trained here for ``--train-epochs`` epochs on the
Victoria train split (so that the agreement is measured on a model that separates the classes, not on
random weights whose logits are near ties).

Paths (each: a warm-up batch, then ``--repeat`` timed passes over all N pixels, the paths taking turns so
that a shared machine's load drift hits them alike; px/s from the median pass):

- ``eager_fp32``: ``model(x)`` under ``torch.inference_mode`` (the reference);
- ``channels_last``: model and input in channels_last memory format;
- ``fold_bn``: Conv+BatchNorm folded (torch.fx fuse), fp32;
- ``bf16``: ``torch.autocast("cpu", dtype=torch.bfloat16)`` (oneDNN bf16 kernels where the CPU has
  AVX512-BF16/AMX);
- ``int8_dynamic``: ``quantize_dynamic`` (only the Linear head: dynamic quantization has no conv);
- ``int8_static``: FX graph-mode post-training static quantization, x86 backend, calibrated on 200
  real train series;
- ``compile`` / ``compile_bf16``: ``torch.compile`` (inductor), compile time reported apart;
- ``onnxruntime``: ONNX export + onnxruntime CPU, only if onnxruntime is installed.

Agreement = share of the N pixels whose argmax class equals eager fp32's (goal >= 99.5 %).

With ``--end-to-end``, also ``cropmap.stages.predict.infer_cube`` (features, model, maps) on the same 800
series laid out as a 20 x 40 composite cube, ``precision="fp32"`` against ``"bf16"`` (the CPU fast path
wired into predict: bf16 autocast on channels_last weights), taking turns with the paths in the same round
robin: every ratio the table prints divides figures of one run (speed-ups against this run's eager_fp32).

With ``--host``, only the host work AROUND the forward pass of ``infer_cube`` (issue 35): real-shaped tile
cubes (43 bins x 10 bands, ``--rows`` rows of a 1,024 px wide tile, reflectance quantised to 1e-4 like the
scenes' digital numbers, a few NaN and over-filled pixels) written as Zarr stores in the layout of
``cropmap cube``, reflectance stored as int16 (the default) and as float32, into a fresh folder, opened as
the predict stage opens them (as stored) and predicted by ``infer_cube`` (state: the checkpoint loaded from
disk) on one thread with the model's forward pass REPLACED by a stub of the same output shapes (logits
``(n, C)``, penultimate features ``(n, 512)``, CropNet v1's; the stub's own few array ops are counted, not
subtracted), in batches of CropNet v1's size for the default memory budget (2,383 px). Cases: ``ood``,
``no_ood``, ``ood_prefetch`` (the next block read by a second thread) on the int16 cube, ``ood_float32_cube``;
on a CPU these include the device's share (decoding gather, normalisation, OOD score, softmax). The host's
share alone, what a GPU's host does: ``host_block`` / ``host_block_float32_cube``
(:func:`cropmap.stages.inference.host_block` over every block). All cases take turns, ``--repeat`` times;
CPU-s per megapixel from the process's CPU time (every thread, so a prefetch thread counts) of the median
run; classes compared with the float32 cube's. For context the real CropNet v1 forward pass is timed alone
on 2,048 of the pixels (same thread count), in CPU-s per megapixel.

Run: .venv/bin/python bench/predict.py [--batch 256] [--threads 2] [--repeat 3] [--paths eager_fp32,bf16]
     [--checkpoint ckpt.pt | --train-epochs 3 --save ckpt.pt] [--end-to-end]
     .venv/bin/python bench/predict.py --host [--rows 128] [--repeat 3]   (always one thread)
     with --host, ``--record`` writes the host figure into the cost model (cropmap.jobs.cost_model)
Prints one JSON line per path (machine, threads, batch, N, load average) and a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cropmap.core.composite import median_composite  # noqa: E402
from cropmap.core.features import compute_features  # noqa: E402
from cropmap.core.season import Season  # noqa: E402
from cropmap.ml.checkpoint import load_checkpoint  # noqa: E402
from cropmap.ml.export import CoreForward  # noqa: E402
from cropmap.ml.models import build_model, count_parameters  # noqa: E402
from cropmap.ml.normalisation import apply_normalisation, fit_normalisation  # noqa: E402
from cropmap.samples.victoria import read_victoria  # noqa: E402

SEASON = Season(start="08-01", end="07-31", hemisphere="south")  # the Victoria series' full year
PATHS = ("eager_fp32", "channels_last", "fold_bn", "bf16", "bf16_channels_last", "int8_dynamic", "int8_static",
         "compile", "compile_bf16", "onnxruntime")


# CropNet's forward without its input checks: the one the ONNX export uses (cropmap export-onnx)
_Core = CoreForward


def _features(split: str) -> tuple[np.ndarray, np.ndarray]:
    s = read_victoria(split)
    comp = median_composite(s["reflectance"], SEASON, 2017)
    return compute_features(comp, "2d").values, s["label"].values.astype(np.int64)


def _train(x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model("cropnet", n_bands=10, n_classes=8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _run_batches(fn, x: torch.Tensor, batch: int) -> np.ndarray:
    out = [fn(x[i:i + batch]) for i in range(0, len(x), batch)]
    return torch.cat([o.float() for o in out]).numpy()


def _prepare(path: str, model: torch.nn.Module, calib: torch.Tensor, batch: int):
    """The callable of one path (logits from a (n, band, time) float32 batch) and its setup seconds."""
    t0 = time.perf_counter()
    m = copy.deepcopy(model).eval()
    if path == "eager_fp32":
        fn = m
    elif path == "channels_last":
        m = m.to(memory_format=torch.channels_last)
        fn = lambda b: m(b.unsqueeze(1).contiguous(memory_format=torch.channels_last))  # noqa: E731
    elif path == "fold_bn":
        from torch.fx.experimental.optimization import fuse

        fn = fuse(_Core(m))
    elif path == "bf16":
        def fn(b):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return m(b)
    elif path == "bf16_channels_last":
        m = m.to(memory_format=torch.channels_last)

        def fn(b):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return m(b.unsqueeze(1).contiguous(memory_format=torch.channels_last))
    elif path == "int8_dynamic":
        from torch.ao.quantization import quantize_dynamic

        fn = quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)
    elif path == "int8_static":
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        torch.backends.quantized.engine = "x86"
        example = (calib[:8],)
        prepared = prepare_fx(_Core(m), get_default_qconfig_mapping("x86"), example)
        with torch.inference_mode():
            for i in range(0, len(calib), batch):
                prepared(calib[i:i + batch])
        fn = convert_fx(prepared)
    elif path in ("compile", "compile_bf16"):
        compiled = torch.compile(m, dynamic=False)
        if path == "compile":
            fn = compiled
        else:
            def fn(b):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return compiled(b)
        with torch.inference_mode():  # compile happens on the first call, for each batch shape
            fn(calib[:batch])
    elif path == "onnxruntime":
        import tempfile

        import onnxruntime as ort

        onnx_path = Path(tempfile.mkdtemp()) / "cropnet.onnx"
        torch.onnx.export(_Core(m), (calib[:batch],), str(onnx_path), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "n"}}, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        fn = lambda b: torch.from_numpy(sess.run(None, {"x": b.numpy()})[0])  # noqa: E731
    else:
        raise SystemExit(f"unknown path {path}; choose from {', '.join(PATHS)}")
    return fn, time.perf_counter() - t0


def _end_to_end_cases(model: torch.nn.Module, norm: dict, args) -> tuple[dict, int]:
    """``--end-to-end``: ``infer_cube`` on the 800 real series laid out as a 20 x 40 composite cube, fp32 and
    bf16, as callables returning the label map ``(y, x)``, and the cube's pixel count. The caller times them
    in the same round robin as the forward-pass paths, so that their ratios share the machine's load."""
    import xarray as xr

    from cropmap.ml.checkpoint import Checkpoint
    from cropmap.stages.predict import PredictOptions, infer_cube

    s = xr.concat([read_victoria("train"), read_victoria("test")], dim="sample")
    obs = xr.DataArray(s["reflectance"].values.reshape(20, 40, 73, 10).transpose(2, 3, 0, 1),
                       dims=("time", "band", "y", "x"), coords={"time": s.time.values, "band": s.band.values})
    cube = median_composite(obs, SEASON, 2017)
    ckpt = Checkpoint(model=model, model_name="cropnet", model_config={}, feature_kind="2d",
                      bands=tuple(str(b) for b in s.band.values), season=SEASON, n_bins=SEASON.n_bins,
                      normalisation=norm, class_names=tuple(str(c) for c in s.class_name.values), class_colours=None,
                      config={}, scores={}, version="bench")

    def case(precision: str):
        opts = PredictOptions(precision=precision, batch_size=args.batch, device="cpu")
        return lambda: infer_cube(ckpt, cube, options=opts)["label"].values.reshape(-1)

    return {f"predict_cube_{p}": case(p) for p in ("fp32", "bf16")}, cube.sizes["y"] * cube.sizes["x"]


class _StubNet(torch.nn.Module):
    """Same outputs as CropNet v1 (``embed`` -> ``(n, features)``, ``head`` -> ``(n, classes)``) for almost
    no compute: the bench's host cases time everything around the forward pass."""

    def __init__(self, n_classes: int, n_features: int = 512) -> None:
        super().__init__()
        self.n_classes, self.n_features = n_classes, n_features
        self.scale = torch.nn.Parameter(torch.linspace(0.5, 1.5, n_features), requires_grad=False)
        self.drop = torch.nn.Identity()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), -1)[:, :1].float() * self.scale  # (n, F), depends on the pixel

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return f[:, :self.n_classes] * torch.arange(1, self.n_classes + 1, dtype=f.dtype, device=f.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def _host_cube(folder: Path, rows: int, width: int = 1024, seed: int = 0, *, encoding: str = "int16") -> Path:
    """A real-shaped tile cube store (43 bins, 10 bands, ``rows x width``) in ``cropmap cube``'s layout,
    reflectance stored as ``encoding`` (:data:`cropmap.stages.cube_encoding.INT16_ENCODING` or float32)."""
    from cropmap.stages.cube_encoding import int16_store_encoding

    import xarray as xr

    season = Season(start="09-01", end="03-31", hemisphere="north")  # 43 bins of 5 days
    bands = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    rng = np.random.default_rng(seed)
    t = np.linspace(0, np.pi, season.n_bins, dtype=np.float32)
    base = rng.uniform(0.02, 0.3, (len(bands), rows, width)).astype(np.float32)
    green = rng.uniform(0, 0.3, (rows, width)).astype(np.float32)
    refl = base[None] + np.sin(t)[:, None, None, None] * green[None, None]
    refl += rng.normal(0, 0.01, refl.shape).astype(np.float32)
    refl = np.round(np.clip(refl, 0, 1) * 1e4) / np.float32(1e4)
    refl[:, :, rng.integers(0, rows, 50), rng.integers(0, width, 50)] = np.nan  # a few no-data series
    filled = rng.uniform(0, 0.9, (rows, width)).astype(np.float32)  # ~11 % over the 0.8 default
    ds = xr.Dataset({"reflectance": (("time", "band", "y", "x"), refl.astype(np.float32)),
                     "filled_fraction": (("y", "x"), filled)},
                    coords={"time": season.bin_starts(2021), "band": np.array(bands, dtype=object),
                            "y": 1e6 - (np.arange(rows) + 0.5) * 10, "x": 5e5 + (np.arange(width) + 0.5) * 10})
    ds = ds.chunk({"time": -1, "band": 1, "y": 256, "x": 256})  # cropmap cube's chunks
    ds.attrs = {**season.to_attrs(), "season_year": 2021, "tile_id": "bench", "tile_crs": "EPSG:32720",
                "tile_transform": [10.0, 0.0, 5e5, 0.0, -10.0, 1e6], "source_items": ["bench"], "status": "complete"}
    path = folder / f"cube-{encoding}.zarr"
    ds.to_zarr(path, mode="w", consolidated=False,
               encoding={"reflectance": int16_store_encoding((season.n_bins, 1, 256, 256))} if encoding == "int16" else None)
    return path


def host_pass(checkpoint, path: Path, *, pin: bool = False) -> None:
    """The host's share of predicting the cube store at ``path``, alone: every window of
    :func:`cropmap.stages.inference.block_windows` read by :func:`~cropmap.stages.inference.host_block`, as the
    predict stage opens the store (as stored)."""
    from cropmap.stages.inference import block_windows, host_block
    from cropmap.stages.predict import PredictOptions, open_cube

    cube = open_cube(path, stored=True)
    filled = cube["filled_fraction"].values
    for window in block_windows(cube, PredictOptions().block_pixels):
        host_block(checkpoint, cube, filled, window=window, max_filled_fraction=0.8, pin=pin)


def _host(args) -> list[dict]:
    """``--host``: CPU-s per megapixel of infer_cube around a stubbed forward pass, OOD on and off."""
    import tempfile

    from cropmap.ml.checkpoint import save_checkpoint
    from cropmap.stages.inference import infer_cube
    from cropmap.stages.predict import PredictOptions, open_cube

    from threadpoolctl import threadpool_limits

    args.threads = 1  # one thread, torch and BLAS alike: host CPU-s are what one core spends
    torch.set_num_threads(1)
    threadpool_limits(1)
    folder = Path(tempfile.mkdtemp(prefix="cropmap-bench-host-"))  # fresh every run
    t0 = time.perf_counter()
    paths = {enc: _host_cube(folder, args.rows, encoding=enc) for enc in ("int16", "float32")}
    path = paths["int16"]
    print(f"# cubes {args.rows} x 1024 px written to {folder} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    cube = open_cube(path)
    season = Season.from_attrs(cube.attrs)
    classes = [f"c{i}" for i in range(8)]
    rng = np.random.default_rng(1)
    n_feat = 512
    w = np.linalg.cholesky(np.cov(rng.normal(size=(n_feat, 4 * n_feat))) + np.eye(n_feat))
    ood = {"kind": "penultimate-mahalanobis", "whitening": w.tolist(),
           "class_means": rng.normal(size=(8, n_feat)).tolist(), "classes": list(range(8)), "threshold": 30.0,
           "quantile": 0.99, "shrinkage": 0.1}
    norm = {"method": "log1p_standard", "scale": 10000.0, "mean": [6.5] * 10, "std": [1.0] * 10}
    common = dict(model_config={"n_bands": 10, "n_classes": 8}, feature_kind="2d",
                  bands=[str(b) for b in cube.band.values], season=season, n_bins=season.n_bins, normalisation=norm,
                  class_names=classes, class_colours=None, config={}, scores={}, temperature=1.3, ood=ood)
    real = build_model("cropnet", n_bands=10, n_classes=8).eval()
    # the state as a predict task has it (loaded, OOD statistics included)
    ckpt = load_checkpoint(save_checkpoint(folder / "model.pt", model=real, model_name="cropnet", **common))
    batch = ckpt.batch_size_for(PredictOptions().memory_budget_mb * 2**20)  # CropNet v1's, not the stub's
    object.__setattr__(ckpt, "model", _StubNet(8).eval())  # loading built a CropNet: swap the stub back in
    # the real forward pass, for context: 2,048 pixels of the cube
    x = torch.from_numpy(np.nan_to_num(cube.isel(y=slice(0, 2), x=slice(0, 1024)).values.transpose(2, 3, 1, 0)
                                       .reshape(-1, 10, season.n_bins)))
    with torch.inference_mode():
        real.embed(x[:64])
        c0 = time.process_time()
        for i in range(0, len(x), 256):
            real.head(real.embed(x[i:i + 256]))
        forward_cpu_s_per_mpx = (time.process_time() - c0) / len(x) * 1e6
    def opts(**kw) -> PredictOptions:
        return PredictOptions(device="cpu", precision="fp32", batch_size=batch, **kw)

    # (cube encoding, options): infer_cube with the stubbed forward pass, cube opened as predict opens it
    cases = {"ood": ("int16", opts(ood=True)), "no_ood": ("int16", opts(ood=False)),
             "ood_prefetch": ("int16", opts(ood=True, prefetch=True)), "ood_float32_cube": ("float32", opts(ood=True))}
    # the host's share alone (stages.inference.host_block over every block): what a GPU's host does
    host_only = {"host_block": "int16", "host_block_float32_cube": "float32"}

    infer_cube(ckpt, open_cube(path, stored=True), options=cases["ood"][1])  # warm-up (imports, allocator)
    cpu = {c: [] for c in [*cases, *host_only]}
    wall = {c: [] for c in cpu}
    maps = {}
    for _ in range(args.repeat):  # the cases take turns
        for name, (encoding, options) in cases.items():
            c0, w0 = time.process_time(), time.perf_counter()
            maps[name] = infer_cube(ckpt, open_cube(paths[encoding], stored=True), options=options)
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
        for name, encoding in host_only.items():
            c0, w0 = time.process_time(), time.perf_counter()
            host_pass(ckpt, paths[encoding])
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    same = {name: round(float((maps[name]["label"].values == maps["ood_float32_cube"]["label"].values).mean()), 5)
            for name in cases}
    mpx = args.rows * 1024 / 1e6
    context = {"cpu": _cpu_name(), "threads": args.threads, "rows": args.rows, "batch": batch,
               "bins": season.n_bins, "bands": 10,
               "load_avg_1min": round(os.getloadavg()[0], 2), "torch": torch.__version__}
    rows = []
    for name in cpu:
        row = {"case": name, "host_cpu_s_per_mpx": round(statistics.median(cpu[name]) / mpx, 2),
               "wall_s_per_mpx": round(statistics.median(wall[name]) / mpx, 2),
               "forward_cpu_s_per_mpx_cropnet_v1": round(forward_cpu_s_per_mpx, 1), **context}
        if name in maps:
            row.update(nodata_share=round(float((maps[name]["label"].values == 255).mean()), 4),
                       classes_equal_float32_cube=same[name])
        rows.append(row)
        print(json.dumps(row), flush=True)
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    return rows


def _record_host(rows: list[dict] | None, args) -> None:
    """``--host --record``: the host's share of a GPU's work (case ``host_block``, else ``ood``), in CPU-s per
    megapixel, as ``predict_host_cpu_s_per_mpx`` of the cost model."""
    from cropmap.jobs.cost_model import record_figure

    by_case = {r.get("case"): r for r in rows or []}
    row = by_case.get("host_block") or by_case.get("ood")
    if row is None:
        raise SystemExit("--record: _host returned no rows with a host_block or ood case; nothing recorded")
    where = record_figure("predict_host_cpu_s_per_mpx", row["host_cpu_s_per_mpx"],
                          unit="host CPU-s per megapixel around the forward pass (host_block: the window read as "
                               "stored; a GPU's kernel launches not measured here)",
                          source=f"bench/predict.py --host, case {row['case']}, 1 thread, {args.rows} x 1,024 px of a "
                                 f"43-bin cube, load {row.get('load_avg_1min')}",
                          command="python bench/predict.py " + " ".join(sys.argv[1:]))
    print(f"# recorded predict_host_cpu_s_per_mpx = {row['host_cpu_s_per_mpx']} in {where}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", help="a CropNet checkpoint (default: train one here)")
    ap.add_argument("--train-epochs", type=int, default=3)
    ap.add_argument("--save", help="save the model trained here as a checkpoint (reuse it with --checkpoint)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--end-to-end", action="store_true",
                    help="also time cropmap.stages.predict.infer_cube (features + model + maps) fp32 vs bf16")
    ap.add_argument("--host", action="store_true",
                    help="only the host CPU-s per megapixel around a stubbed forward pass of infer_cube (issue 35)")
    ap.add_argument("--rows", type=int, default=128, help="--host: rows of the 1,024 px wide tile")
    ap.add_argument("--record", action="store_true", help="--host: write predict_host_cpu_s_per_mpx into the "
                    "cost figures (cropmap.jobs.cost_model.record_figure)")
    args = ap.parse_args()
    if args.host:
        rows = _host(args)
        if args.record:
            _record_host(rows, args)
        return None
    torch.set_num_threads(args.threads)

    x_train, y_train = _features("train")
    x_test, y_test = _features("test")
    if args.checkpoint:
        ckpt = load_checkpoint(args.checkpoint)
        model, norm = ckpt.model.eval(), ckpt.normalisation
    else:
        norm = fit_normalisation(x_train)
        started = time.perf_counter()
        model = _train(apply_normalisation(x_train, norm), y_train, args.train_epochs)
        print(f"# trained CropNet ({count_parameters(model):,} parameters) for {args.train_epochs} epochs "
              f"in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        if args.save:
            from cropmap.ml.checkpoint import save_checkpoint

            s = read_victoria("train")
            save_checkpoint(args.save, model=model, model_name="cropnet", model_config={"n_bands": 10, "n_classes": 8},
                            feature_kind="2d", bands=[str(b) for b in s.band.values], season=SEASON,
                            n_bins=SEASON.n_bins, normalisation=norm, class_names=[str(c) for c in s.class_name.values],
                            class_colours=[str(c) for c in s.class_colour.values],
                            config={"bench": "bench/predict.py", "epochs": args.train_epochs}, scores={})
    x = torch.from_numpy(apply_normalisation(np.concatenate([x_train, x_test]), norm))
    labels = np.concatenate([y_train, y_test])
    calib = torch.from_numpy(apply_normalisation(x_train[::2], norm))
    context = {"cpu": _cpu_name(), "cores": os.cpu_count(), "threads": args.threads, "batch": args.batch,
               "pixels": len(x), "input": "10 bands x 73 bins", "model": "CropNet v1",
               "parameters": count_parameters(model), "torch": torch.__version__}
    prepared = {}
    for path in args.paths.split(","):
        try:
            prepared[path] = _prepare(path, model, calib, args.batch)
            with torch.inference_mode():  # warm-up on both batch shapes (oneDNN primitives, compiled graphs)
                prepared[path][0](x[:args.batch])
                prepared[path][0](x[len(x) - (len(x) % args.batch or args.batch):])
        except Exception as err:  # one path failing (no compiler, no onnxruntime) must not hide the others
            print(json.dumps({"path": path, "error": f"{type(err).__name__}: {err}"[:300]}), flush=True)
            prepared.pop(path, None)
    # end to end (features, model, maps), if asked: timed in the same round robin as the paths
    cubes, cube_px = _end_to_end_cases(model, norm, args) if args.end_to_end else ({}, 0)
    for fn in cubes.values():
        fn()  # warm-up
    # round robin: on a shared machine the load drifts; each case sees the same drift, so every ratio
    # printed below divides figures of this one run
    times: dict[str, list[float]] = {p: [] for p in [*prepared, *cubes]}
    preds: dict[str, np.ndarray] = {}
    loads = []
    for _ in range(args.repeat):
        for path, (fn, _) in prepared.items():
            with torch.inference_mode():
                t0 = time.perf_counter()
                logits = _run_batches(fn, x, args.batch)
                times[path].append(time.perf_counter() - t0)
            preds[path] = logits.argmax(1)
            loads.append(os.getloadavg()[0])
        for name, fn in cubes.items():
            t0 = time.perf_counter()
            preds[name] = fn()
            times[name].append(time.perf_counter() - t0)
            loads.append(os.getloadavg()[0])
    rows = []
    reference = preds.get("eager_fp32", next(iter(preds.values()), None))
    setups = {**{p: s_ for p, (_, s_) in prepared.items()}, **{n: 0.0 for n in cubes}}
    for path, setup_s in setups.items():
        # end-to-end maps agree with the end-to-end fp32 map (same pixels, the cube's order)
        ref = preds["predict_cube_fp32"] if path in cubes else reference
        row = {
            "path": path, "px_per_s": round((cube_px if path in cubes else len(x)) / statistics.median(times[path]), 1),
            "setup_s": round(setup_s, 1), "agreement": round(float((preds[path] == ref).mean()), 4),
            "load_avg_1min": round(statistics.mean(loads), 2), **context,
        }
        if path not in cubes:
            row["accuracy_vs_labels"] = round(float((preds[path] == labels).mean()), 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    eager = [r["px_per_s"] for r in rows if r["path"] == "eager_fp32"]
    print(f"\nCPU: {context['cpu']}, {context['cores']} cores, torch {context['torch']}, "
          f"{args.threads} threads, batch {args.batch}, {context['pixels']} real Victoria pixels\n")
    print("| path | pixels/s | speed-up vs eager fp32 (same run) | identical classes | setup s | load avg |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['px_per_s'] / eager[0]:.2f}x" if eager else "n/a (eager_fp32 not run)"
        print(f"| {r['path']} | {r['px_per_s']:.0f} | {ratio} | {r['agreement']:.2%} | "
              f"{r['setup_s']} | {r['load_avg_1min']} |")


if __name__ == "__main__":
    main()
