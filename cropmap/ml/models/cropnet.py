"""CropNet: the seed's small CNN over the band x time matrix, in 2D and 1D.

Paper: "Invariant Features for Global Crop Type Classification", arXiv 2509.03497 (v1).

- :class:`CropNet` (2D): input ``(N, 1, band, time)``; blocks of [3x3 conv, BatchNorm, ReLU] x 2 +
  ``Dropout2d``, global average pooling, a linear head. The paper's design (``CROPNET_V1``: channels
  64/128/256/512, 2x2 max pooling after blocks 1 and 3) has 4.69M parameters for 10 bands x 43/73 bins
  x 7 classes; the authors' public code (``CROPNET_CODE``: four blocks of 128 channels, stride 2 in the
  first conv of block 1 only, dropout 0.2/0.3/0.3/0.4) has ~1.04M. Both are configurations of one class.
- :class:`CropNet1D`: the same design with 1D convolutions over time, bands as channels, input
  ``(N, band, time)``.

Global average pooling makes the parameter count independent of the bin count; any ``time >= 8`` works
(pooling uses ``ceil_mode`` so short axes never vanish).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cropmap.errors import ConfigError, IncompatibleInputError

__all__ = ["CropNet", "CropNet1D", "CROPNET_V1", "CROPNET_CODE", "count_parameters", "MIN_TIME", "as_matrix_input",
           "MatrixClassifier"]

MIN_TIME = 8

#: The paper's CropNet (v1): 4.69M parameters for 10 bands x 43/73 bins x 7 classes.
#: The per-block dropout is not given in the paper; 0.2 everywhere is our choice.
CROPNET_V1: dict[str, Any] = {
    "channels": (64, 128, 256, 512), "pool_after": (0, 2), "first_stride": 1, "dropout": (0.2, 0.2, 0.2, 0.2),
}
#: The authors' public code: ~1.04M parameters.
CROPNET_CODE: dict[str, Any] = {
    "channels": (128, 128, 128, 128), "pool_after": (), "first_stride": 2, "dropout": (0.2, 0.3, 0.3, 0.4),
}


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def as_matrix_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``(N, 1, band, time)`` for a 2D model built for ``model.n_bands`` bands: ``(N, band,
    time)`` gains the channel axis; anything else raises :class:`IncompatibleInputError`."""
    name = type(model).__name__
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != model.n_bands:
        raise IncompatibleInputError(f"{name} built for {model.n_bands} bands expects (N, 1, band, time), "
                                     f"got shape {tuple(x.shape)}")
    if x.shape[-1] < MIN_TIME:
        raise IncompatibleInputError(f"{name} needs >= {MIN_TIME} time bins, got {x.shape[-1]}")
    return x


class MatrixClassifier(nn.Module):
    """Base of the networks over the ``(N, 1, band, time)`` matrix: checks the sizes, keeps
    ``n_bands``/``n_classes`` (the input contract :func:`as_matrix_input` checks), and classifies as
    ``head(drop(embed(x)))`` with ``embed(x)`` = global average pool of ``features(x)``: the penultimate
    features ``(N, F)`` (what :mod:`cropmap.ml.ood` measures); subclasses build ``features``, ``drop``
    and ``head``."""

    def __init__(self, *, n_bands: int, n_classes: int) -> None:
        super().__init__()
        if n_bands < 1 or n_classes < 2:
            raise ConfigError(f"{type(self).__name__} needs n_bands >= 1 and n_classes >= 2, got {n_bands}, {n_classes}")
        self.n_bands, self.n_classes = n_bands, n_classes

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features ``(N, F)``: ``features(x)`` averaged over (band,) time."""
        return self.features(as_matrix_input(self, x)).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.embed(x)))


class _Net(MatrixClassifier):
    """Shared body of the 2D and 1D nets; ``dims`` picks the convolution type."""

    dims = 2

    def __init__(
        self,
        *,
        n_bands: int,
        n_classes: int,
        channels: Sequence[int] = CROPNET_V1["channels"],
        pool_after: Sequence[int] = CROPNET_V1["pool_after"],
        first_stride: int = 1,
        dropout: float | Sequence[float] = 0.2,
    ) -> None:
        super().__init__(n_bands=n_bands, n_classes=n_classes)
        channels = list(channels)
        drops = [float(dropout)] * len(channels) if isinstance(dropout, (int, float)) else list(dropout)
        if len(drops) != len(channels):
            raise ConfigError(f"dropout has {len(drops)} values for {len(channels)} blocks")
        conv = nn.Conv2d if self.dims == 2 else nn.Conv1d
        norm = nn.BatchNorm2d if self.dims == 2 else nn.BatchNorm1d
        drop = nn.Dropout2d if self.dims == 2 else nn.Dropout1d
        pool = nn.MaxPool2d if self.dims == 2 else nn.MaxPool1d
        layers: list[nn.Module] = []
        c_in = 1 if self.dims == 2 else n_bands
        for i, (c_out, p) in enumerate(zip(channels, drops)):
            stride = first_stride if i == 0 else 1
            layers += [conv(c_in, c_out, 3, stride=stride, padding=1), norm(c_out), nn.ReLU(inplace=True),
                       conv(c_out, c_out, 3, padding=1), norm(c_out), nn.ReLU(inplace=True), drop(p)]
            if i in pool_after:
                layers.append(pool(2, ceil_mode=True))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.drop = nn.Identity()  # dropout lives in the blocks; Identity keeps the state dict as it was
        self.head = nn.Linear(c_in, n_classes)

    def _check(self, x: torch.Tensor, expected_dims: int, layout: str) -> None:
        if x.ndim != expected_dims:
            raise IncompatibleInputError(f"{type(self).__name__} expects {layout}, got shape {tuple(x.shape)}")
        if x.shape[-1] < MIN_TIME:
            raise IncompatibleInputError(f"{type(self).__name__} needs >= {MIN_TIME} time bins, got {x.shape[-1]}")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(2).mean(-1)  # global average pooling over (band,) time


class CropNet(_Net):
    """2D CropNet. ``forward(x)``: ``x`` ``(N, 1, band, time)`` (or ``(N, band, time)``) float32,
    normalised; returns logits ``(N, n_classes)``."""

    dims = 2

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return super().embed(as_matrix_input(self, x))


class CropNet1D(_Net):
    """1D CropNet: convolutions over time with bands as channels. ``forward(x)``: ``x`` ``(N, band,
    time)`` float32, normalised; returns logits ``(N, n_classes)``."""

    dims = 1

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, 3, "(N, band, time)")
        if x.shape[1] != self.n_bands:
            raise IncompatibleInputError(f"CropNet1D built for {self.n_bands} bands got input {tuple(x.shape)}")
        return super().embed(x)
