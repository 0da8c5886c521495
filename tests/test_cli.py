"""Every ``cropmap`` command turns a bad input into ONE line on stderr (``error: ...`` naming the
problem) and exit code 2: no traceback, no pydantic dump with web links. The table below must hold a
case for every registered command, so a new command without one fails here."""

from __future__ import annotations

import inspect
import re
import typing
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cropmap.cli import app
from cropmap.cli.common import command, fail

# command -> (arguments with {t} for the test's folder, a fragment the one line must hold)
BAD_INPUTS: dict[str, tuple[list[str], str]] = {
    "params": (["params", "--n-bands", "0"], "n_bands >= 1"),
    "experiment": (["experiment", "{t}/bad.yaml"], "invalid experiment config: source: Field required"),
    "map": (["map", "XYZ"], "unknown country 'XYZ'"),
    "plan": (["plan", "DEMO", "--model", "{t}/bad.pt"], "bad.pt is not a readable cropmap checkpoint"),
    "train": (["train", "DEMO", "--labels", "{t}/labels.csv"], "neither a raster GDAL reads nor a vector file"),
    "cube": (["cube", "DEMO", "--out", "{t}/o", "--bbox", "5", "50", "4", "51"], "bbox must be west < east"),
    "predict": (["predict", "{t}/bad.pt", "{t}/cube.zarr", "--out", "{t}/o"], "cube.zarr not found"),
    "mosaic": (["mosaic", "{t}", "--out", "{t}/o"], "holds no class tiles"),
    "export-onnx": (["export-onnx", "{t}/bad.pt", "--out", "{t}/m.onnx"], "bad.pt is not a readable cropmap checkpoint"),
    "area sample": (["area", "sample", "{t}/bad.tif", "--out", "{t}/s.gpkg"], "bad.tif' not recognized"),
    "area estimate": (["area", "estimate", "{t}/none.tif", "{t}/s.csv", "--out", "{t}/o"], "class map"),
    "area zonal": (["area", "zonal", "{t}/bad.tif", "{t}/none.gpkg", "--field", "NAME", "--out", "{t}/o"],
                   "admin units"),
    "samples summary": (["samples", "summary", "{t}/labels.csv"], "needs its legend class_map.txt"),
    "demo build": (["demo", "build", "--out", "{t}/bad.pt/demo"], "bad.pt"),
    "demo run": (["demo", "run", "--out", "{t}/bad.pt/runs"], "cannot write outputs"),
    "scenario-model": (["scenario-model", "DEMO", "--out", "{t}/m.pt"], "trains no model of its own"),
    "transfer": (["transfer", "--training", "[1]"], "--training must be a JSON object"),
}


def _commands(typer_app, prefix: str = "") -> dict[str, typing.Callable]:
    found = {}
    for info in typer_app.registered_commands:
        found[prefix + (info.name or info.callback.__name__.replace("_", "-"))] = info.callback
    for group in typer_app.registered_groups:
        found |= _commands(group.typer_instance, prefix + group.name + " ")
    return found


def test_every_command_has_the_error_handler_and_a_bad_input_case():
    commands = _commands(app)
    wrapper = command(lambda: None).__code__
    unwrapped = [n for n, fn in commands.items() if n != "version" and fn.__code__ is not wrapper]
    assert unwrapped == [], f"commands without cropmap.cli.common.command: {unwrapped}"
    assert set(commands) - {"version"} == set(BAD_INPUTS)


def test_options_with_fixed_choices_are_literals():
    """--device and --precision offer fixed values: Literal options, refused by Typer with the choices."""
    predict = inspect.unwrap(_commands(app)["predict"])
    hints = typing.get_type_hints(predict)
    assert typing.get_args(hints["device"]) == ("cuda", "cpu")
    assert typing.get_args(hints["precision"]) == ("auto", "fp32", "bf16")
    run = CliRunner().invoke(app, ["predict", "m.pt", "c.zarr", "--out", "o", "--precision", "fp16"])
    assert run.exit_code == 2 and "'fp16' is not one of" in run.output and "'bf16'" in run.output, run.output


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: x\n")                  # an experiment without its sections
    (tmp_path / "bad.pt").write_text("not a checkpoint\n")           # a foreign file named like a checkpoint
    (tmp_path / "bad.tif").write_text("not a raster\n")              # a corrupt raster
    (tmp_path / "labels.csv").write_text("lc_id,b0\n1,0.1\n")        # a table where a raster or vector belongs
    (tmp_path / "s.csv").write_text("id,reference_class\n")
    return tmp_path


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_a_bad_input_is_one_line_and_exit_2(name, bad_files):
    args, fragment = BAD_INPUTS[name]
    run = CliRunner().invoke(app, [a.format(t=bad_files) for a in args])
    lines = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.exit_code == 2, (run.exit_code, run.output)
    assert len(lines) == 1 and fragment in lines[0], run.stderr
    assert "Traceback" not in run.output and "errors.pydantic.dev" not in run.output and "\n" not in lines[0]


