"""Models: CropNet (2D, and the authors'-code variant), CropNet1D, the deeper baselines (ResNet-50-like,
EfficientNetV2-S-like) and the random-forest baseline.

:func:`build_model` is the one registry: ``build_model("cropnet", n_bands=10, n_classes=7)``;
:func:`forward_pass` the one batched inference loop over any of the torch models.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from cropmap.errors import ConfigError
from cropmap.ml.models.cropnet import (
    CROPNET_CODE,
    CROPNET_V1,
    CropNet,
    CropNet1D,
    count_parameters,
)
from cropmap.ml.models.efficientnet import EFFNETV2_S, EfficientNetV2
from cropmap.ml.models.forest import build_forest
from cropmap.ml.models.resnet import RESNET50, ResNetBottleneck

__all__ = ["build_model", "forward_pass", "MODELS", "build_forest", "CropNet", "CropNet1D", "ResNetBottleneck",
           "EfficientNetV2", "count_parameters", "CROPNET_V1", "CROPNET_CODE", "RESNET50", "EFFNETV2_S"]

#: name -> (class, default configuration). Every torch model takes (N, band, time) matrices.
MODELS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "cropnet": (CropNet, CROPNET_V1),
    "cropnet-code": (CropNet, CROPNET_CODE),
    "cropnet1d": (CropNet1D, CROPNET_V1),
    "resnet50": (ResNetBottleneck, RESNET50),
    "effnetv2-s": (EfficientNetV2, EFFNETV2_S),
}


def build_model(name: str, **cfg: Any) -> nn.Module:
    """A torch model by registry name; ``cfg`` (``n_bands``, ``n_classes``, overrides) is keyword-only.

    >>> count_parameters(build_model("cropnet", n_bands=10, n_classes=7))
    4691655
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    cls, defaults = MODELS[name]
    return cls(**{**defaults, **cfg})


@torch.no_grad()
def forward_pass(model: nn.Module, z: np.ndarray, *, batch_size: int = 1024,
                 device: torch.device | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One batched pass over normalised inputs ``z`` ``(N, band, time)`` in eval mode: the logits
    ``(N, n_classes)`` and the penultimate features ``(N, F)`` (``model.embed``, what the linear head
    reads), both float32; on ``device``, else the model's."""
    model.eval()
    device = device or next(model.parameters()).device
    logits, features = [], []
    for i in range(0, len(z), batch_size):
        f = model.embed(torch.from_numpy(z[i:i + batch_size]).to(device))
        features.append(f.float().cpu().numpy())
        logits.append(model.head(model.drop(f)).float().cpu().numpy())
    if not logits:
        return np.zeros((0, model.n_classes), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(logits), np.concatenate(features)
