"""One batch of a checkpoint's inference on its device (:func:`device_pass`): normalisation, the forward pass
and the out-of-distribution score in float32 on the device, so that a GPU's host only moves reflectance in and
results out. :meth:`cropmap.ml.checkpoint.Checkpoint.infer` and :mod:`cropmap.stages.inference` call it; the
statistics become device tensors once per checkpoint and device (:func:`_device_constants`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from cropmap.errors import ConfigError
from cropmap.ml.ood import KIND as OOD_KIND

if TYPE_CHECKING:
    from cropmap.ml.checkpoint import Checkpoint

__all__ = ["device_pass"]


@torch.no_grad()
def device_pass(checkpoint: Checkpoint, x: torch.Tensor, *, ood: bool = False, model: torch.nn.Module | None = None,
                scratch: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The work of :meth:`Checkpoint.infer <cropmap.ml.checkpoint.Checkpoint.infer>` for one batch already on its
    device: ``x`` ``(n, band, time)`` reflectance 0..1 -> the logits ``(n, C)`` float32 and, with ``ood``, the
    score ``(n,)`` float32, both on ``x``'s device; rows holding a NaN or ±inf come back NaN.

    The normalisation is :func:`~cropmap.ml.normalisation.apply_normalisation`'s in float32, in place
    on one contiguous copy of ``x`` (``x`` is not changed), where rows that are not finite go through
    the model as zeros and are blanked after. ``scratch=True``: ``x`` is a contiguous float32 batch the
    caller gives up: the same, in place on ``x``, no copy.
    ``model``: the forward pass (default the checkpoint's ``inference_model`` on ``x``'s device). The score is
    ``min_c |f W - m_c| / threshold`` (:func:`cropmap.ml.ood.ood_distance`) in float32, outside any
    autocast: one ``(n, F) x (F, F)`` product ``w = f W``, the nearest class by ``|m_c|^2 - 2 w.m_c``, and
    ``|w - m_c|`` for that class (tests/test_ood.py checks it against a float64 reference)."""
    if ood and checkpoint.ood is None:
        raise ConfigError("this checkpoint holds no training-distribution statistics of kind "
                          f"{OOD_KIND!r} (retrain it with this cropmap version)")
    if checkpoint.normalisation.get("method") != "log1p_standard":
        raise ConfigError(f"unknown normalisation method {checkpoint.normalisation.get('method')!r}")
    model = model if model is not None else checkpoint.inference_model(x.device)
    consts = _device_constants(checkpoint, x.device)
    if scratch:
        z = x
    else:
        z = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        z.copy_(x)  # the (n, band, time) contiguous input, whatever x's strides
    bad = ~torch.isfinite(z.sum(dim=(1, 2)))  # NaN or ±inf anywhere (reflectance never overflows)
    z.nan_to_num_(0.0, 0.0, 0.0)
    z.clamp_(min=0).mul_(consts["scale"]).log1p_().sub_(consts["mean"]).div_(consts["std"])
    f = model.embed(z)
    logits = model.head(model.drop(f)).float()
    logits.masked_fill_(bad[:, None], float("nan"))  # masked, not indexed: no device sync
    if not ood:
        return logits, None
    with torch.autocast(x.device.type, enabled=False):  # the score in float32 even under bf16 autocast
        w = torch.addmm(consts["centre"], f.float(), consts["whitening"])  # f W - c
        # the nearest class by |m|^2 - 2 w.m (|w|^2 is the same for every class), then its distance
        # as |w - m| itself: no float32 cancellation for the pixels close to a class mean
        nearest = torch.addmm(consts["means_sq"], w, consts["means_t"]).argmin(dim=1)
        d2 = w.sub_(consts["means"][nearest]).square_().sum(dim=1)
        score = d2.sqrt_().div_(consts["threshold"])
    score.masked_fill_(bad, float("nan"))
    return logits, score


def _device_constants(checkpoint: Checkpoint, device: torch.device) -> dict:
    """The normalisation and OOD statistics as float32 tensors on ``device``, made once per device."""
    key = ("constants", str(device))
    with checkpoint._lock:
        if key not in checkpoint._variants:
            n = checkpoint.normalisation
            consts = {"scale": float(n["scale"]),
                      "mean": torch.tensor(n["mean"], dtype=torch.float32, device=device)[:, None],
                      "std": torch.tensor(n["std"], dtype=torch.float32, device=device)[:, None]}
            if checkpoint.ood is not None:  # the whitened means about their centre c (float64, then float32)
                means = np.asarray(checkpoint.ood["class_means"], dtype=np.float64)
                centre = means.mean(0)
                means = means - centre

                def as_tensor(a) -> torch.Tensor:
                    return torch.tensor(np.asarray(a), dtype=torch.float32, device=device)

                consts.update(whitening=as_tensor(checkpoint.ood["whitening"]), centre=as_tensor(-centre),
                              means=as_tensor(means), means_t=as_tensor(-2 * means.T),
                              means_sq=as_tensor((means ** 2).sum(1)), threshold=float(checkpoint.ood["threshold"]))
            checkpoint._variants[key] = consts
        return checkpoint._variants[key]
