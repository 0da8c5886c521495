"""A run that keeps its cubes against one that does not (``cropmap map --no-keep-cubes``), outputs on S3.

The DEMO country (real Victoria spectra, synthetic layout: ``cropmap.scenarios.demo``) is mapped into a bucket
on moto's S3 server (a ``moto_server`` process on 127.0.0.1; the run reaches it through
``AWS_ENDPOINT_URL``) with a checkpoint trained here on the DEMO's west half (2 epochs: both cases run the
same model, whose cost is not what is compared). The two cases take turns, ``--rounds`` times, in this one
process, each into a fresh prefix, inline (no Dask): ``kept`` cubes each tile into the bucket, then predicts
it from there (two job calls a tile, :func:`cropmap.jobs.tiles.cube_tile` then ``predict_tile``);
``not kept`` runs one :func:`cropmap.jobs.tiles.map_tile` a tile (the cube in local scratch, deleted). Per
case: wall seconds, CPU seconds of this process and of the S3 server, bytes and objects left in the bucket
under its prefix, all per megapixel of tiles mapped. The class tiles of both cases are checked equal.

Run: .venv/bin/python bench/map_tile.py [--rounds 2] [--tile-px 128]
Prints one JSON line per case and round, then a Markdown table of the medians and their ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUCKET = "cropmap-bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bucket_usage(fs, prefix: str) -> tuple[int, int]:
    """(bytes, objects) under ``s3://BUCKET/prefix``."""
    sizes = [info["size"] for info in fs.find(f"{BUCKET}/{prefix}", detail=True).values()]
    return sum(sizes), len(sizes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tile-px", type=int, default=128, help="DEMO tile side in pixels (4 tiles)")
    args = ap.parse_args()

    import psutil

    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1")
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        _run(args, psutil.Process(server.pid))
    finally:
        server.terminate()
        server.wait(10)


def _run(args, server) -> None:
    import numpy as np
    import rasterio
    import s3fs

    from cropmap.jobs.executors import InlineExecutor
    from cropmap.jobs.mapping import map_country, train_country
    from cropmap.jobs.country_run import resolve_country_run
    from cropmap.jobs.tiles import run_model
    from cropmap.scenarios.demo import build_demo, demo_country, prepare

    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["CROPMAP_DEMO_DIR"] = str(tmp / "demo")
        paths = build_demo(tmp / "demo")
        config, scenario = prepare(demo_country(paths))
        local = resolve_country_run(config, out_root=tmp / "train", scenario=scenario)
        settings = scenario.training.model_copy(update={"epochs": 2})
        checkpoint = train_country(local, InlineExecutor(), settings=settings).checkpoint.path
        rows, classes = [], {}
        for r in range(args.rounds):
            for keep in (True, False):
                prefix = f"r{r}-{'kept' if keep else 'not-kept'}"
                run = resolve_country_run(config, out_root=f"s3://{BUCKET}/{prefix}", scenario=scenario)
                run = run.model_copy(update={"keep_cubes": keep, "scenario": None})  # no training, no scoring
                model = run_model(run, checkpoint)
                tiles = run.tiles()
                mpx = len(tiles) * run.tile(tiles[0]).shape[0] * run.tile(tiles[0]).shape[1] / 1e6
                cpu0, server0, t0 = time.process_time(), sum(server.cpu_times()[:2]), time.perf_counter()
                result = map_country(run, InlineExecutor(), model=model)
                wall = time.perf_counter() - t0
                cpu, server_cpu = time.process_time() - cpu0, sum(server.cpu_times()[:2]) - server0
                assert not result.tiles.failures, result.tiles.failures
                size, objects = _bucket_usage(fs, prefix)
                cube_bytes = _bucket_usage(fs, f"{prefix}/DEMO/{run.key}/cubes")[0] if fs.exists(
                    f"{BUCKET}/{prefix}/DEMO/{run.key}/cubes") else 0
                tile_dir = str(run.tile_dir(model.key))
                for t in tiles:
                    with fs.open(f"{tile_dir}/{t}.class.tif".removeprefix("s3://"), "rb") as f, \
                            rasterio.open(f) as src:
                        got = src.read()
                    if t in classes:
                        np.testing.assert_array_equal(got, classes[t], err_msg=t)
                    classes[t] = got
                row = {"case": "kept" if keep else "not kept", "round": r, "tiles": len(tiles), "mpx": mpx,
                       "wall_s_per_mpx": wall / mpx, "cpu_s_per_mpx": cpu / mpx,
                       "s3_server_cpu_s_per_mpx": server_cpu / mpx, "bucket_mb_per_mpx": size / 1e6 / mpx,
                       "cube_mb_per_mpx": cube_bytes / 1e6 / mpx, "objects": objects,
                       "load_avg": os.getloadavg()[0], "machine": platform.node(), "cpus": os.cpu_count()}
                rows.append(row)
                print(json.dumps(row), flush=True)
    keys = ["wall_s_per_mpx", "cpu_s_per_mpx", "s3_server_cpu_s_per_mpx", "bucket_mb_per_mpx", "cube_mb_per_mpx"]
    med = {c: {k: statistics.median(r[k] for r in rows if r["case"] == c) for k in keys} for c in ("kept", "not kept")}
    print("\n| case | wall s/Mpx | CPU s/Mpx | S3 server CPU s/Mpx | bucket MB/Mpx | cubes MB/Mpx |")
    print("|---|---:|---:|---:|---:|---:|")
    for c, m in med.items():
        print(f"| {c} | " + " | ".join(f"{m[k]:.2f}" for k in keys) + " |")
    print("| kept / not kept | " + " | ".join(
        f"{med['kept'][k] / med['not kept'][k]:.2f}" if med["not kept"][k] else "-" for k in keys) + " |")


if __name__ == "__main__":
    main()
