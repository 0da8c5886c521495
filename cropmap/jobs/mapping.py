"""The country jobs, written once for every executor: train a country's model, map a country.

- :func:`train_country`: the cubes of the tiles under the training labels, a sample set from them
  (:func:`cropmap.jobs.training.training_set`), a checkpoint (:func:`~cropmap.jobs.training.train_checkpoint`);
- :func:`map_country`: the checkpoint is checked against the run's plan, then every tile is cubed and
  predicted (:func:`cropmap.jobs.tile_pipeline.run_tiles`), the tiles are mosaicked and, when the run's
  scenario holds back a scored area, the map is scored against its reference.

The flows (``flows/``) call these with a Prefect executor, ``cropmap map`` / ``cropmap train`` with a
local Dask cluster (:func:`cropmap.jobs.executors.local_executor`). Nothing here holds one object per
tile: the tiles' outcomes are a :class:`~cropmap.jobs.tile_pipeline.TileSummary`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cropmap.errors import ConfigError, CubeBuildError, MosaicError
from cropmap.io import downloads, outputs, storage
from cropmap.io.locks import run_lock
from cropmap.jobs.country_run import Bounds, CountryRun
from cropmap.jobs.executors import Executor
from cropmap.jobs.labels import check_training_labels
from cropmap.jobs.plan import preflight
from cropmap.jobs.progress import STARTED, Progress, relay_argument, tell
from cropmap.jobs.scoring import score_class_map
from cropmap.jobs.tile_pipeline import TileSummary, run_tiles
from cropmap.jobs.tiles import (area_products, check_area_inputs, check_existing_tiles, check_model_fits, mosaic_country, mosaic_zone,
                                quicklook_place, run_model, zones_of)
from cropmap.jobs.training import (
    CheckpointResult,
    TrainingSetResult,
    TrainingSettings,
    train_checkpoint,
    training_set,
)
from cropmap.ml.evaluate import write_confusion
from cropmap.stages.cube import cube_path
from cropmap.stages.model_item import write_mlm_item
from cropmap.stages.mosaic import MosaicResult
from cropmap.stages.stac_item import (EMPTY, LICENSE, MODEL_ITEM, SENTINEL_LEGAL_NOTICE, copernicus_attribution,
                                      scene_years, season_years)
from cropmap.stages.model_ref import ModelRef
from cropmap.stages.predict import write_run_file
from cropmap.stages.quicklook import rescore_quicklook

__all__ = ["TrainResult", "MapResult", "training_tiles", "train_country", "map_country", "score_run",
           "check_complete", "check_not_empty", "write_model_item"]


@dataclass(frozen=True)
class TrainResult:
    checkpoint: CheckpointResult
    samples: TrainingSetResult
    tiles: TileSummary


@dataclass(frozen=True)
class MapResult:
    """What :func:`map_country` made: the national mosaic, one mosaic per UTM zone, the zones that
    failed (EPSG -> reason; their tiles are missing from the national map), the tiles' summary."""

    model: str
    key: str  # the predictions' key: tiles and maps lie in <run>/tiles/<key>/ and <run>/maps/<key>/
    mosaic: MosaicResult | None
    zones: dict[int, MosaicResult]
    tiles: TileSummary
    zone_failures: dict[int, str] = field(default_factory=dict)
    season_offsets: dict[str, int] = field(default_factory=dict)  # hemisphere -> months from the model's
    accuracy: dict | None = None
    accuracy_path: str | None = None
    training: TrainResult | None = None
    area: dict[str, str] = field(default_factory=dict)  # area product -> location (cropmap.jobs.tiles.area_products)


def _run(executor: Executor, fn, *args, **kwargs):
    """One call through the executor (so that it runs where, and shows up as, the job's tasks do)."""
    return executor.result(executor.submit(fn, *args, **kwargs))


def training_tiles(run: CountryRun, *, reference: str | None = None, bounds: Bounds | None = None,
                   label_column: str | None = None, legend: str | None = None) -> list[str]:
    """The tiles :func:`train_country` cubes: those under ``bounds`` (default: the scenario's training
    area when ``reference`` is the scenario's), else those under the labels: a raster's extent, vector
    labels' own footprints, checked first (column, legend, codes, season year:
    :func:`cropmap.jobs.labels.check_training_labels`, which raises before anything runs)."""
    scenario = run.scenario
    if reference is None and scenario is not None:
        reference = scenario.reference
        bounds = bounds if bounds is not None else scenario.train_bounds
    bounds_crs = scenario.bounds_crs if scenario is not None and bounds == scenario.train_bounds else None
    if bounds is not None:
        return run.tiles(bounds=bounds, bounds_crs=bounds_crs)
    return check_training_labels(run, reference, label_column=label_column, legend=legend).tile_ids


