"""Hostile checkpoints are refused at load with one line and exit 2 (never a map of nodata published with
exit 0, never a traceback, never an unbounded allocation); the ONNX export carries the checkpoint's
temperature, so its probabilities are the maps' calibrated ones, and says so in its metadata and MLM item."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cropmap.cli import app


@pytest.fixture(scope="module")
def cube(tiny_checkpoint, tmp_path_factory) -> Path:
    """One 4 x 4 tile cube of real Victoria series, the kind `cropmap predict` takes."""
    from builders import victoria_tiles

    (path,), _ = victoria_tiles(tmp_path_factory.mktemp("cube"), rows=1, cols=1, ny=4, nx=4)
    return path


def _edited(tiny_checkpoint: Path, folder: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of the session's checkpoint with its saved dict changed by ``edit``."""
    blob = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    edit(blob)
    path = folder / "hostile.pt"
    torch.save(blob, path)
    return path


def _set(*keys: str, value) -> Callable[[dict], None]:
    def edit(blob: dict) -> None:
        target = blob
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return edit


def _more_classes(blob: dict) -> None:
    blob["class_names"] = [*blob["class_names"], "extra"]
    blob["class_colours"] = [*blob["class_colours"], "#000000"]


def _fewer_classes(blob: dict) -> None:
    blob["class_names"], blob["class_colours"] = blob["class_names"][:-1], blob["class_colours"][:-1]


def _nan_mean(blob: dict) -> None:
    blob["normalisation"]["mean"][0] = float("nan")


def _zero_std(blob: dict) -> None:
    blob["normalisation"]["std"][3] = 0.0


def _wider_head(blob: dict) -> None:
    blob["model_config"]["n_classes"] = 9
    _more_classes(blob)


def _nan_weights(blob: dict) -> None:
    blob["state_dict"]["head.bias"][0] = float("nan")


# case -> (edit of the saved dict, a fragment the one error line must hold)
HOSTILE: dict[str, tuple[Callable[[dict], None], str]] = {
    "nan mean": (_nan_mean, "normalisation mean of band B02 is nan, not a finite number"),
    "zero std": (_zero_std, "normalisation std of band B05 is 0.0, not a positive number"),
    "zero temperature": (_set("temperature", value=0.0), "temperature 0.0 is not a positive number"),
    "head unlike model_config": (_wider_head, "weights do not match model_config (size mismatch for head"),
    "unknown model option": (_set("model_config", "width", value=3), "model 'cropnet' has no option 'width'"),
    "huge channels": (_set("model_config", "channels", value=[65536] * 4),
                      "option channels=[65536, 65536, 65536, 65536] makes 270,585,626,632 parameters"),
    "more class names": (_more_classes, "9 class names for a head of 8 classes"),
    "fewer class names": (_fewer_classes, "7 class names for a head of 8 classes"),
    "class colours unlike names": (_set("class_colours", value=["#000000"]), "1 class colours for 8 classes"),
    "nan weights": (_nan_weights, "weights 'head.bias' hold NaN or infinite values"),
}


def _one_error_line(run, fragment: str) -> None:
    lines = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.exit_code == 2, (run.exit_code, run.output)
    assert len(lines) == 1 and fragment in lines[0], run.stderr
    assert "Traceback" not in run.output and "retrain the model or use another checkpoint" in lines[0]


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_predict_refuses_a_hostile_checkpoint_in_one_line(case, tiny_checkpoint, cube, tmp_path):
    """A checkpoint with a NaN mean, a zero std or temperature, a head unlike its config or classes, an
    unknown or huge model option, or NaN weights: `cropmap predict` says which, exit 2, no tile written."""
    edit, fragment = HOSTILE[case]
    bad = _edited(tiny_checkpoint, tmp_path, edit)
    start = time.perf_counter()
    run = CliRunner().invoke(app, ["predict", str(bad), str(cube), "--out", str(tmp_path / "out")])
    _one_error_line(run, fragment)
    assert time.perf_counter() - start < 30  # refused from the options, nothing allocated
    assert not list(tmp_path.glob("out/*.tif"))


@pytest.mark.parametrize("command", ["export-onnx", "plan"])
def test_export_and_plan_refuse_a_zero_temperature(command, tiny_checkpoint, tmp_path):
    """A temperature of 0 (every probability NaN): `export-onnx` and `plan --model` say so, exit 2."""
    bad = _edited(tiny_checkpoint, tmp_path, _set("temperature", value=0.0))
    args = (["export-onnx", str(bad), "--out", str(tmp_path / "m.onnx")] if command == "export-onnx"
            else ["plan", "DEMO", "--model", str(bad)])
    _one_error_line(CliRunner().invoke(app, args), "temperature 0.0 is not a positive number")
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_applies_the_checkpoint_temperature(tiny_checkpoint, tmp_path, shared_data):
    """T = 2: the ONNX probabilities are the maps' calibrated ones, its metadata and MLM item say so."""
    from cropmap.ml.checkpoint import load_checkpoint
    from cropmap.ml.export import onnx_probabilities
    from cropmap.samples.victoria import read_victoria

    x = read_victoria("test")["reflectance"].transpose("sample", "band", "time").values[:200].astype(np.float32)
    calibrated = _edited(tiny_checkpoint, tmp_path, _set("temperature", value=2.0))
    run = CliRunner().invoke(app, ["export-onnx", str(calibrated), "--out", str(tmp_path / "m.onnx"),
                                   "--mlm-item", str(tmp_path / "m.json")])
    assert run.exit_code == 0, run.output
    ckpt = load_checkpoint(calibrated)
    maps = ckpt.predict_proba(x, device="cpu")  # what predict writes as confidence
    raw = ckpt.predict_proba(x, device="cpu", calibrated=False)
    got = onnx_probabilities(tmp_path / "m.onnx", x)
    assert np.abs(got - maps).max() <= 1e-5
    assert got.max(1).mean() < raw.max(1).mean() - 0.01  # softened, not the uncalibrated softmax
    from cropmap.ml.export import onnx_metadata  # (after the probabilities: the failure before this fix)

    meta = onnx_metadata(tmp_path / "m.onnx")
    assert meta["temperature"] == 2.0 and meta["bands"] == list(ckpt.bands)
    assert meta["class_names"] == list(ckpt.class_names) and meta["n_bins"] == ckpt.n_bins
    item = json.loads((tmp_path / "m.json").read_text())
    assert item["properties"]["cropmap:temperature"] == 2.0
    assert "calibrated" in item["properties"]["mlm:output"][0]["description"]


def test_a_cropnet1d_checkpoint_exports(tiny_checkpoint, tmp_path):
    """A CropNet1D checkpoint (bands as channels, no matrix axis): exported and checked, not a traceback."""
    from cropmap.ml.checkpoint import load_checkpoint, save_checkpoint
    from cropmap.ml.export import export_onnx
    from cropmap.ml.models import build_model

    base = load_checkpoint(tiny_checkpoint)
    config = {"n_bands": len(base.bands), "n_classes": len(base.class_names), "channels": [8, 8], "dropout": 0.0}
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "1d.pt", model=build_model("cropnet1d", **config).eval(), model_name="cropnet1d",
                           model_config=config, feature_kind="2d", bands=list(base.bands), season=base.season,
                           n_bins=base.n_bins, normalisation=base.normalisation, class_names=list(base.class_names),
                           class_colours=None, config={}, scores={}, temperature=1.5)
    result = export_onnx(path, tmp_path / "1d.onnx")
    assert result.max_abs_diff <= result.tolerance and result.temperature == 1.5