# Hostile inputs of issue 33 that reach a command's first lines (their deeper cases, with real checkpoints,
# stores and maps, are in tests/test_hostile_*.py): each is one line and exit 2, never a traceback.
HOSTILE: dict[str, tuple[list[str], str]] = {
    "country config with a key given twice": (["plan", "DUP"], "key 'tile_size' is given twice"),
    "tile_size 16 over a country": (["plan", "FINE"], "estimated from its area, more than CROPMAP_MAX_PLAN_TILES"),
    "tile_size 16 with --tile-limit": (["map", "FINE", "--tile-limit", "1", "--dry-run"], ""),
    "experiment with no seeds": (["experiment", "{t}/noseeds.yaml"], "seeds: an empty list runs nothing"),
}


@pytest.fixture
def hostile_files(tmp_path, monkeypatch):
    from cropmap.io.config import DEFAULT_CONFIGS_DIR

    configs = tmp_path / "configs"
    configs.mkdir()
    bel = (DEFAULT_CONFIGS_DIR / "BEL.yaml").read_text()
    (configs / "DUP.yaml").write_text(bel.replace("code: BEL", "code: DUP") + "tile_size: 512\ntile_size: 1024\n")
    fine = re.sub(r"(?m)^tile_size: .*$", "", bel.replace("code: BEL", "code: FINE")) + "tile_size: 16\n"
    (configs / "FINE.yaml").write_text(fine)
    experiment = yaml.safe_load((DEFAULT_CONFIGS_DIR.parent / "experiments" / "victoria.yaml").read_text())
    experiment["seeds"] = []
    (tmp_path / "noseeds.yaml").write_text(yaml.safe_dump(experiment))
    monkeypatch.setenv("CROPMAP_CONFIGS_DIR", str(configs))
    monkeypatch.setenv("CROPMAP_OUTPUT_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("CROPMAP_MAX_PLAN_TILES", raising=False)
    return tmp_path


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_input_is_one_line_and_exit_2(case, hostile_files):
    """The commands on issue 33's inputs: one ``error:`` line and exit 2; a bounded plan still runs."""
    args, fragment = HOSTILE[case]
    run = CliRunner().invoke(app, [a.format(t=hostile_files) for a in args])
    assert "Traceback" not in run.output and run.exception is None or isinstance(run.exception, SystemExit), run.output
    if not fragment:  # the 16 px plan cut to one tile before it is built: the plan of one tile, exit 0
        assert run.exit_code == 0 and "1 tile" in run.output, run.output
        return
    lines = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.exit_code == 2 and len(lines) == 1 and fragment in lines[0], run.output


def test_an_unexpected_error_is_one_line_exit_1_with_the_traceback_kept(tmp_path, monkeypatch):
    """A bug (not a bad input) inside a command: one line naming it and the file with its traceback."""
    import typer

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    broken = typer.Typer()

    @broken.command()
    @command
    def divide(n: int = 0) -> None:
        print(1 / n)

    @broken.command()
    @command
    def refuse() -> None:
        raise fail("a refusal of the command's own")  # typer.Exit is no click Exit: it must pass through

    run = CliRunner().invoke(broken, ["refuse"])
    assert run.exit_code == 2 and run.stderr == "error: a refusal of the command's own\n", run.output
    run = CliRunner().invoke(broken, ["divide"])
    lines = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.exit_code == 1 and len(lines) == 1 and "Traceback" not in run.output, run.output
    assert "unexpected ZeroDivisionError: division by zero (a cropmap bug" in lines[0]
    report = Path(lines[0].split("the traceback is in ")[1].rstrip(")"))
    assert report.parent == tmp_path and "ZeroDivisionError" in report.read_text()


@pytest.mark.parametrize("module, command", [("flows.map_country", ["map", "--prefect"]),
                                             ("flows.train_model", ["train", "--prefect"]),
                                             ("flows.transfer", ["transfer"])])
def test_python_m_flows_is_the_cropmap_command(module, command, tmp_path):
    """One command line per job: ``python -m flows.X ARGS`` in a checkout is ``cropmap <command> ARGS`` (the
    same options and the same one-line errors), not a parser of its own."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    own = CliRunner().invoke(app, [*command, "XYZ" if command[0] != "transfer" else "--source=XYZ"])
    ran = subprocess.run([sys.executable, "-m", module, "XYZ" if command[0] != "transfer" else "--source=XYZ"],
                         cwd=root, capture_output=True, text=True, timeout=120)
    assert own.exit_code == ran.returncode == 2, (own.output, ran.stderr)
    errors = [[line for line in out.splitlines() if line.startswith("error:")] for out in (own.output, ran.stderr)]
    assert errors[0] == errors[1] and len(errors[0]) == 1 and "unknown country 'XYZ'" in errors[0][0], errors
    helps = [subprocess.run([sys.executable, "-m", module, "--help"], cwd=root, capture_output=True, text=True,
                            timeout=120).stdout, CliRunner().invoke(app, [command[0], "--help"]).output]
    options = [set(re.findall(r"--[a-z][a-z-]+", h)) for h in helps]
    assert options[0] == options[1] and len(options[0]) > 3, options
