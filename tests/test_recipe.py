"""Per-run training settings (a named recipe) reach the trained network and the table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from cropmap.ml.checkpoint import load_checkpoint
from cropmap.research.config import load_experiment
from cropmap.research.runner import run_experiment

CONFIGS = Path(__file__).parents[1] / "configs" / "experiments"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_recipes_side_by_side(shared_data, tmp_path):
    raw = yaml.safe_load((CONFIGS / "victoria-recipe.yaml").read_text())
    small = {"model_options": {"channels": [8] * 4}, "progress": False}
    raw.update(seeds=[0], target_shifts_days=[0], output=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
               train={**raw["train"], **small}, forest={"n_estimators": 10},
               runs=[{"features": "2d", "model": "cropnet1d", "augment": ["none"], "recipe": "paper",
                      "train": {"lr": 1e-4, "batch_size": 256, "epochs": 2}},
                     {"features": "2d", "model": "cropnet1d", "augment": ["none"], "recipe": "current",
                      "train": {"lr": 1e-3, "batch_size": 32, "epochs": 1}}])
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    frame = run_experiment(load_experiment(path), log=lambda *_: None)
    assert list(frame["recipe"]) == ["paper", "current"]
    md = (tmp_path / "out" / "victoria-recipe.md").read_text()
    assert "| recipe |" in md.replace("| split (test) ", "") and "recipe paper: {'batch_size': 256" in md
    ckpts = {load_checkpoint(p).config["train"]["lr"]: load_checkpoint(p) for p in (tmp_path / "cache").glob("*.pt")}
    assert set(ckpts) == {1e-4, 1e-3}
    assert ckpts[1e-4].config["train"]["batch_size"] == 256 and ckpts[1e-3].config["train"]["epochs"] == 1
    assert pd.read_csv(tmp_path / "out" / "victoria-recipe.csv")["ece"].between(0, 1).all()
