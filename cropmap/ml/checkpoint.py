"""Checkpoints: weights plus everything prediction needs, and a model card JSON beside them.

A checkpoint file (``torch.save`` of plain types, loadable with ``weights_only=True``) holds the
``state_dict``, the model registry name and configuration (:func:`cropmap.ml.models.build_model`), the
feature kind, band list, season, bin count, normalisation, class names/colours, the experiment config,
the scores and the cropmap version, and the model card (:func:`model_card`: intended use, training
data extent, season, transfer scores, limitations, licence of the training labels).
``<path>.card.json`` holds the same without the weights; :func:`card_markdown` renders the card.

The normalisation it stores is :mod:`cropmap.ml.normalisation`'s.
"""

from __future__ import annotations

import copy
import json
import threading
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from cropmap import __version__
from cropmap.core.season import Season
from cropmap.errors import CheckpointError, ConfigError, DataNotFoundError, IncompatibleInputError
from cropmap.io import downloads, outputs, storage
from cropmap.ml.checkpoint_checks import checked_model
from cropmap.ml.device_pass import device_pass
from cropmap.ml.normalisation import apply_normalisation
from cropmap.ml.calibration import softmax_t
from cropmap.ml.ood import KIND as OOD_KIND

__all__ = [
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "card_path",
    "model_card",
    "card_markdown",
    "require_fit",
]

#: What a cropmap model is for, and what it was never shown (the paper's stated limitations).
INTENDED_USE = ("Per-pixel crop type maps for one growing season from Sentinel-2 L2A 5-day median "
                "composites, at country scale, for area statistics with a sample-based accuracy "
                "assessment (cropmap area); transfer to countries and years outside the training data is "
                "measured by the transfer scores, not assumed.")
LIMITATIONS = (
    "Smallholder systems with fields of a few pixels (10 m) and intercropping are not represented in "
    "the training labels; expect lower accuracy there.",
    "Cultivars, management practices and sowing dates unseen in training shift the phenology the model "
    "relies on.",
    "Persistent cloud cover leaves composite bins gap-filled; pixels with too many filled bins are nodata.",
    "Classes outside the training legend are mapped to the nearest known class (no rejection class).",
    "Map areas are biased by classification errors: use the area-adjusted estimates with their "
    "confidence intervals, not pixel counts.",
)

_FORMAT = 1
# the fields load_checkpoint reads without a default

def require_fit(model, *, bands: Sequence[str], season: Season, n_bins: int, what: str) -> int:
    """Raise :class:`IncompatibleInputError` naming the first mismatch of ``bands``, ``season`` or ``n_bins``
    with ``model``'s (anything with ``bands``, ``season`` and ``n_bins``: a :class:`Checkpoint`, or
    :class:`cropmap.stages.model_ref.ModelRef` without loading one); the season may be the model's or its
    six-month offset. Returns that offset in months (0 or 6)."""
    if tuple(bands) != tuple(model.bands):
        raise IncompatibleInputError(
            f"{what}: bands {list(bands)} differ from the model's {list(model.bands)} (same names, same order)"
        )
    offset = model.season.require_aligned(season, what=what)
    if int(n_bins) != model.n_bins:
        raise IncompatibleInputError(f"{what}: {n_bins} time bins, the model was trained on {model.n_bins}")
    return offset


