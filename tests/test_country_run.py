"""The job layer without Prefect: a country run resolved once, output keys, tile selection, map scoring."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from cropmap.errors import IncompatibleInputError, UnknownCountryError
from cropmap.io.config import load_country
from cropmap.jobs.country_run import resolve_country_run, run_key
from cropmap.jobs.scoring import score_class_map
from cropmap.scenarios import resolve_run
from cropmap.scenarios.demo import demo_country, part_bounds, read_layout
from cropmap.stages.cube import CubeOptions


@pytest.mark.parametrize("bad", ["../etc", "", "demo", "ARG/../DEMO", "XYZ"])
def test_unknown_country_fails_fast_with_the_known_ones(bad):
    with pytest.raises(UnknownCountryError, match="known: .*DEMO"):
        resolve_run(bad)


def test_run_key_and_run_dir(tmp_path):
    arg = load_country("ARG")
    assert run_key(arg) == run_key(load_country("ARG"))
    assert run_key(arg) != run_key(arg.model_copy(update={"year": arg.year + 1}))
    assert run_key(arg, CubeOptions(bands=("B04", "B08"))) != run_key(arg)
    assert run_key(arg, CubeOptions(threads=4)) == run_key(arg)  # threads change no value
    run = resolve_country_run(arg, out_root=tmp_path)
    assert storage_path(run.root) == tmp_path / "ARG" / run_key(arg) and run.key == run_key(arg)
    assert storage_path(run.cube_dir) == tmp_path / "ARG" / run.key / "cubes"


def storage_path(location):
    from pathlib import Path

    return Path(str(location))


def test_demo_tiles_by_bounds_and_reference(demo_paths, monkeypatch, tmp_path):
    config = demo_country(demo_paths)
    run = resolve_country_run(config, out_root=tmp_path)
    layout = read_layout(demo_paths.root)
    assert len(run.tiles()) == 4
    assert len(run.tiles(tile_limit=1)) == 1
    west = run.tiles(bounds=part_bounds(layout, "west"))
    east = run.tiles(bounds=part_bounds(layout, "east"))
    assert len(west) == len(east) == 2 and not set(west) & set(east)
    assert sorted(run.tiles(reference=demo_paths.reference)) == sorted(west + east)
    monkeypatch.setenv("CROPMAP_DEMO_DIR", str(demo_paths.root))
    resolved = resolve_run("DEMO", out_dir=str(tmp_path))
    assert resolved.config.catalog.path == demo_paths.catalog  # complete: not rebuilt
    assert resolved.scenario.train_bounds == part_bounds(layout, "west")
    assert resolved.scenario.score_bounds == part_bounds(layout, "east")


def _write_map(path, data, profile, names):
    with rasterio.open(path, "w", **{**profile, "driver": "GTiff"}) as ds:
        ds.write(data, 1)
        ds.update_tags(1, **{f"class_{i}": n for i, n in enumerate(names)})


def _map_with_errors(reference, *, seed: int, share: float, unmapped_rows: int):
    """The reference's classes with a ``share`` of pixels moved to the next class and the first rows
    unmapped: ``(truth, pred, wrong, rng, profile, names)``."""
    with rasterio.open(reference) as ds:
        truth, profile = ds.read(1), ds.profile
        names = [ds.tags(1)[f"class_{i}"] for i in range(8)]
    rng = np.random.default_rng(seed)
    pred = truth.copy()
    wrong = rng.random(truth.shape) < share
    pred[wrong] = (pred[wrong] + 1) % 8
    pred[:unmapped_rows, :] = 255
    return truth, pred, wrong, rng, profile, names


def test_score_class_map_against_numpy(demo_paths, tmp_path):
    """A map equal to the reference except known pixels: OA and the confusion computed here."""
    truth, pred, _, _, profile, names = _map_with_errors(demo_paths.reference, seed=0, share=0.1, unmapped_rows=5)
    _write_map(tmp_path / "map.tif", pred, profile, names)
    layout = read_layout(demo_paths.root)
    east = part_bounds(layout, "east")
    result = score_class_map(tmp_path / "map.tif", demo_paths.reference, bounds=east)
    half = slice(128, 256)
    t, p = truth[:, half], pred[:, half]
    valid = p != 255
    assert result["n"] == valid.sum() and result["n_unmapped"] == (~valid).sum() == 5 * 128
    assert result["oa"] == pytest.approx((t[valid] == p[valid]).mean())
    cm = np.zeros((8, 8), int)
    np.add.at(cm, (t[valid], p[valid]), 1)
    assert np.array_equal(result["confusion"], cm)
    whole = score_class_map(tmp_path / "map.tif", demo_paths.reference)
    assert whole["n"] == (pred != 255).sum()


def test_score_rates_the_confidence_and_ood_layers_as_error_detectors(demo_paths, tmp_path):
    """Layers on the class map's grid: their AUROC for the wrong pixels and the OA of the most trusted
    80 % / 95 %, computed here with scikit-learn and a sort; the OOD share over 100."""
    from sklearn.metrics import roc_auc_score

    truth, pred, wrong, rng, profile, names = _map_with_errors(demo_paths.reference, seed=1, share=0.15,
                                                              unmapped_rows=3)
    # confidence lower on wrong pixels (an informative layer); the OOD score pure noise (uninformative)
    conf = np.clip(np.where(wrong, rng.normal(60, 15, truth.shape), rng.normal(85, 10, truth.shape)), 0, 100)
    conf = np.where(pred == 255, 255, np.rint(conf)).astype(np.uint8)
    ood = np.where(pred == 255, 255, rng.integers(0, 200, truth.shape)).astype(np.uint8)
    _write_map(tmp_path / "map.tif", pred, profile, names)
    for name, data in (("conf", conf), ("ood", ood)):
        with rasterio.open(tmp_path / f"{name}.tif", "w", **{**profile, "driver": "GTiff", "nodata": 255}) as dst:
            dst.write(data, 1)
    result = score_class_map(tmp_path / "map.tif", demo_paths.reference,
                             layers={"confidence": tmp_path / "conf.tif", "ood": tmp_path / "ood.tif"})
    valid = pred != 255
    right = (pred == truth)[valid]
    for name, distrust in (("confidence", 100.0 - conf[valid]), ("ood", ood[valid].astype(float))):
        got = result["error_detection"][name]
        assert got["auroc_errors"] == pytest.approx(roc_auc_score(~right, distrust), abs=1e-9)
        order = np.argsort(distrust, kind="stable")
        for c in (80, 95):
            assert got[f"oa_at_{c}"] == pytest.approx(right[order[:round(c / 100 * len(order))]].mean())
    assert result["error_detection"]["confidence"]["auroc_errors"] > 0.8
    assert abs(result["error_detection"]["ood"]["auroc_errors"] - 0.5) < 0.05
    assert result["ood_flagged"] == pytest.approx((ood[valid] > 100).mean())
    ood[10, 10] = 255  # a layer with a hole where the class map has a pixel is another map's
    with rasterio.open(tmp_path / "ood.tif", "w", **{**profile, "driver": "GTiff", "nodata": 255}) as dst:
        dst.write(ood, 1)
    with pytest.raises(IncompatibleInputError, match="ood layer"):
        score_class_map(tmp_path / "map.tif", demo_paths.reference, layers={"ood": tmp_path / "ood.tif"})


def test_a_map_that_misses_the_scored_area_scores_no_pixel_and_rates_no_layer(demo_paths, tmp_path):
    """A partial map (``--tile-limit``) need not reach the held-back area: n = 0 and no error detection,
    not a failed run (the layers' error detection of nothing raised InvalidInputError)."""
    truth, pred, _, _, profile, names = _map_with_errors(demo_paths.reference, seed=2, share=0.1, unmapped_rows=0)
    pred[:, 128:] = 255  # nothing mapped in the east half, the part scored below
    conf = np.where(pred == 255, 255, 90).astype(np.uint8)
    _write_map(tmp_path / "map.tif", pred, profile, names)
    with rasterio.open(tmp_path / "conf.tif", "w", **{**profile, "driver": "GTiff", "nodata": 255}) as dst:
        dst.write(conf, 1)
    east = part_bounds(read_layout(demo_paths.root), "east")
    result = score_class_map(tmp_path / "map.tif", demo_paths.reference, bounds=east,
                             layers={"confidence": tmp_path / "conf.tif"})
    assert result["n"] == 0 and result["n_unmapped"] == (truth[:, 128:] != 255).sum() > 0
    assert "error_detection" not in result


def test_score_refuses_other_grids(demo_paths, tmp_path):
    with rasterio.open(demo_paths.reference) as ds:
        profile, data = ds.profile, ds.read(1)
    profile.update(crs="EPSG:32755")
    _write_map(tmp_path / "other.tif", data, profile, ["a", "b"])
    with pytest.raises(IncompatibleInputError, match="CRS or pixel size"):
        score_class_map(tmp_path / "other.tif", demo_paths.reference)


def test_training_defaults_are_cropnet_v1_with_the_measured_recipe_and_the_demo_brings_its_own():
    from cropmap.jobs.training import TrainingSettings
    from cropmap.scenarios.demo import DEMO_TRAINING

    default = TrainingSettings().train_config()
    assert (default.model, default.model_options, default.lr, default.schedule, default.batch_size, default.epochs,
            default.augment, default.epoch_choice) == ("cropnet", {}, 3e-3, "onecycle", 64, 50, "all", "last")
    assert (TrainingSettings().erosion_m, TrainingSettings().cell_deg) == (60.0, 0.1)
    assert DEMO_TRAINING.model_options["channels"] == [32, 32, 64, 64] and DEMO_TRAINING.cell_deg == 0.0005
    assert (DEMO_TRAINING.lr, DEMO_TRAINING.schedule, DEMO_TRAINING.epoch_choice) == (1e-3, "constant", "best")


def test_a_country_run_is_small_and_travels(demo_run):
    import pickle

    blob = pickle.dumps(demo_run)
    assert len(blob) < 8192 and pickle.loads(blob) == demo_run
