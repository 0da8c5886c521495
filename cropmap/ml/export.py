"""Exchange formats of a checkpoint: an ONNX model (the STAC MLM item describing it is
:func:`cropmap.stages.model_item.write_mlm_item`).

The ONNX graph takes what the tile cubes hold and returns what the maps are made of: input ``x``
``(n, band, time)`` float32 reflectance 0..1 (finite rows: prediction leaves NaN or ±inf as nodata),
output ``probabilities`` ``(n, class)`` float32, calibrated as the maps' are: ``softmax(logits / T)``
with the checkpoint's temperature ``T``. The checkpoint's normalisation (``log1p(clip(x, 0) * scale)``,
then per-band standardisation) is inside the graph, so a consumer needs nothing but the file; its
``metadata_props`` name the bands, bins, classes (and colours) and the temperature. Agreement with the
maps is checked on export: the largest absolute difference from the probabilities prediction computes
(:meth:`Checkpoint.predict_proba`, the path of :mod:`cropmap.stages.predict`) must stay within
:data:`TOLERANCE` on the inputs given (real series in the tests).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cropmap.errors import IncompatibleInputError
from cropmap.io.outputs import atomic_path
from cropmap.ml.checkpoint import Checkpoint, load_checkpoint

__all__ = ["TOLERANCE", "OnnxExport", "ExportModule", "CoreForward", "export_onnx", "onnx_probabilities",
           "onnx_metadata"]

#: Largest absolute difference allowed between the ONNX and the maps' probabilities (float32 kernels differ).
TOLERANCE = 1e-5
OPSET = 17


class CoreForward(torch.nn.Module):
    """CropNet's forward without its input checks (Python control flow that tracers cannot follow):
    the same layers in the same order, input ``(n, band, time)`` normalised, output logits."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.features, self.head = net.features, net.head
        self.matrix = getattr(net, "dims", 2) == 2  # CropNet1D convolves (band, time) with bands as channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.unsqueeze(1) if self.matrix else x).flatten(2).mean(-1))


class ExportModule(torch.nn.Module):
    """Reflectance ``(n, band, time)`` -> probabilities ``(n, class)``: normalisation, model, softmax of
    the logits divided by the checkpoint's temperature (the maps' calibrated probabilities)."""

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__()
        norm = ckpt.normalisation
        self.core = CoreForward(ckpt.model) if hasattr(ckpt.model, "features") else ckpt.model
        self.register_buffer("mean", torch.tensor(norm["mean"], dtype=torch.float32)[None, :, None])
        self.register_buffer("std", torch.tensor(norm["std"], dtype=torch.float32)[None, :, None])
        self.scale = float(norm["scale"])
        self.temperature = float(ckpt.temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.where(torch.isinf(x), torch.full_like(x, float("nan")), x)  # ±inf is no data, as in the maps
        z = (torch.log1p(torch.clamp(x, min=0.0) * self.scale) - self.mean) / self.std
        return torch.softmax(self.core(z) / self.temperature, dim=1)


@dataclass(frozen=True)
class OnnxExport:
    """An exported model: its path, the largest |ONNX - maps| probability difference measured on
    ``n_checked`` rows, the tolerance it was held to, and the temperature inside the graph."""

    path: Path
    max_abs_diff: float
    n_checked: int
    tolerance: float
    temperature: float = 1.0


def _metadata(ckpt: Checkpoint) -> dict[str, str]:
    """What a consumer of the ONNX file needs besides the graph, as ``metadata_props`` (JSON values)."""
    meta = {"bands": list(ckpt.bands), "n_bins": ckpt.n_bins, "class_names": list(ckpt.class_names),
            "temperature": ckpt.temperature, "output": "calibrated probabilities: softmax(logits / temperature)",
            "model_name": ckpt.model_name, "season": ckpt.season.model_dump(), "cropmap_version": ckpt.version}
    if ckpt.class_colours is not None:
        meta["class_colours"] = list(ckpt.class_colours)
    return {k: json.dumps(v) for k, v in meta.items()}


def onnx_metadata(path: str | Path) -> dict:
    """The ``metadata_props`` of an exported model, decoded: ``bands``, ``n_bins``, ``class_names``,
    ``temperature`` ... (see :func:`export_onnx`)."""
    import onnx

    return {p.key: json.loads(p.value) for p in onnx.load(str(path), load_external_data=False).metadata_props}


def onnx_probabilities(path: str | Path, x: np.ndarray) -> np.ndarray:
    """Run the exported model with onnxruntime (CPU): ``x`` ``(n, band, time)`` -> ``(n, class)``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]


def export_onnx(checkpoint: str | Path, out: str | Path, *, check: np.ndarray | None = None,
                tolerance: float = TOLERANCE) -> OnnxExport:
    """Export ``checkpoint`` to ONNX at ``out`` (opset 17, dynamic batch), the checkpoint's bands, bins,
    classes and temperature in its ``metadata_props`` (:func:`onnx_metadata`), and check it against the
    maps' probabilities (:meth:`Checkpoint.predict_proba` on the CPU) on ``check`` ``(n, band, time)``
    reflectance (default: 64 rows of a fixed random draw in 0..0.6). Raises
    :class:`IncompatibleInputError` when the difference exceeds ``tolerance``; the file is written only
    then (temporary name, renamed after the check)."""
    import onnx

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
        graph = onnx.load(str(tmp))
        onnx.helper.set_model_props(graph, _metadata(ckpt))
        onnx.save(graph, str(tmp))
        expected = ckpt.predict_proba(check, device="cpu")  # what the maps are made of, not the module above
        got = onnx_probabilities(tmp, check)
        diff = float(np.abs(got - expected).max())
        if not diff <= tolerance:
            raise IncompatibleInputError(f"ONNX export of {Path(checkpoint).name} differs from the maps' "
                                         f"probabilities by {diff:.2e} (> {tolerance:.0e}); not written")
    return OnnxExport(out, diff, len(check), tolerance, ckpt.temperature)
