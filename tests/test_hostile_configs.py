"""Hostile and unlucky configs and area samples (issue 33): YAML keys given twice in any config, legend
names that differ only by case, experiments with nothing to run or without the recipe they were made
with, and `cropmap area estimate` on a sample drawn on another map or not labelled yet. Each is refused
in one line before anything is trained or written; a full recipe is recorded in the experiment's report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml
from typer.testing import CliRunner

from cropmap.cli import app
from cropmap.errors import ConfigError, InvalidInputError
from cropmap.io.config import DEFAULT_CONFIGS_DIR, load_country

CONFIGS = DEFAULT_CONFIGS_DIR.parent
LEGEND = (CONFIGS / "legends" / "uga-ssd-other.yaml").read_text()
VICTORIA = (CONFIGS / "experiments" / "victoria.yaml").read_text()


def _load_legend(path: Path):
    from cropmap.io.config import load_legend  # per test: where it is missing, only the legend tests fail

    return load_legend(path)


def _load_experiment(path: Path):
    from cropmap.research.config import load_experiment

    return load_experiment(path)


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def test_legend_with_a_key_given_twice_is_refused(tmp_path):
    """A legend whose mapping names `maize:` twice (YAML would keep the last, dropping maize)."""
    path = tmp_path / "legend.yaml"
    text = LEGEND.replace("  maize: maize\n", "  maize: maize\n  maize: null\n")
    path.write_text(text)
    line = text.splitlines().index("  maize: null") + 1
    with pytest.raises(ConfigError) as err:
        _load_legend(path)
    assert f"legend.yaml: not valid YAML at line {line}: key 'maize' is given twice" in _one_line(err)


@pytest.mark.parametrize("section", ["mapping", "classes"])
def test_legend_names_differing_only_by_case_are_refused(tmp_path, section):
    """`Maize:` and `maize:` in a legend's mapping (matched case-insensitively: one silently wins), or as classes."""
    path = tmp_path / "legend.yaml"
    path.write_text(LEGEND.replace("  maize: maize\n", "  Maize: maize\n  maize: null\n") if section == "mapping"
                    else "classes: [sorghum, Maize, maize]\n")
    with pytest.raises(ConfigError) as err:
        _load_legend(path)
    assert f"{section} 'Maize' and 'maize' differ only by case" in _one_line(err)


def test_experiment_naming_a_legend_with_a_case_clash_is_refused_when_loaded(tmp_path):
    """An experiment whose legend maps `Maize:` and `maize:`: refused before any sample is read or net trained."""
    (tmp_path / "legend.yaml").write_text(LEGEND.replace("  maize: maize\n", "  Maize: maize\n  maize: null\n"))
    path = tmp_path / "victoria.yaml"
    path.write_text(VICTORIA + "legend: legend.yaml\n")
    with pytest.raises(ConfigError) as err:
        _load_experiment(path)
    assert "victoria.yaml: invalid experiment config:" in _one_line(err) and "differ only by case" in str(err.value)


def test_country_config_with_a_key_given_twice_is_refused(tmp_path):
    """A country config that sets `tile_size:` twice: the run would silently take the last one."""
    text = (DEFAULT_CONFIGS_DIR / "BEL.yaml").read_text()
    (tmp_path / "BEL.yaml").write_text(text + "tile_size: 256\n")
    with pytest.raises(ConfigError) as err:
        load_country("BEL", configs_dir=tmp_path)
    assert f"not valid YAML at line {text.count(chr(10)) + 1}: key 'tile_size' is given twice" in _one_line(err)


def test_experiment_with_a_key_given_twice_is_refused(tmp_path):
    """An experiment that names `seeds:` twice."""
    path = tmp_path / "victoria.yaml"
    path.write_text(VICTORIA + "seeds: [0]\n")
    with pytest.raises(ConfigError, match="key 'seeds' is given twice"):
        _load_experiment(path)


@pytest.mark.parametrize("axis", ["seeds", "runs"])
def test_empty_seeds_or_runs_are_refused_at_validation(tmp_path, axis):
    """`seeds: []` or `runs: []`: a grid with nothing to run (was an UnboundLocalError traceback)."""
    raw = yaml.safe_load(VICTORIA)
    raw[axis] = []
    path = tmp_path / "victoria.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        _load_experiment(path)
    assert f"invalid experiment config: {axis}: an empty list runs nothing" in _one_line(err)
    result = CliRunner().invoke(app, ["experiment", str(path)])
    assert result.exit_code == 2 and "an empty list runs nothing" in result.output, result.output


