"""One tile, one call: the per-tile job functions that executors fan out (small arguments, typed results).

- :func:`cube_tile`: search the run's catalog over the tile and the season (plus margin), build its
  5-day median cube (:func:`cropmap.stages.cube.build_tile_cube`); a complete or empty cube is skipped,
  an incomplete or degraded one rebuilt;
- :func:`run_model`: the run's checkpoint resolved once (:class:`~cropmap.stages.model_ref.ModelRef`: its
  location, prediction key, bands, season, classes), what the functions below take as ``model``;
- :func:`predict_tile`: the tile's cube + the run's model -> its class and confidence GeoTIFFs
  (:func:`cropmap.stages.predict.write_tile_predictions`); a finished tile is skipped, one whose every pixel would
  be nodata is not written (:class:`~cropmap.errors.EmptyMapError`: status ``empty`` in a run's summary);
- :func:`map_tile`: both in one call on one worker, the cube in the worker's scratch and deleted after (a
  run that keeps no cubes, ``CountryRun.keep_cubes`` false: no cube crosses the network or stays in the store);
- :func:`predict_cube`: the same for a cube given by path, and :func:`predict_cubes` for many of them
  (every cube checked first by :func:`check_predict_inputs`, then one call per cube through an executor: the
  CLI's ``predict``);
- :func:`mosaic_zone`: one UTM zone's tiles -> its COGs; :func:`mosaic_country`: the zones' COGs -> the
  national COGs in the country's output CRS, STAC item, quicklook;
- :func:`area_products`: the national class map -> area estimates from a labelled sample and/or mapped
  hectares per admin unit (:mod:`cropmap.stages.area`).

:func:`check_model_fits` and :func:`check_cubes_fit` refuse a checkpoint whose bands, season or bins do
not match, before any tile is computed.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cropmap.core.grid import tile_from_id
from cropmap.errors import ConfigError, DataNotFoundError, IncompatibleInputError
from cropmap.io import downloads, outputs, storage
from cropmap.io.stac import search_items, season_search_window
from cropmap.jobs.cluster import inference_annotations
from cropmap.jobs.country_run import CountryRun
from cropmap.jobs.executors import Executor, InlineExecutor, Outcome, run_all
from cropmap.jobs.progress import Progress
from cropmap.jobs.searches import items_for_tile
from cropmap.stages.cube import CubeResult, build_tile_cube, cube_path, is_finished
from cropmap.stages.mosaic import MosaicResult, mosaic_tiles
from cropmap.stages.national import national_mosaic
from cropmap.stages.predict import TileResult, write_tile_predictions
from cropmap.stages.model_ref import ModelRef, resolve_model
from cropmap.stages.predict_inputs import check_cube, open_cube
from cropmap.stages.predict_options import PredictOptions
from cropmap.stages.predict_provenance import write_run_file
from cropmap.stages.tile_geotiffs import tile_is_finished

__all__ = ["cube_tile", "run_model", "predict_tile", "TileMap", "map_tile", "predict_cube", "check_predict_inputs", "predict_cubes", "zones_of", "mosaic_zone",
           "mosaic_country", "quicklook_place", "check_area_inputs", "area_products", "check_model_fits", "check_cubes_fit", "check_existing_tiles", "tile_annotations"]


def cube_tile(run: CountryRun, tile_id: str, *, items: str | None = None, overwrite: bool = False) -> CubeResult:
    """Build one tile's cube in ``run.cube_dir`` (skipped when complete, unless ``overwrite``), from the
    items of its block's search (``items``: :func:`cropmap.jobs.searches.search_block`'s file), else from
    a search of its own."""
    return _build_cube(run, tile_id, run.cube_dir, items=items, overwrite=overwrite)


def _build_cube(run: CountryRun, tile_id: str, out_dir: storage.Location, *, items: str | None,
                overwrite: bool) -> CubeResult:
    tile = run.tile(tile_id)
    target = cube_path(out_dir, tile)
    if is_finished(target) and not overwrite:
        return CubeResult(tile.id, target, "skipped", "already complete")
    catalog, season = run.config.catalog, run.season_of(tile)
    if items is not None:
        found = items_for_tile(items, tile)
    else:
        start, end = season_search_window(season, run.year, catalog.margin_days)
        found = search_items(catalog, bbox=tile.lonlat_bbox(), start=start, end=end)
    return build_tile_cube(tile, found, season, run.year, out_dir, options=run.cube, overwrite=overwrite)


@dataclass(frozen=True)
class TileMap:
    """What :func:`map_tile` did: the cube stage's result (its ``path`` gone unless the cube was kept from an
    earlier run), the prediction's, or the ``error`` that stopped the prediction (the cube's status stays)."""

    cube: CubeResult
    predict: TileResult | None = None
    error: BaseException | None = None


def map_tile(run: CountryRun, model: ModelRef, tile_id: str, *, items: str | None = None,
             overwrite: bool = False) -> TileMap:
    """Cube and predict one tile in this call, for a run that keeps no cubes: the composite goes to a Zarr
    store in this worker's scratch (``$TMPDIR``), is predicted from there into ``run.tile_dir(model.key)``
    and deleted, so nothing but the maps is written to the run's store. A finished tile (this key) is
    skipped without compositing; a complete cube that an earlier run kept in ``run.cube_dir`` is predicted
    from where it is. The cube's own failures (search, reads) raise; the prediction's are returned in
    :attr:`TileMap.error` beside the cube's status."""
    tile = run.tile(tile_id)
    out_dir = run.tile_dir(model.key)
    kept = cube_path(run.cube_dir, tile)
    if not overwrite and tile_is_finished(out_dir, tile.id, model.output_options, model.key):
        return TileMap(CubeResult(tile.id, kept, "skipped", "the tile's maps are finished"),
                       TileResult(tile.id, "skipped", {}))
    with tempfile.TemporaryDirectory(prefix=f"cropmap-{tile.id}-") as scratch:
        if is_finished(kept) and not overwrite:
            cube = CubeResult(tile.id, kept, "skipped", "already complete")
        else:
            cube = _build_cube(run, tile.id, scratch, items=items, overwrite=True)
        try:
            return TileMap(cube, write_tile_predictions(model, cube.path, out_dir, force=overwrite))
        except Exception as err:  # noqa: BLE001 - reported as the tile's predict failure, like predict_tile's
            return TileMap(cube, error=err)


