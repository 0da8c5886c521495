from __future__ import annotations

import os
from pathlib import Path

import pytest

# pytest-xdist (scripts/test.sh runs 2 workers): each worker gets its own Prefect home, so the ephemeral
# servers of flows run in-process never share one SQLite database. Set before anything imports prefect,
# which reads its settings once.
if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("PREFECT_HOME"):
    os.environ["PREFECT_HOME"] = str(Path(os.environ["PREFECT_HOME"]) / os.environ["PYTEST_XDIST_WORKER"])
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)

from cropmap.io.data import data_dir  # noqa: E402

# the STAC servers of the tests are local: their searches need not keep to the polite 2 requests/s that
# real catalogs get (tests/test_hostile_catalogs.py checks that rate with its own value)
os.environ.setdefault("CROPMAP_STAC_REQUESTS_PER_SECOND", "1000")

DATA = data_dir()


def built_once(tmp_path_factory, name: str, build):
    """``build(folder)``'s value, computed ONCE per test run even under pytest-xdist: the first worker to ask
    builds it in a folder every worker sees (beside the workers' own temporary folders) under a file lock
    and pickles the value; the others wait on the lock and unpickle it. What it built is shared: read it,
    never write into it. Without xdist it is an ordinary session-scoped build."""
    import fcntl
    import pickle

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, holding every worker's basetemp
    folder = root / f"shared-{name}"
    with open(root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        value_file = folder / "value.pickle"
        if value_file.exists():
            return pickle.loads(value_file.read_bytes())
        folder.mkdir(exist_ok=True)
        value = build(folder)
        value_file.write_bytes(pickle.dumps(value))
        return value


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder (../shared/data or $CROPMAP_DATA_DIR); tests need it, CI has it."""
    if not DATA.exists():
        pytest.fail(f"real data folder {DATA} missing: set CROPMAP_DATA_DIR")
    return DATA


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module: on 2 shared cores, 2 torch threads spin-wait on each other
    (measured 25 s vs 0.6 s for the same fit)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def demo_paths(tmp_path_factory, shared_data):
    """The DEMO country (cropmap.scenarios.demo) built ONCE per test run (``built_once``) from the real Victoria
    series (~5-10 s). Shared by every worker: read only."""
    from cropmap.scenarios.demo import build_demo

    return built_once(tmp_path_factory, "demo", lambda folder: build_demo(folder / "demo"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, shared_data) -> Path:
    """A small CropNet checkpoint trained for seconds on the real Victoria train split (predict, mosaic), once per
    test run (``built_once``)."""
    import torch

    from builders import train_tiny_model

    def train(folder: Path) -> Path:
        before = torch.get_num_threads()
        torch.set_num_threads(1)  # see one_torch_thread: 3.9 s on one thread, 23.5 s on two shared cores
        try:
            return train_tiny_model(folder / "tiny.pt")
        finally:
            torch.set_num_threads(before)

    return built_once(tmp_path_factory, "tiny_checkpoint", train)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, demo_paths):
    """The DEMO country resolved into a run (cropmap.scenarios.resolve_run) over the session's demo,
    outputs in a temporary folder."""
    return _resolve_demo_run(demo_paths, tmp_path_factory.mktemp("demo_run"))


def _resolve_demo_run(demo_paths, out_root: Path):
    from cropmap.jobs.country_run import resolve_country_run
    from cropmap.scenarios.demo import demo_country, prepare

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CROPMAP_DEMO_DIR", str(demo_paths.root))
        config, scenario = prepare(demo_country(demo_paths))
    return resolve_country_run(config, out_root=out_root, scenario=scenario)


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory, demo_paths) -> str:
    """A real DEMO checkpoint trained ONCE per test run, for every xdist worker (``built_once``; ~15 s) by the train-model job on the west half
    (cropmap.jobs.mapping.train_country, run inline) with the scenario's slim CropNet, but 10 epochs
    instead of 30: the end-to-end tests pass it to map-country (``model=``) so that no test trains
    inside a flow."""
    from cropmap.jobs.executors import InlineExecutor
    from cropmap.jobs.mapping import train_country

    def train(folder: Path) -> str:
        run = _resolve_demo_run(demo_paths, folder)
        settings = run.scenario.training.model_copy(update={"epochs": 10})
        return train_country(run, InlineExecutor(), settings=settings).checkpoint.path

    return built_once(tmp_path_factory, "demo_model", train)


@pytest.fixture(scope="session")
def slim_model(demo_model, tmp_path_factory) -> str:
    """The session's DEMO model cut to 4 channels a block (builders.slim_copy: untrained, same bands, season,
    classes, normalisation and card), once per test run: for tests of how a run handles its model, not of what
    the model says (a 128 px tile in ~1 s instead of 10-20 s)."""
    from builders import slim_copy

    return built_once(tmp_path_factory, "slim_model", lambda folder: slim_copy(demo_model, folder / "slim.pt"))


TWO_ZONES = """name: DEMO astride the UTM 54/55 border (synthetic layout, real Victoria spectra)
outline: {bbox: [143.99051, -36.61356, 144.01652, -36.60407]}
hemisphere: south
season: {start: '11-01', end: '05-31', hemisphere: south}
year: 2017
catalog: {path: demo/catalog.json, max_cloud_cover: 100, margin_days: 30}
output_crs: EPSG:3577
tile_size: 64
scenario: {name: demo, options: {origin: [767360.0, 5944960.0], tile_px: 64, tiles_x: 4}}
"""
# astride the equator: all 73 Victoria dates (the southern season of 2017 and the northern one's Aug-Nov)
EQUATOR = """name: DEMO astride the equator (synthetic layout, real Victoria spectra)
outline: {bbox: [33.49957, -0.00516, 33.50981, 0.00516]}
hemisphere: south
season: {start: '11-01', end: '05-31', hemisphere: south}
year: 2017
catalog: {path: demo/catalog.json, max_cloud_cover: 100, margin_days: 120}
tile_size: 64
scenario: {name: demo, options: {epsg: 32636, origin: [555520.0, 640.0], tile_px: 64, margin_days: 120}}
"""


@pytest.fixture(scope="session")
def zone_configs(tmp_path_factory, demo_paths):
    """Country configs of the DEMO scenario astride a UTM zone border (DMZ) and the equator (DEQ); use
    them with ``CROPMAP_CONFIGS_DIR``. Their demos are built beside the session's DEMO."""
    folder = tmp_path_factory.mktemp("zone_configs")
    (folder / "DMZ.yaml").write_text(TWO_ZONES)
    (folder / "DEQ.yaml").write_text(EQUATOR)
    return folder


