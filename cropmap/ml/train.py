"""Training CropNet-style models on band x time matrices, reproducibly.

:func:`fit_model` takes the FULL-YEAR composite of the source samples (so augmentation can move real
observations into the season window), the index of the season window in it, and integer labels. It

- splits a stratified validation set off the source (never augmented, disjoint from training; the
  authors' public code validates on the whole source set, a leak we do not copy),
- fits the normalisation (log1p + per-band standardisation) on the training split's season window,
- trains with Adam and class-balanced cross-entropy, augmenting each batch online
  (:mod:`cropmap.ml.augment`), and
- keeps the weights of the last epoch, or of the epoch with the best validation macro-F1
  (``TrainConfig.epoch_choice``).

Defaults (:class:`TrainConfig`) are the recipe measured best on Victoria's 400 series, three seeds: Adam
with a OneCycle schedule peaking at lr 3e-3, batch 64, 50 epochs, 10 % held out, the last epoch kept (0.962
OA in region against 0.959 in 40 epochs, 0.955 at a constant lr 1e-3 and 0.920-0.945 for the paper's recipe,
cropmap's earlier one and best-validation epochs; docs/results/victoria-reference-recipe.md).
It passes over the samples fewer times than the paper's lr 1e-4, batch 256, 50 epochs (made for ~300,000
samples, where it gives hundreds of steps an epoch; on a few hundred it gives 2 and underfits);
experiment configs choose their own.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sklearn.model_selection import GroupShuffleSplit, train_test_split
from torch import nn
from tqdm.auto import tqdm

from cropmap.errors import ConfigError, InvalidInputError, one_line
from cropmap.ml.augment import AUGMENTATIONS, augmenter
from cropmap.ml.calibration import expected_calibration_error, fit_temperature, softmax_t
from cropmap.ml.evaluate import macro_f1
from cropmap.ml.ood import fit_ood
from cropmap.ml.models import build_model, forward_pass
from cropmap.ml.normalisation import apply_normalisation, fit_normalisation

__all__ = ["TrainConfig", "FitResult", "fit_model", "stratified_split", "group_split", "predict_logits",
           "penultimate_features", "class_weights"]


#: TrainConfig options added after checkpoints were first cached, with the default that reproduces the
#: training before them
_LATER_OPTIONS = {"epoch_choice": "best", "batching": "fixed", "precision": "fp32"}


class TrainConfig(BaseModel):
    """Training settings (validated from YAML). Defaults: the recipe that won on Victoria
    (docs/results/victoria-reference-recipe.md): Adam with a OneCycle schedule peaking at lr 3e-3, batch 64,
    50 epochs, 10 % held out for calibration and the OOD threshold, the last epoch kept. The paper's: lr
    1e-4, batch 256, 50 epochs, constant rate."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    model: str = "cropnet"
    model_options: dict[str, Any] = Field(default_factory=dict)
    epochs: int = Field(50, ge=1)
    lr: float = Field(3e-3, gt=0)  # the peak of a ``onecycle`` schedule
    batch_size: int = Field(64, ge=2)
    weight_decay: float = Field(0.0, ge=0)
    #: learning-rate schedule: ``constant`` (``lr`` throughout, the seed's) or ``onecycle`` (warm-up to
    #: ``lr`` over the first 30 % of the steps, then cosine annealing to ~0; torch's OneCycleLR, stepped per
    #: batch), so that the last epoch's weights are not those of a full-size step
    schedule: Literal["constant", "onecycle"] = "onecycle"
    val_fraction: float = Field(0.1, gt=0, lt=1)
    #: which epoch's weights are kept: ``best`` (the best validation macro-F1, ties broken by the lower
    #: loss) or ``last`` (the end of the schedule, as runs without a validation split do; the validation
    #: split then only calibrates and sets the OOD threshold)
    epoch_choice: Literal["best", "last"] = "last"
    #: how an epoch is cut into batches: ``fixed`` (``batch_size`` each, the remainder last, however small)
    #: or ``even`` (as many batches, of nearly equal size: 392 series at 64 give 7 of 56, not 6 of 64 and 8)
    batching: Literal["fixed", "even"] = "fixed"
    #: arithmetic of the training steps' forward pass: ``fp32``, or ``bf16`` autocast (weights, optimiser
    #: and the validation pass stay float32): 2.06x faster CropNet steps on a CPU with native bf16 (AVX-512
    #: BF16 / AMX; bench/train_precision.py, docs/performance.md), emulated and slower on one without
    precision: Literal["fp32", "bf16"] = "fp32"
    augment: str = "none"
    augment_options: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    device: str | None = None
    progress: bool = True

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:  # one error type for every bad config
            raise ConfigError(f"invalid training settings: {one_line(err)}") from err

    def key_fields(self, *, exclude: set[str] = frozenset(), **dump: Any) -> dict:
        """``model_dump`` for cache keys: the options added later (:data:`_LATER_OPTIONS`) are left out at
        their defaults, so keys made before they existed still name the same trained networks."""
        at_default = {k for k, v in _LATER_OPTIONS.items() if getattr(self, k) == v}
        return self.model_dump(exclude=set(exclude) | at_default, **dump)

    @field_validator("augment")
    @classmethod
    def _known_augmentation(cls, value: str) -> str:
        if value not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {value!r}; choose one of {', '.join(AUGMENTATIONS)}")
        return value


