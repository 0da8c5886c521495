"""Training (split, weights, reproducibility, best epoch) and the checkpoint contract, on real Victoria series."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from cropmap.core.bands import S2_BANDS
from cropmap.core.composite import median_composite
from cropmap.core.features import compute_features
from cropmap.core.season import Season
from cropmap.errors import ConfigError, IncompatibleInputError
from cropmap.ml.checkpoint import card_path, load_checkpoint, save_checkpoint
from cropmap.ml.normalisation import apply_normalisation, fit_normalisation
from cropmap.ml.train import TrainConfig, class_weights, predict_logits, stratified_split, fit_model
from cropmap.samples.victoria import read_victoria

VIC_SEASON = Season(start="08-01", end="07-31", hemisphere="south")
SMALL = {"channels": [8, 8, 8, 8]}  # the real architecture, narrow: fast on 2 cores


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def victoria(shared_data):
    """Features built exactly as inference builds them: median_composite then compute_features("2d")."""
    ds = read_victoria("train")
    comp = median_composite(ds["reflectance"], VIC_SEASON, 2017)
    x = compute_features(comp, "2d").transpose("sample", "band", "time").values
    return x, ds["label"].values.astype(int), [str(c) for c in ds["class_name"].values]


def test_stratified_split_is_disjoint_stratified_and_seeded(victoria):
    _, y, _ = victoria
    tr, va = stratified_split(y, fraction=0.2, seed=3)
    assert not set(tr) & set(va) and len(tr) + len(va) == len(y)
    assert np.array_equal(np.bincount(y[va]), np.full(8, 10))  # 50 per class -> 10 validation each
    tr2, va2 = stratified_split(y, fraction=0.2, seed=3)
    assert np.array_equal(va, va2) and not np.array_equal(va, stratified_split(y, fraction=0.2, seed=4)[1])


def test_small_sets_keep_one_validation_sample_per_class(victoria):
    _, y, _ = victoria
    small = np.concatenate([np.flatnonzero(y == c)[:4] for c in range(8)])  # 32 samples, 8 classes
    tr, va = stratified_split(y[small], fraction=0.1, seed=0)  # 10 % would be 4 samples for 8 classes
    assert np.array_equal(np.bincount(y[small][va]), np.ones(8)) and len(tr) == 24


def test_class_weights_match_sklearn_balanced():
    y = np.array([0] * 30 + [1] * 10 + [3] * 5)
    w = class_weights(y, 4)
    ref = compute_class_weight("balanced", classes=np.array([0, 1, 3]), y=y)
    assert np.allclose(w[[0, 1, 3]], ref) and w[2] == 0


def test_normalisation_matches_plain_numpy(victoria):
    x, _, _ = victoria
    norm = fit_normalisation(x[:100])
    z = np.log1p(x[:100].astype(np.float64) * 10000)
    assert np.allclose(norm["mean"], [z[:, b].mean() for b in range(10)])
    assert np.allclose(norm["std"], [z[:, b].std() for b in range(10)])
    out = apply_normalisation(x[:100], norm)
    assert out.dtype == np.float32
    assert np.allclose(out.mean(axis=(0, 2)), 0, atol=1e-4) and np.allclose(out.std(axis=(0, 2)), 1, atol=1e-3)


def _train(x, y, groups=None, **kw):
    cfg = TrainConfig(**{"model": "cropnet1d", "model_options": SMALL, "epochs": 3, "lr": 3e-3, "schedule": "constant",
                         "batch_size": 32, "val_fraction": 0.2, "epoch_choice": "best", "progress": False,
                         "device": "cpu", **kw})
    return fit_model(x, y, window_start=0, n_bins=73, n_classes=8, config=cfg, groups=groups)


def test_training_is_reproducible_keeps_the_best_epoch_and_never_sees_validation(victoria):
    x, y, _ = victoria
    x, y = x[::2], y[::2]  # 200 samples, 25 per class: enough to prove it, quick on 2 cores
    a, b = _train(x, y, seed=1, augment="all", epochs=2), _train(x, y, seed=1, augment="all", epochs=2)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    assert a.history == b.history
    f1 = [h["val_macro_f1"] for h in a.history]
    assert a.best_epoch == int(np.argmax(f1)) and a.val_scores["val_macro_f1"] == max(f1)
    assert not set(a.train_index) & set(a.val_index)
    # the normalisation comes from the training split only
    assert np.allclose(a.normalisation["mean"], fit_normalisation(x[a.train_index])["mean"])
    c = _train(x, y, seed=1, augment="none", epochs=2)  # same split, no augmentation: other weights
    assert np.array_equal(c.val_index, a.val_index)
    assert any(not torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), c.model.state_dict().values()))


def test_epoch_choice_last_keeps_the_final_weights(victoria):
    """Same training either way; ``last`` keeps the final epoch's weights even where an earlier epoch
    validated better (here epoch 1 of 0..2: validation macro-F1 0.121 then 0.114)."""
    x, y, _ = victoria
    x, y = x[::2], y[::2]
    best = _train(x, y, seed=1, epochs=3, lr=3e-2)
    last = _train(x, y, seed=1, epochs=3, lr=3e-2, epoch_choice="last")
    assert best.history == last.history
    assert best.best_epoch == 1 and last.best_epoch == 2
    logits = predict_logits(last.model, apply_normalisation(x[last.val_index], last.normalisation))
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y[last.val_index]))
    assert float(loss) == pytest.approx(last.history[-1]["val_loss"], rel=1e-5)
    assert last.val_scores["val_macro_f1"] == last.history[-1]["val_macro_f1"]


def test_each_epoch_is_reported_with_its_history_row(victoria):
    """``on_epoch`` (how a job shows training progress) gets each epoch's history row and the epoch count, in
    order, once per epoch."""
    x, y, _ = victoria
    rows: list[dict] = []
    cfg = TrainConfig(model="cropnet1d", model_options=SMALL, epochs=3, batch_size=64, progress=False, device="cpu")
    result = fit_model(x[::4], y[::4], window_start=0, n_bins=73, n_classes=8, config=cfg, on_epoch=rows.append)
    assert [r["epoch"] for r in rows] == [0, 1, 2] and {r["epochs"] for r in rows} == {3}
    assert [{k: v for k, v in r.items() if k != "epochs"} for r in rows] == result.history


def _on_build(monkeypatch, hook) -> None:
    """Make fit_model's ``build_model`` call ``hook(model)`` on each model it builds (to register hooks)."""
    import cropmap.ml.train as train_module

    build = train_module.build_model

    def recording(*args, **kwargs):
        model = build(*args, **kwargs)
        hook(model)
        return model

    monkeypatch.setattr(train_module, "build_model", recording)


