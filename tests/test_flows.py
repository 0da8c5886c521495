"""The Prefect flows end to end: a real Prefect server and process worker on 127.0.0.1, deployments from
prefect.yaml, ``prefect deployment run map-country/map-country --param country=DEMO --watch``.

Slow (a server, a worker, a Dask LocalCluster, cubes and a mosaic): marked ``slow``. The server and
the DEMO model are the session's (tests/conftest.py), shared with tests/test_cluster_flows.py.

Cost control (2 shared cores): each deployment run pays ~10-15 s before its flow starts (the worker's
poll, here every second, and the flow process importing cropmap), so the deployment path runs where it
is the point (the DEMO and REAL maps, a bad parameter); the hemisphere transfer, whose point is the
maps, runs the map-country job in this process. The Kubernetes deployment test comes first: it then
needs no redeploy for the process worker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import stop_process

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))

pytestmark = pytest.mark.slow


def _outline(epsg: int, left: float, bottom: float, right: float, top: float, inset: float = 80.0) -> list[float]:
    """A lon/lat box ``inset`` metres inside an area of ``epsg``: it touches exactly the area's tiles."""
    from pyproj import Transformer

    to_ll = Transformer.from_crs(epsg, 4326, always_xy=True)
    xs, ys = (left + inset, right - inset), (bottom + inset, top - inset)
    return [max(to_ll.transform(xs[0], y)[0] for y in ys), max(to_ll.transform(x, ys[0])[1] for x in xs),
            min(to_ll.transform(xs[1], y)[0] for y in ys), min(to_ll.transform(x, ys[1])[1] for x in xs)]


def _twin(code: str, hemisphere: str, epsg: int, origin: tuple[float, float], shift: int, parts: str,
          year: int = 2017) -> str:
    """A 2 x 1 tile (64 px) demo country of Victoria TRAIN series only (the same fields and the same
    series for every twin: one seed), dated ``shift`` days from the Victoria dates, season ``year``."""
    left, top = origin
    bbox = _outline(epsg, left, top - 640, left + 1280, top)
    season = "{start: '05-01', end: '11-30', hemisphere: north}" if hemisphere == "north" else \
        "{start: '11-01', end: '05-31', hemisphere: south}"
    return (f"name: {code} transfer twin\noutline: {{bbox: {bbox}}}\nhemisphere: {hemisphere}\nseason: {season}\n"
            f"year: {year}\ncatalog: {{path: demo/catalog.json, max_cloud_cover: 100, margin_days: 30}}\n"
            f"output_crs: EPSG:{epsg}\ntile_size: 64\n"
            f"scenario: {{name: demo, options: {{epsg: {epsg}, origin: [{left}, {top}], tile_px: 64, tiles_y: 1, "
            f"season_year: {year}, "
            f"hemisphere: {hemisphere}, date_shift_days: {shift}, halves: [train, train], {parts}}}}}\n")


#: The same series in the north (May-Nov) and six months later in the south (Nov-May). The Victoria
#: dates fall on day 3 of each 5-day bin; moved by +1 day they fall on day 4, so the last bin, 4 days in
#: the north (27-30 Nov) and 2 in the south (29-31 May), holds no date in either: every bin then sees
#: the same observations in both windows.
TWINS = {
    "TWNN": _twin("TWNN", "north", 32614, (606720.0, 4100480.0), 1 - 184, "train_part: all, score_part: none"),
    "TWNS": _twin("TWNS", "south", 32754, (606720.0, 5936000.0), 1, "train_part: none, score_part: all"),
    # the same once more, a year later (2018-11-01 is 365 days after 2017-11-01)
    "TWNY": _twin("TWNY", "south", 32754, (606720.0, 5936000.0), 1 + 365, "train_part: none, score_part: all",
                  year=2018),
}


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> Path:
    """The shipped country configs plus the transfer twins (for ``CROPMAP_CONFIGS_DIR``)."""
    folder = tmp_path_factory.mktemp("configs")
    for path in (REPO / "configs" / "countries").glob("*.yaml"):
        shutil.copy(path, folder)
    for code, text in TWINS.items():
        (folder / f"{code}.yaml").write_text(text)
    return folder


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory, demo_paths, prefect_server, configs):
    """The CLI's environment: the session's Prefect server and DEMO folder, outputs in a temporary folder."""
    api_url, _ = prefect_server
    home = tmp_path_factory.mktemp("prefect_cli")
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": api_url, "CROPMAP_CONFIGS_DIR": str(configs),
           "CROPMAP_DEMO_DIR": str(demo_paths.root), "CROPMAP_OUTPUT_DIR": str(home / "runs"),
           "PREFECT_LOGGING_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
    env.pop("CROPMAP_DASK_ADDRESS", None)
    env.pop("PYTHONPATH", None)  # the worker's flow runs import the installed package, as in the image
    return env, home


