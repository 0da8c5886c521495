"""Which model, which key: a prediction's checkpoint resolved once into a small frozen value (:class:`ModelRef`).

:func:`resolve_model` loads the checkpoint once and hashes its bytes once; the value it returns records
everything a run asks of the model without its weights: where it is, the prediction key, its bands,
season and bins (so a plan or a cube is checked against it without a load: :meth:`ModelRef.check_compatible`),
its classes, whether it holds OOD statistics, its temperature. Resolved where the run is (the CLI, the
flows, :func:`cropmap.jobs.mapping.map_country`, :func:`cropmap.jobs.tiles.predict_cubes`) and handed to
every task: it pickles in a few hundred bytes, and no task derives the key again. The weights are still
loaded where a tile is predicted (:func:`cropmap.stages.predict_provenance.load_model`, once per process).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cropmap.core.season import Season
from cropmap.io import storage
from cropmap.ml.checkpoint import require_fit
from cropmap.stages.predict_options import PredictOptions
from cropmap.stages.predict_provenance import load_model, prediction_key

__all__ = ["ModelRef", "resolve_model"]


@dataclass(frozen=True)
class ModelRef:
    """A checkpoint resolved for a prediction run (frozen, small, picklable: what every predict task receives).

    - ``location``: the checkpoint's canonical location (absolute path or URL, :func:`cropmap.io.storage.canonical`);
    - ``key``: the prediction key, a hash of the checkpoint's bytes and of the options that change the
      pixels (:func:`cropmap.stages.predict_provenance.prediction_key`): it names ``<run>/tiles/<key>/``;
    - ``options``: the predict options as given (``ood`` may be None: recorded so in ``run.json``);
      :attr:`output_options` are those with ``ood`` decided for the checkpoint;
    - ``model_name``, ``bands``, ``season``, ``n_bins``, ``class_names``, ``class_colours``: the checkpoint's;
    - ``has_ood``: whether it holds training-distribution statistics; ``temperature``: its calibration.
    """

    location: str
    key: str
    options: PredictOptions
    model_name: str
    bands: tuple[str, ...]
    season: Season
    n_bins: int
    class_names: tuple[str, ...]
    class_colours: tuple[str, ...] | None
    has_ood: bool
    temperature: float

    @property
    def output_options(self) -> PredictOptions:
        """:attr:`options` with ``ood`` decided for the checkpoint (None -> whether it holds statistics)."""
        return self.options if self.options.ood is not None else self.options.model_copy(update={"ood": self.has_ood})

    def check_compatible(self, *, bands: Sequence[str], season: Season, n_bins: int, what: str) -> int:
        """As :meth:`cropmap.ml.checkpoint.Checkpoint.check_compatible`, without loading the checkpoint:
        raise :class:`~cropmap.errors.IncompatibleInputError` on the first mismatch of bands, season or
        bins; returns the season's offset in months (0 or 6)."""
        return require_fit(self, bands=bands, season=season, n_bins=n_bins, what=what)


def resolve_model(*, location: storage.Location, options: PredictOptions = PredictOptions()) -> ModelRef:
    """The checkpoint at ``location`` (a path or URL) for predictions with ``options``: loaded once (per
    process and file version) and hashed once. Raises :class:`~cropmap.errors.DataNotFoundError` when it is
    missing and :class:`~cropmap.errors.CheckpointError` when it cannot be loaded."""
    checkpoint = load_model(location)
    return ModelRef(
        location=storage.canonical(location),
        key=prediction_key(location, options.for_checkpoint(checkpoint)),
        options=options,
        model_name=checkpoint.model_name,
        bands=tuple(checkpoint.bands),
        season=checkpoint.season,
        n_bins=int(checkpoint.n_bins),
        class_names=tuple(checkpoint.class_names),
        class_colours=None if checkpoint.class_colours is None else tuple(checkpoint.class_colours),
        has_ood=checkpoint.ood is not None,
        temperature=float(checkpoint.temperature),
    )