@pytest.mark.parametrize("batching, sizes", [("fixed", [96, 96, 96, 32]), ("even", [80, 80, 80, 80])])
def test_batching_cuts_an_epoch_as_asked(victoria, monkeypatch, batching, sizes):
    """320 training series at batch 96: ``fixed`` leaves a remainder of 32, ``even`` four batches of 80."""
    seen = []
    _on_build(monkeypatch, lambda model: model.register_forward_pre_hook(
        lambda m, inputs: seen.append(len(inputs[0])) if m.training else None))
    x, y, _ = victoria
    _train(x, y, seed=0, epochs=1, batch_size=96, batching=batching)
    assert seen == sizes


def test_training_learns_the_real_classes(victoria):
    x, y, _ = victoria
    r = _train(x, y, seed=0, epochs=8)
    # one class everywhere scores 0.028; a narrow net after 8 epochs reaches ~0.5 on the real series
    assert r.val_scores["val_macro_f1"] > 0.35


def test_bf16_precision_runs_the_training_steps_in_bf16_keeps_float32_weights_and_learns(victoria, monkeypatch):
    """``precision: bf16``: the training forward passes compute in bfloat16 (autocast), the validation
    passes, weights and checkpoint stay float32, and the network still learns the real classes."""
    seen = []
    _on_build(monkeypatch, lambda model: next(m for m in model.modules() if isinstance(m, torch.nn.Conv1d))
              .register_forward_hook(lambda m, inputs, out: seen.append((m.training, out.dtype))))
    x, y, _ = victoria
    r = _train(x, y, seed=0, epochs=8, precision="bf16")
    assert {dtype for training, dtype in seen if training} == {torch.bfloat16}
    assert {dtype for training, dtype in seen if not training} == {torch.float32}
    assert all(p.dtype == torch.float32 for p in r.model.state_dict().values() if p.is_floating_point())
    # learns as fp32 does (one class everywhere scores 0.028; fp32, same seed: 0.38)
    fp32 = _train(x, y, seed=0, epochs=8).val_scores["val_macro_f1"]
    assert r.val_scores["val_macro_f1"] > 0.3 and abs(r.val_scores["val_macro_f1"] - fp32) < 0.1, fp32
    # keys made before the option existed still name the fp32 networks; bf16 ones are others
    assert "precision" not in TrainConfig().key_fields()
    assert TrainConfig(precision="bf16").key_fields()["precision"] == "bf16"
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp16")


def test_training_rejects_bad_input(victoria):
    x, y, _ = victoria
    with pytest.raises(ConfigError, match="two classes"):
        _train(x[:10], np.zeros(10, int))
    with pytest.raises(ConfigError, match="x_full"):
        _train(x[:, 0], y)
    with pytest.raises(ConfigError, match="unknown augmentation"):
        TrainConfig(augment="mixup")


