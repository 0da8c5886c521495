"""map-country for DEMO on a real external Dask cluster (`dask scheduler` + two `dask worker` processes
on 127.0.0.1, w0 advertising the Dask resource GPU=1 like deploy/'s GPU worker group) against the same
job run inline: byte-identical COG mosaics

- with every output in an S3 bucket (moto's S3 server, reached through ``AWS_ENDPOINT_URL``) and the
  predict tasks annotated for GPU workers, for the two-zone country (tests/test_national.py): all of
  them ran on w0, the national and zone mosaics in the bucket are byte-identical to the session's
  inline run's, a rerun skips every finished tile; a bucket that does not exist fails the flow before
  any task, naming the URL;
- with one worker killed mid-run (Dask reschedules, or a rerun completes only what is missing);
- and with the map-country flow process itself SIGKILLed mid-run, then run again: only the missing
  tiles are computed.

Every run maps the DEMO scenario's country astride the UTM 54/55 border (``DMZ`` of tests/conftest.py's
``zone_configs``: 64-pixel tiles, a quarter of the DEMO's pixels per tile to predict).

Cost control (2 shared cores): the session's DEMO model (``demo_model``, trained once), two-zone map
(``two_zone_run``), Prefect server (``prefect_server``) and S3 server (``s3_server``) from
tests/conftest.py; ONE inline reference run (``local_run``: the map-country job in this process, no
Prefect, no Dask) and ONE external cluster shared by the tests; the runs after the S3 one map only the
first 2 tiles (``TILE_LIMIT``). The worker-kill test comes after the S3 test: it leaves one worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import dask_processes
import pytest
from conftest import use_prefect_env, use_s3_env
from dask_processes import (  # tests/ is on sys.path (no package)
    dask_cluster_processes,
    task_stream,
    wait_for,
)

from distributed import Client

from cropmap.io.locks import LOCK_NAME
from cropmap.jobs.cluster import GPU_RESOURCE, GPU_WORKERS_ENV

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def env(tmp_path_factory, demo_paths, zone_configs, prefect_server, s3_server):
    """The environment every process shares: the session's DEMO folder and the two-zone country's config
    (``COUNTRY``), Prefect server and S3 endpoint (``AWS_ENDPOINT_URL`` and keys: the Dask workers inherit
    them, as pods get them from deploy/'s config). No import path: the workers run the installed package,
    as the image's do."""
    tmp = tmp_path_factory.mktemp("flows")
    api_url, _ = prefect_server
    values = {
        "CROPMAP_DEMO_DIR": str(demo_paths.root),
        "CROPMAP_CONFIGS_DIR": str(zone_configs),
        "PREFECT_HOME": str(tmp / "prefect"),
        "PREFECT_API_URL": api_url,  # Dask workers (LocalCluster or external) report task runs to it
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    with pytest.MonkeyPatch.context() as mp:
        use_prefect_env(mp, values)
        use_s3_env(mp, s3_server)
        mp.delenv("PYTHONPATH", raising=False)
        for name in ("CROPMAP_DASK_ADDRESS", "CROPMAP_OUTPUT_URL", "CROPMAP_OUTPUT_DIR", GPU_WORKERS_ENV):
            mp.delenv(name, raising=False)  # task_runner(None) must mean "local"; out_dir decides the rest
        yield tmp


@pytest.fixture(scope="module")
def checkpoint(demo_model) -> str:
    """The session's DEMO model (tests/conftest.py: trained once, same pipeline steps as train-model)."""
    return demo_model


@pytest.fixture(scope="module")
def cluster(env):
    """A scheduler and two nanny-less workers on 127.0.0.1, started with ``env``: w0 advertises
    ``GPU=1`` (no GPU needed: a Dask resource is a label), w1 does not."""
    workers = {"w0": ["--nthreads", "2", "--resources", f"{GPU_RESOURCE}=1"], "w1": ["--nthreads", "2"]}
    with dask_cluster_processes(env, workers) as started:
        # the processes run the installed package only: the scheduler gets the one test helper it runs
        # (task_stream) as a file, the way Dask ships a client's own code
        with Client(started[0], timeout=30) as client:
            client.upload_file(dask_processes.__file__)
        yield started


#: the DEMO scenario astride the UTM 54/55 border (tests/conftest.py), mapped by every run here
COUNTRY = "DMZ"
#: its first two tiles (zone 54): every run after the S3 one maps only these
TILE_LIMIT = 2


def _map(address: str | None, out: Path | str | None, model: str, country: str = COUNTRY,
         tile_limit: int | None = TILE_LIMIT) -> dict:
    """map-country with the flows' own task runner: ``address`` None = their LocalCluster; ``out`` None =
    the environment's output location."""
    from cropmap.flows._runner import task_runner
    from cropmap.flows.map_country import map_country

    return map_country.with_options(task_runner=task_runner(address))(
        country=country, model=model, out_dir=None if out is None else str(out), tile_limit=tile_limit)


def _cog_bytes(result: dict) -> dict[str, bytes]:
    return {k: Path(p).read_bytes() for k, p in sorted(result["cogs"].items())}


@pytest.fixture(scope="module")
def local_run(env, checkpoint) -> dict:
    """The reference, shared by the tests: the same tiles mapped by the map-country job in this process
    (cropmap.jobs.mapping.map_country with an InlineExecutor: no flow run, no Dask), as ``_map``'s
    ``cogs``."""
    from cropmap.jobs.executors import InlineExecutor
    from cropmap.jobs.mapping import map_country
    from cropmap.scenarios import resolve_run

    result = map_country(resolve_run(COUNTRY, out_dir=str(env / "local")), InlineExecutor(), model=checkpoint,
                         tile_limit=TILE_LIMIT)
    rows = result.tiles.rows()
    assert set(result.mosaic.cogs) >= {"class", "confidence"} and len(rows) == TILE_LIMIT
    assert all(row["predict"] == "done" for row in rows), rows
    return {"cogs": {k: str(v) for k, v in result.mosaic.cogs.items()}}


def test_two_zone_country_on_gpu_workers_to_s3_gives_the_same_cogs(env, checkpoint, cluster, two_zone_run):
    """The country astride the UTM 54/55 border (tests/test_national.py) mapped by the flow on the
    external scheduler + 2 workers, outputs in an S3 bucket named only by ``$CROPMAP_OUTPUT_URL``,
    inference annotated by ``$CROPMAP_GPU_WORKERS=1``: every predict task ran on the GPU worker w0
    (cube work ran on both), the national and zone COGs in the bucket and the accuracy are
    byte-identical to the session's inline, local run of it (``two_zone_run``), every output is there,
    and a rerun skips every finished tile without rewriting it."""
    from dask.utils import key_split

    from cropmap.io import storage

    _, local = two_zone_run
    address, _ = cluster
    fs, _ = storage.filesystem("s3://cropmap-runs")
    fs.mkdir("cropmap-runs")
    with pytest.MonkeyPatch.context() as mp, Client(address, timeout=30) as client:
        mp.setenv("CROPMAP_OUTPUT_URL", "s3://cropmap-runs/runs")
        mp.setenv(GPU_WORKERS_ENV, "1")
        client.wait_for_workers(2, timeout=60)
        names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
        client.run_on_scheduler(task_stream)
        result = _map(address, None, checkpoint, tile_limit=None)
        ran = client.run_on_scheduler(task_stream)
        class_tiles = sorted(fs.glob("cropmap-runs/runs/DMZ/*/tiles/*/*.class.tif"))
        stamps = {p: fs.info(p)["LastModified"] for p in class_tiles}
        again = _map(address, None, checkpoint, tile_limit=None)
    on = {}
    for key, worker in ran:
        on.setdefault(key_split(key), set()).add(names.get(worker, worker))
    print(f"task groups and the workers they ran on: {on}")
    n_tiles = local.tiles.total
    assert n_tiles == len(result["tiles"]) == 12
    assert on.get("predict_tile") == {"w0"}, on  # never on w1, which had no GPU resource
    assert sum(key_split(k) == "predict_tile" for k, _ in ran) == n_tiles
    assert "w1" in set().union(*on.values()), on  # w1 was up and took other work meanwhile
    assert all(r["predict"] == "done" for r in result["tiles"]), result["tiles"]
    assert result["cogs"]["class"].startswith("s3://cropmap-runs/runs/DMZ/")
    remote = {k: storage.read_bytes(v) for k, v in sorted(result["cogs"].items())}
    assert set(remote) == set(local.mosaic.cogs) >= {"class", "confidence"}
    for product, path in local.mosaic.cogs.items():
        assert remote[product] == Path(path).read_bytes(), product
    assert set(result["zones"]) == set(local.zones) == {32754, 32755}
    for epsg, zone in local.zones.items():
        assert set(result["zones"][epsg]) == set(zone.cogs), epsg
        for product, path in zone.cogs.items():
            assert storage.read_bytes(result["zones"][epsg][product]) == Path(path).read_bytes(), (epsg, product)
    run, key = result["cogs"]["class"].rsplit("/maps/", 1)[0], result["key"]
    for name in (f"maps/{key}/DMZ.json", f"maps/{key}/DMZ_quicklook.png", f"maps/{key}/accuracy.json",
                 f"maps/{key}/confusion.png", f"maps/{key}/DMZ_32754_class.tif", f"maps/{key}/DMZ_32755_class.tif",
                 f"tiles/{key}/run.json"):
        assert storage.exists(f"{run}/{name}"), name
    cubes = storage.list_files(f"{run}/cubes", "*.zarr.complete")
    assert len(cubes) == n_tiles and len(class_tiles) == n_tiles
    assert result["accuracy"] is not None and result["accuracy"] == local.accuracy
    assert all(r["cube"] == "skipped" and r["predict"] == "skipped" for r in again["tiles"]), again["tiles"]
    assert {p: fs.info(p)["LastModified"] for p in class_tiles} == stamps
    assert {k: storage.read_bytes(v) for k, v in sorted(again["cogs"].items())} == remote


def test_unwritable_output_location_fails_before_any_task(env, checkpoint):
    """A bucket that does not exist: the flow fails in its first lines, naming the URL and the
    parameter it came from, not inside a Dask task."""
    import time

    from cropmap.errors import StorageError

    started = time.monotonic()
    with pytest.raises(StorageError, match="s3://no-such-bucket-cropmap/runs .from the out_dir parameter"):
        _map(None, "s3://no-such-bucket-cropmap/runs", checkpoint)
    assert time.monotonic() - started < 120


def test_map_country_on_external_scheduler_survives_a_killed_worker(env, checkpoint, cluster, local_run):
    """One run on the external cluster, w1 SIGKILLed while it runs one of the run's tasks: the run
    finishes (Dask reschedules) or a rerun completes only what is missing, and the COG mosaics are
    byte-identical to the inline run's (``local_run``)."""

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
from cropmap.flows._runner import task_runner
from cropmap.flows.map_country import map_country
# one Dask thread: tiles are predicted one after another, so a kill after the first lands mid-run
map_country.with_options(task_runner=task_runner(None, threads=1))(
    country=sys.argv[4], model=sys.argv[1], out_dir=sys.argv[2], tile_limit=int(sys.argv[3]))
"""


def test_killed_map_country_flow_reruns_only_the_missing_tiles(env, checkpoint, local_run):
    """The flow's own process SIGKILLed as soon as its first tile prediction is on disk; a rerun skips
    the finished tile (same file, same mtime), computes only the missing one, and the COG mosaics are
    byte-identical to the uninterrupted inline run's (``local_run``). The run starts from that
    run's finished cubes and searches (copied), so it goes straight to the stage the kill is about; a
    run killed while it builds a cube: tests/test_killed_runs.py."""
    import shutil
    import time

    out = env / "killed"
    run_dir = Path(local_run["cogs"]["class"]).parents[2]  # <out>/<country>/<run key>: maps/<key>/<country>_class.tif
    shutil.copytree(run_dir, out / COUNTRY / run_dir.name, ignore=shutil.ignore_patterns("tiles", "maps", LOCK_NAME))
    assert len(list(out.glob(f"{COUNTRY}/*/cubes/*.zarr"))) == TILE_LIMIT
    log = open(env / "killed.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE_RUN, checkpoint, str(out), str(TILE_LIMIT), COUNTRY],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 600
        while not (finished := sorted(out.glob(f"{COUNTRY}/*/tiles/*/*.class.tif"))):
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
    at_kill = {p.name: p.stat().st_mtime_ns for p in out.glob(f"{COUNTRY}/*/tiles/*/*.tif")}
    done_at_kill = {p.name.split(".")[0] for p in out.glob(f"{COUNTRY}/*/tiles/*/*.class.tif")}
    assert proc.returncode == -signal.SIGKILL
    assert len(done_at_kill) < TILE_LIMIT and not list(out.glob(f"{COUNTRY}/*/maps/*/*.tif")), "killed too late"

    result = _map(None, out, checkpoint)
    rows = {r["tile"]: r for r in result["tiles"]}
    assert {t for t, r in rows.items() if r["predict"] == "skipped"} == done_at_kill
    assert {t for t, r in rows.items() if r["predict"] == "done"} == set(rows) - done_at_kill != set()
    assert all(r["cube"] == "skipped" for r in rows.values())  # the complete cubes were not rebuilt
    for name, stamp in at_kill.items():  # what the killed run finished is untouched
        if name.split(".")[0] in done_at_kill:
            assert next(out.glob(f"{COUNTRY}/*/tiles/*/{name}")).stat().st_mtime_ns == stamp, name
    assert _cog_bytes(result) == _cog_bytes(local_run)
