"""Accuracy figures of a classification: OA, macro-F1, per-class F1, Cohen's kappa, confusion matrix.

Labels are integer indices into one class list. Macro-F1 averages over the TARGET's classes (those
present in the reference labels, or an explicit ``classes`` list): a class the target does not have
cannot be scored, and a source-only class predicted in the target counts as an error of the true class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cropmap.tiles_io import atomic_path

__all__ = ["confusion_matrix", "macro_f1", "scores", "write_confusion"]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` int64 counts; rows are the reference, columns the prediction."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _f1_per_class(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1)  # 2 tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, *, classes: Sequence[int] | np.ndarray | None = None) -> float:
    """Mean F1 over ``classes`` (default: the classes present in ``y_true``)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if classes is None:
        classes = np.unique(y_true)
    n = int(max(y_true.max(initial=0), y_pred.max(initial=0), max(classes, default=0))) + 1
    return float(_f1_per_class(confusion_matrix(y_true, y_pred, n))[np.asarray(classes, dtype=int)].mean())


def scores(y_true: np.ndarray, y_pred: np.ndarray, *, class_names: Sequence[str]) -> dict:
    """OA, macro-F1 over the target's classes, Cohen's kappa, per-class F1 and the confusion matrix.

    Returns a JSON-able dict: ``oa``, ``macro_f1``, ``kappa`` (floats), ``f1`` (class name -> F1, target
    classes only), ``confusion`` (list of lists), ``n`` (samples).
    """
    k = len(class_names)
    cm = confusion_matrix(y_true, y_pred, k)
    n = cm.sum()
    present = np.flatnonzero(cm.sum(1) > 0)
    f1 = _f1_per_class(cm)
    oa = np.trace(cm) / n if n else float("nan")
    expected = (cm.sum(0) * cm.sum(1)).sum() / n**2 if n else float("nan")
    kappa = (oa - expected) / (1 - expected) if n and expected < 1 else float("nan")
    return {
        "oa": float(oa),
        "macro_f1": float(f1[present].mean()) if present.size else float("nan"),
        "kappa": float(kappa),
        "f1": {class_names[i]: float(f1[i]) for i in present},
        "confusion": cm.tolist(),
        "n": int(n),
    }


def write_confusion(cm: np.ndarray, class_names: Sequence[str], path: str | Path, *, title: str = "") -> tuple[Path, Path]:
    """Write the confusion matrix as CSV (``path`` with ``.csv``) and PNG (``.png``); temp name then rename."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    cm = np.asarray(cm)
    base = Path(path).with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    csv, png = base.with_suffix(".csv"), base.with_suffix(".png")
    frame = pd.DataFrame(cm, index=[f"true:{c}" for c in class_names], columns=[f"pred:{c}" for c in class_names])
    with atomic_path(csv) as tmp:
        frame.to_csv(tmp)
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(class_names), 1 + 0.6 * len(class_names)))
    rows = cm.sum(1, keepdims=True)
    ax.imshow(np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0), cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(cm):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(class_names)), class_names, rotation=90)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return csv, png
