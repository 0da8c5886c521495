"""EfficientNetV2-S-like baseline over the band x time matrix (the seed's "deeper CNN" comparison).

Tan & Le 2021, the S configuration written here without torchvision: a stem conv, three stages of
fused-MBConv (one full kxk conv expands) and three of MBConv (1x1 expand, depthwise kxk, squeeze-and-
excitation, 1x1 project), a 1x1 conv to 1,280 channels, global average pooling, dropout, a linear head;
SiLU activations, BatchNorm (eps 1e-3), residuals with stochastic depth where shapes allow. Input
``(N, 1, band, time)`` like :class:`cropmap.ml.models.CropNet`. The strides are the S network's (stem 2,
then four stride-2 stages): a 10 x 73 matrix ends at 1 x 3 (``stem_stride=1``: 1 x 5, ~4x the compute).

Parameter count (``EFFNETV2_S``, 1 input channel, 7 classes): 20,186,023; independent of matrix size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cropmap.errors import ConfigError
from cropmap.ml.models.cropnet import MatrixClassifier

__all__ = ["EfficientNetV2", "EFFNETV2_S", "FusedMBConv", "MBConv"]

#: (block type, expansion, kernel, stride, output channels, layers) per stage: EfficientNetV2-S.
EFFNETV2_S: dict[str, Any] = {
    "stages": (
        ("fused", 1, 3, 1, 24, 2),
        ("fused", 4, 3, 2, 48, 4),
        ("fused", 4, 3, 2, 64, 4),
        ("mb", 4, 3, 2, 128, 6),
        ("mb", 6, 3, 1, 160, 9),
        ("mb", 6, 3, 2, 256, 15),
    ),
    "stem_channels": 24, "stem_stride": 2, "head_channels": 1280, "dropout": 0.2, "stochastic_depth": 0.2,
}


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(c_out, eps=1e-3)]
    if act:
        layers.append(nn.SiLU(inplace=True))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    """``x + drop_path(body(x))`` when the shapes match, else ``body(x)``."""

    def __init__(self, body: nn.Module, residual: bool, drop_prob: float) -> None:
        super().__init__()
        self.body, self.residual, self.drop_prob = body, residual, drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if not self.residual:
            return y
        if self.training and self.drop_prob > 0:  # stochastic depth: drop the whole branch per sample
            keep = torch.empty((x.shape[0], 1, 1, 1), device=x.device, dtype=x.dtype).bernoulli_(1 - self.drop_prob)
            y = y * keep / (1 - self.drop_prob)
        return x + y


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Conv2d(channels, squeeze, 1), nn.SiLU(inplace=True),
                                nn.Conv2d(squeeze, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean((2, 3), keepdim=True))


class FusedMBConv(_Residual):
    """kxk conv (``c_in`` -> ``expand`` x ``c_in``, ``stride``), then 1x1 projection (none when
    ``expand`` is 1)."""

    def __init__(self, c_in: int, c_out: int, expand: int, k: int, stride: int, drop_prob: float) -> None:
        mid = c_in * expand
        body = (_conv_bn(c_in, c_out, k, stride) if expand == 1
                else nn.Sequential(_conv_bn(c_in, mid, k, stride), _conv_bn(mid, c_out, 1, act=False)))
        super().__init__(body, stride == 1 and c_in == c_out, drop_prob)


class MBConv(_Residual):
    """1x1 expansion, depthwise kxk (``stride``), squeeze-and-excitation (``c_in`` / 4), 1x1 projection."""

    def __init__(self, c_in: int, c_out: int, expand: int, k: int, stride: int, drop_prob: float) -> None:
        mid = c_in * expand
        body = nn.Sequential(_conv_bn(c_in, mid, 1), _conv_bn(mid, mid, k, stride, groups=mid),
                             _SqueezeExcite(mid, max(1, c_in // 4)), _conv_bn(mid, c_out, 1, act=False))
        super().__init__(body, stride == 1 and c_in == c_out, drop_prob)


class EfficientNetV2(MatrixClassifier):
    """EfficientNetV2 over ``(N, 1, band, time)`` matrices (``(N, band, time)`` is accepted too);
    returns logits ``(N, n_classes)``. :data:`EFFNETV2_S` is the S configuration."""

    def __init__(
        self,
        *,
        n_bands: int,
        n_classes: int,
        stages: Sequence[Sequence] = EFFNETV2_S["stages"],
        stem_channels: int = 24,
        stem_stride: int = 2,
        head_channels: int = 1280,
        dropout: float = 0.2,
        stochastic_depth: float = 0.2,
    ) -> None:
        super().__init__(n_bands=n_bands, n_classes=n_classes)
        total = sum(int(s[5]) for s in stages)
        layers: list[nn.Module] = [_conv_bn(1, stem_channels, 3, stem_stride)]
        c, index = stem_channels, 0
        for kind, expand, k, stride, c_out, n in stages:
            if kind not in ("fused", "mb"):
                raise ConfigError(f"EfficientNetV2 stage type {kind!r}: use 'fused' or 'mb'")
            block = FusedMBConv if kind == "fused" else MBConv
            for i in range(int(n)):
                # the drop probability grows linearly with depth, as in the paper
                layers.append(block(c, int(c_out), int(expand), int(k), int(stride) if i == 0 else 1,
                                    stochastic_depth * index / total))
                c, index = int(c_out), index + 1
        layers.append(_conv_bn(c, head_channels, 1))
        self.features = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(head_channels, n_classes)