@pytest.fixture(scope="session")
def two_zone_run(zone_configs, demo_paths, demo_model, tmp_path_factory):
    """The two-zone country mapped ONCE per test run (``built_once``: every xdist worker; read only) by the map-country job (inline, no Prefect) with the
    session's DEMO model: ``(run, MapResult)``; tests/test_national.py checks it, tests/test_cluster_flows.py
    compares the same run on a cluster writing to S3 with it."""
    from cropmap.jobs.executors import InlineExecutor
    from cropmap.jobs.mapping import map_country
    from cropmap.scenarios import resolve_run

    def build(folder: Path):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CROPMAP_CONFIGS_DIR", str(zone_configs))
            mp.setenv("CROPMAP_DEMO_DIR", str(demo_paths.root))
            run = resolve_run("DMZ", out_dir=str(folder))
            return run, map_country(run, InlineExecutor(), model=demo_model)

    return built_once(tmp_path_factory, "two_zone_run", build)



def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc, *signals: int) -> None:
    """Stop ``proc`` with ``signals`` in turn (a Prefect worker needs a second one), then kill it."""
    import subprocess

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


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """ONE real Prefect server on 127.0.0.1 per session (``prefect server start``), shared by the
    end-to-end flow tests: ``(api_url, prefect_home)``. Starting one costs ~30-60 s on 2 loaded cores."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    home = tmp_path_factory.mktemp("prefect")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    prefect = str(Path(sys.executable).with_name("prefect"))
    log = open(home / "server.log", "w")
    server = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
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
        yield f"http://127.0.0.1:{port}/api", home
    finally:
        stop_process(server, signal.SIGTERM, signal.SIGINT)
        log.close()


@pytest.fixture(scope="session")
def s3_server() -> dict[str, str]:
    """ONE real S3 API on 127.0.0.1 per session (moto's ``ThreadedMotoServer``, in-memory buckets):
    the environment a user sets to reach an S3-compatible store, ``AWS_ENDPOINT_URL`` plus dummy keys.
    Child processes (Dask workers) reach it over HTTP like any endpoint; apply it with ``s3_env``."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "cropmap-test",
               "AWS_SECRET_ACCESS_KEY": "cropmap-test", "AWS_REGION": "us-east-1",
               "AWS_DEFAULT_REGION": "us-east-1"}
    finally:
        server.stop()


def use_prefect_env(mp: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    """Set Prefect's variables (``PREFECT_API_URL``, ``PREFECT_HOME``, ...) in this process with ``mp``
    and make Prefect see them. Prefect reads its settings ONCE, when ``prefect.context`` is first
    imported (``GLOBAL_SETTINGS_CONTEXT``); a test module that imports prefect at collection froze them
    with no API URL, so a flow run in this process started an ephemeral server under the test command's
    ``PREFECT_HOME`` instead of reporting to the session's server. The fresh settings context is undone
    with ``mp``."""
    import prefect.context

    for key, value in values.items():
        mp.setenv(key, value)
    mp.setattr(prefect.context, "GLOBAL_SETTINGS_CONTEXT", prefect.context.root_settings_context())


def use_s3_env(mp: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    """Set ``values`` in this process's environment with ``mp`` and forget cached S3 filesystems:
    fsspec caches one instance per set of arguments, and the endpoint comes from the environment."""
    import s3fs

    for key, value in values.items():
        mp.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> dict[str, str]:
    """The session's S3 server in this process's environment for one test (``s3_server``)."""
    use_s3_env(monkeypatch, s3_server)
    yield s3_server
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def twm_items(shared_data):
    """The five real Earth Search items over builders.TILE (33TWM, 10-20 Aug 2023), from the static catalog."""
    import datetime as dt

    from builders import TILE

    from cropmap.io.config import CatalogConfig
    from cropmap.io.stac import search_items

    cat = CatalogConfig(path=shared_data / "s2_l2a_stac/catalog.json")
    items = search_items(cat, bbox=TILE.lonlat_bbox(), start=dt.date(2023, 8, 1), end=dt.date(2023, 8, 31))
    assert [it.id[4:9] for it in items] == ["33TWM"] * 5
    return items


@pytest.fixture
def bucket(s3_env) -> str:
    """A fresh empty bucket on the session's S3 server: ``s3://<name>``."""
    import uuid

    from cropmap.io import storage

    name = f"test-{uuid.uuid4().hex[:12]}"
    fs, _ = storage.filesystem(f"s3://{name}")
    fs.mkdir(name)
    return f"s3://{name}"