def _prefect(env, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


#: "process": the module's deployments are registered on the process pool its worker serves
_DEPLOYED = {"process": False}


@pytest.fixture(scope="module")
def worker(prefect_env):
    env, home = prefect_env
    created = _prefect(env, "work-pool", "create", "cropmap-process", "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = _prefect(env, "--no-prompt", "deploy", "--all", timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    _DEPLOYED["process"] = True
    log = open(home / "worker.log", "w")
    # in another folder than the checkout: prefect.yaml's entrypoints are modules of the installed package.
    # Polling every second, not every 10 s (the default): a run's wait for the worker is ~0.5 s, not ~5 s
    proc = subprocess.Popen([PREFECT, "worker", "start", "--pool", "cropmap-process"], cwd=home,
                            env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}, stdout=log, stderr=subprocess.STDOUT)
    yield proc, home / "worker.log"
    stop_process(proc, signal.SIGTERM, signal.SIGINT)
    log.close()


def _run_id(output: str) -> str:
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
    assert match, output
    return match.group(1)


def test_kubernetes_deployments_name_the_image_and_no_folder_of_the_deployer(prefect_env, tmp_path):
    """deploy/prefect.yaml as a Kubernetes user registers it, from a folder that is not the checkout, on a
    ``kubernetes`` pool made from deploy/'s base job template: module entrypoints, the image's working
    directory as the only pull step, the image from ``$CROPMAP_IMAGE``, and no path of the deploying machine."""
    env, _ = prefect_env
    env = {**env, "CROPMAP_IMAGE": "registry.example/cropmap:test"}
    template = REPO / "deploy" / "base" / "prefect" / "base-job-template.json"
    created = _prefect(env, "work-pool", "create", "cropmap-k8s", "--type", "kubernetes",
                       "--base-job-template", str(template))
    assert created.returncode == 0, created.stdout + created.stderr
    shutil.copy(REPO / "deploy" / "prefect.yaml", tmp_path / "prefect.yaml")
    try:
        deployed = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", "prefect.yaml"],
                                  env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        shown = _prefect(env, "deployment", "inspect", "map-country/map-country", "--output", "json")
        assert shown.returncode == 0, shown.stdout + shown.stderr
    finally:  # same deployment names: give them back to the process pool the module's worker serves (first
        # in the module, before the ``worker`` fixture deploys them, it needs none)
        if _DEPLOYED["process"]:
            restored = _prefect(env, "--no-prompt", "deploy", "--all", timeout=300)
            assert restored.returncode == 0, restored.stdout + restored.stderr
    deployment = json.loads(shown.stdout)
    assert deployment["entrypoint"] == "cropmap.flows.map_country.map_country"
    assert deployment["work_pool_name"] == "cropmap-k8s"
    assert deployment["job_variables"] == {"image": "registry.example/cropmap:test"}
    assert deployment["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "/opt/cropmap"}}]
    assert str(tmp_path) not in shown.stdout and str(REPO) not in shown.stdout
    properties = deployment["parameter_openapi_schema"]["properties"]
    assert {"country", "model", "tile_limit"} <= set(properties)
    assert all(p.get("description") for p in properties.values()), properties  # what the UI's form shows


def test_map_country_demo_deployment(prefect_env, worker, demo_model):
    """The deployment with the session's DEMO model (``--param model=``: no training inside the flow) maps
    the DEMO's first two tiles: a valid class COG, scored (accuracy, confusion table and picture, the
    model card with this score), its path and OA in the flow run's logs. With ``keep_cubes=false``: each
    tile is one ``map-tile`` task and no cube is left in the store (the path that keeps them runs through
    a deployment in the REAL test below and on a cluster in tests/test_cluster_flows.py)."""
    env, home = prefect_env
    params = ["--param", "country=DEMO", "--param", "tile_limit=2", "--param", f"model={demo_model}",
              "--param", "keep_cubes=false"]
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
    import matplotlib.image
    import pandas as pd

    confusion = pd.read_csv(cog.parent / "confusion.csv", index_col=0)  # beside it, with its picture
    assert confusion.to_numpy().tolist() == accuracy["confusion"] and confusion.to_numpy().sum() == accuracy["n"]
    assert list(confusion.columns) == [f"pred:{c}" for c in accuracy["class_names"]]
    assert matplotlib.image.imread(cog.parent / "confusion.png").shape[0] > 300
    card = (cog.parent / "model_card.md").read_text()  # the checkpoint's card with this run's score in it
    assert f"- DEMO 2017 (" in card and f"oa {round(accuracy['oa'], 4)}" in card and "Intended use" in card
    tiles = sorted((cog.parents[2] / "tiles" / cog.parent.name).glob("*.class.tif"))
    assert len(tiles) == 2
    assert not list(cog.parents[2].glob("cubes/*.zarr"))
    runs = json.loads(_prefect(env, "task-run", "ls", "--limit", "200", "-o", "json").stdout)
    names = sorted(t["name"] for t in runs if t["flow_run_id"] == _run_id(run.stdout))
    assert [n.split()[0] for n in names if n.split()[0] in ("map", "cube", "predict")] == ["map", "map"], names
    # a rerun skipping the finished tiles: tests/test_cluster_flows.py (a flow process killed then run
    # again, and a rerun into S3), not a second deployment run here


def test_bad_country_fails_fast_with_the_known_ones(prefect_env, worker):
    """A deployment run for a country that is no config (a path) fails in the flow's first lines, naming
    the known countries: its flow run lasts seconds. The ~15-20 s the test takes are the deployment's
    start (the CLI, the worker's poll, the flow process importing cropmap), not the flow."""
    env, _ = prefect_env
    started = time.time()
    run = _prefect(env, "deployment", "run", "map-country/map-country", "--param", "country=../etc",
                   "--watch", "--watch-interval", "1", timeout=300)
    run_id = _run_id(run.stdout)
    logs = _prefect(env, "flow-run", "logs", run_id).stdout
    assert "Failed" in run.stdout or run.returncode != 0, run.stdout
    assert "unknown country '../etc'" in logs and "DEMO" in logs, logs[-3000:]
    shown = json.loads(_prefect(env, "flow-run", "inspect", run_id, "--output", "json").stdout)
    assert shown["state"]["type"] == "FAILED", shown["state"]
    assert 0 <= shown["total_run_time"] < 30, shown  # measured: 0.3 s (from Running to Failed)
    assert time.time() - started < 240


def test_a_northern_model_maps_the_south_six_months_later(prefect_env, monkeypatch):
    """Train on the northern twin (in-process, 2 epochs: equality is the point, not skill) and map it in
    its own May-Nov season; then the map-country job maps the southern twin, the same series dated six
    months later, with that checkpoint, and its twin a year later (``year=2018``). Each southern class
    COG equals the northern one pixel for pixel (the alignment moved the window, not the features), the
    tiles and the STAC item record the six-month offset and both years, and each run is scored against
    its twin's reference. All in this process (InlineExecutor): the deployment path, ``--param model=``
    included, is test_map_country_demo_deployment's."""
    from cropmap.jobs.executors import InlineExecutor
    from cropmap.jobs.mapping import map_country, train_country
    from cropmap.scenarios import resolve_run
    from cropmap.stages.cube import open_tile_cube

    env, home = prefect_env
    for name in ("CROPMAP_CONFIGS_DIR", "CROPMAP_DEMO_DIR", "CROPMAP_OUTPUT_DIR"):
        monkeypatch.setenv(name, env[name])
    north = resolve_run("TWNN")
    settings = north.scenario.training.model_copy(update={"epochs": 2})
    model = train_country(north, InlineExecutor(), settings=settings).checkpoint.path
    source = map_country(north, InlineExecutor(), model=model)
    assert source.accuracy is None and source.season_offsets == {"north": 0}

    with rasterio.open(source.zones[32614].cogs["class"]) as src:
        north_classes = src.read(1)
    assert north_classes.shape == (64, 128) and (north_classes != 255).mean() > 0.9

    north_cubes = [open_tile_cube(p).values for p in sorted(Path(north.cube_dir).glob("*.zarr"))]
    # the southern twin, then its twin a year later (cross-year)
    for code, year in (("TWNS", 2017), ("TWNY", 2018)):
        south = map_country(resolve_run(code, year=year), InlineExecutor(), model=model)
        assert south.season_offsets == {"south": 6} and not south.tiles.failures, code
        south_cog = Path(south.zones[32754].cogs["class"])
        assert south_cog.is_relative_to(home / "runs" / code) and south_cog.name == f"{code}_32754_class.tif"
        with rasterio.open(south_cog) as src:
            np.testing.assert_array_equal(src.read(1), north_classes, err_msg=code)
        # the features themselves, bit for bit: a 2-epoch model's classes alone would hide a changed bin
        # (dates on day 3 of the bins give the same classes here but cubes that differ in 14 bins)
        south_cubes = [open_tile_cube(p).values for p in sorted(south_cog.parents[2].glob("cubes/*.zarr"))]
        assert len(south_cubes) == len(north_cubes) == 2
        for a, b in zip(north_cubes, south_cubes):
            assert np.array_equal(a, b, equal_nan=True), code
        tiles = sorted((south_cog.parents[2] / "tiles" / south_cog.parent.name).glob("*.class.tif"))
        assert len(tiles) == 2
        for tile in tiles:
            with rasterio.open(tile) as src:
                tags = src.tags()
            assert tags["season_offset_months"] == "6" and json.loads(tags["model_season"])["hemisphere"] == "north"
            assert json.loads(tags["season"])["start"] == "11-01" and tags["season_year"] == str(year)
            assert tags["model_season_year"] == "2017"
        item = json.loads(next(south_cog.parent.glob(f"{code}.json")).read_text())
        assert item["properties"]["cropmap:season_offset_months"] == 6
        assert item["properties"]["cropmap:season_year"] == year
        assert json.loads((south_cog.parent / "accuracy.json").read_text())["n"] == 64 * 128
        card = (south_cog.parent / "model_card.md").read_text()  # model's season, map's season, offset
        assert "season_offset_months 6" in card and "11-01..05-31 (south" in card and '"hemisphere": "north"' in card


def test_a_four_band_model_maps_the_real_scenes_through_a_deployment(prefect_env, worker, configs, tmp_path,
                                                                     shared_data):
    """The REAL scenario: the ten real Earth Search items of ../shared/data/s2_l2a_stac behind a STAC API on
    127.0.0.1 (``file://`` hrefs, allowed by the scenario's ``catalog.asset_roots``, no environment
    variable), its 4-band checkpoint (Victoria series in the REAL season), ``prefect deployment run
    map-country`` on the config's two-tile ``drava`` part: 4-band cubes, a map that is mostly mapped and an
    item that says ``complete``."""
    from http_servers import stac_api_server

    from cropmap.io.config import load_country
    from cropmap.scenarios.real import train_real_checkpoint

    env, home = prefect_env
    with stac_api_server(shared_data / "s2_l2a_stac" / "catalog.json", None, tmp_path) as (url, _):
        text = (REPO / "configs" / "countries" / "REAL.yaml").read_text()
        (configs / "REAL.yaml").write_text(text.replace("http://127.0.0.1:8765", url))  # this test's API
        # 1 epoch: the mapped share is the cubes' (usable pixels), not the model's skill
        model = train_real_checkpoint(tmp_path / "real.pt", config=load_country("REAL", configs), epochs=1).path
        run = _prefect(env, "deployment", "run", "map-country/map-country", "--param", "country=REAL",
                       "--param", f"model={model}", "--param", 'parts=["drava"]',
                       "--watch", "--watch-interval", "2", timeout=900)
        logs = _prefect(env, "flow-run", "logs", _run_id(run.stdout)).stdout
    assert run.returncode == 0 and "Completed" in run.stdout, run.stdout + run.stderr + logs[-4000:]
    cog = next((home / "runs" / "REAL").glob("*/maps/*/REAL_class.tif"))
    with rasterio.open(cog) as src:
        classes = src.read(1)
    assert (classes != 255).mean() > 0.5, np.unique(classes, return_counts=True)  # measured: 0.85
    item = json.loads((cog.parent / "REAL.json").read_text())
    assert item["properties"]["cropmap:status"] == "complete"
    from cropmap.stages.cube import open_tile_cube

    cubes = sorted(cog.parents[2].glob("cubes/*.zarr"))
    assert len(cubes) == 2 and all(open_tile_cube(c).attrs["bands"] == ["B02", "B03", "B04", "B08"] for c in cubes)
