"""Country scale: the real map-country flow on a real Prefect server and a real Dask cluster, over a
synthetic country of many small tiles made from real spectra (the DEMO generator).

The country (``SYN``, written to ``<out>/configs``) is the DEMO scenario cut into ``tiles_x x tiles_y``
tiles of ``tile_px`` pixels, astride UTM 54's central meridian so that its lon/lat outline holds exactly
its tiles. The flow runs in its own process per tile count (``--tile-limit N``), so that its peak RSS
is its own, against one ``prefect server start`` and one ``dask scheduler`` + ``dask worker``
(``--workers`` processes of one thread). Recorded per count:

- wall time of the flow process and wall time per tile;
- scheduler tasks per tile and stage (the Dask task stream);
- the flow process's peak RSS (psutil, sampled every 0.1 s);
- CPU seconds per tile of the Prefect server, the scheduler, the workers and the flow process;

then, per tile, the compute of one tile run alone in this process (cube + predict), and the overhead
per tile: ``wall x workers / N - compute``. A last step counts the STAC requests and the HTTP reads per
tile with the catalog behind a local STAC API (rustac) and the COGs behind a local range-request HTTP
server (tests/http_servers.py), on ``--http-tiles`` tiles.

    .venv/bin/python bench/scale.py [--out DIR] [--tiles-x 40 --tiles-y 25 --tile-px 16]
                                    [--counts 100 300 1000] [--workers 2] [--model CKPT] [--record]

Each run writes its outputs in a fresh folder under ``--out`` (``run-<time>-*``), so that no run times
another's finished tiles; the configs, the synthetic country and the model are shared. ``--record``
writes the overhead per tile of the largest count as ``orchestration_s_per_tile`` into the cost figures
(:func:`cropmap.jobs.cost_model.record_figure`; ``$CROPMAP_COST_FIGURES`` or the package's file).

Prints one JSON line per measurement and a summary table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the local HTTP servers of the test suite

CONFIG = """name: SYN (the DEMO scenario cut into {n} tiles; synthetic layout, real Victoria spectra)
outline: {{bbox: [{w:.6f}, {s:.6f}, {e:.6f}, {n_:.6f}]}}
hemisphere: south
season: {{start: '11-01', end: '05-31', hemisphere: south}}
year: 2017
catalog: {{path: demo/catalog.json, max_cloud_cover: 100, margin_days: 30}}
output_crs: EPSG:3577
tile_size: {tile_px}
scenario: {{name: demo, options: {{origin: [{x0:.1f}, {y0:.1f}], tile_px: {tile_px}, tiles_x: {tiles_x},
  tiles_y: {tiles_y}, field_px: [{fmin}, {fmax}]}}}}
