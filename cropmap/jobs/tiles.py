"""One tile, one call: the per-tile job functions that executors fan out (small arguments, typed results).

- :func:`cube_tile`: search the run's catalog over the tile and the season (plus margin), build its
  5-day median cube (:func:`cropmap.stages.cube.build_tile_cube`); a complete cube is skipped;
- :func:`predict_tile`: the tile's cube + a checkpoint -> its class and confidence GeoTIFFs
  (:func:`cropmap.stages.predict.predict_tile`); a finished tile is skipped;
- :func:`predict_cube`: the same for a cube given by path, and :func:`predict_cubes` for many of them
  (every cube checked first, then one call per cube through an executor: the CLI's ``predict``);
- :func:`mosaic_run`: the run's tiles -> COG mosaics, STAC item, quicklook.

:func:`check_model_fits` and :func:`check_cubes_fit` refuse a checkpoint whose bands, season or bins do
not match, before any tile is computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cropmap.errors import IncompatibleInputError
from cropmap.io import storage
from cropmap.io.stac import search_items, season_search_window
from cropmap.jobs.cluster import inference_annotations
from cropmap.jobs.country_run import CountryRun
from cropmap.jobs.executors import Executor, InlineExecutor, Outcome, run_all
from cropmap.stages.cube import CubeResult, build_tile_cube, cube_path
from cropmap.stages.mosaic import MosaicResult, mosaic_tiles
from cropmap.stages.predict import (
    PredictOptions,
    TileResult,
    check_cube,
    load_model,
    open_cube,
    write_run_file,
)
from cropmap.stages.predict import predict_tile as predict_tile_cube

__all__ = ["cube_tile", "predict_tile", "predict_cube", "predict_cubes", "mosaic_run", "check_model_fits", "check_cubes_fit",
           "tile_annotations"]


def cube_tile(run: CountryRun, tile_id: str, *, overwrite: bool = False) -> CubeResult:
    """Build one tile's cube in ``run.cube_dir`` (skipped when complete, unless ``overwrite``)."""
    tile = run.tile(tile_id)
    target = cube_path(run.cube_dir, tile)
    if storage.is_complete(target) and not overwrite:
        return CubeResult(tile.id, target, "skipped", "already complete")
    catalog = run.config.catalog
    start, end = season_search_window(run.season, run.year, catalog.margin_days)
    items = search_items(catalog, bbox=tile.lonlat_bbox(), start=start, end=end)
    return build_tile_cube(tile, items, run.season, run.year, run.cube_dir, options=run.cube, overwrite=overwrite)


def predict_tile(run: CountryRun, model: storage.Location, tile_id: str, *, force: bool = False) -> TileResult:
    """Predict one tile of the run from its cube into ``run.tile_dir``."""
    return predict_tile_cube(model, cube_path(run.cube_dir, run.tile(tile_id)), run.tile_dir, options=run.predict,
                             force=force)


def predict_cube(model: storage.Location, cube: storage.Location, out_dir: storage.Location, *,
                 options: PredictOptions = PredictOptions(), force: bool = False) -> TileResult:
    """Predict the cube at ``cube`` into ``out_dir`` (:func:`cropmap.stages.predict.predict_tile`)."""
    return predict_tile_cube(model, cube, out_dir, options=options, force=force)


def predict_cubes(model: storage.Location, cubes: Sequence[storage.Location], out_dir: storage.Location, *,
                  options: PredictOptions = PredictOptions(), force: bool = False,
                  executor: Executor | None = None) -> list[Outcome]:
    """Predict many cubes into ``out_dir``: all are checked against the checkpoint first
    (:func:`check_cubes_fit`: nothing is written when one does not fit), then ``run.json`` and one
    :func:`predict_cube` call per cube on ``executor`` (default: inline). Outcomes in the cubes' order."""
    found = check_cubes_fit(model, cubes)
    write_run_file(model, out_dir, options=options, cube_paths=list(found.values()))
    calls = [((model, path, out_dir), {"options": options, "force": force}) for path in found.values()]
    return run_all(executor or InlineExecutor(), predict_cube, calls)


def mosaic_run(run: CountryRun) -> MosaicResult:
    """The run's tile predictions -> ``<map dir>/<code>_{class,confidence}.tif``, STAC item, quicklook."""
    return mosaic_tiles(run.tile_dir, run.map_dir, name=run.code)


def check_model_fits(run: CountryRun, model: storage.Location) -> None:
    """Raise :class:`IncompatibleInputError` unless the checkpoint takes the cubes this run builds (bands,
    season, bins), from the plan alone: nothing is computed or read but the checkpoint."""
    load_model(model).check_compatible(bands=list(run.cube.bands), season=run.season, n_bins=run.season.n_bins,
                                       what=f"{run.code} {run.year} (cubes of this run)")


def check_cubes_fit(model: storage.Location, cubes: Sequence[storage.Location]) -> dict[str, storage.Location]:
    """Open every cube (metadata only) and check it against the checkpoint; ``{tile id: cube}``.

    A tile id seen twice, or a cube that does not fit, raises before any tile is predicted."""
    checkpoint = load_model(model)
    found: dict[str, storage.Location] = {}
    for path in cubes:
        cube = open_cube(path)
        tid = str(cube.attrs["tile_id"])
        if tid in found:
            raise IncompatibleInputError(f"tile id {tid} appears twice: {found[tid]} and {path}")
        found[tid] = storage.as_location(path)
        check_cube(checkpoint, cube, what=f"tile {tid} ({path})")
    return found


def tile_annotations(gpu: bool) -> dict[Callable, dict[str, Any]]:
    """Per-function executor annotations: predictions ask for a GPU worker when ``gpu``."""
    gpu_keywords = inference_annotations(gpu)
    return {predict_tile: gpu_keywords, predict_cube: gpu_keywords} if gpu_keywords else {}
