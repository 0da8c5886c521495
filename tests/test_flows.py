"""The Prefect flows end to end: a real Prefect server and process worker on 127.0.0.1, deployments from
prefect.yaml, ``prefect deployment run map-country/map-country --param country=DEMO --watch``.

Slow (a server, a worker, a Dask LocalCluster, training, cubes and a mosaic): marked ``slow``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, *signals: int) -> None:
    # a Prefect worker needs a second signal to stop (see ../shared/notes/stack.md)
    for sig in signals:
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory, demo_paths):
    home = tmp_path_factory.mktemp("prefect")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PWD": str(REPO),
           "CROPMAP_DEMO_DIR": str(demo_paths.root), "CROPMAP_OUTPUT_DIR": str(home / "runs"),
           "PREFECT_LOGGING_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
    env.pop("CROPMAP_DASK_ADDRESS", None)
    log = open(home / "server.log", "w")
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                pytest.fail(f"Prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
        yield env, home
    finally:
        _stop(server, signal.SIGTERM, signal.SIGINT)
        log.close()


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
    _stop(proc, signal.SIGTERM, signal.SIGINT)
    log.close()


def _run_id(output: str) -> str:
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
    assert match, output
    return match.group(1)


def test_map_country_demo_deployment(prefect_env, worker):
    env, home = prefect_env
    run = _prefect(env, "deployment", "run", "map-country/map-country", "--param", "country=DEMO",
                   "--param", "tile_limit=2", "--watch", "--watch-interval", "2", timeout=900)
    logs = _prefect(env, "flow-run", "logs", _run_id(run.stdout)).stdout
    assert run.returncode == 0 and "Completed" in run.stdout, run.stdout + run.stderr + logs[-4000:]
    cog = next((home / "runs" / "DEMO").glob("*/maps/DEMO_class.tif"))
    from rio_cogeo.cogeo import cog_validate

    assert cog_validate(cog, strict=True)[0]
    accuracy = json.loads((cog.parent / "accuracy.json").read_text())
    assert "OA" in logs and str(cog) in logs
    # tile_limit=2: the two northern tiles, one west (trained on) and one east (scored); the east
    # half's southern tile is not mapped
    assert accuracy["n"] == 128 * 128 and accuracy["n_unmapped"] == 128 * 128 and accuracy["oa"] > 0.5
    tiles = sorted((cog.parents[1] / "tiles").glob("*.class.tif"))
    assert len(tiles) == 2
    stamp = tiles[0].stat().st_mtime_ns
    again = _prefect(env, "deployment", "run", "map-country/map-country", "--param", "country=DEMO",
                     "--param", "tile_limit=2", "--watch", "--watch-interval", "2", timeout=900)
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
