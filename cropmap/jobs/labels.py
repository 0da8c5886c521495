"""A training run's labels checked before any tile is cubed, and the tiles they need.

``cropmap train`` and the train-model flow call :func:`check_training_labels` (through
:func:`cropmap.jobs.mapping.training_tiles`) first: a wrong label column, a missing legend, codes the
legend lacks, labels off the country or labels of another season year fail there in one line, in
seconds, instead of after hours of cubes. Vector labels plan only the tiles under their footprints
(:func:`cropmap.samples.label_checks.check_vector_labels`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cropmap.io.config import load_legend
from cropmap.errors import ConfigError, InvalidInputError
from cropmap.jobs.country_run import CountryRun
from cropmap.samples.label_checks import LabelCheck, check_vector_labels
from cropmap.samples.reference_labels import is_vector

__all__ = ["TrainingLabels", "check_training_labels"]


@dataclass(frozen=True)
class TrainingLabels:
    """The tiles to cube for training, and one line saying which labels they hold (None: a raster's)."""

    tile_ids: list[str]
    summary: str | None = None
    check: LabelCheck | None = None


def _years(years: dict[str, int]) -> str:
    return ", ".join(f"{y} ({n})" for y, n in years.items())


def check_training_labels(run: CountryRun, reference: str, *, label_column: str | None = None,
                          legend: str | None = None) -> TrainingLabels:
    """Check ``reference`` (a categorical raster, or vector parcels/points with ``label_column`` and a
    ``legend`` YAML) against ``run`` and return the tiles under it. Raises a one-line
    :class:`~cropmap.errors.CropmapError` for: a missing label file or legend file, a missing column,
    codes the legend lacks, vector labels on none of the run's tiles, and labels dated for another season
    year than the run's (where the file carries dates; see :mod:`cropmap.samples.label_checks`)."""
    loaded = load_legend(legend) if legend is not None else None  # a missing file: one line, now
    if not is_vector(reference):
        return TrainingLabels(run.tiles(reference=reference))
    name = Path(reference).name
    if not Path(reference).exists():
        raise InvalidInputError(f"label file {reference} not found")
    if label_column is None or loaded is None:
        raise ConfigError(f"vector labels {name} need a label column (--label-column) and a legend (--legend)")
    check = check_vector_labels(reference, column=label_column, legend=loaded,
                                tiles=[run.tile(t) for t in run.tiles()], season_for=run.config.season_for)
    if not check.tiles:  # (labels there that the legend drops all have failed in the check already)
        parts = [p.name for p in run.config.outline.selected_parts(run.parts)]
        raise InvalidInputError(f"the {check.n_features} labelled features of {name} do not intersect "
                                f"{run.code}'s tiles{' (' + ', '.join(parts) + ')' if parts else ''}; "
                                "wrong labels or country?")
    # "2022/2023": a date between two seasons fits either
    other = {y: n for y, n in check.season_years.items() if str(run.year) not in y.split("/")}
    if other:
        year = max(other, key=lambda y: other[y]).split("/")[-1]
        window = run.season.window(run.year)
        raise InvalidInputError(
            f"{name}: {sum(other.values())} of the {check.n_used} labels on {run.code}'s tiles are of season "
            f"year {_years(other)} by {'/'.join(check.date_columns)}, the run's is {run.year} "
            f"({window[0]} to {window[1]}); train with --year {year} (flow parameter year={year}) or give "
            f"labels of {run.year}")
    dated = f", season {_years(check.season_years)}" if check.season_years else ", undated"
    summary = (f"labels: {check.n_used} of {check.n_features} features of {name} on {len(check.tiles)} "
               f"tile(s) of {run.code}{dated}; {check.n_outside} outside {run.code}'s tiles, "
               f"{check.n_dropped} without geometry or label or dropped by the legend")
    return TrainingLabels([t.id for t in check.tiles], summary, check)
