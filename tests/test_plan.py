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
    out, code, seconds = arg_plan
    assert code == 0, out
    assert "27,755 tiles of 1024 px in 5 UTM zone(s)" in out
    assert re.findall(r"EPSG:(327\d\d) \(UTM \d+S, south\)", out) == ["32718", "32719", "32720", "32721", "32722"]
    assert "window 2023-11-01..2024-05-31" in out and "block searches: 396" in out
    assert re.search(r"catalog: http://127\.0\.0\.1:\d+/v1 \(sentinel-2-l2a\): UNREACHABLE", out)
    assert "season offset south 0 months" in out and "bands B02, B03" in out
    cost = re.search(r"estimate: cubes ([\d,]+) vCPU-h, inference ([\d.]+) GPU-h .* ~\$([\d,]+)", out)
    assert cost and 1100 < int(cost[1].replace(",", "")) < 1400 and 35 < float(cost[2]) < 45, out
    assert 150 < int(cost[3].replace(",", "")) < 300
    assert "gpu_px_per_s = 200000" in out and "docs/scaling.md" in out  # figures with their source
    assert seconds < 60


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
    ([], {"CROPMAP_MAX_DOLLARS": "100"}, r"estimate is \$\d+ for 27,755 tiles, more than max_dollars \$100"),
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
