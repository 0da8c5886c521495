"""The options of a prediction run (the ``predict`` section of a country config): :class:`PredictOptions`.

One frozen pydantic model, read by every part of a prediction: the inference loop
(:func:`cropmap.stages.inference.infer_cube`: nodata rule, batch, device, precision), the tile files
(:mod:`cropmap.stages.tile_geotiffs`: which products) and the prediction key
(:func:`cropmap.stages.predict_provenance.prediction_key`: only the options that change the written pixels,
:meth:`PredictOptions.output_key`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cropmap.ml.checkpoint import Checkpoint

__all__ = ["PredictOptions"]


class PredictOptions(BaseModel):
    """Options of a prediction run (the ``predict`` section of a config)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Pixels whose fraction of interpolated (unobserved) bins exceeds this are nodata.
    max_filled_fraction: float = Field(0.8, ge=0.0, le=1.0)
    #: Pixels per forward pass; None: as many as fit in ``memory_budget_mb``
    #: (:meth:`~cropmap.ml.checkpoint.Checkpoint.batch_size_for`).
    batch_size: int | None = Field(None, ge=1)
    #: Memory (MiB, GPU memory on CUDA) one forward pass may take: sets the batch when ``batch_size`` is
    #: None. The paper's CropNet on 10 bands x 43 bins peaks at 225 kB a pixel, so 1,024 MiB gives batches
    #: of 2,383 pixels.
    memory_budget_mb: int = Field(1024, ge=1)
    #: Pixels loaded at once (whole chunks of the cube's store where they fit:
    #: :func:`cropmap.stages.inference.block_windows`): bounds memory per tile task, about
    #: ``block_pixels x bins x bands`` x 2 bytes (the int16 block read) + x 4 bytes (its gathered float32
    #: batches), the block twice with ``prefetch`` (65536 px, 43 bins, 10 bands: ~0.17-0.23 GB).
    block_pixels: int = Field(65536, ge=1)
    #: Read (and on CUDA pin) the next block in a second thread while the device computes this one
    #: (:func:`cropmap.stages.inference.infer_cube`): two blocks in host memory at once. Off by default:
    #: on the CPU it measured no better (bench/predict.py --host: the forward pass and the read share the
    #: cores); meant for a GPU, where it is still to be measured.
    prefetch: bool = False
    #: Also write per-class probabilities (uint8 percent, one band per class).
    probabilities: bool = False
    #: ``"cuda"``, ``"cpu"`` or None (CUDA when available).
    device: Literal["cuda", "cpu"] | None = None
    #: Arithmetic of the forward pass: ``"auto"`` is bf16 autocast on CUDA and fp32 on the CPU;
    #: ``"bf16"`` on a CPU with AVX512-BF16/AMX is about 2x faster (bench/predict.py,
    #: docs/performance.md) but may flip near-tie pixels.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    #: Also write the out-of-distribution score (``ood`` product, :meth:`Checkpoint.ood_score`): uint8,
    #: the Mahalanobis distance of the pixel's penultimate features (:mod:`cropmap.ml.ood`) to the nearest
    #: training class, in percent of the training threshold (the 99th percentile of the validation
    #: split's distances); > 100 = out of distribution, 254 = 254 % or more.
    #: None (the default): written when the checkpoint holds training-distribution statistics.
    ood: bool | None = None

    def for_checkpoint(self, checkpoint: Checkpoint) -> PredictOptions:
        """These options with ``ood`` decided for ``checkpoint`` (None -> whether it holds statistics)."""
        return self if self.ood is not None else self.model_copy(update={"ood": checkpoint.ood is not None})

    def output_key(self) -> dict:
        """The options that change the written pixels (the device, batch size, blocks and prefetch do not)."""
        return {"max_filled_fraction": self.max_filled_fraction, "probabilities": self.probabilities,
                "precision": self.precision, **({"ood": True} if self.ood else {})}