def run_model(run: CountryRun, location: storage.Location) -> ModelRef:
    """The checkpoint at ``location`` resolved once for the run's predict options
    (:func:`cropmap.stages.model_ref.resolve_model`): ``.key`` names ``run.tile_dir(key)`` and ``run.map_dir(key)``."""
    return resolve_model(location=location, options=run.predict)


def predict_tile(run: CountryRun, model: ModelRef, tile_id: str, *, force: bool = False) -> TileResult:
    """Predict one tile of the run from its cube into ``run.tile_dir(model.key)`` (``model``: :func:`run_model`)."""
    return write_tile_predictions(model, cube_path(run.cube_dir, run.tile(tile_id)), run.tile_dir(model.key),
                                  force=force)


def predict_cube(model: ModelRef, cube: storage.Location, out_dir: storage.Location, *,
                 force: bool = False) -> TileResult:
    """Predict the cube at ``cube`` into ``out_dir`` (:func:`cropmap.stages.predict.write_tile_predictions`)."""
    return write_tile_predictions(model, cube, out_dir, force=force)


def check_predict_inputs(model: storage.Location, cubes: Sequence[storage.Location], *,
                         options: PredictOptions = PredictOptions()) -> tuple[ModelRef, dict[str, storage.Location]]:
    """The checkpoint at ``model`` resolved once (:func:`~cropmap.stages.model_ref.resolve_model`) and every cube
    checked against it (:func:`check_cubes_fit`): ``(model, {tile id: cube})``. Reads metadata only and writes
    nothing, so a caller runs it before it starts a cluster; a missing cube or a bad tile id is named before
    the checkpoint is read."""
    opened = _open_cubes(cubes)
    ref = resolve_model(location=model, options=options)
    return ref, _cubes_fit(ref, opened)


def predict_cubes(model: ModelRef, cubes: Mapping[str, storage.Location], out_dir: storage.Location, *,
                  force: bool = False, executor: Executor | None = None) -> list[Outcome]:
    """Predict the checked ``cubes`` (:func:`check_predict_inputs`) into ``out_dir``: ``run.json``, then one
    :func:`predict_cube` call per cube on ``executor`` (default: inline). Outcomes in the cubes' order."""
    write_run_file(model, out_dir, cube_paths=list(cubes.values()))
    calls = [((model, path, out_dir), {"force": force}) for path in cubes.values()]
    return run_all(executor or InlineExecutor(), predict_cube, calls)