def _one_run_per_folder(job):
    """Run ``job(run, ...)`` holding the run folder's lock (and the shared cube folder's, when the run
    has one): a second run on them fails at once, naming the first (:func:`cropmap.io.locks.run_lock`)."""

    @functools.wraps(job)
    def locked(run: CountryRun, *args, **kwargs):
        with run_lock(run.root), (run_lock(run.cube_dir) if run.cube_root else contextlib.nullcontext()):
            return job(run, *args, **kwargs)

    return locked


@_one_run_per_folder
def train_country(run: CountryRun, executor: Executor, *, reference: str | None = None, legend: str | None = None,
                  settings: TrainingSettings | None = None, bounds: Bounds | None = None,
                  progress: Progress | None = None, label_column: str | None = None, max_tiles: int | None = None,
                  max_dollars: float | None = None) -> TrainResult:
    """Train the run's model from ``reference`` labels (default: the scenario's, with its training area
    and settings); ``settings`` default to the scenario's, else the paper's (:class:`TrainingSettings`).
    ``reference`` is a categorical raster or vector parcels/points (GeoPackage, GeoParquet, Shapefile;
    then ``label_column`` and ``legend`` are needed); only labels on the country's tiles are used.

    Outputs under ``run.training_dir`` and ``run.model_dir``, named by a hash of everything that defines
    them, so a rerun reuses a finished sample set and checkpoint. ``progress`` (:mod:`cropmap.jobs.progress`):
    told each tile cubed, the sample set (``samples``) and each epoch (``train``, through a relay into the
    executor's call: :func:`cropmap.jobs.progress.relayed`).
    """
    scenario = run.scenario
    if reference is None:
        if scenario is None or not scenario.trains:
            held_back = "" if scenario is None else " (its scenario's reference is held back for scoring)"
            raise ConfigError(f"training a model for {run.code} needs reference labels{held_back} (a categorical "
                              "crop map or vector parcels/points)")
        reference, legend = scenario.reference, legend or scenario.legend
        bounds = bounds if bounds is not None else scenario.train_bounds
    if settings is None:
        settings = scenario.training if scenario is not None else TrainingSettings()
    tile_ids = training_tiles(run, reference=reference, bounds=bounds, label_column=label_column, legend=legend)
    # limits, catalog, one item of the season: seconds now, not a failed tile per block later
    preflight(run, tile_ids, purpose="train", max_tiles=max_tiles, max_dollars=max_dollars)
    tiles = run_tiles(executor, run, tile_ids, progress=progress)
    if tiles.failures:  # a sample set from part of the labels would train a different model, silently
        first = tiles.failures[0]
        raise CubeBuildError(f"{len(tiles.failed_tiles)} of {len(tile_ids)} training tile(s) failed; the first, "
                             f"{first.tile_id} ({first.stage}): {first.reason}. Rerun to retry them")
    unfit = sorted(t for t, s in tiles.status.items() if s.get("cube") in ("incomplete", "degraded"))
    if unfit:  # samples from cubes with holes: the same silent change of the training set
        raise CubeBuildError(f"{len(unfit)} of {len(tile_ids)} training tile(s) are incomplete (an asset could not "
                             f"be read) or degraded (too little observed), the first {unfit[0]} "
                             f"({tiles.status[unfit[0]]['cube']}); rerun to rebuild them")
    cubes = [str(cube_path(run.cube_dir, run.tile(t))) for t in tile_ids if t not in tiles.failed_tiles]
    boxes = np.array([run.tile(t).lonlat_bbox() for t in tile_ids])
    area = (*boxes[:, :2].min(axis=0), *boxes[:, 2:].max(axis=0))  # lon/lat box of the tiles
    key = storage.stable_hash([run.key, reference, legend, bounds, label_column, settings.key_fields(mode="json")])
    tell(progress, "samples", "sample set", STARTED)
    samples = _run(executor, training_set, reference, cubes, str(storage.join(run.training_dir, f"samples-{key}.nc")),
                   region=run.code, legend_path=legend, settings=settings, bounds=bounds, label_column=label_column,
                   area=tuple(float(v) for v in area), tiles=tile_ids)
    tell(progress, "samples", "sample set", f"{samples.n_samples} samples")
    tell(progress, "train", settings.model, STARTED, total=settings.epochs)
    with relay_argument(progress) as told:  # each epoch
        # one torch thread: small nets train fastest that way on cores shared with the Dask workers
        checkpoint = _run(executor, train_checkpoint, samples.path,
                          str(storage.join(run.model_dir, f"{settings.model}-{key}.pt")), settings=settings, threads=1,
                          **told)
    return TrainResult(checkpoint, samples, tiles)


