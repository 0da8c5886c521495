"""How far a pixel lies from the training distribution: a class-conditional Mahalanobis score on the
network's penultimate features (Lee et al. 2018, "A simple unified framework for detecting
out-of-distribution samples and adversarial attacks").

Fitted at training on the penultimate features ``(N, F)`` of the training split (the global-average-pooled
activations the linear head reads, :meth:`cropmap.ml.models.cropnet.MatrixClassifier.embed`): one mean per
class and one covariance shared by the classes, shrunk by Ledoit-Wolf (a few hundred samples for 512
features make the plain estimate singular). The distance of a pixel is its Mahalanobis distance to the
nearest class mean; the score is that distance over the ``quantile`` of the distances of held-out pixels
of the training distribution (the validation split: the network was fitted to its training pixels, whose
features sit closer to the class means than any new pixel's; a threshold on them flagged ~24 % of the
Victoria test split): ``score > 1`` = farther than all but ``1 - quantile`` of such pixels ("out of
distribution").

Chosen by measurement (docs/results/splits-calibration-ood.md, ``experiments/ood_variants.py``): on Victoria
moved by -20..+20 days this score's AUROC for the misclassified pixels is ~0.7, where the same Mahalanobis
score on the normalised inputs was ~0.5 (it measures spectral novelty, which a phenology shift barely
changes, not what the network reads).

The statistics are plain lists (``kind`` :data:`KIND`), stored in the checkpoint: the whitening matrix
``W`` (the precision's Cholesky factor, ``precision = W W^T``) and the class means already whitened, so a
distance is one ``(N, F) x (F, F)`` product.
"""

from __future__ import annotations

import numpy as np
from sklearn.covariance import LedoitWolf

from cropmap.errors import InvalidInputError

__all__ = ["KIND", "FIT_RULE", "fit_ood", "ood_distance", "ood_score"]

#: The ``kind`` of the statistics :func:`fit_ood` writes; a checkpoint holding another kind has none usable.
KIND = "penultimate-mahalanobis"
#: How training fits them (part of the experiments' checkpoint cache key).
FIT_RULE = {"kind": KIND, "covariance": "ledoit-wolf, shared", "threshold": "validation split", "quantile": 0.99}


def fit_ood(features: np.ndarray, labels: np.ndarray, *, held_out: np.ndarray | None = None,
            quantile: float = FIT_RULE["quantile"]) -> dict:
    """Statistics of the training split's penultimate ``features`` ``(N, F)`` with their class ``labels`` ``(N,)``;
    the threshold is the ``quantile`` of the distances of ``held_out`` ``(M, F)`` (the validation split's
    features; default ``features`` themselves).

    Returns ``{"kind": KIND, "whitening": (F, F), "class_means": (C, F) whitened, "classes": (C,),
    "threshold": float, "quantile": float, "shrinkage": float}`` as lists; ``C`` = the classes present.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if f.ndim != 2 or len(f) != len(y) or len(f) < 3 or not np.isfinite(f).all():
        raise InvalidInputError(f"fit_ood: need >= 3 finite feature rows with one label each, got {f.shape}, {y.shape}")
    classes = np.unique(y)
    means = np.stack([f[y == c].mean(0) for c in classes])
    centred = f - means[np.searchsorted(classes, y)]
    cov = LedoitWolf(assume_centered=True).fit(centred)
    whitening = np.linalg.cholesky(cov.precision_)  # precision = W W^T, so |(f - mu) W| is the distance
    stats = {"kind": KIND, "whitening": whitening.tolist(), "class_means": (means @ whitening).tolist(),
             "classes": classes.tolist(), "quantile": float(quantile), "shrinkage": float(cov.shrinkage_),
             "threshold": 1.0}
    stats["threshold"] = float(np.quantile(ood_distance(f if held_out is None else held_out, stats), quantile))
    return stats


def ood_distance(features: np.ndarray, stats: dict) -> np.ndarray:
    """Mahalanobis distance ``(N,)`` float64 of ``features`` ``(N, F)`` to the nearest class mean."""
    f = np.asarray(features, dtype=np.float64)
    whitening = np.asarray(stats["whitening"])
    if f.ndim != 2 or f.shape[1] != len(whitening):
        raise InvalidInputError(f"ood: features of shape {f.shape}, the statistics were fitted on {len(whitening)}")
    w = f @ whitening
    means = np.asarray(stats["class_means"])
    # |w - m|^2 = |w|^2 - 2 w.m + |m|^2, for every class at once
    d2 = (w ** 2).sum(1)[:, None] - 2 * w @ means.T + (means ** 2).sum(1)[None, :]
    return np.sqrt(np.maximum(d2.min(1), 0.0))


def ood_score(features: np.ndarray, stats: dict) -> np.ndarray:
    """Distance over the training threshold ``(N,)`` float32; > 1 = out of the training distribution."""
    return (ood_distance(features, stats) / stats["threshold"]).astype(np.float32)
