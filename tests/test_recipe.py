"""Per-run training settings (a named recipe) reach the trained network and the table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cropmap.errors import ConfigError
from cropmap.ml.checkpoint import load_checkpoint
from cropmap.research.config import load_experiment
from cropmap.research.runner import run_experiment

CONFIGS = Path(__file__).parents[1] / "configs" / "experiments"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_recipes_side_by_side(shared_data, tmp_path):
    raw = yaml.safe_load((CONFIGS / "victoria-recipe.yaml").read_text())
    small = {"model_options": {"channels": [8] * 4}, "progress": False}
    # workers=1: trained in this process (the config's 2 worker processes cost more than the 3 tiny nets;
    # tests/test_experiment.py's axes grid checks parallel training)
    raw.update(seeds=[0], target_shifts_days=[0], workers=1, output=str(tmp_path / "out"),
               cache_dir=str(tmp_path / "cache"), train={**raw["train"], **small}, forest={"n_estimators": 10},
               runs=[{"features": "2d", "model": "cropnet1d", "augment": ["none"], "recipe": "paper",
                      "train": {"lr": 1e-4, "batch_size": 256, "epochs": 2}},
                     {"features": "2d", "model": "cropnet1d", "augment": ["none"], "recipe": "current",
                      "train": {"lr": 1e-3, "batch_size": 32, "epochs": 1}},
                     {"features": "2d", "model": "cropnet1d", "augment": ["none"], "recipe": "last",
                      "train": {"lr": 1e-3, "batch_size": 32, "epochs": 1, "epoch_choice": "last"}}])
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    frame = run_experiment(load_experiment(path), log=lambda *_: None)
    assert list(frame["recipe"]) == ["paper", "current", "last"]
    md = (tmp_path / "out" / "victoria-recipe.md").read_text()
    assert "| recipe |" in md.replace("| split (test) ", "") and "recipe paper: {'batch_size': 256" in md
    assert "- networks: Adam lr 0.003, batch" in md  # the config's constant rate, named as such
    # the epoch choice is part of a checkpoint's identity: "last" is not served "current"'s cached net
    trained = [load_checkpoint(p) for p in (tmp_path / "cache").glob("*.pt")]
    assert sorted(c.config["train"]["epoch_choice"] for c in trained) == ["best", "best", "last"]
    ckpts = {c.config["train"]["lr"]: c for c in trained if c.config["train"]["epoch_choice"] == "best"}
    assert set(ckpts) == {1e-4, 1e-3}
    assert ckpts[1e-4].config["train"]["batch_size"] == 256 and ckpts[1e-3].config["train"]["epochs"] == 1
    table = pd.read_csv(tmp_path / "out" / "victoria-recipe.csv")
    assert table["ece"].between(0, 1).all() and table["ece_floor"].between(0, 1).all()
    assert "ECE raw -> calibrated (noise floor)" in md


def test_onecycle_warms_up_then_anneals_over_exactly_the_training_steps(shared_data):
    """OneCycleLR raises if stepped past its total: 41 training samples at batch 8 leave a last batch of one,
    which is skipped, so the schedule must count 5 steps an epoch, not 6. The rate peaks at ``lr`` and ends
    near zero; the constant schedule keeps ``lr``."""
    from cropmap.ml.train import TrainConfig, fit_model
    from tests.test_calibration import SEASON, _matrix

    x, y = _matrix("train")
    rows = np.concatenate([np.flatnonzero(y == c)[:7] for c in range(8)])[:52]  # 52 -> 41 train + 11 val
    base = dict(model="cropnet1d", model_options={"channels": [8] * 4}, epochs=6, lr=2e-3, batch_size=8,
                val_fraction=0.2, progress=False, device="cpu")
    lrs = {}
    for schedule in ("onecycle", "constant"):
        result = fit_model(x[rows], y[rows], window_start=0, n_bins=SEASON.n_bins, n_classes=8,
                             config=TrainConfig(**base, schedule=schedule))
        assert result.val_scores["n_train"] == 41
        lrs[schedule] = [h["lr"] for h in result.history]
    one = lrs["onecycle"]
    assert one[0] < one[1] and max(one) == pytest.approx(2e-3, rel=0.15) and one[-1] < 2e-5  # 36 steps counted for 30 would leave 2.7e-4
    assert int(np.argmax(one)) in (1, 2) and all(a >= b for a, b in zip(one[2:], one[3:]))
    assert lrs["constant"] == [2e-3] * 6
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="cosine-typo")
