"""AdaBN: a network's batch-norm statistics re-estimated on the target (Li et al., 2016, arXiv 1603.04779).

A network trained on the source normalises every BatchNorm layer's input with the source's running mean
and variance. :func:`adapt_batchnorm` returns a COPY of the model whose every BatchNorm layer holds the
per-channel mean and variance of its inputs over the target pixels instead; weights (convolutions, BN's
affine ``weight``/``bias``, the head) are kept, and the given model is never changed.

The layers are re-estimated in order, one pass over the target each: layer ``k``'s statistics are those
of its inputs in the network whose layers ``< k`` are already adapted, i.e. exactly what the adapted
network normalises at inference (a single train-mode pass would measure each layer after batch-statistics
normalisation of the earlier ones instead, and average the variances of batches). Each pass stops at the
layer it measures, so the whole costs about two forward passes for CropNet, whose later layers cost most.
The variance is the population variance over all pixels and positions (``N * H * W`` values per channel,
as BatchNorm's ``running_var`` is used at inference). :func:`adapt_checkpoint` does it for a
:class:`~cropmap.ml.checkpoint.Checkpoint` (reflectance in, the checkpoint's normalisation applied).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
from torch import nn

from cropmap.errors import InvalidInputError

__all__ = ["adapt_batchnorm", "adapt_checkpoint", "batchnorm_layers"]


class _Stop(Exception):
    """Ends a forward pass at the layer being measured."""


def _stop(module, inputs) -> None:
    raise _Stop


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers (1D, 2D, 3D) in module order, which is CropNet's forward order."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def adapt_batchnorm(model: nn.Module, x: np.ndarray | torch.Tensor, *, batch_size: int = 1024) -> nn.Module:
    """A copy of ``model`` (eval mode, CPU) with every BatchNorm layer's ``running_mean``/``running_var``
    re-estimated on ``x``: the model's normalised input, ``(N, ...)`` float32, e.g. ``(N, band, time)`` for
    CropNet. Rows holding a NaN or ±inf are left out. One pass over ``x`` per BN layer, each up to that layer.
    A model without BatchNorm comes back as an unchanged copy. Raises :class:`InvalidInputError` without
    a usable row."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    x = x[torch.isfinite(x.flatten(1)).all(1)]
    if not len(x):
        raise InvalidInputError("AdaBN needs at least one target pixel with a complete series")
    adapted = copy.deepcopy(model).cpu().eval()
    for layer in batchnorm_layers(adapted):
        # per-channel sums of the layer's input, float64 so 10^6 values do not lose the variance
        acc = {"n": 0, "s": 0.0, "ss": 0.0}

        def collect(module, inputs, acc=acc) -> None:
            v = inputs[0].detach().double().transpose(0, 1).flatten(1)  # (channel, N * positions)
            acc["n"] += v.shape[1]
            acc["s"] = acc["s"] + v.sum(1)
            acc["ss"] = acc["ss"] + (v * v).sum(1)

        hook = layer.register_forward_pre_hook(collect)
        stop = layer.register_forward_pre_hook(_stop)  # after collect: the layers beyond are not needed
        try:
            with torch.no_grad():
                for i in range(0, len(x), batch_size):
                    try:
                        adapted(x[i:i + batch_size])
                    except _Stop:
                        pass
        finally:
            hook.remove()
            stop.remove()
        mean = acc["s"] / acc["n"]
        var = (acc["ss"] / acc["n"] - mean * mean).clamp_min(0.0)
        layer.running_mean.copy_(mean.to(layer.running_mean.dtype))
        layer.running_var.copy_(var.to(layer.running_var.dtype))
    return adapted


def adapt_checkpoint(checkpoint, x: np.ndarray, *, max_pixels: int = 20_000, seed: int = 0,
                     batch_size: int = 1024):
    """A new :class:`~cropmap.ml.checkpoint.Checkpoint` (the same in all but its model) whose model is
    :func:`adapt_batchnorm` on the target pixels ``x`` ``(N, band, time)`` reflectance 0..1 on the
    checkpoint's bands and bins (normalised here with the checkpoint's normalisation; at most
    ``max_pixels`` rows, a seeded sample). The given checkpoint is not changed."""
    x = np.asarray(x, dtype=np.float32)
    x = x[np.isfinite(x).all(axis=(1, 2))]
    if len(x) > max_pixels:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), max_pixels, replace=False))]
    model = adapt_batchnorm(checkpoint.model, checkpoint.normalise(x), batch_size=batch_size)
    return dataclasses.replace(checkpoint, model=model)
