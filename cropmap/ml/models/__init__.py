"""Models: CropNet (2D, and the authors'-code variant), CropNet1D, the deeper baselines (ResNet-50-like,
EfficientNetV2-S-like) and the random-forest baseline.

:func:`build_model` is the one registry: ``build_model("cropnet", n_bands=10, n_classes=7)``, its options
checked first by :func:`check_model_config` (known to the model, a bounded size, counted without allocating);
:func:`forward_pass` the one batched inference loop over any of the torch models.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from cropmap.errors import ConfigError, one_line
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

__all__ = ["build_model", "check_model_config", "forward_pass", "MODELS", "MAX_PARAMETERS", "MAX_BLOCKS",
           "build_forest", "CropNet", "CropNet1D", "ResNetBottleneck",
           "EfficientNetV2", "count_parameters", "CROPNET_V1", "CROPNET_CODE", "RESNET50", "EFFNETV2_S"]

#: name -> (class, default configuration). Every torch model takes (N, band, time) matrices.
MODELS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "cropnet": (CropNet, CROPNET_V1),
    "cropnet-code": (CropNet, CROPNET_CODE),
    "cropnet1d": (CropNet1D, CROPNET_V1),
    "resnet50": (ResNetBottleneck, RESNET50),
    "effnetv2-s": (EfficientNetV2, EFFNETV2_S),
}

#: The most parameters a model may have: about 4x the largest registered configuration (ResNet-50-like,
#: 23.5M), so that a checkpoint or an experiment asking for more is refused before anything is allocated.
MAX_PARAMETERS = 100_000_000
#: The most blocks a model may stack: even on the ``meta`` device each block is Python work.
MAX_BLOCKS = 256

# the option that sets each network's depth, and the number of blocks it makes
_DEPTH_OPTION: dict[type[nn.Module], tuple[str, Callable[[Any], int]]] = {
    CropNet: ("channels", len),
    CropNet1D: ("channels", len),
    ResNetBottleneck: ("blocks", lambda blocks: sum(int(n) for n in blocks)),
    EfficientNetV2: ("stages", lambda stages: sum(int(stage[5]) for stage in stages)),
}
# the smallest value of the options without a registry default, to find which option makes a model too large
_SMALLEST = {"n_bands": 1, "n_classes": 2}


def _meta_build(name: str, options: Mapping[str, Any]) -> nn.Module:
    """The model's structure on PyTorch's ``meta`` device: shapes without storage, so its size is known
    before any weight is allocated. Raises :class:`ConfigError` for options the model cannot be built from."""
    try:
        with torch.device("meta"):
            return MODELS[name][0](**options)
    except ConfigError:
        raise
    except (TypeError, ValueError, RuntimeError, IndexError, ZeroDivisionError) as err:
        raise ConfigError(f"model {name!r} cannot be built from its options: {one_line(err)}") from err


def _n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_model_config(name: str, cfg: Mapping[str, Any], *,
                       input_shape: tuple[int, int] | None = None) -> int:
    """Check that ``build_model(name, **cfg)`` makes a usable network, without allocating it: every option
    known to the model, its depth within :data:`MAX_BLOCKS` and its size within :data:`MAX_PARAMETERS`
    (counted on the ``meta`` device); with ``input_shape`` ``(band, time)``, that one input of that shape
    passes through it. Returns the parameter count; raises :class:`ConfigError` naming the option."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    cls, defaults = MODELS[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(cfg) - {p.name for p in accepted})
    if unknown:
        raise ConfigError(f"model {name!r} has no option {unknown[0]!r}; its options: "
                          f"{', '.join(p.name for p in accepted)}")
    options = {**defaults, **cfg}
    missing = [p.name for p in accepted if p.default is inspect.Parameter.empty and p.name not in options]
    if missing:
        raise ConfigError(f"model {name!r} needs the option {missing[0]!r}")
    depth_option, count_blocks = _DEPTH_OPTION[cls]
    try:
        blocks = count_blocks(options[depth_option])
    except (TypeError, ValueError, IndexError) as err:
        raise ConfigError(f"model {name!r}: option {depth_option}={options[depth_option]!r} is malformed "
                          f"({one_line(err)})") from err
    if blocks > MAX_BLOCKS:
        raise ConfigError(f"model {name!r}: option {depth_option} stacks {blocks:,} blocks, above the "
                          f"{MAX_BLOCKS} cropmap builds; use fewer")
    model = _meta_build(name, options)
    n = _n_parameters(model)
    if n > MAX_PARAMETERS:
        raise ConfigError(f"model {name!r}: option {_largest_option(name, cfg)} makes {n:,} parameters "
                          f"({4 * n / 2**30:,.1f} GiB of float32 weights), above the {MAX_PARAMETERS:,} cropmap "
                          "builds; use a smaller value")
    if input_shape is not None:
        try:
            with torch.device("meta"), torch.no_grad():
                model.eval()(torch.empty((1, *input_shape)))
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure here is the stored options' fault, said in one line
            raise ConfigError(f"model {name!r} with options {dict(cfg)} cannot take its input (band, time) = "
                              f"{tuple(input_shape)}: {one_line(err)}") from err
    return n


def _largest_option(name: str, cfg: Mapping[str, Any]) -> str:
    """``option=value`` of the option of ``cfg`` whose default (or smallest value) shrinks the model most."""
    defaults = MODELS[name][1]

    def without(key: str) -> int:
        options = {**defaults, **cfg}
        if key in defaults:
            options[key] = defaults[key]
        elif key in _SMALLEST:
            options[key] = _SMALLEST[key]
        try:
            return _n_parameters(_meta_build(name, options))
        except ConfigError:
            return MAX_PARAMETERS + 1

    key = min(cfg, key=without)
    return f"{key}={cfg[key]!r}"


def build_model(name: str, **cfg: Any) -> nn.Module:
    """A torch model by registry name; ``cfg`` (``n_bands``, ``n_classes``, overrides) is keyword-only,
    checked first (:func:`check_model_config`: known options, a bounded size).

    >>> count_parameters(build_model("cropnet", n_bands=10, n_classes=7))
    4691655
    """
    check_model_config(name, cfg)
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
