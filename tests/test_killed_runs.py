"""Whole runs under faults, as real processes: ``cropmap map DEMO`` SIGKILLed at every stage in turn
(the STAC search, the cube, the tile prediction, the national mosaic, the STAC item), each time just before
a finished output would be renamed into place, then run again to the end; and a second run started on the
same folder while the first is working (held, with the folder's lock, just before it publishes its cube).
The runs map one tile with the session's slim model: how a run resumes is looked at, not what the model says.

The killed chain must end with the same map bytes as an undisturbed run and no temporary left; the
concurrent run must fail at once with one line naming the first, and write nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cropmap.io.locks import LOCK_NAME
from cropmap.io.storage import TEMP_MARK

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CROPMAP = str(Path(sys.executable).with_name("cropmap"))

# the CLI in this process, with the storage layer's publish step patched BEFORE cropmap's other modules
# import it: the first output whose path matches the pattern is written in full under its temporary
# name, then the process SIGKILLs itself (threads and all) instead of renaming it
_KILL_AT = """
import contextlib, fnmatch, os, signal, sys
import cropmap.io.outputs as outputs
pattern, argv = sys.argv[1], sys.argv[2:]
publish = outputs.atomic_path
@contextlib.contextmanager
def killed_before_rename(path):
    with publish(path) as tmp:
        yield tmp
        if fnmatch.fnmatch(str(path), pattern):
            print("killed at", path, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
outputs.atomic_path = killed_before_rename
from cropmap.cli import app
app(argv, prog_name="cropmap")
"""

# the same, but the process waits instead (its lock held) at the first matching output: it writes the file
# ``held`` and goes on once the file ``go`` exists
_HOLD_AT = """
import contextlib, fnmatch, os, sys, time
import cropmap.io.outputs as outputs
pattern, held, go, argv = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
publish = outputs.atomic_path
@contextlib.contextmanager
def held_before_rename(path):
    with publish(path) as tmp:
        yield tmp
        if fnmatch.fnmatch(str(path), pattern) and not os.path.exists(held):
            open(held, "w").close()
            while not os.path.exists(go):
                time.sleep(0.05)
outputs.atomic_path = held_before_rename
from cropmap.cli import app
app(argv, prog_name="cropmap")
"""

#: one pattern per stage, in the order a run reaches them. The zone mosaic's COGs are published as the
#: national mosaic's are (a COG file through ``atomic_path``, rewritten by every run): a kill there would
#: take the same path as the national one, so the chain kills only there; the zone COGs are still compared.
STAGES = {
    "search": "*/searches/*.json",
    "cube": "*/cubes/*.zarr",
    "predict": "*/tiles/*/*.class.tif",
    "national mosaic": "*/maps/*/DEMO_class.tif",
    "STAC item": "*/maps/*/DEMO.json",
}
PRODUCTS = ("DEMO_class.tif", "DEMO_confidence.tif", "DEMO_32754_class.tif", "DEMO_32754_confidence.tif",
            "accuracy.json")


@pytest.fixture(scope="module")
def env(demo_paths) -> dict:
    """The CLI's environment: the session's DEMO."""
    return {**os.environ, "CROPMAP_DEMO_DIR": str(demo_paths.root), "PYTHONPATH": str(ROOT),
            "DASK_LOGGING__DISTRIBUTED": "error"}


def _map_args(model: str, out: Path) -> list[str]:
    # one tile: every stage of the chain is reached
    return ["map", "DEMO", "--model", model, "--out", str(out), "--threads", "2", "--tile-limit", "1"]


def _cli(args: list[str], env: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([CROPMAP, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _products(out: Path) -> dict[str, bytes]:
    maps = next((out / "DEMO").glob("*/maps/*"))
    return {name: (maps / name).read_bytes() for name in PRODUCTS}


def _temporaries(out: Path) -> list[str]:
    return [str(p) for p in out.rglob(f"*{TEMP_MARK}*")]


@pytest.fixture(scope="module")
def first_and_second(env, slim_model, tmp_path_factory):
    """An undisturbed run, and a second one started on its folder while the first holds the lock (the first
    waits, just before it publishes its cube, until the second has ended)."""
    out = tmp_path_factory.mktemp("undisturbed")
    held, go = out / "held", out / "go"
    first = subprocess.Popen([sys.executable, "-c", _HOLD_AT, STAGES["cube"], str(held), str(go),
                              *_map_args(slim_model, out / "runs")], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (held.exists() and any(p.read_text().startswith("pid") for p in out.rglob(LOCK_NAME))):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        second = subprocess.run([CROPMAP, *_map_args(slim_model, out / "runs")], env=env,
                                capture_output=True, text=True, timeout=300)
        still_running = first.poll() is None
    finally:
        go.touch()
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stdout + stderr
    return out / "runs", second, still_running, stdout


def test_a_second_run_on_a_busy_folder_fails_at_once_naming_the_first(first_and_second):
    out, second, still_running, _ = first_and_second
    assert still_running  # the refusal came while the first run was working
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert second.returncode == 2 and len(errors) == 1, second.stderr
    assert "is in use by another cropmap run (pid " in errors[0] and "Traceback" not in second.stderr
    assert _temporaries(out) == []


def test_a_run_killed_at_every_stage_resumes_to_the_same_maps(first_and_second, env, slim_model, tmp_path):
    undisturbed, *_ = first_and_second
    out = tmp_path / "killed"
    for stage, pattern in STAGES.items():
        proc = subprocess.run([sys.executable, "-c", _KILL_AT, pattern, *_map_args(slim_model, out)], env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == -signal.SIGKILL, f"{stage}: {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
        assert "killed at" in proc.stdout, stage
    # every stage's output was left as a temporary once; the plain rerun removes them and finishes
    final = _cli(_map_args(slim_model, out), env)
    stdout, stderr = final.communicate(timeout=600)
    assert final.returncode == 0, stdout + stderr
    assert _temporaries(out) == []
    assert _products(out) == _products(undisturbed)