def card_path(path: storage.Location) -> storage.Location:
    """The model card beside a checkpoint: ``<path>.card.json`` (a ``Path``, or a URL beside a remote one)."""
    return storage.as_location(f"{storage.as_location(path)}.card.json")


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint; ``model`` is in eval mode on the CPU."""

    model: torch.nn.Module = field(repr=False)
    model_name: str
    model_config: dict
    feature_kind: str
    bands: tuple[str, ...]
    season: Season
    n_bins: int
    normalisation: dict
    class_names: tuple[str, ...]
    class_colours: tuple[str, ...] | None
    config: dict
    scores: dict
    version: str
    year: int | None = None  # the year of the season the model was trained on (None: not recorded)
    temperature: float = 1.0  # softmax(logits / temperature): fitted on validation at training
    ood: dict | None = field(default=None, repr=False)  # cropmap.ml.ood statistics of the training features
    card: dict = field(default_factory=dict)
    # copies of ``model`` prepared per (device, memory format), and the device constants of
    # :func:`cropmap.ml.device_pass.device_pass` per device, made once and never changed afterwards: prediction threads share
    # them, and ``model`` itself is never moved or converted
    _variants: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def check_compatible(self, *, bands: Sequence[str], season: Season, n_bins: int, what: str) -> int:
        """Raise :class:`IncompatibleInputError` naming the first mismatch of bands, season or bins; the
        season may be the model's or its six-month offset in the other hemisphere
        (:meth:`~cropmap.core.season.Season.require_aligned`). Returns that offset in months (0 or 6)."""
        return require_fit(self, bands=bands, season=season, n_bins=n_bins, what=what)

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """``x`` ``(N, band, time)`` reflectance 0..1 -> the model's normalised float32 input."""
        x = np.asarray(x)
        if x.ndim != 3 or x.shape[1:] != (len(self.bands), self.n_bins):
            raise IncompatibleInputError(
                f"expected (N, {len(self.bands)} bands, {self.n_bins} bins), got {x.shape}"
            )
        return apply_normalisation(x, self.normalisation)

    def inference_model(self, device: str | torch.device, *, channels_last: bool = False) -> torch.nn.Module:
        """The model on ``device`` in eval mode (``channels_last`` weights if asked): a copy made once per
        checkpoint and variant, safe to share between threads because nothing changes it afterwards."""
        key = (str(torch.device(device)), channels_last)
        with self._lock:
            if key not in self._variants:
                model = copy.deepcopy(self.model).to(device).eval()
                if channels_last:
                    model = model.to(memory_format=torch.channels_last)
                self._variants[key] = model
            return self._variants[key]

    def activation_bytes_per_pixel(self) -> int:
        """Bytes one pixel takes at the peak of a float32 forward pass: the largest input plus output
        of any layer (activations are freed layer by layer without autograd), from a forward pass of
        the model's structure on PyTorch's ``meta`` device (no weights, no compute)."""
        model = copy.deepcopy(self.model).to("meta").eval()
        peak = [len(self.bands) * self.n_bins]

        def measure(module, inputs, output) -> None:
            sizes = [t.numel() for t in (*inputs, output) if isinstance(t, torch.Tensor)]
            peak[0] = max(peak[0], sum(sizes))

        hooks = [m.register_forward_hook(measure) for m in model.modules() if not list(m.children())]
        try:
            with torch.no_grad():
                model(torch.empty((1, len(self.bands), self.n_bins), device="meta"))
        finally:
            for h in hooks:
                h.remove()
        return 4 * peak[0]

    def batch_size_for(self, budget_bytes: int) -> int:
        """Pixels per forward pass that keep the activations within ``budget_bytes``, with half the
        budget left for the convolution workspace and the allocator (between 1 and 65,536)."""
        return int(min(65536, max(1, budget_bytes // (2 * self.activation_bytes_per_pixel()))))

    def infer(self, x: np.ndarray, *, ood: bool = False, batch_size: int = 4096, device: str | None = None,
              channels_last: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """One forward pass over ``x`` ``(N, band, time)`` reflectance 0..1: the logits ``(N, n_classes)``
        float32 and, with ``ood``, the out-of-distribution score ``(N,)`` float32 of the same pass's
        penultimate features (:func:`cropmap.ml.ood.ood_score`: > 1 = out of the training distribution),
        else None. Rows holding any NaN or ±inf (no valid observation) come back NaN.

        ``device`` defaults to CUDA when available; the forward pass uses :meth:`inference_model`, and the
        normalisation and the score run on the device too (:func:`cropmap.ml.device_pass.device_pass`). Raises
        :class:`ConfigError` for ``ood`` with a checkpoint saved without usable statistics."""
        if ood and self.ood is None:
            raise ConfigError("this checkpoint holds no training-distribution statistics of kind "
                              f"{OOD_KIND!r} (retrain it with this cropmap version)")
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 3 or x.shape[1:] != (len(self.bands), self.n_bins):
            raise IncompatibleInputError(
                f"expected (N, {len(self.bands)} bands, {self.n_bins} bins), got {x.shape}"
            )
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = self.inference_model(dev, channels_last=channels_last)
        logits = np.full((len(x), len(self.class_names)), np.nan, dtype=np.float32)
        score = np.full(len(x), np.nan, dtype=np.float32) if ood else None
        host = torch.from_numpy(x)
        for i in range(0, len(x), batch_size):  # batch by batch: a tile's features never sit whole in memory
            out_logits, out_score = device_pass(self, host[i:i + batch_size].to(dev), ood=ood, model=model)
            logits[i:i + batch_size] = out_logits.cpu().numpy()
            if score is not None:
                score[i:i + batch_size] = out_score.cpu().numpy()
        return logits, score

    def ood_score(self, x: np.ndarray, **kwargs: Any) -> np.ndarray:
        """``(N,)`` float32 out-of-distribution score of ``x`` ``(N, band, time)``: :meth:`infer` ``(ood=True)``."""
        return self.infer(x, ood=True, **kwargs)[1]

    def probabilities(self, logits: np.ndarray | torch.Tensor, *, calibrated: bool = True) -> np.ndarray | torch.Tensor:
        """``softmax(logits / temperature)`` ``(N, n_classes)`` float32 of :meth:`infer`'s logits, with the
        checkpoint's temperature (``calibrated=False``: T = 1). NaN rows stay NaN. A tensor (from
        :func:`~cropmap.ml.device_pass.device_pass`) stays on its device, in float32; an array goes through float64."""
        return softmax_t(logits, self.temperature if calibrated else 1.0)

    def predict_proba(self, x: np.ndarray, *, calibrated: bool = True, **kwargs: Any) -> np.ndarray:
        """Class probabilities ``(N, n_classes)`` float32 for ``x`` ``(N, band, time)`` reflectance 0..1:
        :meth:`probabilities` of :meth:`infer` (``kwargs`` go there)."""
        return self.probabilities(self.infer(x, **kwargs)[0], calibrated=calibrated)


def save_checkpoint(
    path: storage.Location,
    *,
    model: torch.nn.Module,
    model_name: str,
    model_config: dict,
    feature_kind: str,
    bands: list[str],
    season: Season,
    n_bins: int,
    normalisation: dict,
    class_names: list[str],
    class_colours: list[str] | None,
    config: dict,
    scores: dict,
    year: int | None = None,
    temperature: float = 1.0,
    ood: dict | None = None,
    card: dict | None = None,
) -> storage.Location:
    """Write the checkpoint and its model card, each published whole (:func:`cropmap.io.outputs.output_file`:
    temporary name then rename, or one upload to an object store); returns ``path``. ``year``: the year
    of the training season (recorded, so that a map of another year says which year the model saw).
    ``card``: the model card fields of :func:`model_card` (default: one built from the class names,
    season and scores alone)."""
    path = storage.as_location(path)
    meta = {
        "format": _FORMAT,
        "model_name": model_name,
        "model_config": _plain(model_config),
        "feature_kind": feature_kind,
        "bands": list(bands),
        "season": season.model_dump(),
        "season_year": None if year is None else int(year),
        "n_bins": int(n_bins),
        "normalisation": _plain(normalisation),
        "class_names": list(class_names),
        "class_colours": None if class_colours is None else list(class_colours),
        "config": _plain(config),
        "scores": _plain(scores),
        "version": __version__,
        "temperature": float(temperature),
    }
    meta["card"] = _plain(card if card is not None else model_card(class_names=class_names, season=season,
                                                                    scores=scores))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with outputs.output_file(path) as tmp:  # the OOD statistics stay out of the card (large arrays)
        torch.save({**meta, "ood": None if ood is None else _plain(ood), "state_dict": state}, tmp)
    with outputs.output_file(card_path(path)) as tmp:
        tmp.write_text(json.dumps({**meta, "n_parameters": sum(p.numel() for p in model.parameters())}, indent=2))
    return path


def load_checkpoint(path: storage.Location) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (a file, or a URL: downloaded once per
    machine, :func:`cropmap.io.downloads.local_copy`); the model is rebuilt and in eval mode. A file that is
    no checkpoint, or one whose normalisation, temperature, classes, model options or weights could not
    make a correct map, raises :class:`CheckpointError` naming the field."""
    if not storage.exists(path):
        raise DataNotFoundError(f"checkpoint {path} not found")
    path = downloads.local_copy(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which
        raise CheckpointError(f"{path} is not a readable cropmap checkpoint "
                              f"(torch.load: {type(err).__name__})") from err
    if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
        raise CheckpointError(f"{path} is not a cropmap checkpoint of format {_FORMAT}")
    model = checked_model(blob, path)
    return Checkpoint(
        model=model,
        model_name=blob["model_name"],
        model_config=blob["model_config"],
        feature_kind=blob["feature_kind"],
        bands=tuple(blob["bands"]),
        season=Season(**blob["season"]),
        n_bins=blob["n_bins"],
        normalisation=blob["normalisation"],
        class_names=tuple(blob["class_names"]),
        class_colours=None if blob["class_colours"] is None else tuple(blob["class_colours"]),
        config=blob["config"],
        scores=blob["scores"],
        version=blob["version"],
        year=blob.get("season_year"),
        temperature=float(blob.get("temperature", 1.0)),  # older checkpoints: uncalibrated
        ood=_usable_ood(blob.get("ood"), path),
        card=blob.get("card", {}),
    )


def _usable_ood(stats: dict | None, path) -> dict | None:
    """The checkpoint's OOD statistics if they are of the kind this version scores; older kinds (the
    input-space score of earlier checkpoints) are dropped with a warning: no ``ood`` product."""
    if stats is None:
        return None
    if stats.get("kind") == OOD_KIND:  # arrays once here, not a list conversion per predicted batch
        return {k: np.asarray(v, dtype=np.float64) if k in ("whitening", "class_means") else v
                for k, v in stats.items()}
    warnings.warn(f"{path}: out-of-distribution statistics of kind {stats.get('kind', 'input-mahalanobis')!r} "
                  f"are not scored by this version (it scores {OOD_KIND!r}); retrain for the ood product",
                  stacklevel=3)
    return None


def model_card(*, class_names: Sequence[str], season: Season, scores: dict, class_counts: dict | None = None,
               countries: Sequence[str] = (), years: Sequence[int] = (), bounds: Sequence[float] | None = None,
               transfer_scores: dict | None = None, label_licence: str | None = None,
               label_sources: Sequence[str] = ()) -> dict:
    """The model card: intended use, training data extent (countries, years, bounding box, classes and
    sample counts per class, label sources and licence), the season, the validation and transfer
    scores measured (``transfer_scores``: target -> scores; empty when none was measured, said so),
    and the limitations."""
    return {
        "intended_use": INTENDED_USE,
        "training_data": {
            "countries": list(countries), "years": [int(y) for y in years],
            "bounds_lonlat": None if bounds is None else [float(b) for b in bounds],
            "classes": list(class_names),
            "samples_per_class": {str(k): int(v) for k, v in (class_counts or {}).items()},
            "n_samples": int(sum((class_counts or {}).values())),
            "label_sources": list(label_sources),
            "label_licence": label_licence or "not recorded: check the licence of the reference labels used",
        },
        "season": season.model_dump(),
        "validation_scores": _plain(scores),
        "transfer_scores": _plain(transfer_scores or {}),
        "limitations": list(LIMITATIONS),
    }


def card_markdown(ckpt: Checkpoint, name: str = "model", *, transfer_scores: dict | None = None) -> str:
    """The checkpoint's model card as markdown; ``transfer_scores`` (target -> scores, e.g. a map scored
    against a reference the model never saw) are added to those the card holds."""
    card = ckpt.card or model_card(class_names=ckpt.class_names, season=ckpt.season, scores=ckpt.scores)
    if transfer_scores:
        card = {**card, "transfer_scores": {**card.get("transfer_scores", {}), **_plain(transfer_scores)}}
    data = card.get("training_data", {})
    lines = [f"# Model card: {name}", "", f"cropmap {ckpt.version}, model `{ckpt.model_name}` "
             f"({ckpt.feature_kind} features, bands {', '.join(ckpt.bands)}, {ckpt.n_bins} bins).", "",
             "## Intended use", "", card.get("intended_use", INTENDED_USE), "", "## Training data", "",
             f"- countries: {', '.join(data.get('countries', [])) or 'not recorded'}",
             f"- years: {', '.join(str(y) for y in data.get('years', [])) or 'not recorded'}",
             f"- extent (lon/lat): {data.get('bounds_lonlat') or 'not recorded'}",
             f"- samples: {data.get('n_samples', 0)}",
             f"- label sources: {', '.join(data.get('label_sources', [])) or 'not recorded'}",
             f"- label licence: {data.get('label_licence', 'not recorded')}", "",
             "| class | samples |", "|---|---|"]
    counts = data.get("samples_per_class", {})
    lines += [f"| {c} | {counts.get(c, '')} |" for c in data.get("classes", ckpt.class_names)]
    lines += ["", "## Season", "", f"`{json.dumps(card.get('season', ckpt.season.model_dump()))}`", "",
              "## Scores", "", "Validation: " + (", ".join(f"{k} {v}" for k, v in card.get("validation_scores", {}).items()
                                                     if not isinstance(v, (dict, list))) or "none"), ""]
    transfer = card.get("transfer_scores", {})
    lines += ["Transfer (trained elsewhere, scored here):"] + ([
        f"- {target}: " + ", ".join(f"{k} {v}" for k, v in s.items() if not isinstance(v, (dict, list)))
        for target, s in transfer.items()] or ["- none measured for this checkpoint"])
    lines += ["", "## Limitations", ""] + [f"- {x}" for x in card.get("limitations", LIMITATIONS)]
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    """JSON-able copy: tuples to lists, NumPy scalars/arrays to Python, dataclasses to dicts."""
    if hasattr(value, "model_dump"):
        return _plain(value.model_dump())
    if hasattr(value, "__dataclass_fields__"):
        return _plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