def test_network_run_without_its_recipe_is_refused(tmp_path):
    """An old config whose `train:` omits schedule and epoch_choice (today's defaults: a newer recipe)."""
    raw = yaml.safe_load(VICTORIA)
    raw["train"] = {k: v for k, v in raw["train"].items() if k not in ("schedule", "epoch_choice")}
    path = tmp_path / "victoria.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        _load_experiment(path)
    assert "run 2d/cropnet leaves schedule, epoch_choice to cropmap's defaults" in _one_line(err)
    raw["runs"] = [run for run in raw["runs"] if run["model"] == "rf"]  # forests take no training recipe
    path.write_text(yaml.safe_dump(raw))
    assert _load_experiment(path).runs


def test_report_records_every_training_setting_as_run(tmp_path):
    """The experiment's report names the full recipe (schedule, epoch choice, precision ...) it trained with."""
    from cropmap.research.report import write_report
    from cropmap.research.variants import variants

    cfg = _load_experiment(CONFIGS / "experiments" / "victoria.yaml")
    frame = pd.DataFrame([{"split": "source -> target", "features": "2d", "model": "cropnet", "augment": "none",
                           "seed": s, "shift_days": 0, "oa": 0.9, "balanced_accuracy": 0.85, "macro_f1": 0.8,
                           "kappa": 0.7, "recall_wheat": 0.6,
                           "train_seconds": 1.0} for s in (0, 1)])
    write_report(cfg, variants(cfg), frame, tmp_path, "cropmap experiment victoria.yaml")
    md = (tmp_path / "victoria.md").read_text()
    assert "| 0.850 ± 0.000 | 0.800 ± 0.000 | 0.700 ± 0.000 | wheat 0.600 |" in md  # balanced acc., lowest recall
    assert ("- trained as (2d/cropnet, 2d/cropnet1d): epochs=12, lr=0.001, batch_size=32, weight_decay=0.0, "
            "schedule=constant, val_fraction=0.2, epoch_choice=best, batching=fixed, precision=fp32") in md


@pytest.fixture(scope="module")
def two_maps(demo_paths, tmp_path_factory):
    """The DEMO reference map as a class map, and "another map": the same grid with every class moved by one."""
    folder = tmp_path_factory.mktemp("maps")
    with rasterio.open(demo_paths.reference) as src:
        profile, data = src.profile, src.read(1)
        tags = src.tags(1) | src.tags()
    names = [tags[f"class_{i}"] for i in range(int(data[data != 255].max()) + 1)]
    other = np.where(data == 255, 255, (data + 1) % len(names)).astype(data.dtype)
    paths = []
    for name, values in (("this", data), ("other", other)):
        with rasterio.open(folder / f"{name}_class.tif", "w", **profile) as dst:
            dst.write(values, 1)
            dst.update_tags(class_names=json.dumps(names))
        paths.append(folder / f"{name}_class.tif")
    return paths[0], paths[1], demo_paths.reference


def test_area_estimate_refuses_a_sample_drawn_on_another_map(two_maps, tmp_path):
    """`cropmap area estimate` on a labelled sample drawn on another map (only the flow checked it)."""
    this, other, reference = two_maps
    sample = tmp_path / "s.csv"
    run = CliRunner().invoke(app, ["area", "sample", str(other), "--out", str(sample), "--n", "60",
                                   "--min-per-class", "5", "--reference", str(reference)])
    assert run.exit_code == 0, run.output
    result = CliRunner().invoke(app, ["area", "estimate", str(this), str(sample), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "the sample was drawn on another map" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # no report of a map the sample does not describe


def test_area_estimate_of_an_unlabelled_sample_says_what_to_fill(two_maps, tmp_path):
    """An unlabelled sample (reference_class empty) named as such, not as "fewer than 2 sample units"."""
    this, _, _ = two_maps
    sample = tmp_path / "s.gpkg"
    assert CliRunner().invoke(app, ["area", "sample", str(this), "--out", str(sample), "--n", "60",
                                    "--min-per-class", "5"]).exit_code == 0
    result = CliRunner().invoke(app, ["area", "estimate", str(this), str(sample), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())
    assert "the sample has no reference labels yet (60 units, reference_class empty): fill reference_class" in line
    assert not (tmp_path / "out").exists()


def test_partly_labelled_sample_names_the_classes_to_label(two_maps, tmp_path):
    """A sample with one mapped class labelled only once: the class is named, with the unlabelled count."""
    from cropmap.stages.area import draw_sample, estimate_areas, label_from_reference, map_strata

    this, _, reference = two_maps
    strata = map_strata(this)
    sample = label_from_reference(draw_sample(strata, np.minimum(strata.pixels, 4), seed=0), strata, reference)
    first = strata.names[int(np.flatnonzero(strata.pixels)[0])]
    sample.loc[sample.index[sample["stratum"] == first][1:], "reference_class"] = ""
    with pytest.raises(InvalidInputError) as err:
        estimate_areas(strata, sample)
    assert f"fewer than 2 labelled sample units: {first} (1); 3 of {len(sample)} units have no reference_class" \
        in _one_line(err)
