"""map-country for DEMO on a real external Dask cluster (`dask scheduler` + two `dask worker` processes
on 127.0.0.1) against the same flow on its LocalCluster: byte-identical COG mosaics, with one worker
killed mid-run (Dask reschedules, or a rerun completes only what is missing). One external run, not
two (clean + killed), to keep this slow test to a few minutes.

The checkpoint is a deliberately tiny CropNet (8 channels per block, trained 2 epochs on the DEMO west
half) so that predicting stays cheap on CPU; what is compared is where the work ran, not map quality.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from test_cluster import _spawn, _wait_for  # noqa: E402 - tests/ is on sys.path (no package)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # flows/ is a folder of the checkout, not an installed package
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The environment every process shares: the DEMO folder, a Prefect server, import paths."""
    tmp = tmp_path_factory.mktemp("flows")
    values = {
        "CROPMAP_DEMO_DIR": str(tmp / "demo"),
        "PREFECT_HOME": str(tmp / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in values.items():
            mp.setenv(k, v)
        from prefect.settings import PREFECT_API_URL
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=180):
            # Dask workers (LocalCluster or external) report task runs to this one server
            mp.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
            yield tmp


@pytest.fixture(scope="module")
def checkpoint(env) -> str:
    """A tiny CropNet trained on cubes of the DEMO west half, built locally with the library."""
    from cropmap import pipeline
    from cropmap.demo import DemoPaths, default_demo_dir, part_bounds, read_layout

    config = pipeline.resolve_country("DEMO")
    root = default_demo_dir()
    west = part_bounds(read_layout(root), "west")
    cubes = [pipeline.build_tile(config, t, env / "train" / "cubes")
             for t in pipeline.country_tiles(config, bounds=west)]
    samples = pipeline.training_set(DemoPaths(root).reference, [c["path"] for c in cubes],
                                    env / "train" / "samples.nc", region="DEMO", cell_deg=0.0005,
                                    per_cell=1, bounds=west)
    result = pipeline.train_checkpoint(samples["path"], env / "train" / "tiny.pt", train_config={
        "model": "cropnet", "model_options": {"channels": [8, 8, 8, 8]}, "epochs": 2, "lr": 1e-3,
        "batch_size": 64, "progress": False})
    return result["path"]


@pytest.fixture(scope="module")
def cluster(env):
    """A scheduler and two nanny-less workers (w0, w1) on 127.0.0.1, started with ``env``."""
    sched_file = env / "scheduler.json"
    procs = [_spawn(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(sched_file)], env / "scheduler.log")]
    try:
        _wait_for(lambda: sched_file.exists() and sched_file.stat().st_size > 0, 60, "the scheduler file")
        address = json.loads(sched_file.read_text())["address"]
        workers = {name: _spawn(["worker", address, "--name", name, "--nthreads", "2", "--no-nanny",
                                 "--no-dashboard", "--host", "127.0.0.1"], env / f"{name}.log")
                   for name in ("w0", "w1")}
        procs += workers.values()
        yield address, workers
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _map(address: str | None, out: Path, model: str) -> dict:
    """map-country for DEMO with the flows' own task runner: ``address`` None = their LocalCluster."""
    from flows._runner import task_runner
    from flows.map_country import map_country

    return map_country.with_options(task_runner=task_runner(address))(country="DEMO", model=model, out_dir=str(out))


def _cog_bytes(result: dict) -> dict[str, bytes]:
    return {k: Path(p).read_bytes() for k, p in sorted(result["cogs"].items())}


@pytest.fixture(scope="module")
def local_run(env, checkpoint) -> dict:
    os.environ.pop("CROPMAP_DASK_ADDRESS", None)  # task_runner(None) must mean "local"
    result = _map(None, env / "local", checkpoint)
    assert set(result["cogs"]) >= {"class", "confidence"}
    assert all(row["predict"] == "done" for row in result["tiles"]), result["tiles"]
    return result


def test_map_country_on_external_scheduler_survives_a_killed_worker(env, checkpoint, cluster, local_run):
    """One run on the external cluster, w1 SIGKILLed while it runs one of the run's tasks: the run
    finishes (Dask reschedules) or a rerun completes only what is missing, and the COG mosaics are
    byte-identical to the LocalCluster run's."""
    from distributed import Client

    address, procs = cluster
    out = env / "external"
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = _map(address, out, checkpoint)
        except BaseException as err:  # noqa: BLE001 - a failed run is allowed: the rerun must finish it
            outcome["error"] = err

    thread = threading.Thread(target=run)
    with Client(address, timeout=30) as client:
        w1 = next(a for a, w in client.scheduler_info()["workers"].items() if w["name"] == "w1")
        thread.start()
        _wait_for(lambda: client.processing().get(w1) or not thread.is_alive(), 600, "w1 to run a task")
        assert thread.is_alive(), f"the run ended before w1 got a task: {outcome}"
        killed_during = list(client.processing()[w1])
        procs["w1"].send_signal(signal.SIGKILL)
        procs["w1"].wait(timeout=10)
        thread.join(timeout=900)
        assert not thread.is_alive()
        result = outcome.get("result")
        needed_rerun = result is None or any("failed" in (r["cube"], r["predict"]) for r in result["tiles"])
        if needed_rerun:  # "a rerun completes only what is missing"
            result = _map(address, out, checkpoint)
            assert any(r["cube"] == "skipped" for r in result["tiles"]), result["tiles"]
        # the tile work ran in the remaining worker process, not in this one
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    print(f"killed w1 while it ran {killed_during}; rerun needed: {needed_rerun}; "
          f"error: {outcome.get('error')!r}; tasks executed by w0: {executed}")
    assert list(executed) != [] and sum(executed.values()) >= len(result["tiles"])
    assert all(r["predict"] in ("done", "skipped") for r in result["tiles"]), result["tiles"]
    assert _cog_bytes(result) == _cog_bytes(local_run)
