"""A fast ``cropmap`` (issue 34): ``cropmap --help`` and ``cropmap version`` start without the library's heavy
imports (torch, scikit-learn, Dask's distributed, Prefect, xarray, rasterio: under 1 s of CPU), and a command's
cheap checks (country, checkpoint, options, output location, labels) refuse a bad input before any Dask cluster
starts (and a missing checkpoint before the DEMO is built).

The subprocesses run with this process's environment (``PYTHONPATH`` included) from a temporary folder."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

HEAVY = ("torch", "sklearn", "distributed", "prefect", "xarray", "rasterio")


def _cropmap(*args: str) -> list[str]:
    """The installed ``cropmap`` script beside this Python, else the same through ``-c``."""
    script = Path(sys.executable).with_name("cropmap")
    if script.exists():
        return [sys.executable, str(script), *args]
    return [sys.executable, "-c", "from cropmap.cli import app; app()", *args]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """The finished subprocess and the CPU seconds (user + sys) it took."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, cwd=cwd, env=env or dict(os.environ), capture_output=True, text=True, timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return done, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def test_importing_the_cli_imports_no_heavy_library(tmp_path):
    """Deterministic: the modules of every command are registered without torch, sklearn, Dask's distributed,
    Prefect, xarray or rasterio (each command imports what it needs when it runs)."""
    code = f"import sys, cropmap.cli; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done, _ = _run([sys.executable, "-c", code], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.parametrize("args", [("version",), ("--help",)], ids=["version", "help"])
def test_version_and_help_take_under_a_second_of_cpu(args, tmp_path):
    """User + sys CPU of the whole process under 1 s (the least of 2 runs, for a loaded machine); was ~5.5 s."""
    cpu = []
    for _ in range(2):
        done, seconds = _run(_cropmap(*args), tmp_path)
        assert done.returncode == 0, done.stderr
        cpu.append(seconds)
    if args == ("version",):
        from cropmap import __version__

        assert done.stdout.strip() == __version__
    else:
        assert "map" in done.stdout and "version" in done.stdout
    assert min(cpu) < 1.0, f"cropmap {' '.join(args)}: {cpu} CPU s"


def test_a_missing_model_is_refused_before_any_cluster_or_demo_build(tmp_path):
    """``cropmap map DEMO --model /nonexistent.pt``: one line, exit 2, in seconds; Dask's distributed never
    imported (so no cluster started), and the DEMO (an empty $CROPMAP_DEMO_DIR here) not built."""
    demo_dir = tmp_path / "demo"
    demo_dir.mkdir()
    env = dict(os.environ, CROPMAP_DEMO_DIR=str(demo_dir), CROPMAP_OUTPUT_DIR=str(tmp_path / "runs"))
    code = ("import sys\nfrom cropmap.cli import app\ntry:\n    app(sys.argv[1:])\nfinally:\n"
            "    print('distributed imported:', 'distributed' in sys.modules)\n")
    started = time.perf_counter()
    done, cpu = _run([sys.executable, "-c", code, "map", "DEMO", "--model", "/nonexistent.pt"], tmp_path, env=env)
    elapsed = time.perf_counter() - started
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert errors == ["error: checkpoint /nonexistent.pt not found"], done.stderr
    assert "distributed imported: False" in done.stdout, done.stdout
    assert list(demo_dir.iterdir()) == [], "the DEMO was built before the checkpoint was checked"
    assert elapsed < 60, f"{elapsed:.1f} s ({cpu:.1f} CPU s)"


@pytest.fixture
def no_cluster(monkeypatch):
    """Any Dask client or local cluster started fails the command (exit 1, 'unexpected AssertionError')."""
    import distributed

    def started(*args, **kwargs):
        raise AssertionError("a Dask cluster was started")

    monkeypatch.setattr(distributed.Client, "__init__", started)
    monkeypatch.setattr(distributed.LocalCluster, "__init__", started)


# command -> (arguments with {t} for the test's folder, environment, a fragment of the one line)
EARLY: dict[str, tuple[list[str], dict[str, str], str]] = {
    "map, missing model": (["map", "DEMO", "--model", "{t}/none.pt"], {}, "none.pt not found"),
    "map, unreadable model": (["map", "DEMO", "--model", "{t}/bad.pt"], {},
                              "bad.pt is not a readable cropmap checkpoint"),
    "map, unknown country": (["map", "XYZ", "--model", "{t}/bad.pt"], {}, "unknown country 'XYZ'"),
    "map, malformed $CROPMAP_GPU_WORKERS": (["map", "BEL"], {"CROPMAP_GPU_WORKERS": "maybe"}, "CROPMAP_GPU_WORKERS"),
    "map, unwritable output": (["map", "BEL", "--out", "{t}/bad.pt/runs"], {}, "cannot write outputs"),
    "train, labels of no raster or vector": (["train", "BEL", "--labels", "{t}/labels.csv"], {},
                                             "neither a raster GDAL reads nor a vector file"),
    "train, unknown band": (["train", "BEL", "--bands", "B02,B99"], {}, "B99"),
    "demo run, unwritable output": (["demo", "run", "--out", "{t}/bad.pt/runs"], {}, "cannot write outputs"),
    "map --prefect, missing model": (["map", "DEMO", "--prefect", "--model", "{t}/none.pt"], {}, "none.pt not found"),
    "predict, missing cube": (["predict", "{t}/bad.pt", "{t}/none.zarr", "--out", "{t}/o"], {}, "none.zarr not found"),
    "transfer, unknown target": (["transfer", "--target", "XYZ"], {}, "unknown country 'XYZ'"),
}


@pytest.mark.parametrize("case", sorted(EARLY))
def test_cheap_checks_refuse_before_any_cluster_starts(case, tmp_path, monkeypatch, no_cluster):
    """``map`` (``--prefect`` too), ``train``, ``predict``, ``transfer`` and ``demo run`` start their local Dask cluster (or flow) only after the checks
    that need no tile: a bad input is one line and exit 2 with no cluster started (the demo is not built)."""
    args, environment, fragment = EARLY[case]
    (tmp_path / "bad.pt").write_text("not a checkpoint\n")
    (tmp_path / "labels.csv").write_text("lc_id,b0\n1,0.1\n")
    demo_dir = tmp_path / "demo"
    demo_dir.mkdir()
    monkeypatch.setenv("CROPMAP_DEMO_DIR", str(demo_dir))
    monkeypatch.setenv("CROPMAP_OUTPUT_DIR", str(tmp_path / "runs"))
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    from cropmap.cli import app

    run = CliRunner().invoke(app, [a.format(t=tmp_path) for a in args])
    lines = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.exit_code == 2, (run.exit_code, run.output)
    assert len(lines) == 1 and fragment in lines[0], run.stderr
    assert list(demo_dir.iterdir()) == []


def test_option_defaults_written_out_in_the_cli_are_the_library_s():
    """The CLI writes out the defaults of --vcpus, --gpus and --min-observed (importing their modules would
    import the library): they must stay the library's."""
    from cropmap.cli import jobs as cli_jobs
    from cropmap.cli import stages as cli_stages
    from cropmap.jobs import plan
    from cropmap.stages.cube import CubeOptions

    assert (cli_jobs.DEFAULT_VCPUS, cli_jobs.DEFAULT_GPUS) == (plan.DEFAULT_VCPUS, plan.DEFAULT_GPUS)
    assert cli_stages.MIN_OBSERVED_FRACTION == CubeOptions.min_observed_fraction
