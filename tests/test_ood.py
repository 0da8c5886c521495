"""The out-of-distribution score: fitted on the training split's penultimate features, stored in the
checkpoint, higher on the real Victoria test pixels moved by +-20 days than on the unmoved ones, and written
as a COG by predict from the same forward pass as the classes."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from cropmap.core.composite import median_composite
from cropmap.ml.checkpoint import load_checkpoint, save_checkpoint
from cropmap.ml.normalisation import apply_normalisation
from cropmap.ml.evaluate import error_detection
from cropmap.ml.ood import ood_distance
from cropmap.ml.train import TrainConfig, penultimate_features, fit_model
from cropmap.samples.victoria import read_victoria
from cropmap.stages.inference import _model_input
from cropmap.stages.predict import PredictOptions, open_cube, resolve_model, write_tile_predictions
from builders import VIC_SEASON, VIC_YEAR, victoria_tiles

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _matrix(ds, shift_days: int = 0, year: int = VIC_YEAR) -> np.ndarray:
    """``(sample, band, bin)`` composite of the season, the dates moved by ``shift_days`` first."""
    refl = ds["reflectance"]
    refl = refl.assign_coords(time=refl["time"] + np.timedelta64(shift_days, "D"))
    return median_composite(refl, VIC_SEASON, year).transpose("sample", "band", "time").values


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    train = read_victoria("train")
    x = _matrix(train)
    # trained far enough to tell the classes apart (OA ~0.85 on the test split): the score measures the
    # features the network learned, which a 2-epoch net has not
    cfg = TrainConfig(model="cropnet1d", model_options={"channels": [32] * 4}, epochs=10, lr=3e-3, schedule="constant",
                      batch_size=32, val_fraction=0.2, epoch_choice="best", progress=False, device="cpu", seed=1)
    result = fit_model(x, train["label"].values, window_start=0, n_bins=VIC_SEASON.n_bins, n_classes=8, config=cfg)
    path = save_checkpoint(tmp_path_factory.mktemp("ood") / "m.pt", model=result.model, model_name="cropnet1d",
                           model_config=result.model_config, feature_kind="2d",
                           bands=[str(b) for b in train["band"].values], season=VIC_SEASON, n_bins=VIC_SEASON.n_bins,
                           normalisation=result.normalisation, class_names=[str(c) for c in train["class_name"].values],
                           class_colours=None, config={}, scores=result.val_scores, temperature=result.temperature,
                           ood=result.ood)
    return path, x, result


def test_score_matches_an_independent_mahalanobis(trained):
    path, x, result = trained
    ckpt = load_checkpoint(path)
    z = apply_normalisation(x[result.train_index], ckpt.normalisation)
    y = read_victoria("train")["label"].values[result.train_index]
    # the penultimate features by hand (the pooled output of the convolutions), not through model.embed
    with torch.no_grad():
        f = ckpt.model.features(torch.from_numpy(z)).mean(-1).numpy().astype(np.float64)
    np.testing.assert_allclose(penultimate_features(ckpt.model, z), f, rtol=1e-5, atol=1e-6)
    # sklearn's Mahalanobis (squared) to each class mean under the shared Ledoit-Wolf covariance
    classes = np.unique(y)
    means = {c: f[y == c].mean(0) for c in classes}
    lw = LedoitWolf(assume_centered=True).fit(f - np.stack([means[c] for c in y]))
    ref = np.sqrt(np.min([lw.mahalanobis(f - means[c]) for c in classes], axis=0))
    np.testing.assert_allclose(ood_distance(f, ckpt.ood), ref, rtol=1e-6)
    # the checkpoint's score comes from the forward pass of the raw reflectance, over the 99th percentile
    # of the validation split's distances (held-out pixels of the training distribution)
    with torch.no_grad():
        z_val = apply_normalisation(x[result.val_index], ckpt.normalisation)
        f_val = ckpt.model.features(torch.from_numpy(z_val)).mean(-1).numpy().astype(np.float64)
    ref_val = np.sqrt(np.min([lw.mahalanobis(f_val - means[c]) for c in classes], axis=0))
    threshold = np.quantile(ref_val, 0.99)
    # the checkpoint scores in float32 on the device (normalisation in torch, one whitening product, the
    # nearest class's |w - m| direct): measured within 5e-6 of this float64 reference, 1e-4 leaves 20x
    np.testing.assert_allclose(ckpt.ood_score(x[result.train_index]), ref / threshold, rtol=1e-4)
    assert abs((ckpt.ood_score(x[result.val_index]) > 1).mean() - 0.01) < 0.01
    assert np.median(ref_val) > np.median(ref)  # why the threshold is not set on the training pixels


def test_score_ranks_the_misclassified_pixels_first(trained):
    """On the real Victoria test split, unmoved and moved by +-20 days (a phenology shift on real spectra),
    the misclassified pixels score higher than the right ones; measured: AUROC for errors 0.715 / 0.758 /
    0.740 at -20 / 0 / +20 d (the earlier score, Mahalanobis on the inputs, reached ~0.5 and 0.32 at +20 d
    on the 30-epoch CropNets: experiments/ood_variants.py)."""
    path, _, _ = trained
    ckpt = load_checkpoint(path)
    test = read_victoria("test")
    for shift in (-20, 0, 20):
        logits, score = ckpt.infer(_matrix(test, shift), ood=True)
        right = logits.argmax(1) == test["label"].values
        auc = roc_auc_score(~right, score)
        print(f"shift {shift:+d} d: OA {right.mean():.3f}, flagged {np.mean(score > 1):.1%}, AUROC errors {auc:.3f}")
        assert 0.6 < right.mean() < 1 and auc > 0.65


def test_predict_writes_the_ood_cog(trained, tmp_path):
    path, _, _ = trained
    ckpt = load_checkpoint(path)
    cubes, _ = victoria_tiles(tmp_path, rows=1, cols=1, ny=20, nx=20)
    result = write_tile_predictions(resolve_model(location=path, options=PredictOptions(ood=True, precision="fp32")),
                                    cubes[0], tmp_path / "out")
    assert set(result.paths) == {"class", "confidence", "ood"}
    with rasterio.open(result.paths["ood"]) as src:
        got = src.read(1)
        assert src.nodata == 255 and "training threshold" in src.descriptions[0]
    cube = open_cube(cubes[0])
    expect = np.minimum(np.rint(ckpt.ood_score(_model_input(ckpt, cube.load())) * 100), 254).reshape(20, 20)
    np.testing.assert_array_equal(got, expect.astype(np.uint8))
    assert (got > 100).mean() < 0.2  # in-distribution pixels: few flagged


def _pairwise_auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + half the ties, over every pair (Mann-Whitney)."""
    pos, neg = score[positive][:, None], score[~positive][None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def test_error_detection_against_pairwise_counts(trained):
    """On the real Victoria test moved by +20 days: the AUROC of the OOD score for the misclassified pixels
    equals the pairwise count, and the kept-share accuracies equal a plain sort and cut."""
    path, _, _ = trained
    ckpt = load_checkpoint(path)
    test = read_victoria("test")
    x = _matrix(test, 20)
    correct = ckpt.predict_proba(x).argmax(1) == test["label"].values
    score = ckpt.ood_score(x)
    assert 0 < correct.sum() < len(correct)
    got = error_detection(score, correct)
    assert got["auroc_errors"] == pytest.approx(_pairwise_auroc(score.astype(np.float64), ~correct), abs=1e-9)
    for c in (80, 95):
        n = int(round(c / 100 * len(score)))
        assert got[f"oa_at_{c}"] == pytest.approx(correct[np.argsort(score, kind="stable")[:n]].mean())
    # a detector that knows the answer scores 1; one that points the wrong way scores 0
    assert error_detection((~correct).astype(float), correct)["auroc_errors"] == 1.0
    assert error_detection(correct.astype(float), correct)["auroc_errors"] == 0.0
    assert np.isnan(error_detection(score, np.ones_like(correct))["auroc_errors"])


def test_ood_product_follows_the_checkpoint_and_a_demand_it_cannot_meet_is_refused_up_front(
        demo_run, tiny_checkpoint, trained):
    """``ood`` unset: written when the checkpoint holds the statistics, not otherwise; ``ood: true`` with a
    checkpoint saved without them fails when the run is checked, before any cube is built."""
    from cropmap.errors import ConfigError
    from cropmap.jobs.tiles import check_model_fits, run_model
    from cropmap.stages.predict import load_model

    without, with_stats = load_model(tiny_checkpoint), load_model(trained[0])
    assert without.ood is None and with_stats.ood is not None
    assert PredictOptions().for_checkpoint(without).ood is False
    assert PredictOptions().for_checkpoint(with_stats).ood is True
    assert PredictOptions(ood=False).for_checkpoint(with_stats).ood is False
    asks = demo_run.model_copy(update={"predict": PredictOptions(ood=True)})
    with pytest.raises(ConfigError, match="predict.ood is true but the checkpoint"):
        check_model_fits(asks, run_model(asks, tiny_checkpoint), demo_run.tiles()[:1])


def test_statistics_of_an_earlier_kind_are_dropped_with_a_warning(trained, tmp_path):
    """A checkpoint saved with the input-space statistics of earlier versions (no ``kind``) loads, warns,
    and has no OOD product rather than a score computed from the wrong statistics."""
    path, _, result = trained
    blob = torch.load(path, weights_only=True)
    blob["ood"] = {"mean": [0.0] * 10, "components": [[0.0] * 10], "precision": [[1.0]], "threshold": 1.0}
    old = tmp_path / "old.pt"
    torch.save(blob, old)
    with pytest.warns(UserWarning, match="kind 'input-mahalanobis' are not scored"):
        ckpt = load_checkpoint(old)
    assert ckpt.ood is None and PredictOptions().for_checkpoint(ckpt).ood is False
    from cropmap.errors import ConfigError
    with pytest.raises(ConfigError, match="no training-distribution statistics of kind 'penultimate-mahalanobis'"):
        ckpt.ood_score(np.zeros((1, 10, VIC_SEASON.n_bins), np.float32))


def test_device_path_matches_a_float64_reference_of_the_host_computation(trained, tmp_path):
    """infer_cube's device path (normalisation, OOD score and softmax in float32 on the device, the pixels
    gathered there) against the host computation it replaced, in float64: NumPy features and normalisation,
    :func:`cropmap.ml.models.forward_pass`, float64 softmax and :func:`cropmap.ml.ood.ood_distance`. Same
    classes on every usable pixel; confidence, probabilities and OOD percent within one unit of rounding
    (a float32 value a hair either side of an x.5); the same nodata pixels, NaN and ±inf series included."""
    from cropmap.core.features import compute_features
    from cropmap.ml.models import forward_pass
    from cropmap.stages.inference import NODATA, infer_cube

    path, _, _ = trained
    ckpt = load_checkpoint(path)
    cubes, _ = victoria_tiles(tmp_path, rows=1, cols=1, ny=20, nx=20, blank={7: slice(None), 8: slice(0, 66)})
    cube = open_cube(cubes[0]).load()
    cube.values[3, 2, 0, 5] = np.inf  # pixel 5: +inf in one bin; pixel 6: -inf (no data, not a dark pixel)
    cube.values[9, 0, 0, 6] = -np.inf
    got = infer_cube(ckpt, cube, options=PredictOptions(ood=True, probabilities=True, precision="fp32",
                                                        batch_size=64, block_pixels=140))
    # the reference, in float64 after the model
    x = compute_features(cube, "2d").transpose("y", "x", "band", "time").values.reshape(400, 10, -1)
    usable = (cube["filled_fraction"].values.reshape(-1) <= 0.8) & np.isfinite(x).all(axis=(1, 2))
    assert usable.sum() == 396  # 5 and 6 (±inf), 7 (no observation), 8 (90 % filled) are nodata
    logits, features = forward_pass(ckpt.model, apply_normalisation(x[usable], ckpt.normalisation))
    z = logits.astype(np.float64) / ckpt.temperature
    proba = np.exp(z - z.max(1, keepdims=True))
    proba /= proba.sum(1, keepdims=True)
    ood = ood_distance(features, ckpt.ood) / ckpt.ood["threshold"]
    label = got["label"].values.reshape(-1)
    np.testing.assert_array_equal(label[usable], proba.argmax(1))
    assert (label[~usable] == NODATA).all() and (got["ood"].values.reshape(-1)[~usable] == NODATA).all()
    for name, expect in (("confidence", proba.max(1) * 100), ("ood", np.minimum(ood * 100, 254))):
        values = got[name].values.reshape(-1)[usable].astype(np.float64)
        assert np.abs(values - np.rint(expect)).max() <= 1, name
        assert np.mean(values == np.rint(expect)) > 0.99, name
    prob = got["probability"].values.reshape(len(ckpt.class_names), -1)[:, usable].astype(np.float64)
    assert np.abs(prob - np.rint(proba.T * 100)).max() <= 1
