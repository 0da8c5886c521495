"""The options of a prediction run (the ``predict`` section of a country config): :class:`PredictOptions`.

One frozen pydantic model, read by every part of a prediction: the inference loop
(:func:`cropmap.stages.inference.infer_cube`: nodata rule, batch, device, precision), the tile files
(:mod:`cropmap.stages.tile_geotiffs`: which products) and the prediction key
(:func:`cropmap.stages.predict_provenance.prediction_key`: only the options that change the written pixels,
:meth:`PredictOptions.output_key`) and the zone mosaic (:func:`cropmap.stages.mosaic.mosaic_tiles`: the
spatial smoothing of the probabilities, :meth:`PredictOptions.smoother`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cropmap.core.smoothing import BayesSmoothing
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
    #: Also write per-class probabilities (uint8 percent, one band per class); true when ``smoothing``.
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
    #: Spatial smoothing of the probabilities before the class decision, in the zone mosaic
    #: (:mod:`cropmap.stages.smoothing`): ``"bayes"`` is sits' Bayesian smoothing
    #: (:func:`cropmap.core.smoothing.bayes_smooth`); ``probabilities`` is then true (the tiles write the
    #: probabilities the mosaic smooths; false with smoothing is refused), and
    #: the zone's class, confidence and probability COGs are those of the smoothed probabilities. The tile
    #: GeoTIFFs stay unsmoothed; UTM zone borders are not smoothed across.
    smoothing: Literal["none", "bayes"] = "none"
    #: Side of the smoothing neighbourhood, pixels (odd, 3-33; sits' default 9).
    smoothing_window: int = Field(9, ge=3, le=33)
    #: Fraction of the neighbours, highest logits first, that estimate the prior (sits' default 0.5).
    smoothing_neigh_fraction: float = Field(0.5, gt=0.0, le=1.0)
    #: Prior variance of a class logit (sits' ``smoothness``, default 20): larger smooths less.
    smoothing_variance: float = Field(20.0, gt=0.0)

    @model_validator(mode="before")
    @classmethod
    def _smoothing_reads_probabilities(cls, data):
        # the zone mosaic smooths the tiles' probabilities: smoothing on writes them unless told otherwise
        if isinstance(data, dict) and data.get("smoothing", "none") != "none" and data.get("probabilities") is None:
            data = {**data, "probabilities": True}
        return data

    @model_validator(mode="after")
    def _check_smoothing(self) -> PredictOptions:
        if self.smoothing_window % 2 == 0:
            raise ValueError(f"smoothing_window must be odd (a centred square), got {self.smoothing_window}")
        if self.smoothing != "none" and not self.probabilities:
            raise ValueError("smoothing smooths the tiles' probabilities: set probabilities true or leave it out")
        return self

    def for_checkpoint(self, checkpoint: Checkpoint) -> PredictOptions:
        """These options with ``ood`` decided for ``checkpoint`` (None -> whether it holds statistics)."""
        return self if self.ood is not None else self.model_copy(update={"ood": checkpoint.ood is not None})

    def smoother(self) -> BayesSmoothing | None:
        """The smoothing the zone mosaic applies (None: ``smoothing="none"``)."""
        if self.smoothing == "none":
            return None
        return BayesSmoothing(window=self.smoothing_window, neigh_fraction=self.smoothing_neigh_fraction,
                              smoothness=self.smoothing_variance)

    def output_key(self) -> dict:
        """The options that change the written pixels (the device, batch size, blocks and prefetch do not).
        Smoothing enters only when on, so the key of an unsmoothed run is the one it always was."""
        smoothing = self.smoother()
        return {"max_filled_fraction": self.max_filled_fraction, "probabilities": self.probabilities,
                "precision": self.precision, **({"ood": True} if self.ood else {}),
                **({"smoothing": {"method": self.smoothing, "window": smoothing.window,
                                  "neigh_fraction": smoothing.neigh_fraction,
                                  "smoothness": smoothing.smoothness}} if smoothing else {})}