def zones_of(tile_ids: Sequence[str]) -> dict[int, list[str]]:
    """The tiles of each UTM grid (EPSG code), in order."""
    zones: dict[int, list[str]] = {}
    for t in tile_ids:
        zones.setdefault(tile_from_id(t).grid.epsg, []).append(t)
    return dict(sorted(zones.items()))


def mosaic_zone(run: CountryRun, key: str, epsg: int, tile_ids: Sequence[str],
                missing: Mapping[str, str] | None = None) -> MosaicResult:
    """One UTM zone's tiles -> ``<code>_<epsg>_{class,confidence}.tif`` + STAC item on the zone's grid
    (``missing``: the zone's failed tiles -> why, recorded in the item)."""
    return mosaic_tiles(run.tile_dir(key), run.map_dir(key), name=f"{run.code}_{epsg}", tile_ids=tile_ids,
                        quicklook=False, missing=missing)


def mosaic_country(run: CountryRun, key: str, zones: dict[int, dict[str, str]],
                   missing: Mapping[str, str] | None = None, progress: Progress | None = None) -> MosaicResult:
    """The zones' COGs -> ``<code>_{class,confidence}.tif`` in the country's output CRS, STAC item and
    quicklook titled by :func:`quicklook_place` (:func:`cropmap.stages.national.national_mosaic`); ``missing``:
    failed tiles and zones; ``progress``: told each window warped (stage ``national``, item ``window k/n``
    over all products)."""
    on_window = None if progress is None else (
        lambda product, k, n: progress("national", f"window {k}/{n}", product, total=n))
    return national_mosaic(zones, run.map_dir(key), name=run.code, crs=run.config.output_crs, missing=missing,
                           place=quicklook_place(run), on_window=on_window)


def quicklook_place(run: CountryRun) -> str:
    """How the national quicklook's title names the map: ``<country name> (<code>)``."""
    return f"{run.config.name} ({run.code})"


def check_area_inputs(samples: storage.Location | None, units: storage.Location | None, field: str | None) -> None:
    """Refuse area inputs that are missing, or admin units without the column naming each unit."""
    for what, location in (("area samples", samples), ("admin units", units)):
        if location is not None and not storage.exists(location):
            raise DataNotFoundError(f"{what} {location} not found")
    if units is not None and not field:
        raise ConfigError("admin_units needs admin_field, the column that names each unit")


def area_products(run: CountryRun, key: str, class_map: storage.Location, *, samples: storage.Location | None = None,
                  units: storage.Location | None = None, field: str | None = None, suggestions: int = 0,
                  confidence: storage.Location | None = None, ood: storage.Location | None = None) -> dict[str, str]:
    """The area products of the run's national ``class_map``, in ``<maps>/<key>/area/``:

    - with ``samples`` (points drawn on THIS map by `cropmap area sample`, ``reference_class`` filled by
      the labellers): the Olofsson et al. (2014) estimates with 95 % CIs, ``<code>_estimates.csv``,
      ``<code>_error_matrix.csv``, ``<code>.md``; a sample drawn on another map is refused;
    - with ``units`` (a polygon layer) and its name ``field``: mapped hectares per class per unit,
      ``<code>_by_unit.csv`` / ``.md``;
    - with ``suggestions`` > 0 (and the map's ``confidence`` COG, its ``ood`` COG when there is one): that many
      points to label for training where the map is least sure, spaced
      (:func:`cropmap.stages.label_suggestions.suggest_points`), ``<code>_suggestions.gpkg``.

    Returns product name -> location.
    """
    import tempfile

    from cropmap.stages.area import (
        check_sample_on_map,
        estimate_areas,
        map_strata,
        read_sample,
        write_area_report,
        write_zonal_report,
        zonal_areas,
    )

    check_area_inputs(samples, units, field)
    local_map = downloads.local_copy(class_map)
    out = storage.join(run.map_dir(key), "area")
    written: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if samples is not None:
            strata = map_strata(local_map)
            sample = read_sample(downloads.local_copy(samples))
            check_sample_on_map(strata, sample)
            est, notes = estimate_areas(strata, sample)
            written |= write_area_report(strata, est, tmp, name=run.code, notes=notes)
        if units is not None:
            written |= write_zonal_report(zonal_areas(local_map, downloads.local_copy(units), field=field), tmp,
                                          class_map=local_map, name=run.code)
        if suggestions > 0 and confidence is not None:
            from cropmap.stages.area import write_sample
            from cropmap.stages.label_suggestions import suggest_points

            points = suggest_points(map_strata(local_map), n=suggestions, confidence=downloads.local_copy(confidence),
                                    ood=None if ood is None else downloads.local_copy(ood))
            written["suggestions"] = write_sample(points, Path(tmp) / f"{run.code}_suggestions.gpkg")
        return {k: str(outputs.publish(p, storage.join(out, p.name))) for k, p in written.items()}


