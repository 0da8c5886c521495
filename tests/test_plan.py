"""Plan first, fail fast (issue 32): `cropmap plan`, the dry run, the limits, the preflight's catalog check,
one line per failed tile and an early stop on failures that repeat."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cropmap.cli import app
from cropmap.io.config import DEFAULT_CONFIGS_DIR

from http_servers import free_port


@pytest.fixture(scope="module")
def arg_configs(tmp_path_factory) -> Path:
    """ARG's config with its catalog on a closed port of 127.0.0.1: "unreachable" with or without a network."""
    folder = tmp_path_factory.mktemp("configs")
    text = (DEFAULT_CONFIGS_DIR / "ARG.yaml").read_text()
    text = text.replace("https://earth-search.aws.element84.com/v1", f"http://127.0.0.1:{free_port()}/v1")
    (folder / "ARG.yaml").write_text(text)
    return folder


@pytest.fixture
def env(arg_configs, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CROPMAP_CONFIGS_DIR", str(arg_configs))
    monkeypatch.setenv("CROPMAP_OUTPUT_DIR", str(tmp_path / "runs"))
    for name in ("CROPMAP_MAX_TILES", "CROPMAP_MAX_DOLLARS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def arg_model(tmp_path_factory) -> str:
    """A real (untrained, small) CropNet checkpoint for ARG's season and the ten bands."""
    import torch

    from cropmap.io.config import load_country
    from cropmap.ml.checkpoint import save_checkpoint
    from cropmap.ml.models import build_model
    from cropmap.ml.normalisation import fit_normalisation
    from cropmap.stages.cube import CubeOptions

    season = load_country("ARG", DEFAULT_CONFIGS_DIR).season
    config = {"channels": (8, 16, 16, 16), "dropout": 0.0, "first_stride": 2}
    torch.manual_seed(0)
    model = build_model("cropnet", n_bands=10, n_classes=2, **config).eval()
    norm = fit_normalisation(np.random.default_rng(0).uniform(0, 0.5, (16, 10, season.n_bins)).astype("float32"))
    path = tmp_path_factory.mktemp("model") / "m.pt"
    save_checkpoint(path, model=model, model_name="cropnet", model_config={"n_bands": 10, "n_classes": 2, **config},
                    feature_kind="2d", bands=list(CubeOptions().bands), season=season, n_bins=season.n_bins,
                    normalisation=norm, class_names=["maize", "soy"], class_colours=None, config={}, scores={})
    return str(path)


@pytest.fixture(scope="module")
def arg_plan(arg_configs, tmp_path_factory, arg_model):
    """`cropmap plan ARG --model m.pt` once per module (~10 s): (output, exit code, seconds)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CROPMAP_CONFIGS_DIR", str(arg_configs))
        mp.setenv("CROPMAP_OUTPUT_DIR", str(tmp_path_factory.mktemp("runs")))
        started = time.perf_counter()
        result = CliRunner().invoke(app, ["plan", "ARG", "--model", arg_model])
        return result.output, result.exit_code, time.perf_counter() - started


def test_plan_of_argentina_tiles_zones_searches_and_cost(arg_plan):
    from cropmap.jobs.cost_model import FIGURES_FILE, estimate_cost, load_figures

    out, code, seconds = arg_plan
    assert code == 0, out
    assert "27,755 tiles of 1024 px in 5 UTM zone(s)" in out
    assert re.findall(r"EPSG:(327\d\d) \(UTM \d+S, south\)", out) == ["32718", "32719", "32720", "32721", "32722"]
    assert "window 2023-11-01..2024-05-31" in out and "block searches: 396" in out
    assert re.search(r"catalog: http://127\.0\.0\.1:\d+/v1 \(sentinel-2-l2a\): UNREACHABLE", out)
    assert "season offset south 0 months" in out and "bands B02, B03" in out
    # the printed estimate is the cost model's on the shipped figures, with the zone mosaics per zone
    zones = [int(n.replace(",", "")) for n in re.findall(r"EPSG:327\d\d \(UTM \d+S, south\): ([\d,]+) tiles", out)]
    e = estimate_cost(27755, 1024, zone_tiles=zones, figures=load_figures(FIGURES_FILE))
    cost = re.search(r"estimate: ([\d,]+) vCPU-h, inference ([\d.,]+) GPU-h on 4 GPU\(s\); ~([\d.,]+) h on 128 vCPU "
                     r"\+ 4 GPU; ~\$([\d,]+) on demand, ~\$([\d,]+) spot", out)
    assert cost, out
    assert cost.groups() == (f"{e.cpu_hours:,.0f}", f"{e.gpu_hours:,.1f}", f"{e.wall_hours:,.1f}", f"{e.dollars:,.0f}",
                             f"{e.spot_dollars:,.0f}")
    assert f"cost figures: {FIGURES_FILE}" in out and f"mosaic tail (after the last tile): {e.tail_hours:,.1f} h" in out
    # every figure with its kind and source; a measured one with its command and date
    assert re.search(r"gpu_px_per_s = [\d,]+ px/s per GPU.*\(derived: ", out)
    assert re.search(r"composite_vcpu_s_per_mpx = [\d.]+ vCPU-s per megapixel \(measured: .*`python bench/tile_memory"
                     r"_quick\.py[^`]*`, \d{4}-\d\d-\d\d, ", out)
    assert "spot_dollars_per_gpu_h = " in out and "(assumed: " in out
    assert seconds < 60


def _figures_doc(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def test_the_shipped_figures_are_labelled_and_packaged():
    import fnmatch
    import tomllib

    from cropmap.jobs.cost_model import FIGURES_FILE, REQUIRED, derived_gpu_px_per_s, load_figures

    figures = load_figures(FIGURES_FILE)
    assert set(REQUIRED) <= set(figures)
    for key, f in figures.items():
        assert f.unit and f.source, key
        if f.kind == "measured":  # measured: by which command, when, where
            assert f.command.startswith("python bench/") and re.fullmatch(r"\d{4}-\d\d-\d\d", f.date) and f.machine, key
    assert figures["gpu_px_per_s"].kind == "derived"  # no GPU measured here: never passed off as measured
    assert figures["gpu_px_per_s"].value == pytest.approx(derived_gpu_px_per_s(figures), rel=1e-5)
    assert 7e5 < figures["gpu_px_per_s"].value < 8.5e5  # 0.509 GFLOP/px at 40 % of 989 TFLOP/s
    data = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any(fnmatch.fnmatch("jobs/cost_figures.json", pattern) for pattern in data["cropmap"])  # in the wheel


def _figures(**values) -> dict:
    from cropmap.jobs.cost_model import REQUIRED, Figure

    return {k: Figure(values.get(k, 1.0), "u", "assumed", "test") for k in REQUIRED}


def test_the_estimate_against_hand_arithmetic():
    """10 tiles of 1,000 px = 10 Mpx, round figures: every total worked out by hand."""
    from cropmap.jobs.cost_model import estimate_cost

    f = _figures(composite_vcpu_s_per_mpx=60.0, read_vcpu_s_per_mpx=30.0, cube_overhead=0.5,
                 orchestration_s_per_tile=36.0, gpu_px_per_s=100_000.0, predict_host_cpu_s_per_mpx=20.0,
                 predict_host_threads_per_gpu=1.0, mosaic_zone_s_per_mpx=36.0, mosaic_national_s_per_mpx=144.0,
                 mosaic_national_processes=2.0,
                 dollars_per_vcpu_h=0.1, dollars_per_gpu_h=4.0, spot_dollars_per_vcpu_h=0.05,
                 spot_dollars_per_gpu_h=2.0, dollars_per_wall_h=1.0)
    e = estimate_cost(10, 1000, vcpus=2, gpus=1, zone_tiles=[6, 4], figures=f)
    # cubes 10 x 90 x 1.5 = 1,350 s + 360 s orchestration = 1,710 s; mosaics 10 x (36 + 144) = 1,800 s
    assert e.cpu_hours == pytest.approx((1350 + 360 + 1800) / 3600)
    # the host makes 1e6 / 20 = 50,000 px/s < the device's 100,000: 1e7 px / 5e4 = 200 s
    assert e.host_bound and e.gpu_px_per_s == pytest.approx(50_000) and e.gpu_hours == pytest.approx(200 / 3600)
    assert e.host_cpu_hours == pytest.approx(200 / 3600)
    # tail: the largest zone 6 Mpx x 36 s = 216 s, then national 10 Mpx x 144 s over 2 processes = 720 s
    assert e.tail_hours == pytest.approx(936 / 3600)
    # wall: max(1,710 s / 2 vCPU, 200 s / 1 GPU) = 855 s, + the tail
    assert e.wall_hours == pytest.approx((855 + 936) / 3600)
    assert e.dollars == pytest.approx(3510 / 3600 * 0.1 + 200 / 3600 * 4 + 1791 / 3600)
    assert e.spot_dollars == pytest.approx(3510 / 3600 * 0.05 + 200 / 3600 * 2 + 1791 / 3600)
    assert e.idle_tail_dollars == pytest.approx(936 / 3600 * (2 * 0.05 + 1 * 2))
    device = estimate_cost(10, 1000, vcpus=2, gpus=1, figures={**f, **_figures(predict_host_cpu_s_per_mpx=5.0,
                                                                                 gpu_px_per_s=100_000.0)})
    assert not device.host_bound and device.gpu_px_per_s == 100_000  # 200k px/s of host: the device bounds
    training = estimate_cost(10, 1000, inference=False, vcpus=2, gpus=1, figures=f)
    assert training.gpu_hours == 0 and training.tail_hours == 0 and training.cpu_hours == pytest.approx(1710 / 3600)


def test_the_docs_argentina_section_is_the_estimate_of_the_figures(monkeypatch):
    """docs/scaling.md's generated section (bench/cost_table.py) against the cost model on the shipped
    figures: a figure recorded without regenerating the doc fails here."""
    from cropmap.jobs.cost_model import estimate_cost, estimate_lines, estimate_table, load_figures

    monkeypatch.delenv("CROPMAP_COST_FIGURES", raising=False)
    doc = (Path(__file__).parents[1] / "docs" / "scaling.md").read_text()
    begin, end = "<!-- cost: begin (bench/cost_table.py writes this section) -->", "<!-- cost: end -->"
    section = doc[doc.index(begin):doc.index(end)]
    head = re.search(r"`cropmap plan ARG` \(([\d,]+) tiles of (\d+) px; zones ([^)]*)\)", section)
    zones = [int(n.replace(",", "")) for n in re.findall(r"EPSG:\d+ ([\d,]+)", head[3])]
    assert head[1] == "27,755" and sum(zones) == 27755 and len(zones) == 5
    figures = load_figures()
    e = estimate_cost(27755, int(head[2]), zone_tiles=zones, figures=figures)
    expected = [f"    {line}" for line in estimate_lines(e, "map", figures)[:3]] + estimate_table(e, figures)
    missing = [line for line in expected if line not in section.splitlines()]
    assert not missing, f"docs/scaling.md is stale (run bench/cost_table.py): {missing[:3]}"


def test_a_figures_file_missing_a_key_is_one_error_line(env, tmp_path, monkeypatch):
    import json

    from cropmap.errors import ConfigError
    from cropmap.jobs.cost_model import FIGURES_FILE, load_figures

    doc = _figures_doc(FIGURES_FILE)
    del doc["figures"]["gpu_px_per_s"]
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"cost figures .*mine\.json lack gpu_px_per_s; measure them"):
        load_figures(mine)
    monkeypatch.setenv("CROPMAP_COST_FIGURES", str(mine))
    result = CliRunner().invoke(app, ["plan", "ARG", "--tile-limit", "3"])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "lack gpu_px_per_s" in errors[0], result.output
    assert "Traceback" not in result.output


def test_a_users_figures_file_is_used_and_recorded_into(tmp_path, monkeypatch):
    import datetime as dt
    import shutil

    from cropmap.jobs.cost_model import FIGURES_FILE, estimate_cost, load_figures, record_figure

    mine = tmp_path / "mine.json"
    shutil.copy(FIGURES_FILE, mine)
    monkeypatch.setenv("CROPMAP_COST_FIGURES", str(mine))
    before = load_figures()
    record_figure("cropnet_gflop_per_px", 2 * before["cropnet_gflop_per_px"].value, unit="GFLOP per pixel",
                  source="a test", command="python bench/throughput_quick.py --record")
    after = load_figures()
    assert after["cropnet_gflop_per_px"].kind == "measured" and after["cropnet_gflop_per_px"].machine
    assert after["cropnet_gflop_per_px"].date == dt.date.today().isoformat()
    assert after["gpu_px_per_s"].value == pytest.approx(before["gpu_px_per_s"].value / 2, rel=1e-5)  # derived again
    assert load_figures(FIGURES_FILE)["cropnet_gflop_per_px"] == before["cropnet_gflop_per_px"]  # shipped file kept
    record_figure("predict_host_cpu_s_per_mpx", 100.0, unit="CPU-s per megapixel", source="a test",
                  command="python bench/predict.py --host --record")  # a host too slow for its GPU
    slow = estimate_cost(100, 1024)
    assert slow.host_bound and slow.gpu_hours > estimate_cost(100, 1024, figures=before).gpu_hours


def test_map_with_an_unreachable_catalog_fails_in_seconds_in_one_line(env, arg_model):
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["map", "ARG", "--model", arg_model])
    seconds = time.perf_counter() - started
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unreachable" in errors[0] and "127.0.0.1" in errors[0], result.output
    assert "Traceback" not in result.output
    assert seconds < 60
    assert not list((env / "runs").rglob("*.json"))  # no block searched, no tile started


def test_dry_run_prints_the_plan_and_stops_before_any_tile(env, arg_model):
    result = CliRunner().invoke(app, ["map", "ARG", "--model", arg_model, "--dry-run", "--tile-limit", "30"])
    assert result.exit_code == 0, result.output
    assert "30 tiles of 1024 px" in result.output and "dry run: no tile computed" in result.output
    assert not list((env / "runs").rglob("*.zarr"))


def test_the_flows_dry_run_returns_the_plan(env, arg_model):
    from cropmap.flows.map_country import map_country

    plan = map_country.fn(country="ARG", model=arg_model, dry_run=True)
    assert plan["tiles"] == 27755 and plan["searches"] == 396 and len(plan["zones"]) == 5
    assert "unreachable" in plan["catalog_problem"]


@pytest.mark.parametrize("args, variables, match", [
    (["--max-tiles", "1000"], {}, r"27,755 tiles, more than max_tiles 1,000"),
    ([], {"CROPMAP_MAX_TILES": "500"}, r"more than max_tiles 500"),
    ([], {"CROPMAP_MAX_DOLLARS": "10"}, r"estimate is \$[\d,]+ for 27,755 tiles, more than max_dollars \$10\b"),
])
def test_limits_refuse_the_plan_before_the_catalog_is_asked(env, arg_model, monkeypatch, args, variables, match):
    for k, v in variables.items():
        monkeypatch.setenv(k, v)
    result = CliRunner().invoke(app, ["map", "ARG", "--model", arg_model, *args])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and re.search(match, errors[0]), result.output


def test_a_catalog_that_does_not_answer_is_given_up_in_seconds(monkeypatch):
    from cropmap.io.config import CatalogConfig
    from cropmap.jobs.plan import probe_catalog

    with socket.socket() as server:  # accepts connections, never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/v1"
        monkeypatch.setenv("CROPMAP_CATALOG_TIMEOUT_S", "1")
        started = time.perf_counter()
        problem = probe_catalog(CatalogConfig(url=url))
        assert time.perf_counter() - started < 3
    assert problem.startswith(f"STAC catalog {url} (sentinel-2-l2a) is unreachable"), problem


def test_a_static_catalog_passes_and_a_season_without_items_is_refused(demo_run, tmp_path):
    from cropmap.errors import CatalogError
    from cropmap.jobs.plan import check_catalog

    run = demo_run.model_copy(update={"root": str(tmp_path / "run")})
    started = time.perf_counter()
    assert check_catalog(run, run.tiles())  # an item of the season read
    assert time.perf_counter() - started < 10
    assert list((tmp_path / "run" / "searches").glob("*.json"))  # kept for the run
    later = run.model_copy(update={"root": str(tmp_path / "later"), "config": run.config.model_copy(
        update={"year": 2031})})
    with pytest.raises(CatalogError, match="holds no item of the 2031 season"):
        check_catalog(later, later.tiles())


def test_failures_are_one_line_each_and_repeated_ones_stop_the_run(env, caplog):
    """Every block's search fails alike (the static catalog is gone): the run stops after three, each
    logged as one line naming the file that holds its traceback."""
    from cropmap.errors import CubeBuildError
    from cropmap.jobs.executors import InlineExecutor
    from cropmap.jobs.tile_pipeline import run_tiles
    from cropmap.scenarios import resolve_run

    (env / "configs").mkdir()
    (env / "configs" / "WIDE.yaml").write_text(
        "name: a wide area\noutline: {bbox: [-64.0, -35.2, -60.0, -35.0]}\nhemisphere: south\n"
        "season: {start: '11-01', end: '05-31', hemisphere: south}\nyear: 2023\n"
        f"catalog: {{path: {env / 'gone' / 'catalog.json'}}}\ntile_size: 1024\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CROPMAP_CONFIGS_DIR", str(env / "configs"))
        run = resolve_run("WIDE")
    tiles = run.tiles()
    with caplog.at_level(logging.WARNING, logger="cropmap.jobs.tile_pipeline"), \
            pytest.raises(CubeBuildError, match=r"the last 3 block searches failed alike.*does not exist"):
        run_tiles(InlineExecutor(), run, tiles)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and all("\n" not in line for line in lines)
    for line in lines:
        path = Path(re.search(r"traceback: (\S+)\)$", line)[1])
        assert "does not exist" in line and "Traceback" in path.read_text()
