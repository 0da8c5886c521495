"""How far a pixel lies from the training distribution: a Mahalanobis score on the model's input features.

Fitted at training on the training split's normalised features ``(N, band, time)``: flattened, projected
on their first ``n_components`` principal axes (so 730 correlated values and a few hundred samples give a
well-posed covariance), with their empirical covariance (diagonal in that space; shrinkage towards the mean variance would blunt the small axes). The score of a pixel is its Mahalanobis
distance ``d`` in that space, plus its residual off the principal axes over the discarded axes' mean
variance (probabilistic PCA), divided by the ``quantile`` of the training distances (the threshold):
``score > 1`` = farther than all but ``1 - quantile`` of the training pixels ("out of distribution").
The statistics are plain lists, stored in the checkpoint.
"""

from __future__ import annotations

import numpy as np
from sklearn.covariance import EmpiricalCovariance

from cropmap.errors import InvalidInputError

__all__ = ["fit_ood", "ood_distance", "ood_score"]


def fit_ood(z: np.ndarray, *, n_components: int = 16, quantile: float = 0.99) -> dict:
    """Statistics of the training features ``z`` ``(N, band, time)`` (normalised, no NaN).

    Returns ``{"mean": (F,), "components": (K, F), "precision": (K, K), "threshold": float,
    "quantile": float, "residual_var": float, "proj_mean": (K,)}`` as lists, ``K = min(n_components, N - 1, F)``.
    """
    x = np.asarray(z, dtype=np.float64).reshape(len(z), -1)
    if len(x) < 3 or np.isnan(x).any():
        raise InvalidInputError(f"fit_ood: need >= 3 samples without NaN, got {x.shape}")
    mean = x.mean(0)
    _, sv, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = int(min(n_components, len(x) - 2, x.shape[1] - 1))
    comps = vt[:k]
    proj = (x - mean) @ comps.T
    cov = EmpiricalCovariance().fit(proj)
    # probabilistic PCA: what the k axes leave out has the mean variance of the discarded axes per
    # feature; without it a pixel far off the training subspace would look close
    residual_var = float((sv[k:] ** 2).sum() / (len(x) - 1) / (x.shape[1] - k))
    stats = {"mean": mean.tolist(), "components": comps.tolist(), "precision": cov.precision_.tolist(),
             "proj_mean": cov.location_.tolist(), "residual_var": residual_var,
             "quantile": float(quantile), "threshold": 1.0}
    stats["threshold"] = float(np.quantile(ood_distance(z, stats), quantile))
    return stats


def ood_distance(z: np.ndarray, stats: dict) -> np.ndarray:
    """Mahalanobis distance ``(N,)`` of features ``z`` ``(N, band, time)`` in the fitted principal space."""
    x = np.asarray(z, dtype=np.float64).reshape(len(z), -1)
    mean = np.asarray(stats["mean"])
    if x.shape[1] != mean.size:
        raise InvalidInputError(f"ood: {x.shape[1]} features, the statistics were fitted on {mean.size}")
    comps = np.asarray(stats["components"])
    centred = x - mean
    proj = centred @ comps.T
    residual = centred - proj @ comps
    d = proj - np.asarray(stats["proj_mean"])
    d2 = np.einsum("ij,jk,ik->i", d, np.asarray(stats["precision"]), d)
    return np.sqrt(d2 + (residual ** 2).sum(1) / stats["residual_var"])


def ood_score(z: np.ndarray, stats: dict) -> np.ndarray:
    """Distance over the training threshold ``(N,)`` float32; > 1 = out of the training distribution."""
    return (ood_distance(z, stats) / stats["threshold"]).astype(np.float32)