def score_run(run: CountryRun, key: str, maps: dict[str, str], model: str | None = None,
              season_offsets: dict[str, int] | None = None) -> tuple[dict, str]:
    """Score the class map of ``maps`` (product -> COG of one map) on the reference's grid on the
    scenario's held-back area, with its ``confidence`` and ``ood`` layers as detectors of its errors
    (:func:`~cropmap.jobs.scoring.score_class_map`); writes ``accuracy.json``
    and ``confusion.csv`` / ``confusion.png`` beside the maps and, given the checkpoint ``model``, ``model_card.md``: its card with this score
    among the transfer scores (a reference the model was not trained on), with ``season_offsets``
    (hemisphere -> months from the model's window, as :func:`map_country` checked them). The national map's
    quicklook, when there is one, is drawn again with the score in its title, over the same file
    (:func:`cropmap.stages.quicklook.rescore_quicklook`: its STAC item's file size and checksum follow)."""
    scenario = run.scenario
    assert scenario is not None and scenario.score_bounds is not None
    class_map = maps["class"]
    result = score_class_map(class_map, scenario.reference, bounds=scenario.score_bounds,
                             legend_path=scenario.legend, warp=True,
                             layers={p: maps[p] for p in ("confidence", "ood") if p in maps})
    path = storage.join(run.map_dir(key), "accuracy.json")
    outputs.write_text(path, json.dumps(result, indent=1))
    if result["n"]:  # the national quicklook, when there is one, drawn again with its score in the title
        rescore_quicklook(run.map_dir(key), run.code, score=result, place=quicklook_place(run))
    with tempfile.TemporaryDirectory() as tmp:  # confusion.csv / .png beside it (the folder may be a bucket)
        for local in write_confusion(np.asarray(result["confusion"]), result["class_names"], Path(tmp) / "confusion.csv",
                                     title=f"{run.code} {run.year}: {storage.basename(class_map)} against "
                                           f"the reference, {result['n']:,} px, OA {result['oa']:.3f}"):
            outputs.publish(local, storage.join(run.map_dir(key), local.name))
    if model is not None:
        from cropmap.ml.checkpoint import card_markdown
        from cropmap.stages.predict import load_model

        checkpoint = load_model(model)
        score = {k: round(float(result[k]), 4) for k in ("oa", "balanced_accuracy", "macro_f1", "kappa") if k in result}
        score.update(pixels=int(result["n"]), map=storage.basename(class_map), season=run.season.describe())
        offsets = season_offsets or {}
        if len(offsets) == 1:
            score["season_offset_months"] = next(iter(offsets.values()))
        else:  # a country on both sides of the equator: one offset per hemisphere
            score.update({f"season_offset_months_{h}": m for h, m in offsets.items()})
        target = f"{run.code} {run.year} ({scenario.description or 'held-out reference'})"
        outputs.write_text(storage.join(run.map_dir(key), "model_card.md"), card_markdown(
            checkpoint, name=storage.basename(model), transfer_scores={target: score} if result["n"] else None)
            + _data_licence(checkpoint, class_map))
    return result, str(path)


def _data_licence(checkpoint, class_map: storage.Location) -> str:
    """The model card's closing section: the Copernicus credit of the scenes of the training samples and of
    the map scored, their legal notice, and the map's licence."""
    with downloads.open_raster(class_map) as src:
        years = set(scene_years(src.tags()))
    for year in (checkpoint.card or {}).get("training_data", {}).get("years", []):
        first, last = checkpoint.season.window(int(year))
        years.update(season_years(first.isoformat(), last.isoformat()))
    return ("\n## Data licence\n\n"
            f"{copernicus_attribution(years)} (the scenes of the training samples and of the map "
            f"{storage.basename(class_map)}), used under the [Legal notice on the use of Copernicus Sentinel Data "
            f"and Service Information]({SENTINEL_LEGAL_NOTICE}). The map is licensed {LICENSE}.\n")


def write_model_item(model: storage.Location, map_dir: storage.Location) -> storage.Location:
    """``<map_dir>/model.mlm.json``: the STAC MLM item of the checkpoint ``model``
    (:func:`cropmap.stages.model_item.write_mlm_item`), which the national map's item links; its
    checkpoint asset points at ``model`` itself, also when that is a URL read from a local copy."""
    with outputs.output_file(storage.join(map_dir, MODEL_ITEM)) as tmp:
        write_mlm_item(downloads.local_copy(model).resolve(), tmp, checkpoint_href=storage.canonical(model))
    return storage.join(map_dir, MODEL_ITEM)


