"""train-model: reference crop map -> training samples from tile cubes -> CropNet checkpoint.

Wiring only: the cubes of the tiles under the training area (``cube-tile`` tasks, shared with
map-country), then :func:`cropmap.pipeline.training_set` (60 m erosion, sampling on a lon/lat grid,
series from the cubes) and :func:`cropmap.pipeline.train_checkpoint`. For ``DEMO`` the reference map
is the demo's and only its WEST half (Victoria train-split series) is used.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # loaded by file path (a deployment's entrypoint): make `flows` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from cropmap import pipeline, storage
from cropmap.errors import ConfigError
from flows._runner import output_root, task_runner
from flows.build_cube import build_cubes_for, country_config

__all__ = ["train_model", "DEMO_TRAINING"]

DEMO_TRAINING = pipeline.DEMO_TRAINING  # CPU-sized DEMO settings (slim CropNet): see cropmap.pipeline


@task(name="training-set", cache_policy=NONE)
def training_set(reference: str, cube_paths: list[str], path: str, region: str, legend: str | None,
                 cell_deg: float, per_cell: int, bounds: list[float] | None) -> dict:
    return pipeline.training_set(reference, cube_paths, path, region=region, legend_path=legend,
                                 cell_deg=cell_deg, per_cell=per_cell, bounds=tuple(bounds) if bounds else None)


@task(name="train-checkpoint", cache_policy=NONE)
def train_checkpoint(samples_path: str, path: str, train_config: dict) -> dict:
    # one torch thread: the small net trains fastest that way on 2 cores shared with Dask and others
    return pipeline.train_checkpoint(samples_path, path, train_config=train_config, threads=1)


def _demo_reference() -> tuple[str, list[float]]:
    from cropmap.demo import DemoPaths, default_demo_dir, part_bounds, read_layout

    root = default_demo_dir()
    return str(DemoPaths(root).reference), list(part_bounds(read_layout(root), "west"))


@flow(name="train-model", task_runner=task_runner(), log_prints=True)
def train_model(country: str = "DEMO", reference: str | None = None, legend: str | None = None,
                year: int | None = None, cell_deg: float | None = None, per_cell: int | None = None,
                epochs: int | None = None, out_dir: str | None = None) -> str:
    """Train a model for ``country`` from a reference crop map; returns the checkpoint path."""
    config = country_config(country, year)  # an unknown country fails here, before any task
    bounds = None
    if reference is None:
        if config.code != "DEMO":
            raise ConfigError(f"train-model for {config.code} needs reference=<categorical crop map GeoTIFF>")
        reference, bounds = _demo_reference()
    settings = {**DEMO_TRAINING, **{k: v for k, v in {"cell_deg": cell_deg, "per_cell": per_cell,
                                                       "epochs": epochs}.items() if v is not None}}
    train_config = ({k: settings[k] for k in ("epochs", "lr", "batch_size", "augment", "model_options")}
                    | {"progress": False})
    root = pipeline.run_dir(output_root(out_dir), config)
    tile_ids = (pipeline.country_tiles(config, reference=reference) if bounds is None
                else pipeline.country_tiles(config, bounds=bounds))
    cubes = build_cubes_for(country, year, tile_ids, str(storage.join(root, "cubes")))
    cube_paths = [c["path"] for c in cubes if c["status"] != "failed"]
    key = pipeline.config_hash(config, reference, legend, bounds, settings)
    samples = training_set(reference, cube_paths, str(storage.join(root, "training", f"samples-{key}.nc")), config.code,
                           legend, settings["cell_deg"], settings["per_cell"], bounds)
    result = train_checkpoint(samples["path"], str(storage.join(root, "models", f"cropnet-{key}.pt")), train_config)
    create_table_artifact(key=f"training-{country.lower()}", description=f"{country}: samples per class",
                          table=[{"class": k, "samples": v} for k, v in samples["per_class"].items()])
    print(f"checkpoint {result['path']} ({result['status']}; {samples['n_samples']} samples; "
          f"validation macro-F1 {result['scores'].get('val_macro_f1', float('nan')):.3f})")
    return result["path"]


if __name__ == "__main__":
    train_model()
