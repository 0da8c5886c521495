"""The experiment grid end to end on a tiny file in the CropGlobe layout (real Victoria spectra in it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from cropmap.cli import app
from cropmap.core.season import Season
from cropmap.errors import ConfigError
from cropmap.ml.checkpoint import load_checkpoint
from cropmap.research.config import Minority, load_experiment
from cropmap.research.runner import run_experiment
from cropmap.research.variants import minority_subsample, variants, window_start
from cropmap.samples.victoria import read_victoria

CONFIGS = Path(__file__).parents[1] / "configs" / "experiments"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cropglobe_file(folder: Path, iso3: str, split: str, per_class: int) -> None:
    """``median_S2_{ISO3}_month1-12_day5.npz``: fea (N, 10, 73) x 10000, lbl (N,) in 0..6."""
    ds = read_victoria(split)
    y = ds["label"].values.astype(int)
    rows = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(7)])  # 7 classes like CropGlobe
    fea = np.round(ds["reflectance"].values[rows].transpose(0, 2, 1) * 10000).astype(np.uint16)
    np.savez(folder / f"median_S2_{iso3}_month1-12_day5.npz", fea=fea, lbl=y[rows].astype(np.int64))


@pytest.fixture()
def tiny_config(shared_data, tmp_path):
    _cropglobe_file(tmp_path, "FRA", "train", 10)
    _cropglobe_file(tmp_path, "BEL", "test", 6)
    cfg = yaml.safe_load((CONFIGS / "cropglobe-fra-bel.yaml").read_text())  # the shipped scenario, made tiny
    cfg["source"]["path"] = str(tmp_path / "median_S2_FRA_month1-12_day5.npz")
    cfg["target"]["path"] = str(tmp_path / "median_S2_BEL_month1-12_day5.npz")
    cfg.update(seeds=[0, 1], target_shifts_days=[0, 10], output=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
               train={"epochs": 1, "lr": 1e-3, "batch_size": 16, "val_fraction": 0.1, "schedule": "onecycle",
                      "epoch_choice": "last", "progress": False, "model_options": {"channels": [8] * 4}},
               forest={"n_estimators": 10},
               runs=[{"features": "2d", "model": "cropnet1d", "augment": ["all"]},
                     {"features": "1d", "model": "rf", "augment": ["none", "shift"], "augment_copies": 1},
                     {"features": "harmonic", "model": "rf"}])
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_grid_writes_table_csv_confusions_and_reuses_checkpoints(tiny_config, tmp_path):
    cfg = load_experiment(tiny_config)
    assert cfg.season.n_bins == 43 and (cfg.context_season.n_bins == 73)
    frame = run_experiment(cfg, command="cropmap experiment tiny.yaml", log=lambda _: None)
    assert len(frame) == 4 * 2 * 2  # 4 runs x 2 seeds x 2 shifts
    assert set(frame.shift_days) == {0, 10} and frame.oa.between(0, 1).all()
    md = (tmp_path / "out" / "cropglobe-fra-bel.md").read_text()
    assert "cropmap experiment tiny.yaml" in md and "| 2d | cropnet1d | all |" in md and "OA +10 d" in md
    assert "| harmonic | rf | none |" in md and "± " in md
    assert "- networks: Adam with a onecycle schedule peaking at lr 0.001, batch 16, 1 epochs" in md  # the default
    csv = pd.read_csv(tmp_path / "out" / "cropglobe-fra-bel.csv")
    assert len(csv) == 16 and "f1_corn" in csv.columns
    nets, forests = csv[csv.model == "cropnet1d"], csv[csv.model == "rf"]
    # error detection: networks have the OOD score and confidence, forests confidence only
    assert nets.ood_auroc_errors.between(0, 1).all() and nets.ood_flagged.between(0, 1).all()
    assert forests.ood_auroc_errors.isna().all() and csv.conf_auroc_errors.between(0, 1).all()
    assert (csv.conf_oa_at_80 >= 0).all() and "AUROC errors: OOD" in md
    assert (tmp_path / "out" / "cropglobe-fra-bel" / "confusion_2d_cropnet1d_all.png").exists()
    ckpts = sorted((tmp_path / "cache").glob("*.pt"))
    assert len(ckpts) == 2  # one network per seed
    # a second run trains nothing and gives the same figures
    again = run_experiment(cfg, log=lambda _: None)
    net = again[again.model == "cropnet1d"]
    assert net.cached.all()
    assert np.allclose(net.oa.values, frame[frame.model == "cropnet1d"].oa.values)


def test_cli_experiment_with_seed_override(tiny_config, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["experiment", str(tiny_config), "--seeds", "3", "--output", str(out)])
    assert result.exit_code == 0, result.output
    csv = pd.read_csv(out / "cropglobe-fra-bel.csv")
    assert set(csv.seed) == {3}


def test_axes_grid_with_parallel_training(tiny_config, tmp_path):
    """Bin length x class subset x minority cut on the tiny scenario, networks trained in 2 processes."""
    raw = yaml.safe_load(tiny_config.read_text())
    raw.update(seeds=[0], target_shifts_days=[0], workers=2, name="tiny-axes",
               runs=[{"features": "2d", "model": "cropnet1d", "augment": ["none"], "model_options": {"channels": [4] * 4}},
                     {"features": "1d", "model": "rf", "augment": ["none"]}],
               axes={"bin_days": [5, 30],
                     "classes": {"all": None, "three": ["corn", "wheat", "soybeans"]},
                     "minority": {"none": None, "soy-5pct": {"class": "soybeans", "fraction": 0.05}}})
    path = tmp_path / "axes.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_experiment(path)
    assert [v.season.n_bins for v in variants(cfg)] == [43] * 4 + [8] * 4  # May-Nov: 214 days / 30 -> 8
    assert all(v.context.bin_days == v.season.bin_days for v in variants(cfg))
    frame = run_experiment(cfg, log=lambda _: None)
    assert len(frame) == 8 * 2 and set(frame.bin_days.astype(int)) == {5, 30}
    # the minority cut: 10 soybeans among 70 (all) or 30 (three) samples -> k / (others + k) ~ 5 %
    n_train = frame.drop_duplicates(["classes", "minority"]).set_index(["classes", "minority"]).n_train
    assert n_train[("all", "none")] == 70 and n_train[("all", "soy-5pct")] == 60 + 3
    assert n_train[("three", "none")] == 30 and n_train[("three", "soy-5pct")] == 20 + 2
    three = frame[frame.classes == "three"]
    assert three.filter(like="f1_").dropna(axis=1).shape[1] == 3  # scored on the 3 classes only
    ckpts = list((tmp_path / "cache").glob("*.pt"))
    assert len(ckpts) == 8  # one network per variant, all from the pool
    assert list(load_checkpoint(ckpts[0]).model_config["channels"]) == [4] * 4  # the run's model_options won
    md = (tmp_path / "out" / "tiny-axes.md").read_text()
    assert "| bin days | classes | minority | features |" in md and "| 30 | three | soy-5pct | 2d | cropnet1d |" in md
    assert "soybeans cut to 5.0% of the training samples" in md and "30-day bins, 8 bins" in md
    assert "One seed (0, no spread)" in md and " ± " not in md  # one seed: no made-up spread of 0.000
    again = run_experiment(cfg, log=lambda _: None)  # everything cached now
    assert again[again.model == "cropnet1d"].cached.all()


def test_span_and_hemisphere_offset_axes(tmp_path):
    raw = yaml.safe_load((CONFIGS / "victoria.yaml").read_text())  # a southern season
    raw["axes"] = {"span": {"may-nov": ["05-01", "11-30"], "jan-dec": ["01-01", "12-31"]},
                   "hemisphere_offset": [True, False], "bin_days": [5, 15, 30]}
    path = tmp_path / "span.yaml"
    path.write_text(yaml.safe_dump(raw))
    got = {(dict(v.values)["span"], dict(v.values)["hemisphere_offset"], v.season.bin_days):
           (v.season.start, v.season.end, v.season.n_bins) for v in variants(load_experiment(path))}
    assert len(got) == 12
    assert got[("may-nov", "on", 5)] == ("11-01", "05-31", 43)  # six months later in the south
    assert got[("may-nov", "off", 15)] == ("05-01", "11-30", 15)
    assert got[("jan-dec", "on", 30)] == ("07-01", "06-30", 13)
    assert got[("jan-dec", "off", 5)] == ("01-01", "12-31", 73)
    raw["season"]["hemisphere"] = "north"  # in the north the offset changes nothing
    path.write_text(yaml.safe_dump(raw))
    north = {(v.season.start, v.season.end) for v in variants(load_experiment(path))}
    assert north == {("05-01", "11-30"), ("01-01", "12-31")}
    # across hemispheres the offset moves the target's season only
    raw["target"]["hemisphere"] = "south"
    raw["axes"] = {"hemisphere_offset": [True, False]}
    raw["season"].update(start="05-01", end="11-30")
    path.write_text(yaml.safe_dump(raw))
    on, off = variants(load_experiment(path))
    assert (on.season.start, on.target_season.start, on.target_season.end) == ("05-01", "11-01", "05-31")
    assert (off.season.start, off.target_season.start, off.target_season.hemisphere) == ("05-01", "05-01", "south")
    assert on.target_season.n_bins == on.season.n_bins == 43
    del raw["target"]["hemisphere"]
    # a season that does not sit on the bins of the context fails when the config is loaded
    raw.update(context_season={"start": "01-01", "end": "12-31"}, axes={"bin_days": [7]})
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="does not sit on the bins"):
        load_experiment(path)


def test_minority_subsample_keeps_the_others_and_a_seeded_few():
    y = read_victoria("train")["label"].values.astype(int)
    names = [f"c{i}" for i in range(8)]
    cut = Minority(**{"class": "c1", "fraction": 0.01})
    others = int((y != 1).sum())
    a = minority_subsample(y, cut, names, np.random.default_rng(0))
    b = minority_subsample(y, cut, names, np.random.default_rng(1))
    k = max(2, round(0.01 * others / 0.99))
    assert (y[a] == 1).sum() == k and (y[a] != 1).sum() == others and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, b)  # another seed, other members
    assert len(minority_subsample(y, Minority(**{"class": "c1", "fraction": 0.9}), names,
                                  np.random.default_rng(0))) == len(y)  # cannot grow a class: all kept
    with pytest.raises(ConfigError, match="not among the classes"):
        minority_subsample(y, Minority(**{"class": "soy", "fraction": 0.01}), names, np.random.default_rng(0))


def test_window_of_the_season_in_the_full_year():
    full = Season(start="01-01", end="12-31")
    assert window_start(full, Season(start="05-01", end="11-30"), 2021) == 24  # Jan 1 + 120 days
    with pytest.raises(ConfigError, match="does not sit on the bins"):
        window_start(full, Season(start="05-03", end="11-30"), 2021)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_are_valid(path):
    cfg = load_experiment(path)
    assert cfg.name == path.stem and cfg.runs
    assert len(cfg.seeds) >= 3


def test_bad_configs_raise_config_errors(tmp_path):
    base = yaml.safe_load((CONFIGS / "victoria.yaml").read_text())
    cases = {
        "rf on 2d": {"runs": [{"features": "2d", "model": "rf"}]},
        "unknown augmentation": {"runs": [{"features": "2d", "model": "cropnet", "augment": ["mixup"]}]},
        "training setting": {"train": {"epochs": 0}},
        "typo": {"seedz": [1]},
        "unknown model": {"runs": [{"features": "2d", "model": "vit"}]},
        "bad axis": {"axes": {"bins": [5]}},
    }
    for name, change in cases.items():
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({**base, **change}))
        with pytest.raises(ConfigError):
            load_experiment(path)
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "nope.yaml")


def test_cross_hemisphere_target_is_composited_on_its_own_season(tiny_config, tmp_path):
    from cropmap.research.runner import _prepare
    from cropmap.samples.sources import read_sample_set

    raw = yaml.safe_load(tiny_config.read_text())
    raw["target"]["hemisphere"] = "south"
    raw["axes"] = {"hemisphere_offset": [True, False]}
    path = tmp_path / "south.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_experiment(path)
    source, target = (read_sample_set(spec, bands=cfg.bands) for spec in (cfg.source, cfg.target))
    on, off = (_prepare(cfg, v, source, target) for v in variants(cfg))
    assert str(on.src_season.time.values[0])[:10] == str(off.src_season.time.values[0])[:10] == "2021-05-01"
    assert str(on.tgt[0].time.values[0])[:10] == "2021-11-01" and str(off.tgt[0].time.values[0])[:10] == "2021-05-01"
    # the offset-off target is the target's own May-Nov median: the same numbers a plain composite gives
    from cropmap.core.composite import median_composite

    ref = median_composite(target["reflectance"], cfg.season, 2021)
    assert np.allclose(off.tgt[0].values, ref.values, equal_nan=True)
    assert not np.allclose(on.tgt[0].values, ref.values, equal_nan=True)


@pytest.mark.slow
def test_cropglobe_fra_arg_grid_runs_unchanged_on_files_in_the_authors_layout(shared_data, tmp_path):
    """The shipped FRA -> ARG config on tiny files in the CropGlobe layout: with only the data folder changed it
    loads and expands to its whole grid (4 networks' augmentations and 2 forests x 2 minority variants x 3
    seeds). Then a cut of that grid runs: every network at its shipped size once, every augmentation at least
    once, both forests, on the soybean minority variant, with one seed, one epoch at batch 64 and 10 trees
    (the runs' other settings are the shipped ones)."""
    _cropglobe_file(tmp_path, "FRA", "train", 5)
    _cropglobe_file(tmp_path, "ARG", "test", 4)
    raw = yaml.safe_load((CONFIGS / "cropglobe-fra-arg.yaml").read_text())
    for side, iso3 in (("source", "FRA"), ("target", "ARG")):
        raw[side]["path"] = str(tmp_path / f"median_S2_{iso3}_month1-12_day5.npz")
    path = tmp_path / "fra-arg.yaml"
    path.write_text(yaml.safe_dump(raw))
    shipped = load_experiment(path)  # as shipped, but for the data folder
    assert [dict(v.values)["minority"] for v in variants(shipped)] == ["none", "soybeans-1pct"]
    assert [(r.features, r.model, a) for r in shipped.runs for a in r.augment] == [
        *(("2d", "cropnet", a) for a in ("none", "shift", "shift+scale", "all")),
        *(("2d", net, a) for net in ("cropnet1d", "resnet50", "effnetv2-s") for a in ("none", "all")),
        ("1d", "rf", "none"), ("harmonic", "rf", "none")]
    assert shipped.seeds == [0, 1, 2] and shipped.season.n_bins == 73 and shipped.forest["n_estimators"] == 500
    assert (shipped.train["epochs"], shipped.train["lr"], shipped.train["batch_size"]) == (50, 1e-4, 256)
    # the cut: each network's run keeps one or two of its shipped augmentations, together all four
    cut = {"cropnet": ["shift", "shift+scale"], "cropnet1d": ["none"], "resnet50": ["none"], "effnetv2-s": ["all"],
           "rf": ["none"]}
    runs = [{**run, "augment": cut[run["model"]]} for run in raw["runs"]]
    assert all(set(r["augment"]) <= set(s.augment) for r, s in zip(runs, shipped.runs))
    assert {a for r in runs for a in r["augment"]} == {a for r in shipped.runs for a in r.augment}
    raw.update(seeds=[0], output=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), forest={"n_estimators": 10},
               train={**raw["train"], "epochs": 1, "batch_size": 64, "progress": False}, runs=runs,
               axes={"minority": {k: v for k, v in raw["axes"]["minority"].items() if v}})
    path.write_text(yaml.safe_dump(raw))
    frame = run_experiment(load_experiment(path), log=lambda _: None)
    assert list(zip(frame.model, frame.augment)) == [("cropnet", "shift"), ("cropnet", "shift+scale"),
                                                     ("cropnet1d", "none"), ("resnet50", "none"),
                                                     ("effnetv2-s", "all"), ("rf", "none"), ("rf", "none")]
    assert set(frame.minority) == {"soybeans-1pct"} and frame.oa.between(0, 1).all()
    assert (frame.n_train == 30 + 2).all()  # 5 soybeans among 35 cut to k / (30 + k) ~ 1 %: the floor of 2