def check_existing_tiles(run: CountryRun, model: ModelRef, tile_ids: Sequence[str]) -> int:
    """Refuse, before any compute, a finished tile of the plan in ``run.tile_dir(model.key)`` that another
    model or options wrote (its run key) or that names other classes: a mosaic would otherwise fail at the
    last step, or mix them. Returns how many of the plan's tiles are already there (a rerun skips them)."""
    key = model.key
    folder = run.tile_dir(key)
    wanted = set(tile_ids)
    found = [p for p in storage.list_files(folder, "*.class.tif") if storage.basename(p).split(".")[0] in wanted]
    classes = json.dumps(list(model.class_names))

    def tags_of(path: storage.Location) -> tuple[str, dict]:
        with downloads.open_raster(path) as ds:
            return storage.basename(path).split(".")[0], ds.tags()

    with ThreadPoolExecutor(8) as pool:  # header reads only; in an object store, one request each
        for tile_id, tags in pool.map(tags_of, found):
            if tags.get("cropmap_run_key") != key or tags.get("class_names") != classes:
                raise IncompatibleInputError(
                    f"tile {tile_id} in {folder} does not fit this run: run key {tags.get('cropmap_run_key')} "
                    f"(this run's {key}), classes {tags.get('class_names')} (the model's {classes}); remove it "
                    "or map into another output folder")
    return len(found)


def check_model_fits(run: CountryRun, model: ModelRef, tile_ids: Sequence[str]) -> dict[str, int]:
    """Raise :class:`IncompatibleInputError` unless the resolved checkpoint ``model`` takes the cubes this
    run builds for ``tile_ids`` (bands, and the season of each hemisphere they lie in: the model's, or its
    six-month offset), from the plan alone: nothing is computed or read. Returns the offset in
    months per hemisphere. A run asking for the OOD product (``predict: {ood: true}``) of a checkpoint
    saved without training-distribution statistics is refused here too (:class:`ConfigError`)."""
    if run.predict.ood and not model.has_ood:
        raise ConfigError(f"{run.code}: predict.ood is true but the checkpoint {storage.basename(model.location)} "
                          "holds no training-distribution statistics; retrain it, or leave ood unset (written when "
                          "available)")
    return {h: model.check_compatible(bands=list(run.cube.bands), season=season, n_bins=season.n_bins,
                                           what=f"{run.code} {run.year}, {h}ern tiles")
            for h, season in run.seasons(tile_ids).items()}


def check_cubes_fit(model: ModelRef, cubes: Sequence[storage.Location]) -> dict[str, storage.Location]:
    """Open every cube (metadata only) and check it against the resolved checkpoint; ``{tile id: cube}``.

    A tile id seen twice, or a cube that does not fit, raises before any tile is predicted."""
    return _cubes_fit(model, _open_cubes(cubes))


def _open_cubes(cubes: Sequence[storage.Location]) -> list:
    """``(path, cube)`` of every cube, opened (metadata only), their tile ids checked as file names."""
    opened = [(path, open_cube(path)) for path in cubes]
    for path, cube in opened:  # names first: a cube's tile id names its outputs
        storage.safe_name(cube.attrs.get("tile_id", ""), f"tile id of {path}:")
    return opened


def _cubes_fit(model: ModelRef, opened: list) -> dict[str, storage.Location]:
    found: dict[str, storage.Location] = {}
    for path, cube in opened:
        tid = str(cube.attrs["tile_id"])
        if tid in found:
            raise IncompatibleInputError(f"tile id {tid} appears twice: {found[tid]} and {path}")
        found[tid] = storage.as_location(path)
        check_cube(model, cube, what=f"tile {tid} ({path})")
    return found


def tile_annotations(gpu: bool) -> dict[Callable, dict[str, Any]]:
    """Per-function executor annotations (``Client.submit`` keywords, ``dask.annotate`` in the flows):
    a prediction goes before any waiting cube (priority), so that a tile's map follows its cube and
    the stages overlap instead of running one after the other; it asks for a GPU worker when ``gpu``."""
    keywords = {"priority": 10, **inference_annotations(gpu)}
    return {predict_tile: keywords, predict_cube: keywords, map_tile: inference_annotations(gpu)}
