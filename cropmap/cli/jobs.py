"""The country jobs from the command line: ``plan``, ``map``, ``train``, ``transfer`` and ``demo run``.

They run the same job functions as the flows (:mod:`cropmap.jobs.mapping`) on a local Dask cluster
(or the one at ``$CROPMAP_DASK_ADDRESS``), with a progress display of every long step (tiles, epochs, mosaics, scoring); with ``--prefect``, ``map`` and
``train`` run the same job as their Prefect flow in this process (:mod:`cropmap.flows`: tasks, artifacts and
a flow run recorded by the server at ``$PREFECT_API_URL``, else a temporary one). This is the one command-line
entry point of each job: ``python -m flows.X`` in a checkout calls it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import typer

from cropmap.cli.common import app, command, fail, tile_progress
from cropmap.cli.data import demo_app

if TYPE_CHECKING:
    from cropmap.jobs.mapping import MapResult

# the jobs (Dask, torch, xarray ...) are imported inside each command, not here: `cropmap --help` and
# `cropmap version` start without them (tests/test_cli_startup.py). The defaults of --vcpus and --gpus are
# cropmap.jobs.plan.DEFAULT_VCPUS and DEFAULT_GPUS, written out here (the test checks they are the same).
DEFAULT_VCPUS, DEFAULT_GPUS = 128, 4


def _print_map(result: MapResult, started: float) -> None:
    from cropmap.jobs.mapping import check_not_empty
    from cropmap.jobs.reports import map_lines

    for line in map_lines(result):
        typer.echo(line)
    typer.echo(f"done in {time.perf_counter() - started:.0f} s")
    if result.tiles.failures:
        for f in result.tiles.failures:
            typer.echo(f"{f.tile_id}: {f.stage} failed: {f.reason}", err=True)
        raise fail(f"{len(result.tiles.failed_tiles)} tile(s) failed; the map has holes there (rerun to retry them)")
    if result.zone_failures:
        raise fail("zone(s) failed: " + "; ".join(f"EPSG:{e}: {r}" for e, r in result.zone_failures.items()))
    check_not_empty(result)  # a map that is all nodata: one line, exit 2


class _NoComputeDumps(logging.Filter):
    """Drop the local Dask workers' multi-line "Compute Failed" dumps: a failed tile is one line here,
    its traceback in ``<run>/failures/`` (:mod:`cropmap.jobs.tile_pipeline`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Compute Failed")


logging.getLogger("distributed.worker").addFilter(_NoComputeDumps())


def _plan(run, *, tile_limit: int | None = None, model=None, labels: str | None = None,
          max_tiles: int | None = None, max_dollars: float | None = None, vcpus: int = DEFAULT_VCPUS,
          gpus: int = DEFAULT_GPUS) -> None:
    """Print the run's plan (``model``: a resolved :class:`~cropmap.stages.model_ref.ModelRef`); a checkpoint that
    does not fit or a plan over its limits ends in one line, exit 2."""
    from cropmap.jobs.plan import check_limits, plan_lines, plan_run
    from cropmap.jobs.reports import plan_table

    plan = plan_run(run, tile_limit=tile_limit, model=model, labels=labels, vcpus=vcpus, gpus=gpus)
    typer.echo(plan_table(run))
    for line in plan_lines(plan):
        typer.echo(line)
    if plan.model is not None and plan.model.problem:
        raise fail(plan.model.problem)
    check_limits(plan, max_tiles=max_tiles, max_dollars=max_dollars)


def _map(country: str, *, model: str | None, year: int | None, out: str | None, tile_limit: int | None,
         threads: int, gpu_workers: bool | None, parts: list[str] | None = None, overwrite: bool = False,
         area_samples: str | None = None, admin_units: str | None = None, admin_field: str | None = None,
         dry_run: bool = False, max_tiles: int | None = None, max_dollars: float | None = None,
         prefect: bool = False, keep_cubes: bool = True, predict: dict | None = None,
         label_suggestions: int = 0) -> None:
    """Every check that needs no tile comes before the local Dask cluster starts (tests/test_cli_startup.py):
    the country, the checkpoint (read before the scenario is prepared: a missing --model does not wait for
    the DEMO's build), the output location, the options, the plan's limits and the catalog (preflight).
    The modules that import Dask's distributed (jobs.plan, jobs.executors ...) only after the run is resolved."""
    from cropmap.io.config import load_country
    from cropmap.scenarios import resolve_run, run_bands

    started = time.perf_counter()
    if model is not None:  # the country, then the checkpoint (read once: resolve_run takes it from the cache)
        run_bands(load_country(country), model=model)
    run = resolve_run(country, year=year, out_dir=out, parts=parts, model=model,  # the checkpoint's bands
                      keep_cubes=keep_cubes, predict=predict)
    if prefect:
        _map_flow(threads, country=country, year=year, model=model, tile_limit=tile_limit, out_dir=out,
                  gpu_workers=gpu_workers, parts=parts, overwrite=overwrite, area_samples=area_samples,
                  admin_units=admin_units, admin_field=admin_field, dry_run=dry_run, max_tiles=max_tiles,
                  max_dollars=max_dollars, keep_cubes=keep_cubes, predict=predict or None,
                  label_suggestions=label_suggestions)
        return
    from cropmap.jobs.cluster import gpu_workers_enabled
    from cropmap.jobs.executors import local_executor
    from cropmap.jobs.mapping import map_country
    from cropmap.jobs.plan import preflight
    from cropmap.jobs.reports import plan_table
    from cropmap.jobs.tiles import check_model_fits, run_model, tile_annotations

    gpu = gpu_workers_enabled(gpu_workers)  # a malformed $CROPMAP_GPU_WORKERS: one line, dry run or not
    # the checkpoint resolved once, with the run (location, prediction key, bands, season, classes): every
    # check and task below takes this value
    ref = run_model(run, model) if model is not None else None
    if dry_run:
        _plan(run, tile_limit=tile_limit, model=ref, max_tiles=max_tiles, max_dollars=max_dollars)
        typer.echo("dry run: no tile computed")
        return
    tile_ids = run.tiles(tile_limit=tile_limit)
    typer.echo(plan_table(run))
    if ref is not None:
        check_model_fits(run, ref, tile_ids)
    # map_country checks these too; here they cost no cluster start when they refuse (it repeats them
    # in milliseconds: the block search is kept, the asset read cached)
    preflight(run, tile_ids, max_tiles=max_tiles, max_dollars=max_dollars)
    with local_executor(threads=threads, annotations=tile_annotations(gpu)) as executor, \
            tile_progress(len(tile_ids), ("cube", "predict")) as progress:
        result = map_country(run, executor, model=ref, tile_limit=tile_limit, progress=progress,
                             overwrite=overwrite, area_samples=area_samples, admin_units=admin_units,
                             admin_field=admin_field, max_tiles=max_tiles, max_dollars=max_dollars,
                             label_suggestions=label_suggestions)
    _print_map(result, started)


def _map_flow(threads: int, **parameters) -> None:
    """``map`` through the map-country flow in this process, its Dask runner of ``threads`` threads."""
    from cropmap.flows._runner import task_runner
    from cropmap.flows.map_country import map_country

    result = map_country.with_options(task_runner=task_runner(threads=threads))(**parameters)
    if not parameters["dry_run"]:
        _print_flow_map(result)


def _print_flow_map(result: dict) -> None:
    """A map-country flow's ``result``: the summary the flow wrote (:func:`cropmap.jobs.reports.map_lines`)."""
    for line in result["summary"]:
        typer.echo(line)


@app.command("plan")
@command
def plan(
    country: str = typer.Argument(..., help="Country code with a config in configs/countries (e.g. ARG)."),
    model: str = typer.Option(None, "--model", help="Checkpoint to check against the plan (bands, season)."),
    labels: str = typer.Option(None, "--labels", help="Plan training from these labels: the tiles under them."),
    year: int = typer.Option(None, "--year", help="Season year (default: the config's)."),
    parts: list[str] = typer.Option(None, "--part", "--parts", help="Outline part (repeatable; default: the config's)."),
    out: str = typer.Option(None, "--out", help="Output root (as for `cropmap map`)."),
    tile_limit: int = typer.Option(None, "--tile-limit", min=1, help="Plan at most this many tiles."),
    vcpus: int = typer.Option(DEFAULT_VCPUS, "--vcpus", min=1, help="vCPUs of the cluster, for the wall time."),
    gpus: int = typer.Option(DEFAULT_GPUS, "--gpus", min=0, help="GPUs of the cluster (0: inference on the CPUs)."),
    max_tiles: int = typer.Option(None, "--max-tiles", min=1, help="Refuse a plan of more tiles ($CROPMAP_MAX_TILES)."),
    max_dollars: float = typer.Option(None, "--max-dollars", help="Refuse a plan estimated above this "
                                      "($CROPMAP_MAX_DOLLARS)."),
) -> None:
    """Print what a run would do, before any tile: tiles per UTM zone and hemisphere, seasons, block searches,
    whether the catalog answers, the checkpoint's fit, and an estimate of CPU/GPU hours, wall time and dollars."""
    from cropmap.scenarios import resolve_run

    run = resolve_run(country, year=year, out_dir=out, parts=parts or None, model=model)
    from cropmap.jobs.tiles import run_model

    _plan(run, tile_limit=tile_limit, model=run_model(run, model) if model is not None else None, labels=labels, max_tiles=max_tiles, max_dollars=max_dollars,
          vcpus=vcpus, gpus=gpus)


@app.command("map")
@command
def map_(
    country: str = typer.Argument(..., help="Country code with a config in configs/countries (e.g. ARG)."),
    model: str = typer.Option(None, "--model", help="Checkpoint (path or URL) trained elsewhere; a scenario's "
                              "country without one is trained first."),
    year: int = typer.Option(None, "--year", help="Season year (default: the config's)."),
    out: str = typer.Option(None, "--out", help="Output root, a folder or an fsspec URL (default $CROPMAP_OUTPUT_URL, "
                            "else $CROPMAP_OUTPUT_DIR, else ~/.cache/cropmap/runs)."),
    tile_limit: int = typer.Option(None, "--tile-limit", min=1, help="Map at most this many tiles."),
    threads: int = typer.Option(2, "--threads", min=1, help="Local Dask threads (tiles at once)."),
    gpu_workers: bool = typer.Option(None, "--gpu-workers/--no-gpu-workers",
                                     help="Inference only on workers with --resources GPU=1."),
    parts: list[str] = typer.Option(None, "--part", help="Outline part to map (repeatable; default: the config's)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rebuild finished cubes and predictions too."),
    keep_cubes: bool = typer.Option(True, "--keep-cubes/--no-keep-cubes", help="--no-keep-cubes: each mapped "
                                    "tile's cube is built in its worker's scratch, predicted there and deleted (one "
                                    "task per tile; no cube written to the output store)."),
    area_samples: str = typer.Option(None, "--area-samples", help="Labelled points drawn on this map (`cropmap "
                                     "area sample`): area estimates with 95 % CIs in maps/<key>/area/."),
    admin_units: str = typer.Option(None, "--admin-units", help="Polygons (provinces): mapped hectares per class "
                                    "per unit in maps/<key>/area/."),
    admin_field: str = typer.Option(None, "--admin-field", help="The column of --admin-units naming each unit."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (`cropmap plan`) and stop before any tile."),
    max_tiles: int = typer.Option(None, "--max-tiles", min=1, help="Refuse a plan of more tiles ($CROPMAP_MAX_TILES)."),
    max_dollars: float = typer.Option(None, "--max-dollars", help="Refuse a plan estimated above this "
                                      "($CROPMAP_MAX_DOLLARS)."),
    prefect: bool = typer.Option(False, "--prefect", help="Run it as the map-country Prefect flow in this process "
                                 "(the server at $PREFECT_API_URL, else a temporary one): what a deployment runs."),
    probabilities: bool = typer.Option(None, "--probabilities/--no-probabilities", help="Per-class probability "
                                       "COGs (one band per class, percent) beside the class map (default: the "
                                       "config's predict: section, else no)."),
    ood: bool = typer.Option(None, "--ood/--no-ood", help="The out-of-distribution score COG (default: the "
                             "config's, else when the checkpoint holds its statistics)."),
    precision: str = typer.Option(None, "--precision", help="auto | fp32 | bf16 (default: the config's, else "
                                  "auto: bf16 on CUDA, fp32 on CPU)."),
    max_filled_fraction: float = typer.Option(None, "--max-filled-fraction", help="Pixels with a larger share of "
                                              "interpolated bins are nodata (default: the config's, else 0.8)."),
    smoothing: str = typer.Option(None, "--smoothing", help="none | bayes: sits' Bayesian smoothing of the "
                                  "probabilities in each zone mosaic before the class decision (default: the "
                                  "config's, else none: docs/results/smoothing.md)."),
    smoothing_window: int = typer.Option(None, "--smoothing-window", help="The smoothing window's side in "
                                         "pixels, odd (default 9)."),
    label_suggestions: int = typer.Option(0, "--label-suggestions", min=0, help="Propose this many points to label "
                                          "for training where the map is least sure, spaced: "
                                          "maps/<key>/area/<country>_suggestions.gpkg (never an area sample)."),
) -> None:
    """Map a country with a model: cubes, predictions, per-zone and national COGs, STAC item, quicklook
    (the map-country job, locally)."""
    _map(country, model=model, year=year, out=out, tile_limit=tile_limit, threads=threads, gpu_workers=gpu_workers,
         parts=parts or None, overwrite=overwrite, area_samples=area_samples, admin_units=admin_units,
         admin_field=admin_field, dry_run=dry_run, max_tiles=max_tiles, max_dollars=max_dollars, prefect=prefect,
         keep_cubes=keep_cubes, label_suggestions=label_suggestions, predict={k: v for k, v in {
             "probabilities": probabilities, "ood": ood, "precision": precision,
             "max_filled_fraction": max_filled_fraction, "smoothing": smoothing,
             "smoothing_window": smoothing_window}.items() if v is not None})


@app.command("train")
@command
def train(
    country: str = typer.Argument(..., help="Country code with a config in configs/countries."),
    labels: str = typer.Option(None, "--labels", help="Reference labels: a categorical crop map (GeoTIFF) or "
                               "vector parcels/points (GeoPackage, GeoParquet, Shapefile); default: the country's "
                               "scenario's."),
    label_column: str = typer.Option(None, "--label-column", help="Vector labels: the column holding the codes."),
    legend: str = typer.Option(None, "--legend", help="configs/legends YAML mapping the labels' classes."),
    year: int = typer.Option(None, "--year", help="Season year (default: the config's)."),
    epochs: int = typer.Option(None, "--epochs", min=1, help="Override the epochs (default: the paper's 50)."),
    cell_deg: float = typer.Option(None, "--cell-deg", help="Sampling cell in degrees (default 0.1)."),
    per_cell: int = typer.Option(None, "--per-cell", min=1, help="Points per sampling cell and class (default 1)."),
    out: str = typer.Option(None, "--out", help="Output root (as for `cropmap map`)."),
    threads: int = typer.Option(2, "--threads", min=1, help="Local Dask threads (tiles at once)."),
    bands: str = typer.Option(None, "--bands", help="Comma-separated bands of the cubes and the model, e.g. "
                              "B02,B03,B04,B08 (default: the config's bands:, else the ten)."),
    prefect: bool = typer.Option(False, "--prefect", help="Run it as the train-model Prefect flow in this process "
                                 "(the server at $PREFECT_API_URL, else a temporary one): what a deployment runs."),
) -> None:
    """Train a country's model from reference labels (the train-model job, locally, with a progress display of
    the tiles cubed and the training's epochs); prints the checkpoint."""
    from cropmap.jobs.executors import local_executor
    from cropmap.jobs.labels import check_training_labels
    from cropmap.jobs.mapping import train_country, training_tiles
    from cropmap.jobs.training import TrainingSettings
    from cropmap.scenarios import resolve_run

    started = time.perf_counter()
    band_list = [b.strip() for b in bands.split(",") if b.strip()] if bands else None
    run = resolve_run(country, year=year, out_dir=out, bands=band_list)
    base = run.scenario.training if run.scenario is not None and labels is None else TrainingSettings()
    given = {"epochs": epochs, "cell_deg": cell_deg, "per_cell": per_cell}
    overrides = {k: v for k, v in given.items() if v is not None}
    settings = TrainingSettings(**{**base.model_dump(), **overrides})
    typer.echo(f"{run.config.name} {run.year}: training {settings.model} ({settings.epochs} epochs, lr {settings.lr}, "
               f"batch {settings.batch_size}, augmentation {settings.augment!r})")
    if labels is not None:  # column, legend, codes, season year and tiles checked here, before any cluster
        checked = check_training_labels(run, labels, label_column=label_column, legend=legend)
        n = len(checked.tile_ids)
        if checked.summary and not prefect:  # the flow prints it
            typer.echo(checked.summary)
    else:
        n = len(training_tiles(run))
    if prefect:
        from cropmap.flows._runner import task_runner
        from cropmap.flows.train_model import train_model

        flow = train_model.with_options(task_runner=task_runner(threads=threads))
        path = flow(country=country, reference=labels, legend=legend, year=year, out_dir=out, label_column=label_column,
                    bands=band_list, training=overrides or None)
        typer.echo(f"checkpoint: {path}")
        typer.echo(f"done in {time.perf_counter() - started:.0f} s")
        return
    with local_executor(threads=threads) as executor, tile_progress(n, ("cube",)) as progress:
        result = train_country(run, executor, reference=labels, legend=legend, settings=settings,
                               label_column=label_column, progress=progress)
    ckpt = result.checkpoint
    typer.echo(f"samples:    {result.samples.path} ({result.samples.n_samples}: "
               + ", ".join(f"{k} {v}" for k, v in result.samples.per_class.items()) + ")")
    typer.echo(f"checkpoint: {ckpt.path} ({ckpt.status}; {ckpt.n_parameters:,} parameters; validation macro-F1 "
               f"{ckpt.scores.get('val_macro_f1', float('nan')):.3f})")
    typer.echo(f"done in {time.perf_counter() - started:.0f} s")


@app.command("transfer")
@command
def transfer_(
    source: str = typer.Option("TSRC", "--source", help="Labelled source country (default: the offline TRANSFER "
                               "scenario's TSRC)."),
    target: str = typer.Option("TTGT", "--target", help="Target country mapped with the source's model."),
    augment: str = typer.Option(None, "--augment", help="Phenology augmentation (none, all, ...; default: the "
                                "source's setting)."),
    out: str = typer.Option(None, "--out", help="Output root (as for `cropmap map`)."),
    training: str = typer.Option(None, "--training", help='TrainingSettings fields as JSON, e.g. \'{"epochs": 50}\'.'),
) -> None:
    """Train on a source country, then map a target with that checkpoint: the transfer Prefect flow (train-model,
    then map-country) in this process."""
    import json

    from cropmap.io.config import load_country

    for country in (source, target):  # before the flow starts its server and cluster
        load_country(country)
    try:
        settings = json.loads(training) if training else None
    except json.JSONDecodeError as err:
        raise fail(f"--training is not JSON: {err}") from err
    if settings is not None and not isinstance(settings, dict):
        raise fail(f"--training must be a JSON object of TrainingSettings fields, not {training!r}")
    from cropmap.flows.transfer import transfer as transfer_flow

    result = transfer_flow(source=source, target=target, augment=augment, out_dir=out, training=settings)
    typer.echo(f"\ntrained on {result['source']}, mapped {result['target']}")
    _print_flow_map(result)


@demo_app.command("run")
@command
def demo_run(
    out: str = typer.Option(None, "--out", help="Output root, a folder or an fsspec URL such as s3://bucket/runs "
                            "(default $CROPMAP_OUTPUT_URL, else $CROPMAP_OUTPUT_DIR, else ~/.cache/cropmap/runs)."),
    tile_limit: int = typer.Option(None, "--tile-limit", min=1, help="Map at most this many tiles."),
) -> None:
    """The whole job on the DEMO, offline and locally (= ``cropmap map DEMO``): build the demo if missing,
    train the slim CPU CropNet on the west half, cubes through the STAC code, predict, mosaic, score the
    east half. ``bash scripts/demo.sh`` runs the same through the map-country Prefect flow."""
    from cropmap.scenarios import DEFAULT_COUNTRY

    _map(DEFAULT_COUNTRY, model=None, year=None, out=out, tile_limit=tile_limit, threads=2, gpu_workers=None)