"""


def write_config(folder: Path, *, tile_px: int, tiles_x: int, tiles_y: int) -> None:
    """``SYN.yaml``: its outline 30 m inside the area (no meridian convergence at x = 500 km)."""
    from pyproj import Transformer

    x0 = 500_000.0 - tile_px * 10.0 * (tiles_x // 2)
    y0 = 5_936_000.0
    x1, y1 = x0 + tiles_x * tile_px * 10.0, y0 - tiles_y * tile_px * 10.0
    to_ll = Transformer.from_crs(32754, 4326, always_xy=True)
    w, n_ = to_ll.transform(x0 + 30, y0 - 30)
    e, s = to_ll.transform(x1 - 30, y1 + 30)
    w2, s2 = to_ll.transform(x0 + 30, y1 + 30)
    e2, n2 = to_ll.transform(x1 - 30, y0 - 30)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "DEMO.yaml").write_text((REPO / "configs/countries/DEMO.yaml").read_text())  # the model's
    fmax = max(2, tile_px // 2)
    (folder / "SYN.yaml").write_text(CONFIG.format(
        n=tiles_x * tiles_y, w=max(w, w2), s=max(s, s2), e=min(e, e2), n_=min(n_, n2), x0=x0, y0=y0,
        tile_px=tile_px, tiles_x=tiles_x, tiles_y=tiles_y, fmin=max(1, fmax // 2), fmax=fmax))


def wait_http(url: str, timeout: float = 180) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


def free_port() -> int:
    from http_servers import free_port as port

    return port()


def sample_flow(proc: subprocess.Popen, stop: threading.Event, out: dict) -> None:
    """Peak RSS (bytes) and the last CPU seconds seen (:func:`cpu_seconds`) of the flow process, every 0.1 s
    until ``stop`` (its CPU times cannot be read once it has exited)."""
    p = psutil.Process(proc.pid)
    while not stop.is_set():
        try:
            out["rss"] = max(out["rss"], p.memory_info().rss)
        except psutil.Error:
            return
        out["cpu"] = max(out["cpu"], cpu_seconds(proc))
        time.sleep(0.1)


def cpu_seconds(proc: subprocess.Popen) -> float:
    """User + system CPU seconds of a process and all its live descendants (a Dask worker's nanny and workers)."""
    try:
        root = psutil.Process(proc.pid)
        total = 0.0
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total
    except psutil.Error:
        return 0.0


def train_model(out: Path, env: dict) -> str:
    """A slim DEMO checkpoint (2 epochs: this bench times the machinery, not the map)."""
    from cropmap.jobs.executors import InlineExecutor
    from cropmap.jobs.mapping import train_country
    from cropmap.scenarios import resolve_run

    run = resolve_run("DEMO", out_dir=str(out / "train"))
    settings = run.scenario.training.model_copy(update={"epochs": 2})
    return str(train_country(run, InlineExecutor(), settings=settings).checkpoint.path)


def alone(model: str, out: Path) -> dict:
    """One tile's cube and prediction, inline in this process: the compute a tile costs. ``out``: a folder
    of this run's own (an earlier run's finished tiles would be skipped, not timed)."""
    from cropmap.jobs.searches import search_block, search_blocks
    from cropmap.jobs.tiles import cube_tile, predict_tile, run_model
    from cropmap.scenarios import resolve_run

    run = resolve_run("SYN", out_dir=str(out / "alone"))
    ref = run_model(run, model)  # resolved once, as a run does
    tiles = run.tiles()
    (block, ids), = list(search_blocks(tiles[:5]).items())[:1]
    items = search_block(run, block, ids).path
    import torch

    torch.set_num_threads(1)  # as on the workers (OMP_NUM_THREADS=1, one thread each)
    times = []
    for tile_id in tiles[:5]:  # the first warms GDAL and torch up
        t0, c0 = time.perf_counter(), time.process_time()
        cube_tile(run, tile_id, items=items)
        t1, c1 = time.perf_counter(), time.process_time()
        predict_tile(run, ref, tile_id)
        times.append((t1 - t0, time.perf_counter() - t1, time.process_time() - c0))
    cube_s, predict_s, cpu_s = (sum(t[i] for t in times[1:]) / len(times[1:]) for i in range(3))
    return {"cube_s": round(cube_s, 3), "predict_s": round(predict_s, 3), "compute_s": round(cube_s + predict_s, 3),
            "cpu_s": round(cpu_s, 3)}


#: The job functions a Prefect task wraps: the samples of a task's thread under them are the tile's work,
#: the rest is the task-run machinery around it (Prefect's engine, Dask's execute).
JOB_FRAMES = {("jobs/tiles.py", "cube_tile"): "cube", ("jobs/tiles.py", "predict_tile"): "predict"}


def profile_split(tree: dict) -> dict:
    """Shares of a Dask worker profile (``Client.profile``: sampled stacks of the task threads) spent inside
    each job function of :data:`JOB_FRAMES`, and the top packages of the rest by own samples."""
    inside = Counter()
    rest = Counter()

    def walk(node: dict) -> None:
        d = node.get("description", {})
        for (suffix, name), stage in JOB_FRAMES.items():
            if d.get("name") == name and d.get("filename", "").endswith(suffix):
                inside[stage] += node["count"]
                return
        children = node.get("children", {}).values()
        own = node["count"] - sum(c["count"] for c in children)
        if own > 0:
            f = d.get("filename", "?")
            pkg = f.split("site-packages/")[-1].split("/")[0] if "site-packages/" in f else Path(f).name
            rest[pkg] += own
        for c in children:
            walk(c)

    total = tree.get("count", 0)
    walk(tree)
    if not total:
        return {}
    return {"samples": total, **{f"in_{k}": round(v / total, 3) for k, v in inside.items()},
            "outside_jobs": round(1 - sum(inside.values()) / total, 3),
            "outside_top": {k: round(v / total, 3) for k, v in rest.most_common(6)}}


def task_seconds(stream: list[dict]) -> dict:
    """Mean compute seconds of each kind of task in a Dask task stream (the worker's own start/stop)."""
    spent, count = Counter(), Counter()
    for r in stream:
        kind = r["key"].rsplit("-", 5)[0] if isinstance(r["key"], str) else str(r["key"][0])
        spent[kind] += sum(s["stop"] - s["start"] for s in r["startstops"] if s["action"] == "compute")
        count[kind] += 1
    return {k: round(spent[k] / count[k], 3) for k in spent}


def http_counts(model: str, out: Path, n_tiles: int) -> dict:
    """STAC requests and COG HTTP reads per tile with the catalog and the COGs served over HTTP."""
    from http_servers import counting_proxy, stac_api_server

    from cropmap.io.config import CatalogConfig
    from cropmap.jobs.executors import InlineExecutor
    from cropmap.jobs.searches import search_blocks
    from cropmap.jobs.tile_pipeline import run_tiles
    from cropmap.jobs.tiles import run_model
    from cropmap.scenarios import resolve_run

    run = resolve_run("SYN", out_dir=str(out / "http"))
    api = out / "api"
    api.mkdir(exist_ok=True)
    catalog = Path(run.config.catalog.path)
    with stac_api_server(catalog, catalog.parent, api) as (upstream, cog_log), \
            counting_proxy(upstream) as (url, stac_log):
        cat = CatalogConfig(url=url, collection="sentinel-2-l2a", max_cloud_cover=100, margin_days=30)
        run = run.model_copy(update={"config": run.config.model_copy(update={"catalog": cat})})
        tiles = run.tiles()[:n_tiles]
        t0 = time.perf_counter()
        summary = run_tiles(InlineExecutor(), run, tiles, model=run_model(run, model))
        wall = time.perf_counter() - t0
        reads = cog_log()
    ranges = Counter((p, a) for p, a, _ in reads)
    return {"http_tiles": len(tiles), "blocks": len(search_blocks(tiles)), "stac_requests": len(stac_log),
            "stac_searches": sum(p.startswith("/search") for _, p in stac_log),
            "cog_gets": len(reads), "cog_gets_per_tile": round(len(reads) / len(tiles), 1),
            "cog_bytes_per_tile": round(sum(b - a + 1 for _, a, b in reads) / len(tiles)),
            "cog_ranges_read_twice": sum(n > 1 for n in ranges.values()),
            "wall_s": round(wall, 2), "summary": summary.describe()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/cropmap-bench-scale"))
    parser.add_argument("--tiles-x", type=int, default=40)
    parser.add_argument("--tiles-y", type=int, default=25)
    parser.add_argument("--tile-px", type=int, default=16)
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", default=None)
    parser.add_argument("--http-tiles", type=int, default=40)
    parser.add_argument("--baseline-counts", type=int, nargs="*", default=[],
                        help="counts run first with CROPMAP_PREFECT_REUSE=0 (every Prefect task run rebuilds its "
                             "settings and TLS contexts, Prefect's own behaviour), on their own fresh workers")
    parser.add_argument("--record", action="store_true",
                        help="write orchestration_s_per_tile (largest count) into the cost figures")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_config(out / "configs", tile_px=args.tile_px, tiles_x=args.tiles_x, tiles_y=args.tiles_y)
    env = {**os.environ, "CROPMAP_CONFIGS_DIR": str(out / "configs"), "CROPMAP_DEMO_DIR": str(out / "demo"),
           "PREFECT_HOME": str(out / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DASK_LOGGING__DISTRIBUTED": "warning", "OMP_NUM_THREADS": "1",
           "DASK_DISTRIBUTED__SCHEDULER__DASHBOARD__STATUS__TASK_STREAM_LENGTH": "1000000"}
    os.environ.update({k: env[k] for k in ("CROPMAP_CONFIGS_DIR", "CROPMAP_DEMO_DIR")})
    # every run's outputs in a fresh folder: a run reusing an earlier one's would time finished tiles
    # (a country run resumes: it skips tiles whose outputs exist); the inputs above are shared
    fresh = Path(tempfile.mkdtemp(prefix=time.strftime("run-%Y%m%d-%H%M%S-"), dir=out))
    print(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                      "tiles": args.tiles_x * args.tiles_y, "tile_px": args.tile_px, "workers": args.workers,
                      "outputs": str(fresh), "load_avg_1min": round(os.getloadavg()[0], 2)}))

    from cropmap.scenarios import resolve_run

    t0 = time.perf_counter()
    resolve_run("SYN", out_dir=str(out / "plan"))  # builds the synthetic country once
    print(json.dumps({"built_demo_s": round(time.perf_counter() - t0, 1)}), flush=True)
    model = args.model or train_model(out, env)

    py = str(Path(sys.executable))
    api_port, sched_port = free_port(), free_port()
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{api_port}/api"
    procs = [subprocess.Popen([str(Path(py).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
                               "--port", str(api_port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    procs.append(subprocess.Popen([str(Path(py).with_name("dask")), "scheduler", "--host", "127.0.0.1", "--port",
                                   str(sched_port), "--no-dashboard"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL))
    address = f"tcp://127.0.0.1:{sched_port}"
    env["CROPMAP_DASK_ADDRESS"] = address
    rows = []
    try:
        wait_http(f"http://127.0.0.1:{api_port}/api/health")
        from distributed import Client

        client = Client(address, timeout=60)
        client.get_task_stream()  # starts the scheduler's task-stream recording

        def start_workers(worker_env: dict[str, str]) -> subprocess.Popen:
            workers = subprocess.Popen([str(Path(py).with_name("dask")), "worker", address, "--nworkers",
                                        str(args.workers), "--nthreads", "1", "--no-dashboard",
                                        "--memory-limit", "0"], env=worker_env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            client.wait_for_workers(args.workers, timeout=120)
            return workers

        def stop_workers(workers: subprocess.Popen) -> None:
            workers.terminate()
            workers.wait(60)
            while client.scheduler_info()["workers"]:
                time.sleep(0.2)

        plan = [(n, "baseline") for n in args.baseline_counts] + [(n, "reuse") for n in args.counts]
        variant = None
        for n, label in plan:
            run_env = {**env, "CROPMAP_PREFECT_REUSE": "0" if label == "baseline" else "1"}
            if label != variant:  # fresh workers for each variant: the setting is read at import
                if variant is not None:
                    stop_workers(procs.pop())
                procs.append(start_workers(run_env))
                variant = label
            services = dict(zip(("prefect_server", "scheduler", "workers"), procs))
            before = {name: cpu_seconds(p) for name, p in services.items()}
            start = time.time()
            cmd = [str(Path(py).with_name("cropmap")), "map", "SYN", "--prefect", "--model", model, "--tile-limit", str(n),
                   "--out", str(fresh / f"runs-{label}-{n}")]
            log = open(fresh / f"flow-{label}-{n}.log", "w")
            proc = subprocess.Popen(cmd, env=run_env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
            stop, flow = threading.Event(), {"rss": 0, "cpu": 0.0}
            sampler = threading.Thread(target=sample_flow, args=(proc, stop, flow), daemon=True)
            sampler.start()
            rc = proc.wait()
            wall = time.time() - start
            stop.set()
            sampler.join()
            stream = client.get_task_stream(start=start, stop=time.time())
            kinds = Counter(r["key"].rsplit("-", 5)[0] if isinstance(r["key"], str) else str(r["key"][0])
                            for r in stream)
            row = {"tiles": n, "variant": label, "rc": rc, "wall_s": round(wall, 1),
                   "wall_per_tile_s": round(wall / n, 3),
                   "flow_peak_rss_mib": round(flow["rss"] / 2**20), "scheduler_tasks": sum(kinds.values()),
                   "tasks_per_tile": round(sum(kinds.values()) / n, 2), "tasks": dict(kinds),
                   "task_compute_s": task_seconds(stream),
                   "worker_profile": profile_split(client.profile(start=start, stop=time.time())),
                   # CPU seconds per tile of each process over the run: where the overhead goes
                   "cpu_per_tile_s": {**{name: round((cpu_seconds(p) - before[name]) / n, 3)
                                         for name, p in services.items()}, "flow": round(flow["cpu"] / n, 3)}}
            rows.append(row)
            print(json.dumps(row), flush=True)
        client.close()
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    compute = alone(model, fresh)
    print(json.dumps({"alone": compute}), flush=True)
    for row in rows:
        row["overhead_per_tile_s"] = round(row["wall_s"] * args.workers / row["tiles"] - compute["compute_s"], 3)
    http = http_counts(model, fresh, args.http_tiles)
    print(json.dumps({"http": http}), flush=True)
    main_rows = [r for r in rows if r["variant"] == "reuse"]
    if len(main_rows) > 1:  # the fixed cost (server start, searches, mosaic, scoring) drops out of the slope
        a, b = main_rows[0], main_rows[-1]
        slope = (b["wall_s"] - a["wall_s"]) / (b["tiles"] - a["tiles"])
        print(json.dumps({"marginal_wall_per_tile_s": round(slope, 3),
                          "marginal_overhead_per_tile_s": round(slope * args.workers - compute["compute_s"], 3),
                          "flow_rss_growth_mib": b["flow_peak_rss_mib"] - a["flow_peak_rss_mib"]}))
    if args.record and main_rows:
        from cropmap.jobs.cost_model import record_figure

        r = main_rows[-1]
        where = record_figure("orchestration_s_per_tile", r["overhead_per_tile_s"], unit="worker-s per tile",
                              source=f"bench/scale.py, {r['tiles']:,} tiles of {args.tile_px} px, {args.workers} "
                                     f"workers: wall x workers / tiles - one tile alone ({compute['compute_s']} s)",
                              command="python bench/scale.py " + " ".join(sys.argv[1:]))
        print(f"# recorded orchestration_s_per_tile = {r['overhead_per_tile_s']} in {where}", file=sys.stderr)
    print("\n| variant | tiles | wall s | wall/tile s | overhead/tile s | tasks/tile | flow peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['tiles']} | {r['wall_s']} | {r['wall_per_tile_s']} | {r['overhead_per_tile_s']} | "
              f"{r['tasks_per_tile']} | {r['flow_peak_rss_mib']} |")


if __name__ == "__main__":
    main()
