"""docs/architecture.md cannot drift from the code: every module of the package has a row in its module
table, every row names a module that exists, every name a row cites in backticks is defined by that row's
module, and every dotted name the page cites (``jobs.tiles.cube_tile``) resolves."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
PACKAGE = ROOT / "cropmap"
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\(.*\))?$")
DOTTED = re.compile(r"^(core|io|ml|samples|stages|jobs|scenarios|research|cli|flows)(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def _modules_of_the_package(package: Path = PACKAGE) -> set[str]:
    """``core/season``, ``ml/models/cropnet``, ``errors`` ...; a package's ``__init__`` counts (as the
    package's path) only when it defines something of its own."""
    found = set()
    for path in package.rglob("*.py"):
        rel = path.relative_to(package).with_suffix("").as_posix()
        if path.name == "__init__.py":
            body = ast.parse(path.read_text()).body
            if not any(isinstance(node, ast.FunctionDef | ast.ClassDef) for node in body):
                continue
            rel = rel.removesuffix("/__init__")
        found.add(rel)
    return found


def _table_rows(text: str) -> list[tuple[list[str], list[str]]]:
    """(modules of the first column, backticked names of the second) for each row of ``## Modules``."""
    section = text.split("## Modules", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or cells[0] in ("module", "---"):
            continue
        rows.append((re.findall(r"`([^`]+)`", cells[0]), re.findall(r"`([^`]+)`", cells[1])))
    return rows


def _module(path: str):
    return importlib.import_module("cropmap." + path.replace("/", "."))


def _cli_commands() -> dict[str, str]:
    """``cropmap`` command (``area sample``) -> the module of its function."""
    from cropmap.cli import app

    def walk(typer_app, prefix: str = "") -> dict[str, str]:
        found = {prefix + (info.name or info.callback.__name__.replace("_", "-")): info.callback.__module__
                 for info in typer_app.registered_commands}
        for group in typer_app.registered_groups:
            found |= walk(group.typer_instance, prefix + group.name + " ")
        return found

    return walk(app)


def check_architecture(doc: str, package: Path = PACKAGE) -> list[str]:
    """The problems of ``doc`` against the package, one line each (empty when the page is true)."""
    problems = []
    rows = _table_rows(doc)
    listed = [m for modules, _ in rows for m in modules]
    actual = _modules_of_the_package(package)
    problems += [f"module without a row: {m}" for m in sorted(actual - set(listed))]
    problems += [f"row for a module that does not exist: {m}" for m in sorted(set(listed) - actual)]
    commands = _cli_commands()
    for modules, names in rows:
        present = [_module(m) for m in modules if m in actual]
        if any(m.startswith("cli/") and m != "cli/common" for m in modules):
            for name in names:  # a command module's row names its commands
                if commands.get(name) not in [f"cropmap.{m.replace('/', '.')}" for m in modules]:
                    problems.append(f"{', '.join(modules)} cites the command `{name}`, which none of them registers")
            continue
        for name in names:
            if DOTTED.match(name) or not IDENTIFIER.match(name):
                continue  # dotted names are checked below; paths, options and values are not names
            bare = name.split("(")[0]
            if present and not any(hasattr(m, bare) for m in present):
                problems.append(f"{', '.join(modules)} cites `{bare}`, which none of them defines")
    for name in sorted(set(re.findall(r"`([^`]+)`", doc))):
        bare = name.split("(")[0]
        if DOTTED.match(bare):
            module, _, attr = bare.rpartition(".")
            try:
                ok = hasattr(_module(module.replace(".", "/")), attr)
            except ImportError:
                try:
                    ok = bool(_module(bare.replace(".", "/")))
                except ImportError:
                    ok = False
            if not ok:
                problems.append(f"`{bare}` does not resolve")
    return problems


def test_architecture_md_names_every_module_and_only_names_that_exist():
    assert check_architecture(DOC.read_text()) == []


@pytest.mark.parametrize("edit, expected", [
    (lambda doc: doc.replace("| `core/season` |", "| `core/seasons` |"), "module without a row: core/season"),
    (lambda doc: doc.replace("`jobs.tiles.cube_tile`", "`jobs.tiles.mosaic_run`"),
     "`jobs.tiles.mosaic_run` does not resolve"),
    (lambda doc: doc.replace("`load_checkpoint`", "`load_model_file`"), "cites `load_model_file`"),
    (lambda doc: doc.replace("`plan`, `map`", "`plan`, `map-country`"), "the command `map-country`"),
])
def test_the_check_fails_when_the_page_drifts(edit, expected):
    """A renamed module, a function gone, a module added without a line: each is caught."""
    problems = check_architecture(edit(DOC.read_text()))
    assert any(expected in p for p in problems), problems


def test_the_check_fails_when_a_module_is_added_without_a_row(tmp_path):
    copy = tmp_path / "cropmap"
    copy.mkdir()
    for path in PACKAGE.rglob("*.py"):
        target = copy / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    (copy / "stages" / "new_product.py").write_text('"""A product without a row."""\n')
    assert "module without a row: stages/new_product" in check_architecture(DOC.read_text(), copy)


TESTS = ROOT / "tests"


def check_test_index(index: str, package: Path = PACKAGE, tests: Path = TESTS) -> list[str]:
    """tests/README.md's rule against the folders: a module's tests are ``test_<name>.py`` (leading ``_``
    dropped) or ``test_<folder>.py`` for the modules of a package inside a layer (``ml/models/``), else the index's first table names the
    files that test it; a test file not named after a module or folder has a row in its second table."""
    modules = [p for p in package.rglob("*.py") if p.name != "__init__.py"]

    def by_name(path: Path) -> set[str]:  # a layer's folder (jobs/) is not a package: test_jobs.py would be cli/jobs.py's
        inner = path.parent.parent != package and path.parent != package
        return {f"test_{path.stem.lstrip('_')}.py"} | ({f"test_{path.parent.name}.py"} if inner else set())

    own = set().union(*map(by_name, modules))
    files = {p.name for p in tests.glob("test_*.py")}
    tables = index.split("\n## ")
    listed = dict(re.findall(r"^\| `cropmap/(\S+)` \| (.*) \|$", tables[1], re.M))
    behaviours = set(re.findall(r"^\| (test_\w+\.py) \|", tables[2], re.M))
    problems = []
    for path in modules:
        rel = path.relative_to(package).as_posix()
        found_by_name = by_name(path) & files
        if rel in listed and found_by_name:
            problems.append(f"{rel} has {sorted(found_by_name)[0]}: drop its row")
        elif not found_by_name and rel not in listed:
            problems.append(f"module without tests by name or a row: {rel}")
    for rel, cited in listed.items():
        if not (package / rel).exists():
            problems.append(f"row of a module that does not exist: {rel}")
        for name in re.findall(r"test_\w+\.py", cited):
            if name not in files:
                problems.append(f"{rel}'s row cites {name}, which does not exist")
    for name in sorted(files - own - behaviours):
        problems.append(f"test file named after no module and without a row: {name}")
    for name in sorted(behaviours - files):
        problems.append(f"row of a test file that does not exist: {name}")
    for name in sorted(behaviours & own):
        problems.append(f"{name} is named after a module: drop its row")
    return problems


def test_a_modules_tests_are_found_by_its_name_or_the_index():
    assert check_test_index((TESTS / "README.md").read_text()) == []


@pytest.mark.parametrize("edit, expected", [
    (lambda text: text.replace("| `cropmap/jobs/tiles.py` |", "| `cropmap/jobs/tile.py` |"),
     "module without tests by name or a row: jobs/tiles.py"),
    (lambda text: text.replace("| test_faults.py |", "| test_fault.py |"),
     "test file named after no module and without a row: test_faults.py"),
    (lambda text: text.replace("| `cropmap/io/locks.py` | test_killed_runs.py |",
                               "| `cropmap/io/locks.py` | test_locks_gone.py |"), "cites test_locks_gone.py"),
])
def test_the_index_check_fails_when_the_tests_drift(edit, expected):
    problems = check_test_index(edit((TESTS / "README.md").read_text()))
    assert any(expected in p for p in problems), problems
