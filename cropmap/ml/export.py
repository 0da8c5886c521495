"""Exchange formats of a checkpoint: an ONNX model (the STAC MLM item describing it is
:func:`cropmap.stages.model_item.write_mlm_item`).

The ONNX graph takes what the tile cubes hold and returns what the maps are made of: input ``x``
``(n, band, time)`` float32 reflectance 0..1 (NaN-free rows), output ``probabilities`` ``(n, class)``
float32 (softmax). The checkpoint's normalisation (``log1p(clip(x, 0) * scale)``, then per-band
standardisation) is inside the graph, so a consumer needs nothing but the file. Agreement with torch
is checked on export: the largest absolute difference of the probabilities must stay within
:data:`TOLERANCE` on the inputs given (real series in the tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cropmap.errors import IncompatibleInputError
from cropmap.io.storage import atomic_path
from cropmap.ml.checkpoint import Checkpoint, load_checkpoint

__all__ = ["TOLERANCE", "OnnxExport", "ExportModule", "CoreForward", "export_onnx", "onnx_probabilities"]

#: Largest absolute difference allowed between the ONNX and torch probabilities (float32 kernels differ).
TOLERANCE = 1e-5
OPSET = 17


class CoreForward(torch.nn.Module):
    """CropNet's forward without its input checks (Python control flow that tracers cannot follow):
    the same layers in the same order, input ``(n, band, time)`` normalised, output logits."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.features, self.head = net.features, net.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.unsqueeze(1)).flatten(2).mean(-1))


class ExportModule(torch.nn.Module):
    """Reflectance ``(n, band, time)`` -> probabilities ``(n, class)``: normalisation, model, softmax."""

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__()
        norm = ckpt.normalisation
        self.core = CoreForward(ckpt.model) if hasattr(ckpt.model, "features") else ckpt.model
        self.register_buffer("mean", torch.tensor(norm["mean"], dtype=torch.float32)[None, :, None])
        self.register_buffer("std", torch.tensor(norm["std"], dtype=torch.float32)[None, :, None])
        self.scale = float(norm["scale"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (torch.log1p(torch.clamp(x, min=0.0) * self.scale) - self.mean) / self.std
        return torch.softmax(self.core(z), dim=1)


@dataclass(frozen=True)
class OnnxExport:
    """An exported model: its path, the largest |ONNX - torch| probability difference measured on
    ``n_checked`` rows, and the tolerance it was held to."""

    path: Path
    max_abs_diff: float
    n_checked: int
    tolerance: float


def onnx_probabilities(path: str | Path, x: np.ndarray) -> np.ndarray:
    """Run the exported model with onnxruntime (CPU): ``x`` ``(n, band, time)`` -> ``(n, class)``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]


def export_onnx(checkpoint: str | Path, out: str | Path, *, check: np.ndarray | None = None,
                tolerance: float = TOLERANCE) -> OnnxExport:
    """Export ``checkpoint`` to ONNX at ``out`` (opset 17, dynamic batch) and check it against torch on
    ``check`` ``(n, band, time)`` reflectance (default: 64 rows of a fixed random draw in 0..0.6).
    Raises :class:`IncompatibleInputError` when the difference exceeds ``tolerance``; the file is
    written only then (temporary name, renamed after the check)."""
    ckpt = load_checkpoint(checkpoint)
    module = ExportModule(ckpt).eval()
    n_bands, n_bins = len(ckpt.bands), ckpt.n_bins
    if check is None:
        check = np.random.default_rng(0).uniform(0, 0.6, size=(64, n_bands, n_bins)).astype(np.float32)
    check = np.asarray(check, dtype=np.float32)
    out = Path(out)
    with atomic_path(out) as tmp:
        with torch.no_grad():
            torch.onnx.export(module, (torch.from_numpy(check[:2]),), str(tmp), input_names=["x"],
                              output_names=["probabilities"], dynamic_axes={"x": {0: "n"}, "probabilities": {0: "n"}},
                              opset_version=OPSET, dynamo=False)
            expected = module(torch.from_numpy(check)).numpy()
        got = onnx_probabilities(tmp, check)
        diff = float(np.abs(got - expected).max())
        if not diff <= tolerance:
            raise IncompatibleInputError(f"ONNX export of {Path(checkpoint).name} differs from torch by {diff:.2e} "
                                         f"(> {tolerance:.0e}); not written")
    return OnnxExport(out, diff, len(check), tolerance)
