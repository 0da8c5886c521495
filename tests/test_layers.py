"""The layout holds: layers import only downwards (import-linter), and the DEMO lives only in scenarios/."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = str(Path(sys.executable).with_name("lint-imports"))


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(root)})


def test_layers_contract_is_kept_and_fails_on_an_upward_import(tmp_path):
    assert _lint(ROOT).returncode == 0, _lint(ROOT).stdout
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "cropmap", copy / "cropmap", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "flows", copy / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    season = copy / "cropmap" / "core" / "season.py"
    # a core module reaching up into the jobs layer: the contract must break, naming the import
    season.write_text(season.read_text() + "\nfrom cropmap.jobs import country_run  # noqa: E402,F401\n")
    broken = _lint(copy)
    assert broken.returncode != 0 and "BROKEN" in broken.stdout, broken.stdout
    assert "cropmap.core.season -> cropmap.jobs.country_run" in broken.stdout, broken.stdout


def test_demo_is_named_only_in_scenarios_and_configs():
    hits = []
    for path in [*ROOT.glob("cropmap/**/*.py"), *ROOT.glob("flows/**/*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"[\"']DEMO[\"']", line):
                hits.append(f"{path.relative_to(ROOT)}:{n}")
    assert hits and all(h.startswith("cropmap/scenarios/") for h in hits), hits


def test_no_module_over_400_lines():
    long = {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
            for p in [*ROOT.glob("cropmap/**/*.py"), *ROOT.glob("flows/*.py")]}
    assert {p: n for p, n in long.items() if n > 400} == {}


def test_every_prefect_task_takes_the_parameters_of_its_job_function():
    """flows/tasks.py wraps each job function in a task with its own signature: a parameter added to
    the job (and passed by the jobs) but not to the task fails every flow run, so they must agree."""
    import inspect

    from cropmap.flows.tasks import executor

    pairs = executor().tasks.items()
    assert pairs
    for job, task in pairs:
        wanted = list(inspect.signature(job).parameters)
        given = list(inspect.signature(task.fn).parameters)
        assert given == wanted, f"task {task.name}: {given} != {job.__name__}{wanted}"


def public_names_in_two_layers(root: Path = ROOT / "cropmap") -> dict[str, list[str]]:
    """Public functions and classes defined under one name in modules of different layers. Allowed: the same
    layer (``prepare`` of each scenario: one interface), a flow or Prefect task named as the job it wraps
    (``flows.tasks.cube_tile`` runs ``jobs.tiles.cube_tile``), and ``main`` (a module's entry point)."""
    import ast
    from collections import defaultdict

    where = defaultdict(set)
    for path in root.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_"):
                where[node.name].add(path.relative_to(root).with_suffix("").as_posix())
    clashes = {}
    for name, modules in where.items():
        layers = {m.split("/")[0] for m in modules}
        if name == "main" or len(layers) < 2 or layers == {"flows", "jobs"}:
            continue
        clashes[name] = sorted(modules)
    return clashes


def test_no_public_name_means_two_things_in_two_layers(tmp_path):
    assert public_names_in_two_layers() == {}
    copy = tmp_path / "cropmap"
    for sub in ("jobs", "stages"):
        (copy / sub).mkdir(parents=True)
    (copy / "jobs" / "tiles.py").write_text("def predict_tile(run, model, tile_id):\n    pass\n")
    (copy / "stages" / "predict.py").write_text("def predict_tile(model, cube, out_dir):\n    pass\n")
    assert public_names_in_two_layers(copy) == {"predict_tile": ["jobs/tiles", "stages/predict"]}
