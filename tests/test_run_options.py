"""What a user sets for a map reaches it (issue 37 part 1): the country config's ``predict:`` section, the
CLI's flags over it and the flow's ``predict`` parameter; a bad option is one line before any tile; a config
given by its path instead of a code; the map-country deployment's parameters described, ``country`` offered
as an enum of the known codes. And a map with ``probabilities`` on carries a per-class probability COG
through the zone and national mosaics whose top class is the class map's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from cropmap.cli import app
from cropmap.errors import ConfigError
from cropmap.io.config import DEFAULT_CONFIGS_DIR, known_countries, load_country
from cropmap.jobs.country_run import run_key
from cropmap.scenarios import run_predict_options
from cropmap.stages.predict_options import PredictOptions


@pytest.fixture
def configs(tmp_path) -> Path:
    folder = tmp_path / "configs"
    folder.mkdir()
    shutil.copy(DEFAULT_CONFIGS_DIR / "BEL.yaml", folder / "BEL.yaml")
    text = (folder / "BEL.yaml").read_text()
    (folder / "NLD.yaml").write_text(text.replace("code: BEL", "code: NLD")
                                     + "predict: {probabilities: true, ood: false, precision: bf16}\n")
    return folder


def test_the_configs_predict_section_reaches_the_run_and_flags_override_it_key_by_key(configs):
    config = load_country("NLD", configs)
    assert run_predict_options(config) == PredictOptions(probabilities=True, ood=False, precision="bf16")
    assert run_predict_options(config, {"ood": True, "precision": None}) == PredictOptions(
        probabilities=True, ood=True, precision="bf16")
    # the run folder is the cubes': predict options name the predictions' folder, not the run's
    assert run_key(config) == run_key(config.model_copy(update={"predict": {}}))
    assert run_key(load_country("BEL", configs)) == run_key(load_country("BEL"))


@pytest.mark.parametrize("section, says", [
    ("{probabilties: true}", "probabilties"),
    ("{precision: fp16}", "precision"),
    ("{max_filled_fraction: 2}", "max_filled_fraction"),
])
def test_a_bad_predict_option_is_one_line_before_any_tile(configs, section, says):
    text = (configs / "BEL.yaml").read_text().replace("code: BEL", "code: LUX")
    (configs / "LUX.yaml").write_text(text + f"predict: {section}\n")
    with pytest.raises(ConfigError, match=says):
        run_predict_options(load_country("LUX", configs))
    run = CliRunner().invoke(app, ["map", "LUX", "--dry-run"], env={"CROPMAP_CONFIGS_DIR": str(configs)})
    errors = [line for line in run.output.splitlines() if line.startswith("error:")]
    assert run.exit_code == 2 and len(errors) == 1 and says in errors[0] and "Traceback" not in run.output, run.output


def test_a_country_given_by_its_config_file(configs, tmp_path):
    moved = tmp_path / "elsewhere" / "my-country.yaml"
    moved.parent.mkdir()
    shutil.copy(configs / "NLD.yaml", moved)
    config = load_country(str(moved))
    assert config.code == "NLD" and config.predict["probabilities"] is True
    with pytest.raises(Exception, match="not found"):
        load_country(str(tmp_path / "missing.yaml"))
    import fsspec

    fsspec.filesystem("memory").pipe("memory://configs/KEN.yaml", moved.read_text().replace("code: NLD", "code: KEN").encode())
    assert load_country("memory://configs/KEN.yaml").code == "KEN"  # a URL, fetched once into the cache


def test_the_map_country_deployment_describes_every_parameter_and_offers_the_known_countries():
    """The schema ``prefect deploy`` makes from the installed flow, in a fresh process with the package's configs
    (the codes are read when the flow module is imported, as a deployment's build does)."""
    import os
    import subprocess
    import sys

    code = ("import json; from prefect.utilities.callables import parameter_schema; "
            "from cropmap.flows.map_country import map_country; "
            "print(json.dumps(parameter_schema(map_country).model_dump()))")
    env = {k: v for k, v in os.environ.items() if k != "CROPMAP_CONFIGS_DIR"}
    ran = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    schema = json.loads(ran.stdout.strip().splitlines()[-1])
    undescribed = [name for name, p in schema["properties"].items() if not p.get("description")]
    assert undescribed == []
    choices = schema["properties"]["country"]["anyOf"]
    assert choices[0]["enum"] == known_countries(DEFAULT_CONFIGS_DIR) and {"type": "string"} in choices


def test_probabilities_and_suggestions_through_the_map(demo_run, slim_model, tmp_path):
    """``predict: {probabilities: true}``: the zone and the national mosaic carry a per-class probability COG
    whose bands are named by class, sum to 100 (uint8 rounding: at most n_classes / 2 off) and whose top
    band is the class map's class (ties aside). ``label_suggestions``: the run proposes that many points to
    label, the least confident pixel of the map first."""
    from cropmap.jobs.executors import InlineExecutor
    from cropmap.jobs.mapping import map_country

    run = demo_run.model_copy(update={"root": str(tmp_path / "run"),
                                      "predict": PredictOptions(probabilities=True, ood=False)})
    result = map_country(run, InlineExecutor(), model=slim_model, tile_limit=2, label_suggestions=6)
    # labelling suggestions as a product of the run (issue 37 part 4): spaced, least confident first
    from cropmap.stages.area import SUGGESTION_DESIGN, read_sample

    points = read_sample(result.area["suggestions"])
    assert len(points) == 6 and (points["design"] == SUGGESTION_DESIGN).all() and not points["reference_class"].any()
    with rasterio.open(result.mosaic.cogs["confidence"]) as src:
        confidence = src.read(1)
    assert points["confidence"].min() == confidence[confidence != 255].min()
    maps = [result.mosaic, *result.zones.values()]
    for mosaic in maps:
        assert set(mosaic.cogs) >= {"class", "confidence", "probability"}, mosaic.cogs
        with rasterio.open(mosaic.cogs["probability"]) as p, rasterio.open(mosaic.cogs["class"]) as c:
            probs, classes, names = p.read().astype(int), c.read(1), list(p.descriptions)
        mapped = classes != 255
        assert mapped.mean() > 0.5 and len(names) == probs.shape[0] and all(names)
        total = probs[:, mapped].sum(axis=0)
        assert np.abs(total - 100).max() <= probs.shape[0] / 2, np.unique(total)
        top = probs[:, mapped].max(axis=0)
        at_class = np.take_along_axis(probs[:, mapped], classes[mapped][None].astype(int), axis=0)[0]
        assert (at_class == top).all()  # the class is a top band (ties aside, the argmax)
        item = json.loads(Path(mosaic.stac_item).read_text())
        asset = next(a for k, a in item["assets"].items() if k.endswith("probability") or k == "probability")
        bands = asset.get("raster:bands", asset.get("bands", []))
        assert [b["description"].removeprefix("probability of ").split(" (")[0] for b in bands] == names
