"""The random-forest baseline (scikit-learn): 500 trees, balanced class weights, on flat features.

Features are ``(N, feature)`` arrays: the 1D median vector or the harmonic coefficients
(:func:`cropmap.core.features.compute_features`). Trees need no normalisation.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import RandomForestClassifier

__all__ = ["build_forest", "forest_predict_proba"]


def build_forest(*, n_estimators: int = 500, seed: int = 0, n_jobs: int | None = None, **options) -> RandomForestClassifier:
    """An unfitted forest with the baseline's settings (``class_weight="balanced"``)."""
    return RandomForestClassifier(n_estimators=n_estimators, class_weight="balanced", random_state=seed,
                                  n_jobs=n_jobs, **options)


def forest_predict_proba(forest: RandomForestClassifier, x: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities ``(N, n_classes)`` float32 over ALL classes (a class unseen in training gets 0)."""
    proba = np.zeros((len(x), n_classes), dtype=np.float32)
    proba[:, forest.classes_.astype(int)] = forest.predict_proba(x)
    return proba