def test_target_year_axis_trains_on_one_season_and_scores_each_years_held_out_samples(shared_data, tmp_path):
    """sits' Mato Grosso file holds several seasons: split by 10 km blocks, trained on the 2014 season's
    training blocks only, scored on the held-out blocks' 2014 and 2015 samples. The counts are checked
    against a plain recount of the file (the same block split, start-date years by hand)."""
    from cropmap.samples.sits import read_sits
    from cropmap.samples.splits import SplitSpec, holdout_split

    raw = yaml.safe_load((CONFIGS / "sits-mt-years.yaml").read_text())
    raw.update(seeds=[0], runs=[{"features": "1d", "model": "rf", "augment": ["none"]}],
               forest={"n_estimators": 40}, output=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    raw["source"]["path"] = str(shared_data / "sits_mato_grosso" / "samples_mt_9classes.rda")
    path = tmp_path / "years.yaml"
    path.write_text(yaml.safe_dump(raw))
    logs: list[str] = []
    rows = run_experiment(load_experiment(path), log=logs.append)
    assert sorted(rows["target_year"].astype(int)) == [2014, 2015]

    whole = read_sits(shared_data / "sits_mato_grosso" / "samples_mt_9classes.rda")
    train_idx, test_idx = holdout_split(whole, SplitSpec(**raw["split"]))
    years = pd.DatetimeIndex(whole["start_date"].values).year.to_numpy()
    names = whole["class_name"].values[whole["label"].values]
    shared = np.isin(names, raw["axes"]["classes"]["shared"])
    assert set(train_idx).isdisjoint(test_idx)
    n_train = int(((years[train_idx] == 2014) & shared[train_idx]).sum())
    assert (rows["n_train"] == n_train).all() and n_train > 200
    for year in (2014, 2015):
        held_out = int(((years[test_idx] == year) & shared[test_idx]).sum())
        (line,) = [m for m in logs if f"target_year={year}]" in m and "samples, target" in m]
        assert f"source {n_train} samples, target {held_out}," in line and held_out > 100, line
        row = rows[rows["target_year"].astype(int) == year].iloc[0]
        assert 0.3 < row["oa"] <= 1.0
    # a set of one season cannot be asked for a year; a year that is not there lists those that are
    from cropmap.samples.sources import in_season_year

    with pytest.raises(ConfigError, match="needs per-sample start dates"):
        in_season_year(read_victoria("train"), 2017, where="victoria train")
    with pytest.raises(ConfigError, match=r"no sample of season 1999; the set has \[2000, "):
        in_season_year(whole, 1999, where="sits")
