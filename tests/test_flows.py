"""The Prefect flows end to end: a real Prefect server and process worker on 127.0.0.1, deployments from
prefect.yaml, ``prefect deployment run map-country/map-country --param country=DEMO --watch``.

Slow (a server, a worker, a Dask LocalCluster, cubes and a mosaic): marked ``slow``. The server and
the DEMO model are the session's (tests/conftest.py), shared with tests/test_cluster_flows.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import stop_process

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory, demo_paths, prefect_server):
    """The CLI's environment: the session's Prefect server and DEMO folder, outputs in a temporary folder."""
    api_url, _ = prefect_server
    home = tmp_path_factory.mktemp("prefect_cli")
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": api_url, "PWD": str(REPO),
           "CROPMAP_DEMO_DIR": str(demo_paths.root), "CROPMAP_OUTPUT_DIR": str(home / "runs"),
           "PREFECT_LOGGING_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
    env.pop("CROPMAP_DASK_ADDRESS", None)
    return env, home


def _prefect(env, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def worker(prefect_env):
    env, home = prefect_env
    created = _prefect(env, "work-pool", "create", "cropmap-process", "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = _prefect(env, "--no-prompt", "deploy", "--all", timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    log = open(home / "worker.log", "w")
    proc = subprocess.Popen([PREFECT, "worker", "start", "--pool", "cropmap-process"], env=env, cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT)
    yield proc, home / "worker.log"
    stop_process(proc, signal.SIGTERM, signal.SIGINT)
    log.close()


def _run_id(output: str) -> str:
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
    assert match, output
    return match.group(1)


def test_map_country_demo_deployment(prefect_env, worker, demo_model):
    """The deployment with the session's DEMO model (``--param model=``: no training inside the flow)."""
    env, home = prefect_env
    params = ["--param", "country=DEMO", "--param", "tile_limit=2", "--param", f"model={demo_model}"]
    run = _prefect(env, "deployment", "run", "map-country/map-country", *params,
                   "--watch", "--watch-interval", "2", timeout=900)
    logs = _prefect(env, "flow-run", "logs", _run_id(run.stdout)).stdout
    assert run.returncode == 0 and "Completed" in run.stdout, run.stdout + run.stderr + logs[-4000:]
    cog = next((home / "runs" / "DEMO").glob("*/maps/*/DEMO_class.tif"))
    from rio_cogeo.cogeo import cog_validate

    assert cog_validate(cog, strict=True)[0]
    accuracy = json.loads((cog.parent / "accuracy.json").read_text())
    assert "OA" in logs and str(cog) in logs
    # tile_limit=2: the two northern tiles, one west (trained on) and one east (scored); the east
    # half's southern tile is not mapped
    assert accuracy["n"] == 128 * 128 and accuracy["n_unmapped"] == 128 * 128 and accuracy["oa"] > 0.5
    tiles = sorted((cog.parents[2] / "tiles" / cog.parent.name).glob("*.class.tif"))
    assert len(tiles) == 2
    stamp = tiles[0].stat().st_mtime_ns
    again = _prefect(env, "deployment", "run", "map-country/map-country", *params,
                     "--watch", "--watch-interval", "2", timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert tiles[0].stat().st_mtime_ns == stamp  # the finished tile was skipped, not redone


def test_bad_country_fails_fast_with_the_known_ones(prefect_env, worker):
    env, _ = prefect_env
    started = time.time()
    run = _prefect(env, "deployment", "run", "map-country/map-country", "--param", "country=../etc",
                   "--watch", "--watch-interval", "1", timeout=300)
    logs = _prefect(env, "flow-run", "logs", _run_id(run.stdout)).stdout
    assert "Failed" in run.stdout or run.returncode != 0, run.stdout
    assert "unknown country '../etc'" in logs and "DEMO" in logs, logs[-3000:]
    assert time.time() - started < 240