def _maps_to_score(run: CountryRun, zones: dict[int, MosaicResult], national: MosaicResult | None) -> dict[str, str]:
    """The map a scenario is scored on (product -> COG): the one zone's when the country is one zone on the
    reference's grid (no resampling at all), else the national map (read onto the reference's grid)."""
    with downloads.open_raster(run.scenario.reference) as ref:
        epsg = ref.crs.to_epsg()
    if len(zones) == 1 and next(iter(zones)) == epsg:
        chosen = zones[epsg]
    else:
        chosen = national if national is not None else next(iter(zones.values()))
    return {p: str(c) for p, c in chosen.cogs.items()}


@_one_run_per_folder
def map_country(run: CountryRun, executor: Executor, *, model: ModelRef | storage.Location | None = None,
                tile_limit: int | None = None,
                progress: Progress | None = None, overwrite: bool = False, area_samples: str | None = None,
                admin_units: str | None = None, admin_field: str | None = None, max_tiles: int | None = None,
                max_dollars: float | None = None, label_suggestions: int = 0) -> MapResult:
    """Map the run's country with the checkpoint ``model``, resolved once (:func:`~cropmap.jobs.tiles.run_model`:
    the CLI and the flow pass that :class:`~cropmap.stages.model_ref.ModelRef`; a path or URL is resolved here)
    and handed to every check and task; see the module docstring.
    ``overwrite``: rebuild the finished cubes and predictions too (a rerun otherwise skips them).
    ``progress`` (:mod:`cropmap.jobs.progress`): told each tile, and each step of the training, the mosaics
    (``mosaic``: the zones', then the national one), the scoring (``score``) and the area products.
    ``area_samples`` (labelled points drawn on this map) and ``admin_units`` (polygons named by their
    ``admin_field``): the area products of the national map (:func:`~cropmap.jobs.tiles.area_products`),
    made only when no tile or zone failed; so are ``label_suggestions`` points to label for training where the
    map is least sure (``<code>_suggestions.gpkg`` beside them).

    Without ``model``, a run whose scenario supplies training labels trains one first
    (:func:`train_country`); any other run needs one. Before any tile is computed: the checkpoint is
    checked against each hemisphere's season of the plan (the model's window, or its six-month offset),
    and the plan's finished tiles against the model. Then per UTM zone a mosaic, and the national mosaic
    of the zones in the country's output CRS. A zone that fails does not stop the others: it is in
    :attr:`MapResult.zone_failures` and its tiles are missing from the national map. A failed tile or
    zone leaves the maps of the others written but unscored; :func:`check_complete` raises then.
    """
    check_area_inputs(area_samples, admin_units, admin_field)  # before any tile, not after the mosaics
    tile_ids = run.tiles(tile_limit=tile_limit)
    if model is not None and not isinstance(model, ModelRef):
        model = run_model(run, model)
    if model is not None and model.options != run.predict:  # its key would name another run's tiles
        raise ConfigError(f"{run.code}: the model {model.location} was resolved for other predict options than the "
                          "run's; resolve it with cropmap.jobs.tiles.run_model(run, location)")
    # a checkpoint that cannot map the plan fails before the catalog is asked
    offsets = check_model_fits(run, model, tile_ids) if model is not None else None
    if model is None and (run.scenario is None or not run.scenario.trains):
        raise ConfigError(f"mapping {run.code} needs model=<checkpoint path or URL> (a model trained "
                          "elsewhere: `cropmap train` or the train-model flow)")
    # limits (max_tiles, max_dollars), the catalog and one item of the season, before any tile or training
    preflight(run, tile_ids, max_tiles=max_tiles, max_dollars=max_dollars)
    training = None
    if model is None:
        training = train_country(run, executor, progress=progress)
        model = run_model(run, training.checkpoint.path)
        offsets = check_model_fits(run, model, tile_ids)
    key = model.key
    check_existing_tiles(run, model, tile_ids)
    kept = [cube_path(run.cube_dir, run.tile(t)) for t in tile_ids] if run.keep_cubes else []
    write_run_file(model, run.tile_dir(key), cube_paths=kept)
    tiles = run_tiles(executor, run, tile_ids, model=model, progress=progress, overwrite=overwrite)
    predicted = [t for t in tile_ids if tiles.status.get(t, {}).get("predict") in ("done", "skipped")]
    if not predicted:
        first = tiles.failures[0] if tiles.failures else None
        raise CubeBuildError(f"no tile of {run.code} was predicted" + (
            f"; the first failure, {first.tile_id} ({first.stage}): {first.reason}" if first else ""))
    zones, failures = {}, {}
    missing = {f.tile_id: f"{f.stage}: {f.reason}" for f in tiles.failures}  # recorded in the STAC items
    missing_by_zone = zones_of(sorted(missing))
    mosaics = len(zones_of(predicted)) + 1  # the zones', then the national one
    tell(progress, "mosaic", f"{mosaics - 1} zone(s)", STARTED, total=mosaics)
    handles = {executor.submit(mosaic_zone, run, key, epsg, ids, {t: missing[t] for t in missing_by_zone.get(epsg, [])}):
               epsg for epsg, ids in zones_of(predicted).items()}
    while handles:  # the zones' mosaics run side by side
        for handle in executor.wait_any(list(handles)):
            epsg = handles.pop(handle)
            try:
                zones[epsg] = executor.result(handle)
            except Exception as err:  # noqa: BLE001 - one zone must not stop the others' products
                failures[epsg] = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
            tell(progress, "mosaic", f"EPSG:{epsg}", "failed" if epsg in failures else "done", total=mosaics)
    zones = dict(sorted(zones.items()))
    national = None
    if zones:  # the national item links the model's MLM item and takes the zones' provenance from their items
        write_model_item(model.location, run.map_dir(key))
        tell(progress, "mosaic", "national", STARTED, total=mosaics)
        with relay_argument(progress) as told:  # each window
            national = _run(executor, mosaic_country, run, key,
                            {e: {p: str(c) for p, c in z.cogs.items()} for e, z in zones.items()},
                            missing | {f"EPSG:{e}": f"zone mosaic: {r}" for e, r in failures.items()}, **told)
        tell(progress, "mosaic", "national", "done", total=mosaics)
    accuracy = accuracy_path = None
    # a map with holes is not scored: its accuracy would read as the run's
    if (run.scenario is not None and run.scenario.score_bounds is not None and (zones or national)
            and not tiles.failures and not failures):
        tell(progress, "score", "map", STARTED)
        accuracy, accuracy_path = _run(executor, score_run, run, key, _maps_to_score(run, zones, national),
                                       model=model.location, season_offsets=offsets)
        tell(progress, "score", "map", f"OA {accuracy['oa']:.3f} on {accuracy['n']:,} px")
    area = {}
    if (area_samples or admin_units or label_suggestions) and national is not None and not tiles.failures \
            and not failures:
        tell(progress, "area", "area products", STARTED)
        cogs = {k: str(v) for k, v in national.cogs.items()}
        area = _run(executor, area_products, run, key, cogs["class"], samples=area_samples, units=admin_units,
                    field=admin_field, suggestions=label_suggestions, confidence=cogs.get("confidence"),
                    ood=cogs.get("ood"))
        tell(progress, "area", "area products", "done")
    return MapResult(model.location, key, national, zones, tiles, failures, offsets, accuracy, accuracy_path, training,
                     area)


