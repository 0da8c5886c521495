"""Accuracy figures against scikit-learn on real predictions; confusion files; class harmonisation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics

from cropmap.core.harmonise import Legend, harmonise
from cropmap.io.config import load_legend
from cropmap.errors import ConfigError
from cropmap.ml.evaluate import confusion_matrix, macro_f1, scores, write_confusion
from cropmap.samples.victoria import read_victoria


@pytest.fixture(scope="module")
def real_predictions(shared_data):
    """A nearest-centroid classifier on the real Victoria series: real, imperfect predictions."""
    train, test = read_victoria("train"), read_victoria("test")
    xtr = np.log1p(train["reflectance"].values.reshape(400, -1) * 1e4)
    xte = np.log1p(test["reflectance"].values.reshape(400, -1) * 1e4)
    ytr, yte = train["label"].values.astype(int), test["label"].values.astype(int)
    centroids = np.stack([xtr[ytr == c].mean(0) for c in range(8)])
    pred = ((xte[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    return yte, pred, [str(c) for c in test["class_name"].values]


def test_scores_match_sklearn(real_predictions):
    y, pred, names = real_predictions
    s = scores(y, pred, class_names=names)
    assert 0.3 < s["oa"] < 0.99  # imperfect, so the comparison means something
    assert s["oa"] == pytest.approx(metrics.accuracy_score(y, pred))
    assert s["macro_f1"] == pytest.approx(metrics.f1_score(y, pred, average="macro"))
    assert s["kappa"] == pytest.approx(metrics.cohen_kappa_score(y, pred))
    assert np.array_equal(s["confusion"], metrics.confusion_matrix(y, pred, labels=range(8)))
    ref = metrics.f1_score(y, pred, average=None, labels=range(8))
    assert [s["f1"][n] for n in names] == pytest.approx(list(ref))


def test_balanced_accuracy_and_recall_from_the_confusion_rows(real_predictions):
    """Per-class recall = the diagonal over the reference rows of the confusion matrix, balanced accuracy their
    mean over the target's classes (computed here by hand, not by scikit-learn); a majority-class model's OA is
    its class share, its balanced accuracy 1 / classes."""
    y, pred, names = real_predictions
    keep = y != 2  # a target without cereals: its classes only
    s = scores(y[keep], pred[keep], class_names=names)
    cm = np.asarray(s["confusion"], dtype=float)
    rows = cm.sum(1)
    recall = {names[i]: cm[i, i] / rows[i] for i in range(len(names)) if rows[i] > 0}
    assert s["recall"] == pytest.approx(recall) and "cereals" not in s["recall"]
    assert s["balanced_accuracy"] == pytest.approx(np.mean(list(recall.values())))
    majority = np.bincount(y).argmax()
    lazy = scores(y, np.full_like(y, majority), class_names=names)
    assert lazy["balanced_accuracy"] == pytest.approx(1 / len(set(y)))
    assert lazy["oa"] == pytest.approx(np.mean(y == majority))


def test_macro_f1_averages_over_the_targets_classes_only(real_predictions):
    y, pred, names = real_predictions
    keep = y != 2  # a target without cereals; the model may still predict cereals there
    s = scores(y[keep], pred[keep], class_names=names)
    present = sorted(set(y[keep]))
    assert "cereals" not in s["f1"]
    assert s["macro_f1"] == pytest.approx(metrics.f1_score(y[keep], pred[keep], labels=present, average="macro"))
    assert macro_f1(y[keep], pred[keep]) == pytest.approx(s["macro_f1"])


def test_confusion_matrix_rows_are_reference():
    cm = confusion_matrix(np.array([0, 0, 1]), np.array([1, 0, 1]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]


def test_write_confusion_csv_and_png(real_predictions, tmp_path):
    y, pred, names = real_predictions
    cm = confusion_matrix(y, pred, 8)
    csv, png = write_confusion(cm, names, tmp_path / "sub" / "cm.csv", title="nearest centroid")
    frame = pd.read_csv(csv, index_col=0)
    assert frame.to_numpy().tolist() == cm.tolist() and frame.index[1] == "true:canola"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in csv.parent.iterdir()) == ["cm.csv", "cm.png"]


def test_harmonise_victoria_onto_a_shared_legend(shared_data, tmp_path):
    path = tmp_path / "legend.yaml"
    path.write_text("name: crops\nclasses: [cereals, oilseeds, legumes]\n"
                    "mapping: {canola: oilseeds, Cereals: cereals}\n")  # legumes kept by name; case ignored
    legend = load_legend(path)
    ds = read_victoria("train")
    out = harmonise(ds, legend)
    assert list(out["class_name"].values) == ["cereals", "oilseeds", "legumes"]
    assert out.sizes["sample"] == 150 and np.array_equal(np.bincount(out["label"].values), [50, 50, 50])
    # same spectra as before, only relabelled
    canola = ds["reflectance"].values[ds["label"].values == 1]
    assert np.array_equal(out["reflectance"].values[out["label"].values == 1], canola)
    assert "class_colour" not in out.coords


def test_bad_legends_raise(tmp_path):
    with pytest.raises(ConfigError, match="not among classes"):
        (tmp_path / "l.yaml").write_text("classes: [a, b]\nmapping: {x: c}\n")
        load_legend(tmp_path / "l.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_legend(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="maps none"):
        harmonise(read_victoria("train"), Legend(classes=["x", "y"], keep_unmapped=False))


def test_shipped_uga_ssd_legend_keeps_the_shared_classes(shared_data):
    from pathlib import Path

    from cropmap.io.data import data_file
    from cropmap.samples.worldcereal import read_worldcereal

    legend = load_legend(Path(__file__).parents[1] / "configs/legends/uga-ssd.yaml")
    ds = harmonise(read_worldcereal(data_file("worldcereal/test_public_extractions.parquet")), legend)
    counts = pd.crosstab(ds["region"].values, np.asarray(legend.classes)[ds["label"].values])
    assert counts.loc["UGA", "sorghum"] == 197 and counts.loc["SSD", "sorghum"] == 108
    assert counts.loc["SSD", "maize"] == 2


def _hand_scores(y, pred, n):
    """The hand-written confusion / F1 / kappa that cropmap used before scikit-learn (kept as a reference)."""
    cm = np.bincount(y * n + pred, minlength=n * n).reshape(n, n)
    tp, denom = np.diag(cm).astype(float), cm.sum(0) + cm.sum(1)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    total = cm.sum()
    oa = np.trace(cm) / total
    expected = (cm.sum(0) * cm.sum(1)).sum() / total**2
    present = np.flatnonzero(cm.sum(1) > 0)
    return cm, f1, oa, (oa - expected) / (1 - expected), f1[present].mean(), present


@pytest.mark.parametrize("drop", [None, 2, 5])
def test_sklearn_figures_equal_the_former_hand_written_ones(real_predictions, drop):
    y, pred, names = real_predictions
    keep = np.ones(len(y), bool) if drop is None else y != drop
    y, pred = y[keep], pred[keep]
    cm, f1, oa, kappa, mf1, present = _hand_scores(y, pred, len(names))
    s = scores(y, pred, class_names=names)
    assert np.array_equal(s["confusion"], cm) and s["oa"] == pytest.approx(oa, abs=1e-12)
    assert s["kappa"] == pytest.approx(kappa, abs=1e-12) and s["macro_f1"] == pytest.approx(mf1, abs=1e-12)
    assert s["f1"] == pytest.approx({names[i]: f1[i] for i in present}, abs=1e-12)
    assert macro_f1(y, pred, classes=range(len(names))) == pytest.approx(f1.mean(), abs=1e-12)
