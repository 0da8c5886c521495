"""Accuracy figures of a classification (scikit-learn's): OA, balanced accuracy, macro-F1, per-class F1 and
recall, Cohen's kappa, confusion, and how well a per-pixel score picks out the errors.

Labels are integer indices into one class list. Macro-F1 averages over the TARGET's classes (those
present in the reference labels, or an explicit ``classes`` list): a class the target does not have
cannot be scored, and a source-only class predicted in the target counts as an error of the true class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn import metrics

from cropmap.errors import InvalidInputError
from cropmap.io.outputs import atomic_path

__all__ = ["confusion_matrix", "error_detection", "macro_f1", "scores", "write_confusion", "write_matrix_png",
           "MATRIX_ROWS", "MATRIX_COLUMNS"]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` int64 counts; rows are the reference, columns the prediction."""
    return metrics.confusion_matrix(np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64),
                                    labels=np.arange(n_classes)).astype(np.int64)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, *, classes: Sequence[int] | np.ndarray | None = None) -> float:
    """Mean F1 over ``classes`` (default: the classes present in ``y_true``)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = np.unique(y_true) if classes is None else np.asarray(classes, dtype=int)
    if y_true.size == 0:
        return float("nan")
    return float(metrics.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def scores(y_true: np.ndarray, y_pred: np.ndarray, *, class_names: Sequence[str]) -> dict:
    """OA, balanced accuracy and macro-F1 over the target's classes, Cohen's kappa, per-class F1 and recall,
    and the confusion matrix.

    Returns a JSON-able dict: ``oa``, ``balanced_accuracy`` (the mean of the target classes' recalls: a model
    that calls everything the majority class scores 1 / classes, however high its OA), ``macro_f1``,
    ``kappa`` (floats), ``f1`` and ``recall`` (class name -> value, target classes only), ``confusion``
    (list of lists), ``n`` (samples). With no sample, the figures are NaN.
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.size == 0:
        empty = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
        return {"oa": float("nan"), "balanced_accuracy": float("nan"), "macro_f1": float("nan"),
                "kappa": float("nan"), "f1": {}, "recall": {}, "confusion": empty.tolist(), "n": 0}
    cm = confusion_matrix(y_true, y_pred, len(class_names))
    n = int(cm.sum())
    present = np.flatnonzero(cm.sum(1) > 0)
    f1 = metrics.f1_score(y_true, y_pred, labels=present, average=None, zero_division=0)
    recall = metrics.recall_score(y_true, y_pred, labels=present, average=None, zero_division=0)
    with np.errstate(divide="ignore", invalid="ignore"):  # one class everywhere: kappa is undefined (NaN)
        kappa = metrics.cohen_kappa_score(y_true, y_pred)
    return {
        "oa": float(metrics.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(np.mean(recall)),
        "macro_f1": float(np.mean(f1)),
        "kappa": float(kappa),
        "f1": {class_names[i]: float(v) for i, v in zip(present, f1)},
        "recall": {class_names[i]: float(v) for i, v in zip(present, recall)},
        "confusion": cm.tolist(),
        "n": n,
    }


def error_detection(score: np.ndarray, correct: np.ndarray, *, coverages: tuple[float, ...] = (0.8, 0.95)) -> dict:
    """How well ``score`` ``(N,)`` (higher = less trusted) picks out the wrong pixels ``~correct`` ``(N,)``.

    Returns ``{"auroc_errors": float, "oa_at_<c>": float, ...}``: the area under the ROC curve of the
    score for "this pixel is misclassified" (0.5 = no better than chance; NaN when every pixel is right
    or every one wrong), and for each coverage ``c`` the accuracy of the ``c`` share of pixels with the
    lowest scores (what a map keeps if it masks the rest). Ties at the cut are broken by order.
    """
    score, correct = np.asarray(score, dtype=np.float64), np.asarray(correct, dtype=bool)
    if score.shape != correct.shape or score.ndim != 1 or not len(score) or not np.isfinite(score).all():
        raise InvalidInputError(f"error_detection: need equal 1-D finite arrays, got {score.shape} and {correct.shape}")
    wrong = ~correct
    out = {"auroc_errors": float(metrics.roc_auc_score(wrong, score)) if 0 < wrong.sum() < len(wrong) else float("nan")}
    order = np.argsort(score, kind="stable")
    for c in coverages:
        kept = order[: max(1, int(round(c * len(score))))]
        out[f"oa_at_{round(c * 100)}"] = float(correct[kept].mean())
    return out


def write_confusion(cm: np.ndarray, class_names: Sequence[str], path: str | Path, *, title: str = "") -> tuple[Path, Path]:
    """Write the confusion matrix as CSV (``path`` with ``.csv``) and PNG (``.png``); temp name then rename."""
    import pandas as pd

    cm = np.asarray(cm)
    base = Path(path).with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    csv, png = base.with_suffix(".csv"), base.with_suffix(".png")
    frame = pd.DataFrame(cm, index=[f"true:{c}" for c in class_names], columns=[f"pred:{c}" for c in class_names])
    with atomic_path(csv) as tmp:
        frame.to_csv(tmp)
    write_matrix_png(cm, class_names, png, title=title, fmt="{:d}")
    return csv, png


#: The axis labels of every class x class matrix cropmap draws: one orientation, said on the picture.
MATRIX_ROWS, MATRIX_COLUMNS = "reference (rows)", "map / prediction (columns)"


def write_matrix_png(matrix: np.ndarray, class_names: Sequence[str], png: str | Path, *, title: str = "",
                     fmt: str) -> Path:
    """A square class x class matrix as a PNG heatmap, ``matrix[i, j]`` = reference class ``i`` mapped
    (predicted) as class ``j``: rows the reference, columns the map, as :func:`confusion_matrix` and
    scikit-learn count them; the one orientation of ``confusion.png`` and the area error matrix (whose
    Olofsson rows-map table is transposed to this before drawing), written on the axes
    (:data:`MATRIX_ROWS`, :data:`MATRIX_COLUMNS`). Each cell is shaded by its share of its row (a
    reference class's recall on the diagonal, so rare classes read as well as common ones); every
    non-zero cell written with ``fmt`` (``"{:d}"`` for counts, ``"{:.3f}"`` for area proportions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    rows = matrix.sum(1, keepdims=True)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * k, 1.5 + 0.6 * k))
    shade = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    ax.imshow(shade, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(matrix):
        if v:  # white on the dark cells, so that every figure can be read
            ax.text(j, i, fmt.format(v.item()), ha="center", va="center", fontsize=7,
                    color="white" if shade[i, j] > 0.6 else "black")
    ax.set_xticks(range(k), class_names, rotation=90)
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel(MATRIX_COLUMNS)
    ax.set_ylabel(MATRIX_ROWS)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    with atomic_path(Path(png)) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(png)
