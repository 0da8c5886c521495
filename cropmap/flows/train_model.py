"""train-model: reference crop map -> training samples from tile cubes -> a checkpoint.

Wiring only: the country is resolved once, then :func:`cropmap.jobs.mapping.train_country` builds the
cubes of the tiles under the labels (``cube-tile`` tasks, shared with map-country), the sample set
(``training-set``: 60 m inward erosion, one point per lon/lat cell and class) and the checkpoint
(``train-checkpoint``). A real country trains with :class:`cropmap.jobs.training.TrainingSettings` (CropNet v1 and
the default recipe, all three augmentations, 0.1 degree cells); a country whose config names a
scenario takes the scenario's labels, training area and settings. Parameters override single settings.
"""

from __future__ import annotations


from prefect import flow
from prefect.artifacts import create_table_artifact

from cropmap.jobs.labels import check_training_labels
from cropmap.jobs.mapping import train_country
from cropmap.jobs.training import TrainingSettings
from cropmap.scenarios import DEFAULT_COUNTRY, resolve_run
from cropmap.flows import tasks
from cropmap.flows._runner import task_runner

__all__ = ["train_model"]


@flow(name="train-model", task_runner=task_runner(), log_prints=True)
def train_model(country: str = DEFAULT_COUNTRY, reference: str | None = None, legend: str | None = None,
                year: int | None = None, cell_deg: float | None = None, per_cell: int | None = None,
                epochs: int | None = None, out_dir: str | None = None, training: dict | None = None,
                label_column: str | None = None, max_tiles: int | None = None,
                max_dollars: float | None = None, bands: list[str] | None = None) -> str:
    """Train a model for a country from reference labels; returns the checkpoint path.

    Args:
        country: ISO 3166 alpha-3 code with a config, or the path or URL of a country config (.yaml).
        reference: Reference labels: a categorical crop map (GeoTIFF), or vector parcels / points (GeoPackage,
            GeoParquet, Shapefile) with label_column and legend. Default: the scenario's, if any.
        legend: A legend YAML mapping the reference's classes (configs/legends).
        year: Season year; default: the config's.
        cell_deg: Side of the cells samples are balanced over, in degrees.
        per_cell: Samples kept per class and cell.
        epochs: Training epochs (default: the recipe's).
        out_dir: Output root, a folder or an fsspec URL; default $CROPMAP_OUTPUT_URL, else $CROPMAP_OUTPUT_DIR.
        training: Any TrainingSettings fields over the defaults (the paper's, or the scenario's when no
            reference is given), e.g. {"model": "cropnet", "augment": "all", "seed": 1}.
        label_column: The column of vector labels holding each parcel's class.
        max_tiles: Refuse a plan of more tiles (else $CROPMAP_MAX_TILES).
        max_dollars: Refuse a plan estimated above this many dollars (else $CROPMAP_MAX_DOLLARS).
        bands: The cubes' and the model's bands (default: the config's bands, else the ten).

    Returns:
        The checkpoint's path or URL.
    """
    run = resolve_run(country, year=year, out_dir=out_dir, bands=bands)  # an unknown country fails here
    base = run.scenario.training if run.scenario is not None and reference is None else TrainingSettings()
    overrides = {**(training or {}), **{k: v for k, v in {"cell_deg": cell_deg, "per_cell": per_cell,
                                                           "epochs": epochs}.items() if v is not None}}
    settings = TrainingSettings(**{**base.model_dump(), **overrides})  # validated, unlike model_copy
    if reference is not None:  # bad labels fail here in one line, before any task; the plan is printed
        print(check_training_labels(run, reference, label_column=label_column, legend=legend).summary or
              f"labels: {reference}")
    result = train_country(run, tasks.executor(), reference=reference, legend=legend, settings=settings,
                           label_column=label_column, max_tiles=max_tiles, max_dollars=max_dollars)
    create_table_artifact(key=f"training-{run.code.lower()}", description=f"{run.code}: samples per class",
                          table=[{"class": k, "samples": v} for k, v in result.samples.per_class.items()])
    ckpt = result.checkpoint
    print(f"checkpoint {ckpt.path} ({ckpt.status}; {settings.model}, {ckpt.n_parameters:,} parameters; "
          f"{result.samples.n_samples} samples; validation macro-F1 {ckpt.scores.get('val_macro_f1', float('nan')):.3f})")
    return ckpt.path

