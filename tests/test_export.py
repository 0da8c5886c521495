"""ONNX export (cropmap export-onnx) agrees with torch on the real Victoria series within the stated
tolerance; the checkpoint carries a model card (intended use, training data, limitations) rendered as
markdown."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cropmap.ml.checkpoint import card_markdown, load_checkpoint
from cropmap.ml.export import TOLERANCE, export_onnx, onnx_probabilities


@pytest.fixture(scope="module")
def victoria_test_series(shared_data):
    from cropmap.samples.victoria import read_victoria

    return read_victoria("test")["reflectance"].transpose("sample", "band", "time").values.astype(np.float32)


def test_onnx_matches_torch_on_real_series(tiny_checkpoint, victoria_test_series, tmp_path):
    result = export_onnx(tiny_checkpoint, tmp_path / "m.onnx", check=victoria_test_series[:100])
    assert result.max_abs_diff <= TOLERANCE
    ckpt = load_checkpoint(tiny_checkpoint)
    expected = ckpt.predict_proba(victoria_test_series, device="cpu")  # the prediction stage's own path
    got = onnx_probabilities(result.path, victoria_test_series)
    assert got.shape == (len(victoria_test_series), len(ckpt.class_names))
    assert np.abs(got - expected).max() <= TOLERANCE
    assert (got.argmax(1) == expected.argmax(1)).mean() > 0.999
    hostile = victoria_test_series[:3].copy()
    hostile[0], hostile[1, 0, 5] = -np.inf, np.inf  # ±inf is no data in the graph as in the maps, never a class
    probs = onnx_probabilities(result.path, hostile)
    assert np.isnan(probs[:2]).all() and np.isfinite(probs[2]).all()


def test_cli_export_onnx_model_card_and_mlm_item(tiny_checkpoint, tmp_path, shared_data):
    from typer.testing import CliRunner

    from cropmap.cli import app

    run = CliRunner().invoke(app, ["export-onnx", str(tiny_checkpoint), "--out", str(tmp_path / "m.onnx"),
                                   "--card", str(tmp_path / "card.md"), "--mlm-item", str(tmp_path / "m.json")])
    assert run.exit_code == 0, run.output
    # the STAC MLM item validates offline (mlm v1.5.2, file, raster) and fails without a required field
    from cropmap.errors import InvalidInputError
    from cropmap.io.stac_validation import validate_stac

    used = validate_stac(tmp_path / "m.json", shared_data / "stac_schemas")
    assert any("/mlm/v1.5.2/" in u for u in used)
    item = json.loads((tmp_path / "m.json").read_text())
    classes = item["properties"]["mlm:output"][0]["classification:classes"]
    assert [c["description"] for c in classes] == list(load_checkpoint(tiny_checkpoint).class_names)
    assert item["assets"]["onnx"]["file:size"] == (tmp_path / "m.onnx").stat().st_size
    del item["properties"]["mlm:name"]
    with pytest.raises(InvalidInputError, match="mlm:name"):
        validate_stac(item, shared_data / "stac_schemas")
    assert (tmp_path / "m.onnx").stat().st_size > 1000 and "tolerance" in run.output
    text = (tmp_path / "card.md").read_text()
    for heading in ("## Intended use", "## Training data", "## Season", "## Scores", "## Limitations"):
        assert heading in text
    assert "intercropping" in text and "label licence" in text
    card = load_checkpoint(tiny_checkpoint).card
    assert card["training_data"]["classes"] and card["limitations"]
    assert card_markdown(load_checkpoint(tiny_checkpoint)) .count("\n") > 20
    missing = CliRunner().invoke(app, ["export-onnx", str(tmp_path / "none.pt"), "--out", str(tmp_path / "x.onnx")])
    assert missing.exit_code == 2 and "not found" in missing.output
