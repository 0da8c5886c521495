"""cropmap's job functions as Prefect tasks: one task per function, typed, small arguments (a run, a tile
id, paths). Only the tasks that read remote data retry (STAC searches and asset reads in ``cube-tile``),
and only on I/O-shaped errors (:func:`cropmap.errors.is_transient`): a ConfigError or a season that does
not fit fails at once. Those two have a time limit too (``$CROPMAP_SEARCH_TIMEOUT_S``,
``$CROPMAP_CUBE_TIMEOUT_S``, read where the task runs), checked inside the work between search pages and
between reads (:func:`cropmap.io.time_limits.time_limit`): past it the task fails with a
:class:`~cropmap.errors.TimeLimitError` naming the block or tile, is retried, and a later run starts it
again. Not Prefect's ``timeout_seconds``: on the Dask task runner a task runs in a worker thread, where
Prefect cannot interrupt a blocking read (it logs a warning per task run and raises only once the read
returns, wherever the code then is).

:func:`executor` gives the :class:`cropmap.flows._runner.PrefectExecutor` that the job functions of
:mod:`cropmap.jobs.mapping` submit to.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from cropmap.errors import is_transient
from cropmap.io.time_limits import time_limit
from cropmap.jobs import mapping, searches, tiles, training
from cropmap.jobs.country_run import CountryRun
from cropmap.jobs.progress import Progress
from cropmap.jobs.training import CheckpointResult, TrainingSetResult
from cropmap.settings import get_settings
from cropmap.stages.cube import CubeResult
from cropmap.stages.mosaic import MosaicResult
from cropmap.stages.model_ref import ModelRef
from cropmap.stages.predict import TileResult
from cropmap.flows._runner import PrefectExecutor

__all__ = ["executor", "retry_io_only"]


def retry_io_only(task, task_run, state) -> bool:
    """Prefect's ``retry_condition_fn``: retry a failed run only when its error is transient."""
    return is_transient(state.result(raise_on_failure=False))


@task(name="search-block", retries=2, retry_delay_seconds=10, retry_condition_fn=retry_io_only,
      cache_policy=NONE, task_run_name="search {block}")
def search_block(run: CountryRun, block: str, tile_ids: list[str]) -> searches.BlockSearch:
    with time_limit(get_settings().search_timeout_s, what=f"search of block {block}",
                    setting="CROPMAP_SEARCH_TIMEOUT_S"):
        return searches.search_block(run, block, tile_ids)


@task(name="cube-tile", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_io_only,
      cache_policy=NONE, task_run_name="cube {tile_id}")
def cube_tile(run: CountryRun, tile_id: str, items: str | None = None, overwrite: bool = False) -> CubeResult:
    with time_limit(get_settings().cube_timeout_s, what=f"tile {tile_id}", setting="CROPMAP_CUBE_TIMEOUT_S"):
        return tiles.cube_tile(run, tile_id, items=items, overwrite=overwrite)


@task(name="map-tile", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_io_only,
      cache_policy=NONE, task_run_name="map {tile_id}")
def map_tile(run: CountryRun, model: ModelRef, tile_id: str, items: str | None = None,
             overwrite: bool = False) -> tiles.TileMap:
    # retried on the cube's I/O errors only: the prediction's come back in the result, never raised
    with time_limit(get_settings().cube_timeout_s, what=f"tile {tile_id}", setting="CROPMAP_CUBE_TIMEOUT_S"):
        return tiles.map_tile(run, model, tile_id, items=items, overwrite=overwrite)


@task(name="predict-tile", cache_policy=NONE, task_run_name="predict {tile_id}")
def predict_tile(run: CountryRun, model: ModelRef, tile_id: str, force: bool = False) -> TileResult:
    return tiles.predict_tile(run, model, tile_id, force=force)


@task(name="mosaic-zone", cache_policy=NONE, task_run_name="mosaic EPSG:{epsg}")
def mosaic_zone(run: CountryRun, key: str, epsg: int, tile_ids: list[str],
                missing: dict[str, str] | None = None) -> MosaicResult:
    return tiles.mosaic_zone(run, key, epsg, tile_ids, missing)


@task(name="mosaic-country", cache_policy=NONE)
def mosaic_country(run: CountryRun, key: str, zones: dict[int, dict[str, str]],
                   missing: dict[str, str] | None = None, progress: Progress | None = None) -> MosaicResult:
    return tiles.mosaic_country(run, key, zones, missing, progress=progress)


@task(name="area", cache_policy=NONE)
def area_products(run: CountryRun, key: str, class_map: str, samples: str | None = None, units: str | None = None,
                  field: str | None = None, suggestions: int = 0, confidence: str | None = None,
                  ood: str | None = None) -> dict[str, str]:
    return tiles.area_products(run, key, class_map, samples=samples, units=units, field=field,
                               suggestions=suggestions, confidence=confidence, ood=ood)


@task(name="score", cache_policy=NONE)
def score_run(run: CountryRun, key: str, maps: dict[str, str], model: str | None = None,
              season_offsets: dict[str, int] | None = None) -> tuple[dict, str]:
    return mapping.score_run(run, key, maps, model=model, season_offsets=season_offsets)


@task(name="training-set", cache_policy=NONE)
def training_set(reference: str, cube_paths: list[str], path: str, *, region: str, legend_path: str | None = None,
                 settings: training.TrainingSettings = training.TrainingSettings(),
                 bounds: tuple[float, float, float, float] | None = None, label_column: str | None = None,
                 area: tuple[float, float, float, float] | None = None,
                 tiles: list[str] | None = None) -> TrainingSetResult:
    return training.training_set(reference, cube_paths, path, region=region, legend_path=legend_path,
                                 settings=settings, bounds=bounds, label_column=label_column, area=area, tiles=tiles)


@task(name="train-checkpoint", cache_policy=NONE)
def train_checkpoint(samples_path: str, path: str, *, settings: training.TrainingSettings = training.TrainingSettings(),
                     threads: int | None = None, progress: Progress | None = None) -> CheckpointResult:
    return training.train_checkpoint(samples_path, path, settings=settings, threads=threads, progress=progress)


def executor(*, gpu: bool = False) -> PrefectExecutor:
    """The executor of a flow run: each job function as its task above; predictions on GPU workers
    when ``gpu``."""
    return PrefectExecutor(
        {searches.search_block: search_block, tiles.cube_tile: cube_tile,
         tiles.predict_tile: predict_tile, tiles.map_tile: map_tile, tiles.mosaic_zone: mosaic_zone,
         tiles.mosaic_country: mosaic_country, tiles.area_products: area_products,
         mapping.score_run: score_run, training.training_set: training_set,
         training.train_checkpoint: train_checkpoint},
        annotations=tiles.tile_annotations(gpu))
