"""Area estimates and accuracies with confidence intervals from a stratified random sample
(Olofsson et al. 2013, Remote Sens. Environ. 129:122-131; Olofsson et al. 2014, RSE 148:42-57).

Strata are the mapped classes. With ``n[i, j]`` the sample count mapped as ``i`` and labelled ``j`` by
the reference, ``n_i`` the sample size of stratum ``i`` and ``W_i`` its share of the mapped area:

- error matrix in area proportions: ``p[i, j] = W_i n[i, j] / n_i`` (2014 eq. 4);
- area of class ``j``: ``A_j = A p[., j]`` with ``SE(p[., j])^2 = sum_i W_i^2 (n[i,j]/n_i)(1 - n[i,j]/n_i)/(n_i - 1)``
  (2014 eqs. 9-10);
- user's accuracy ``U_i = p[i,i]/p[i,.]``, ``V(U_i) = U_i (1 - U_i)/(n_i - 1)`` (2014 eqs. 2, 6);
- producer's accuracy ``P_j = p[j,j]/p[.,j]`` with the variance of 2014 eq. 7 (mapped pixel counts ``N``);
- overall accuracy ``O = sum_j p[j,j]``, ``V(O) = sum_i W_i^2 U_i (1 - U_i)/(n_i - 1)`` (2014 eq. 5);
- 95 % confidence intervals: estimate +- 1.96 SE.

And the sample design: the total size for a target standard error of the overall accuracy
(2014 eq. 13, Cochran 1977 eq. 5.25) and an allocation with a minimum per stratum (the paper's
recommendation of 50-100 units for rare classes, the rest proportional to area).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cropmap.errors import InvalidInputError

__all__ = ["AreaEstimate", "stratified_estimate", "sample_size", "allocate"]

Z95 = 1.96


@dataclass(frozen=True)
class AreaEstimate:
    """Estimates for ``k`` classes (strata = map classes, in the same order); arrays of shape ``(k,)``
    unless noted. Areas in the unit of ``mapped_area`` (hectares in cropmap)."""

    counts: np.ndarray          # (k, k) sample counts, rows map, columns reference
    mapped_area: np.ndarray     # mapped area per class
    proportions: np.ndarray     # (k, k) error matrix in area proportions p[i, j]
    area: np.ndarray            # area-adjusted area per class
    area_se: np.ndarray
    users: np.ndarray           # user's accuracy (NaN for a stratum without sample)
    users_se: np.ndarray
    producers: np.ndarray       # producer's accuracy (NaN where the estimated class area is 0)
    producers_se: np.ndarray
    overall: float
    overall_se: float

    def ci(self, se: np.ndarray | float) -> np.ndarray | float:
        """Half-width of the 95 % confidence interval for a standard error."""
        return Z95 * se


def stratified_estimate(counts: np.ndarray, mapped_area: Sequence[float]) -> AreaEstimate:
    """Olofsson et al. (2014) estimators from sample ``counts`` ``(k, k)`` (rows: map class = stratum,
    columns: reference class) and the mapped area of each class ``(k,)``.

    Raises :class:`InvalidInputError` for shapes that do not match, negative counts, or a stratum
    with mapped area but fewer than two sample units (its variance is undefined).
    """
    n = np.asarray(counts, dtype=float)
    a = np.asarray(mapped_area, dtype=float)
    k = a.shape[0]
    if n.shape != (k, k) or (n < 0).any() or (a < 0).any():
        raise InvalidInputError(f"counts must be ({k}, {k}) non-negative for {k} mapped areas, got {n.shape}")
    n_i = n.sum(axis=1)
    thin = [i for i in range(k) if a[i] > 0 and n_i[i] < 2]
    if thin:
        raise InvalidInputError(f"strata {thin} have mapped area but fewer than 2 sample units; sample them")
    total = a.sum()
    w = a / total
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(n_i[:, None] > 0, n / n_i[:, None], 0.0)          # n_ij / n_i
        p = w[:, None] * f
        denom = np.where(n_i > 1, n_i - 1, np.inf)[:, None]
        var_p_col = (w[:, None] ** 2 * f * (1 - f) / denom).sum(axis=0)
        p_col = p.sum(axis=0)
        users = np.where(n_i > 0, np.diag(f), np.nan)
        users_var = np.where(n_i > 1, users * (1 - users) / (n_i - 1), np.nan)
        producers = np.where(p_col > 0, np.diag(p) / p_col, np.nan)
        # eq. 7 with N_i (mapped "pixels"; any area unit cancels) and N_hat_j = sum_i N_i n_ij / n_i
        n_hat = (a[:, None] * f).sum(axis=0)
        prod_var = np.full(k, np.nan)
        for j in range(k):
            if n_hat[j] <= 0:
                continue
            first = a[j] ** 2 * (1 - producers[j]) ** 2 * users[j] * (1 - users[j]) / (n_i[j] - 1) if n_i[j] > 1 else 0.0
            others = sum(a[i] ** 2 * f[i, j] * (1 - f[i, j]) / (n_i[i] - 1)
                         for i in range(k) if i != j and n_i[i] > 1)
            prod_var[j] = (first + producers[j] ** 2 * others) / n_hat[j] ** 2
        overall = float(np.trace(p))
        overall_var = float(np.nansum(np.where(n_i > 1, w ** 2 * users * (1 - users) / (n_i - 1), 0.0)))
    return AreaEstimate(counts=n, mapped_area=a, proportions=p, area=p_col * total, area_se=np.sqrt(var_p_col) * total,
                        users=users, users_se=np.sqrt(users_var), producers=producers, producers_se=np.sqrt(prod_var),
                        overall=overall, overall_se=float(np.sqrt(overall_var)))


def sample_size(mapped_area: Sequence[float], expected_users: Sequence[float], target_se: float) -> int:
    """Total sample size for a target standard error of the overall accuracy (Olofsson et al. 2014
    eq. 13): ``n = (sum_i W_i S_i / S(O))^2`` with ``S_i = sqrt(U_i (1 - U_i))`` from the user's
    accuracies expected per stratum (e.g. 0.7 for rare crops, 0.9 for the common ones)."""
    a = np.asarray(mapped_area, dtype=float)
    u = np.asarray(expected_users, dtype=float)
    if a.shape != u.shape or not 0 < target_se < 1 or ((u <= 0) | (u >= 1)).any():
        raise InvalidInputError("expected user's accuracies must lie in (0, 1), one per class, and target_se in (0, 1)")
    w = a / a.sum()
    return int(np.ceil((w * np.sqrt(u * (1 - u))).sum() ** 2 / target_se ** 2))


def allocate(mapped_pixels: Sequence[int], total: int, *, minimum: int = 50) -> np.ndarray:
    """Sample units per stratum: at least ``minimum`` (or every pixel of a smaller stratum), the rest of
    ``total`` proportional to the mapped area (largest remainders, deterministic). Strata without a
    mapped pixel get none. Shape ``(k,)``, int."""
    n_pix = np.asarray(mapped_pixels, dtype=np.int64)
    base = np.minimum(n_pix, minimum)
    rest = max(int(total) - int(base.sum()), 0)
    room = n_pix - base
    if rest and room.sum():
        share = rest * room / room.sum()
        extra = np.floor(share).astype(np.int64)
        order = np.argsort(-(share - extra), kind="stable")
        extra[order[: rest - int(extra.sum())]] += 1
        base = base + np.minimum(extra, room)
    return base