def test_defaults_are_the_recipe_that_won_on_victoria():
    """docs/results/victoria-reference-recipe.md chose them; the paper's is an override away."""
    cfg = TrainConfig()
    assert (cfg.lr, cfg.schedule, cfg.batch_size, cfg.epochs, cfg.val_fraction, cfg.epoch_choice, cfg.model) == \
        (3e-3, "onecycle", 64, 50, 0.1, "last", "cropnet")
    paper = TrainConfig(lr=1e-4, batch_size=256, epochs=50, schedule="constant")
    assert paper.key_fields() != cfg.key_fields()


@pytest.mark.parametrize("name", ["cropnet", "cropnet1d"])
def test_checkpoint_round_trip_and_predict_proba(victoria, tmp_path, name):
    x, y, names = victoria
    r = _train(x[:120], y[:120], seed=0, epochs=1, model=name)
    path = save_checkpoint(
        tmp_path / "m.pt", model=r.model, model_name=name, model_config=r.model_config, feature_kind="2d",
        bands=list(S2_BANDS), season=VIC_SEASON, n_bins=73, normalisation=r.normalisation, class_names=names,
        class_colours=None, config={"epochs": 1}, scores=r.val_scores)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m.pt.card.json"]  # no temporary left
    card = json.loads(card_path(path).read_text())
    assert card["class_names"] == names and card["season"]["start"] == "08-01" and "state_dict" not in card
    assert card["version"] and card["n_bins"] == 73

    ck = load_checkpoint(path)
    assert not ck.model.training and ck.bands == S2_BANDS and ck.season == VIC_SEASON
    probe = x[200:210].copy()
    probe[3, 4, 5] = np.nan
    proba = ck.predict_proba(probe, batch_size=4)
    assert proba.shape == (10, 8) and proba.dtype == np.float32
    assert np.isnan(proba[3]).all() and np.allclose(np.delete(proba, 3, 0).sum(1), 1, atol=1e-5)
    # independent reference: plain NumPy normalisation, the trained model, softmax
    mean, std = np.array(r.normalisation["mean"]), np.array(r.normalisation["std"])
    z = (np.log1p(np.clip(probe, 0, None) * 10000) - mean[None, :, None]) / std[None, :, None]
    with torch.no_grad():
        ref = torch.softmax(r.model.eval()(torch.from_numpy(z[[0, 1, 2]].astype(np.float32))), 1).numpy()
    assert np.allclose(proba[:3], ref, atol=1e-5)


def test_check_compatible_names_the_mismatch(victoria, tmp_path):
    x, y, names = victoria
    r = _train(x[:80], y[:80], seed=0, epochs=1)
    path = save_checkpoint(
        tmp_path / "m.pt", model=r.model, model_name="cropnet1d", model_config=r.model_config, feature_kind="2d",
        bands=list(S2_BANDS), season=VIC_SEASON, n_bins=73, normalisation=r.normalisation, class_names=names,
        class_colours=None, config={}, scores={})
    ck = load_checkpoint(path)
    ck.check_compatible(bands=S2_BANDS, season=VIC_SEASON, n_bins=73, what="tile 1")
    with pytest.raises(IncompatibleInputError, match="tile 1: bands"):
        ck.check_compatible(bands=S2_BANDS[::-1], season=VIC_SEASON, n_bins=73, what="tile 1")
    with pytest.raises(IncompatibleInputError, match="season"):
        ck.check_compatible(bands=S2_BANDS, season=Season(), n_bins=73, what="tile 1")
    with pytest.raises(IncompatibleInputError, match="43 time bins"):
        ck.check_compatible(bands=S2_BANDS, season=VIC_SEASON, n_bins=43, what="tile 1")
    with pytest.raises(IncompatibleInputError, match="73 bins"):
        ck.normalise(x[:2, :, :43])
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")



def test_training_with_groups_validates_on_whole_fields(victoria):
    """Given field ids, validation holds out whole fields (GroupShuffleSplit): no field on both sides."""
    x, y, _ = victoria
    x, y = x[::4], y[::4]  # 100 samples
    fields = np.arange(len(y)) // 4  # 25 "fields" of 4 consecutive samples
    result = _train(x, y, epochs=1, seed=3, groups=fields)
    assert not set(fields[result.train_index]) & set(fields[result.val_index])
    assert len(result.val_index) > 0 and len(result.val_index) % 4 == 0
    plain = stratified_split(y, fraction=0.2, seed=3)  # what it replaces: fields on both sides
    assert set(fields[plain[0]]) & set(fields[plain[1]])
    with pytest.raises(ConfigError, match=r"groups must be \(100,\)"):
        _train(x, y, epochs=1, groups=fields[:-1])
