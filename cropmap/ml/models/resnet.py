"""ResNet-50-like baseline over the band x time matrix (the seed's "deeper CNN" comparison).

He et al. 2016, bottleneck blocks (1x1 reduce, 3x3, 1x1 expand x4) in stages of 3-4-6-3 with widths
64/128/256/512, written here without torchvision. Input ``(N, 1, band, time)`` like
:class:`cropmap.ml.models.CropNet`. The stem keeps ResNet's stride 2 but is a 3x3 conv without the
ImageNet stem's stride-2 max pool (a 7x7 kernel and the pool would leave 3 of 10 band rows before the
first stage); stages 2-4 halve both axes again (``ceil``-like, through padding), so 10 x 73 reaches
1 x 5 before global average pooling, the total stride of 16 of a ResNet on a 224-pixel image without its
pool. ``stem_stride=1`` keeps 4x more positions in every layer (about 4x the compute).

Parameter count (``RESNET50``, 1 input channel, 7 classes): 23,513,543; the count does not depend on
the matrix size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cropmap.errors import ConfigError
from cropmap.ml.models.cropnet import MatrixClassifier

__all__ = ["ResNetBottleneck", "Bottleneck", "RESNET50"]

#: ResNet-50's stages (see the module docstring for the stem).
RESNET50: dict[str, Any] = {"blocks": (3, 4, 6, 3), "widths": (64, 128, 256, 512), "stem_stride": 2, "dropout": 0.0}


class Bottleneck(nn.Module):
    """1x1 (width) -> 3x3 (width, ``stride``) -> 1x1 (4 x width), BN after each, identity or projected
    shortcut, ReLU after the sum."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
        )
        # zero-init of the last BN: each block starts as identity (Goyal et al. 2017), which helps
        # a 50-layer net train from a few hundred samples
        nn.init.zeros_(self.body[-1].weight)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ResNetBottleneck(MatrixClassifier):
    """ResNet with bottleneck blocks over ``(N, 1, band, time)`` matrices (``(N, band, time)`` is
    accepted too); returns logits ``(N, n_classes)``. :data:`RESNET50` is the ResNet-50 configuration."""

    def __init__(
        self,
        *,
        n_bands: int,
        n_classes: int,
        blocks: Sequence[int] = RESNET50["blocks"],
        widths: Sequence[int] = RESNET50["widths"],
        stem_stride: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(n_bands=n_bands, n_classes=n_classes)
        if len(blocks) != len(widths):
            raise ConfigError(f"ResNet: {len(blocks)} stage depths for {len(widths)} widths")
        c = widths[0]
        layers: list[nn.Module] = [nn.Conv2d(1, c, 3, stride=stem_stride, padding=1, bias=False),
                                   nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        for stage, (n, width) in enumerate(zip(blocks, widths)):
            for i in range(n):
                layers.append(Bottleneck(c, width, stride=2 if (stage > 0 and i == 0) else 1))
                c = width * Bottleneck.expansion
        self.features = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(c, n_classes)