def check_complete(result: MapResult) -> None:
    """Raise :class:`CubeBuildError` when a tile or a zone of ``result`` failed: the maps written from
    the others have holes there (and were not scored); a rerun retries the failed tiles."""
    failures = result.tiles.failures
    if failures:
        first = failures[0]
        raise CubeBuildError(f"{len(result.tiles.failed_tiles)} of {result.tiles.total} tile(s) failed, so the maps "
                             f"have holes there and were not scored; the first, {first.tile_id} ({first.stage}): "
                             f"{first.reason}. Rerun to retry them")
    if result.zone_failures:
        raise MosaicError("zone(s) failed: " + "; ".join(f"EPSG:{e}: {r}" for e, r in result.zone_failures.items()))
    check_not_empty(result)


def check_not_empty(result: MapResult) -> None:
    """Raise :class:`MosaicError` when the map holds no mapped pixel at all: the national map's STAC item
    (else every zone's) says ``cropmap:status: "empty"`` (:func:`cropmap.stages.stac_item.write_stac_item`).
    A map that is all nodata is never a successful run."""
    maps = [result.mosaic] if result.mosaic is not None else list(result.zones.values())
    items = [json.loads(storage.read_bytes(m.stac_item)) for m in maps if m.stac_item is not None]
    empty = [i for i in items if i.get("properties", {}).get("cropmap:status") == EMPTY]
    if items and len(empty) == len(items):
        reason = empty[0]["properties"].get("cropmap:reason", "")
        raise MosaicError(f"the map {empty[0].get('id')} of {result.tiles.total} tile(s) is all nodata ({reason}); its "
                          "STAC item says cropmap:status 'empty'. Does the season fit the scenes' dates and cadence?")
