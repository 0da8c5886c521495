"""The train-model flow for a REAL country (no scenario) trains the paper's CropNet v1 with the default
recipe (docs/results/victoria-reference-recipe.md). Real Prefect (the session's server), real cubes from
the DEMO catalog under a config that names no scenario, the DEMO reference map as the user's labels; one
epoch."""

from __future__ import annotations

import pytest

from cropmap.ml.checkpoint import load_checkpoint
from cropmap.ml.models import CROPNET_V1, build_model, count_parameters
from cropmap.scenarios.demo import part_bounds, read_layout
from conftest import use_prefect_env

pytestmark = pytest.mark.slow


def test_real_country_trains_cropnet_v1_with_the_default_recipe(demo_paths, prefect_server, tmp_path, monkeypatch):
    from cropmap.flows.train_model import train_model

    west = part_bounds(read_layout(demo_paths.root), "west")
    from pyproj import Transformer

    to_ll = Transformer.from_crs(32754, 4326, always_xy=True)
    (w, s), (e, n) = to_ll.transform(west[0] + 100, west[1] + 100), to_ll.transform(west[2] - 100, west[3] - 100)
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "TST.yaml").write_text(
        f"name: Testland (DEMO imagery, no scenario)\noutline: {{bbox: [{w}, {s}, {e}, {n}]}}\nhemisphere: south\n"
        "season: {start: '11-01', end: '05-31', hemisphere: south}\nyear: 2017\n"
        f"catalog: {{path: {demo_paths.catalog}, max_cloud_cover: 100, margin_days: 30}}\ntile_size: 128\n")
    monkeypatch.setenv("CROPMAP_CONFIGS_DIR", str(configs))
    use_prefect_env(monkeypatch, {"PREFECT_API_URL": prefect_server[0]})
    # only what a user must change on a 2 km area: one epoch, sampling cells that fit it (0.002 degrees:
    # ~150 samples, so that CropNet v1 trains in seconds)
    path = train_model(country="TST", reference=str(demo_paths.reference), out_dir=str(tmp_path / "runs"),
                       training={"epochs": 1, "cell_deg": 0.002})
    ckpt = load_checkpoint(path)
    assert ckpt.model_name == "cropnet" and ckpt.model_config == {"n_bands": 10, "n_classes": 8}
    n = count_parameters(ckpt.model)
    assert n == count_parameters(build_model("cropnet", n_bands=10, n_classes=8, **CROPNET_V1)) == 4_692_168
    train = ckpt.config
    assert (train["lr"], train["schedule"], train["batch_size"], train["augment"], train["epochs"],
            train["epoch_choice"]) == (3e-3, "onecycle", 64, "all", 1, "last")
    assert train["model_options"] == {}  # the registry's CropNet v1, not a slimmed net