@dataclass
class FitResult:
    """The trained model (best epoch, eval mode, CPU) and what the checkpoint needs."""

    model: nn.Module
    model_config: dict
    normalisation: dict
    val_scores: dict
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    train_index: np.ndarray | None = None
    val_index: np.ndarray | None = None
    seconds: float = 0.0
    temperature: float = 1.0  # fitted on the validation split (cropmap.ml.calibration)
    ood: dict | None = None  # training-distribution statistics (cropmap.ml.ood)


def stratified_split(labels: np.ndarray, *, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train, validation) sample indices, stratified by label, deterministic under ``seed``.

    Classes with a single sample stay in training (they cannot be stratified). A set so small that
    ``fraction`` of it cannot hold every class gets one validation sample per class instead.
    """
    labels = np.asarray(labels)
    idx = np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    lone = np.isin(labels, classes[counts < 2])
    n, k = int((~lone).sum()), int((counts >= 2).sum())  # n >= 2k: k validation samples always fit
    if k == 0:
        raise InvalidInputError(f"{len(labels)} training sample(s), no class with two: nothing to validate on; "
                                "sample more densely (a smaller cell_deg, a larger per_cell) or give more labels")
    test_size = fraction if np.ceil(fraction * n) >= k else k
    tr, va = train_test_split(idx[~lone], test_size=test_size, stratify=labels[~lone], random_state=seed)
    return np.sort(np.concatenate([tr, idx[lone]])), np.sort(va)


def group_split(labels: np.ndarray, groups: np.ndarray, *, fraction: float, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train, validation) sample indices with no group (field) on both sides.

    scikit-learn's ``GroupShuffleSplit`` with ``fraction`` of the groups held out; among 20 seeded draws
    the first whose validation set holds the most classes is taken (deterministic under ``seed``).
    ``labels``, ``groups``: ``(N,)``. Errors when fewer than two groups exist.
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise InvalidInputError(f"{len(labels)} training sample(s) from {n_groups} field(s): a validation set "
                                "by field needs at least two; give more labels")
    splitter = GroupShuffleSplit(n_splits=20, test_size=max(fraction, 1.0 / n_groups), random_state=seed)
    best = None
    for tr, va in splitter.split(labels, labels, groups):
        n_cls = len(np.unique(labels[va]))
        if best is None or n_cls > best[0]:
            best = (n_cls, tr, va)
    return np.sort(best[1]), np.sort(best[2])


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Balanced weights ``n / (k * count_c)`` over the ``k`` classes present; absent classes get 0."""
    counts = np.bincount(np.asarray(labels), minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w.astype(np.float32)


def predict_logits(model: nn.Module, z: np.ndarray, *, batch_size: int = 1024,
                   device: torch.device | str | None = None) -> np.ndarray:
    """Logits ``(N, n_classes)`` float32 of normalised inputs ``z`` ``(N, band, time)``
    (:func:`forward_pass`)."""
    return forward_pass(model, z, batch_size=batch_size, device=device)[0]


def penultimate_features(model: nn.Module, z: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
    """Penultimate features ``(N, F)`` float32 of normalised inputs ``z`` ``(N, band, time)``
    (:func:`forward_pass`), on the model's device."""
    return forward_pass(model, z, batch_size=batch_size)[1]


def fit_model(
    x_full: np.ndarray,
    labels: np.ndarray,
    *,
    window_start: int,
    n_bins: int,
    n_classes: int,
    config: TrainConfig,
    bin_days: int = 5,
    groups: np.ndarray | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train one model; see the module docstring.

    ``x_full``: ``(N, band, T)`` float32 reflectance 0..1, the full-year composite (``T >= window_start +
    n_bins``); ``labels``: ``(N,)`` int in ``0..n_classes-1``. Rows with NaN are dropped. ``groups``:
    ``(N,)`` field ids: the validation split holds out whole fields
    (:func:`group_split`), else it is stratified by label. ``on_epoch``: called after each epoch with its
    :attr:`FitResult.history` row (``epoch`` from 0, ``train_loss``, ``val_loss``, ``val_macro_f1``, ``lr``)
    and ``epochs``, the run's count: how a job reports progress (``config.progress`` is a tqdm bar on stderr,
    for scripts).
    """
    t0 = time.perf_counter()
    x_full = np.asarray(x_full, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if x_full.ndim != 3 or len(x_full) != len(labels):
        raise ConfigError(f"x_full must be (N, band, time) with N = {len(labels)} labels, got {x_full.shape}")
    keep = ~np.isnan(x_full).any(axis=(1, 2))
    x_full, labels = x_full[keep], labels[keep]
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != keep.shape:
            raise ConfigError(f"groups must be ({len(keep)},) like the labels, got {groups.shape}")
        groups = groups[keep]
    if len(np.unique(labels)) < 2:
        raise ConfigError("training needs samples of at least two classes")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    if groups is not None:
        tr, va = group_split(labels, groups, fraction=config.val_fraction, seed=config.seed)
    else:
        tr, va = stratified_split(labels, fraction=config.val_fraction, seed=config.seed)
    window = slice(window_start, window_start + n_bins)
    norm = fit_normalisation(x_full[tr][:, :, window])
    z_val = apply_normalisation(x_full[va][:, :, window], norm)
    aug = augmenter(config.augment, bin_days=bin_days, **config.augment_options)

    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model_cfg = {"n_bands": int(x_full.shape[1]), "n_classes": int(n_classes), **config.model_options}
    model = build_model(config.model, **model_cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n_batches = -(-len(tr) // config.batch_size)
    cuts = (np.linspace(0, len(tr), n_batches + 1).round().astype(int)[1:-1] if config.batching == "even"
            else np.arange(config.batch_size, len(tr), config.batch_size))
    steps_per_epoch = sum(len(b) >= 2 for b in np.split(np.arange(len(tr)), cuts))
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch)
             if config.schedule == "onecycle" else None)
    loss_fn = nn.CrossEntropyLoss(weight=torch.from_numpy(class_weights(labels[tr], n_classes)).to(device))

    best = (-1.0, np.inf)
    best_state, best_epoch, history = None, -1, []
    bar = tqdm(range(config.epochs), desc=f"{config.model} {config.augment} s{config.seed}", disable=not config.progress,
               leave=False)
    for epoch in bar:
        model.train()
        order = rng.permutation(tr)
        total = 0.0
        for rows in np.split(order, cuts):
            if len(rows) < 2:  # BatchNorm cannot train on one sample
                continue
            xb = x_full[rows][:, :, window] if aug.is_identity else aug(x_full[rows], start=window_start,
                                                                          n_bins=n_bins, rng=rng)
            zb = torch.from_numpy(apply_normalisation(xb, norm)).to(device)
            yb = torch.from_numpy(labels[rows]).to(device)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                loss = loss_fn(model(zb), yb)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += loss.item() * len(rows)
        logits = predict_logits(model, z_val, device=device)
        val_loss = float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels[va])))
        f1 = macro_f1(labels[va], logits.argmax(1), classes=np.unique(labels[va]))
        history.append({"epoch": epoch, "train_loss": total / len(tr), "val_loss": val_loss, "val_macro_f1": f1,
                        "lr": opt.param_groups[0]["lr"]})
        bar.set_postfix(val_f1=f"{f1:.3f}", loss=f"{total / len(tr):.3f}")
        if on_epoch is not None:
            on_epoch({**history[-1], "epochs": config.epochs})
        last = epoch == config.epochs - 1
        if ((f1, -val_loss) > (best[0], -best[1]) if config.epoch_choice == "best" else last):
            best = (f1, val_loss)
            best_state, best_epoch = copy.deepcopy(model.state_dict()), epoch
    model.load_state_dict(best_state)
    model = model.cpu().eval()
    kept = np.flatnonzero(keep)
    # temperature scaling on the validation split (the best epoch's logits): calibrated confidence
    val_logits, val_features = forward_pass(model, z_val)
    temperature = fit_temperature(val_logits, labels[va])  # 1.0 unless the validation split supports the fit
    fitted = fit_temperature(val_logits, labels[va], confidence=0.0)
    ece = {f"val_ece_{k}": expected_calibration_error(softmax_t(val_logits, t), labels[va])
           for k, t in (("raw", 1.0), ("calibrated", temperature))}
    # where the training distribution ends: class-conditional Mahalanobis on the training split's
    # penultimate features (unaugmented), the threshold set on the validation split's
    ood = fit_ood(penultimate_features(model, apply_normalisation(x_full[tr][:, :, window], norm)), labels[tr],
                  held_out=val_features)
    return FitResult(
        model=model, model_config=model_cfg, normalisation=norm, temperature=temperature, ood=ood,
        val_scores={"val_macro_f1": best[0], "val_loss": best[1], "best_epoch": best_epoch,
                    "n_train": int(len(tr)), "n_val": int(len(va)), "temperature": temperature,
                    "temperature_fitted": fitted, **ece},
        best_epoch=best_epoch, history=history, train_index=kept[tr], val_index=kept[va],
        seconds=time.perf_counter() - t0,
    )
