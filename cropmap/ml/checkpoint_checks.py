"""A loaded checkpoint checked before it is trusted: everything prediction relies on must be usable, or
the load fails in one line (:class:`~cropmap.errors.CheckpointError`) naming the field and what to do.

A checkpoint edited by hand or written by a broken training could otherwise map every pixel as nodata
(a NaN mean, a zero std or temperature), fail on every tile (a head unlike its class names), or allocate
without bound (model options far beyond any trained model): all are refused here, before any weight is
allocated (:func:`cropmap.ml.models.check_model_config` sizes the network on PyTorch's meta device).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from cropmap.errors import CheckpointError, ConfigError
from cropmap.io import storage
from cropmap.ml.models import build_model, check_model_config

__all__ = ["REQUIRED", "checked_model"]

#: The fields every checkpoint holds (:func:`cropmap.ml.checkpoint.save_checkpoint` writes them).
REQUIRED = ("model_name", "model_config", "feature_kind", "bands", "season", "n_bins", "normalisation",
             "class_names", "class_colours", "config", "scores", "version", "state_dict")


def checked_model(blob: dict, path: storage.Location) -> torch.nn.Module:
    """The model of a loaded checkpoint ``blob``, in eval mode, once everything prediction relies on is
    known to be usable: a checkpoint that would map every pixel as nodata, fail on every tile or allocate
    without bound raises :class:`CheckpointError` naming the field, before any weight is allocated."""
    def refuse(problem: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path}: {problem}; retrain the model or use another checkpoint")

    missing = [k for k in REQUIRED if k not in blob]
    if missing:
        raise refuse(f"no {missing[0]!r} field")
    bands, config, state = blob["bands"], blob["model_config"], blob["state_dict"]
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise refuse("model_config and state_dict must be mappings")
    if not isinstance(bands, list) or not bands or not all(isinstance(b, str) for b in bands):
        raise refuse(f"bands {bands!r} are not a list of band names")
    _check_normalisation(blob["normalisation"], bands, refuse)
    temperature = blob.get("temperature", 1.0)
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise refuse(f"temperature {temperature!r} is not a positive number (softmax(logits / T) needs T > 0)")
    n_bins = blob["n_bins"]
    if not isinstance(n_bins, int) or n_bins < 1:
        raise refuse(f"n_bins {n_bins!r} is not a positive integer")
    if config.get("n_bands") != len(bands):
        raise refuse(f"model_config n_bands {config.get('n_bands')!r} differs from its {len(bands)} bands")
    try:
        check_model_config(blob["model_name"], config, input_shape=(len(bands), n_bins))
        model = build_model(blob["model_name"], **config)
    except ConfigError as err:
        raise refuse(str(err)) from err
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # torch lists every mismatch on its own line: the first says enough
        first = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
        raise refuse(f"weights do not match model_config ({first})") from err
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise refuse(f"weights {bad!r} hold NaN or infinite values")
    names, colours = blob["class_names"], blob.get("class_colours")
    if not isinstance(names, list) or len(names) != model.n_classes:
        raise refuse(f"{len(names) if isinstance(names, list) else names!r} class names for a head of "
                     f"{model.n_classes} classes")
    if colours is not None and (not isinstance(colours, list) or len(colours) != len(names)):
        raise refuse(f"{len(colours) if isinstance(colours, list) else colours!r} class colours for "
                     f"{len(names)} classes")
    return model.eval()


def _check_normalisation(normalisation: Any, bands: list[str], refuse: Callable[[str], CheckpointError]) -> None:
    """Refuse a normalisation that would turn every input into NaN or infinity: an unknown method, a
    mean or std per band that is missing or not finite, a std that is not positive, a non-positive scale."""
    if not isinstance(normalisation, dict) or normalisation.get("method") != "log1p_standard":
        raise refuse("normalisation is not of method 'log1p_standard'")
    for key in ("mean", "std"):
        try:
            values = np.asarray(normalisation.get(key), dtype=np.float64)
        except (TypeError, ValueError):
            raise refuse(f"normalisation {key} is not a list of numbers") from None
        if values.shape != (len(bands),):
            raise refuse(f"normalisation {key} has shape {values.shape}, not one value per band ({len(bands)})")
        bad = np.flatnonzero(~np.isfinite(values) | ((values <= 0) if key == "std" else False))
        if bad.size:
            band = bands[bad[0]]
            raise refuse(f"normalisation {key} of band {band} is {values[bad[0]]}"
                         + (", not a positive number" if key == "std" else ", not a finite number"))
    scale = normalisation.get("scale")
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise refuse(f"normalisation scale {scale!r} is not a positive number")
