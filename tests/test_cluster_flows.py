"""map-country for DEMO on a real external Dask cluster (`dask scheduler` + two `dask worker` processes
on 127.0.0.1) against the same flow on its LocalCluster: byte-identical COG mosaics, with one worker
killed mid-run (Dask reschedules, or a rerun completes only what is missing); and the map-country
flow process itself SIGKILLed mid-run, then run again: only the missing tiles are computed.

Cost control (2 shared cores): the session's DEMO model (``demo_model``, trained once) and Prefect
server (``prefect_server``) from tests/conftest.py; ONE LocalCluster reference run (``local_run``)
shared by both tests; every run maps only the 2 northern tiles (``TILE_LIMIT``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dask_processes import dask_cluster_processes, wait_for  # tests/ is on sys.path (no package)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # flows/ is a folder of the checkout, not an installed package
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="module")
def env(tmp_path_factory, demo_paths, prefect_server):
    """The environment every process shares: the session's DEMO folder and Prefect server, import paths."""
    tmp = tmp_path_factory.mktemp("flows")
    api_url, _ = prefect_server
    values = {
        "CROPMAP_DEMO_DIR": str(demo_paths.root),
        "PREFECT_HOME": str(tmp / "prefect"),
        "PREFECT_API_URL": api_url,  # Dask workers (LocalCluster or external) report task runs to it
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in values.items():
            mp.setenv(k, v)
        mp.delenv("CROPMAP_DASK_ADDRESS", raising=False)  # task_runner(None) must mean "local"
        yield tmp


@pytest.fixture(scope="module")
def checkpoint(demo_model) -> str:
    """The session's DEMO model (tests/conftest.py: trained once, same pipeline steps as train-model)."""
    return demo_model


@pytest.fixture(scope="module")
def cluster(env):
    """A scheduler and two nanny-less workers (w0, w1) on 127.0.0.1, started with ``env``."""
    with dask_cluster_processes(env, {name: ["--nthreads", "2"] for name in ("w0", "w1")}) as started:
        yield started


#: the two northern tiles (one west, one east): every run here maps only these
TILE_LIMIT = 2


def _map(address: str | None, out: Path, model: str) -> dict:
    """map-country for DEMO with the flows' own task runner: ``address`` None = their LocalCluster."""
    from flows._runner import task_runner
    from flows.map_country import map_country

    return map_country.with_options(task_runner=task_runner(address))(country="DEMO", model=model, out_dir=str(out),
                                                                       tile_limit=TILE_LIMIT)


def _cog_bytes(result: dict) -> dict[str, bytes]:
    return {k: Path(p).read_bytes() for k, p in sorted(result["cogs"].items())}


@pytest.fixture(scope="module")
def local_run(env, checkpoint) -> dict:
    """The reference: one uninterrupted map-country run on the flow's LocalCluster, shared by the tests."""
    result = _map(None, env / "local", checkpoint)
    assert set(result["cogs"]) >= {"class", "confidence"} and len(result["tiles"]) == TILE_LIMIT
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
        wait_for(lambda: client.processing().get(w1) or not thread.is_alive(), 600, "w1 to run a task")
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


_KILLABLE_RUN = """
import sys
from flows._runner import task_runner
from flows.map_country import map_country
# one Dask thread: tiles are predicted one after another, so a kill after the first lands mid-run
map_country.with_options(task_runner=task_runner(None, threads=1))(
    country="DEMO", model=sys.argv[1], out_dir=sys.argv[2], tile_limit=int(sys.argv[3]))
"""


def test_killed_map_country_flow_reruns_only_the_missing_tiles(env, checkpoint, local_run):
    """The flow's own process SIGKILLed as soon as its first tile prediction is on disk; a rerun skips
    the finished tile (same file, same mtime), computes only the missing one, and the COG mosaics are
    byte-identical to the uninterrupted LocalCluster run."""
    import time

    out = env / "killed"
    log = open(env / "killed.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE_RUN, checkpoint, str(out), str(TILE_LIMIT)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 600
        while not (finished := sorted(out.glob("DEMO/*/tiles/*.class.tif"))):
            assert proc.poll() is None, (env / "killed.log").read_text()[-3000:]
            assert time.time() < deadline, "no tile finished in 600 s"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the flow process and anything it started
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
    at_kill = {p.name: p.stat().st_mtime_ns for p in out.glob("DEMO/*/tiles/*.tif")}
    done_at_kill = {p.name.split(".")[0] for p in out.glob("DEMO/*/tiles/*.class.tif")}
    assert proc.returncode == -signal.SIGKILL
    assert len(done_at_kill) < TILE_LIMIT and not list(out.glob("DEMO/*/maps/*.tif")), "killed too late"

    result = _map(None, out, checkpoint)
    rows = {r["tile"]: r for r in result["tiles"]}
    assert {t for t, r in rows.items() if r["predict"] == "skipped"} == done_at_kill
    assert {t for t, r in rows.items() if r["predict"] == "done"} == set(rows) - done_at_kill != set()
    assert all(r["cube"] == "skipped" for r in rows.values())  # cubes were complete before any prediction
    for name, stamp in at_kill.items():  # what the killed run finished is untouched
        if name.split(".")[0] in done_at_kill:
            assert next(out.glob(f"DEMO/*/tiles/{name}")).stat().st_mtime_ns == stamp, name
    assert _cog_bytes(result) == _cog_bytes(local_run)
