"""map-country: country, year, model -> tile cubes -> predictions -> COG mosaics + STAC item + quicklook.

Wiring only: the country is resolved once (:func:`cropmap.scenarios.resolve_run`) into the run every
task receives, and :func:`cropmap.jobs.mapping.map_country` does the job with this flow's tasks
(:mod:`cropmap.flows.tasks`). Outputs under ``<out>/<country>/<run key>/``: ``cubes/`` (Zarr per tile),
``tiles/`` (per-tile GeoTIFFs), ``maps/`` (``<country>_class.tif``, ``<country>_confidence.tif``,
``<country>.json``, ``<country>_quicklook.png``, ``accuracy.json`` and ``model_card.md``: the checkpoint's card
with this score among its transfer scores). ``<out>`` is a folder or an fsspec
URL (``s3://bucket/runs``): the ``out_dir`` parameter, else ``$CROPMAP_OUTPUT_URL``, else
``$CROPMAP_OUTPUT_DIR`` (:func:`cropmap.jobs.country_run.output_root`), so Kubernetes workers need no
shared volume. Finished tiles are skipped, so a run killed midway and started again computes only the
missing tiles. Without ``model``, a country whose scenario supplies labels (the DEMO) is trained first
and, when the scenario holds back an area, the map is scored there.

``predict-tile`` tasks request the Dask resource ``GPU=1`` when the cluster has GPU workers: the
``gpu_workers`` parameter, else ``$CROPMAP_GPU_WORKERS`` (:func:`cropmap.jobs.cluster.gpu_workers_enabled`).

    prefect deployment run map-country/map-country --param country=DEMO
    cropmap map DEMO --prefect [--out DIR] [--tile-limit N]     (the same flow, in this process)
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from cropmap.errors import IncompatibleInputError
from cropmap.io.config import known_countries
from cropmap.jobs import mapping
from cropmap.jobs.cluster import gpu_workers_enabled
from cropmap.jobs.plan import check_limits, plan_lines, plan_run
from cropmap.jobs.reports import map_lines, plan_table, quicklook_markdown
from cropmap.jobs.tiles import run_model
from cropmap.scenarios import DEFAULT_COUNTRY, resolve_run
from cropmap.flows import tasks
from cropmap.flows._runner import task_runner

__all__ = ["map_country"]


#: The country codes with a config in the package (or ``$CROPMAP_CONFIGS_DIR``) when the flow is imported: the
#: deployment's parameter schema offers them, and still takes any other string (a config file's path or URL).
KnownCountry = Literal[tuple(known_countries()) or (DEFAULT_COUNTRY,)]  # type: ignore[valid-type]


@flow(name="map-country", task_runner=task_runner(), log_prints=True)
def map_country(country: KnownCountry | str = DEFAULT_COUNTRY, year: int | None = None, model: str | None = None,
                tile_limit: int | None = None, out_dir: str | None = None, gpu_workers: bool | None = None,
                parts: list[str] | None = None, overwrite: bool = False, area_samples: str | None = None,
                admin_units: str | None = None, admin_field: str | None = None, dry_run: bool = False,
                max_tiles: int | None = None, max_dollars: float | None = None, keep_cubes: bool = True,
                predict: dict[str, Any] | None = None, label_suggestions: int = 0) -> dict:
    """Map a country's crops: tile cubes, predictions, zone and national COGs, STAC items, quicklook.

    Args:
        country: ISO 3166 alpha-3 code with a config (ARG, FRA, ...), or the path or URL of a country config
            (.yaml).
        year: Season year (the calendar year in which the season starts); default: the config's.
        model: Checkpoint (path or URL) trained elsewhere. Without one, a country whose scenario supplies
            labels (the DEMO) is trained first.
        tile_limit: Map at most this many tiles (a trial run).
        out_dir: Output root, a folder or an fsspec URL (s3://bucket/runs); default $CROPMAP_OUTPUT_URL,
            else $CROPMAP_OUTPUT_DIR.
        gpu_workers: Run the predictions only on Dask workers started with --resources GPU=1; default
            $CROPMAP_GPU_WORKERS, else no.
        parts: Outline parts to map (default: the config's default parts).
        overwrite: Rebuild the finished tiles' cubes and predictions too (e.g. after the catalog was
            reprocessed); incomplete cubes are rebuilt without it.
        area_samples: Labelled points drawn on this map (`cropmap area sample`): area estimates with 95 %
            CIs in maps/<key>/area/.
        admin_units: A polygon file (provinces): mapped hectares per class per unit in maps/<key>/area/.
        admin_field: The column of admin_units that names each unit.
        dry_run: Print the plan and its estimate (`cropmap plan`) and stop before any tile.
        max_tiles: Refuse a plan of more tiles (else $CROPMAP_MAX_TILES).
        max_dollars: Refuse a plan estimated above this many dollars (else $CROPMAP_MAX_DOLLARS).
        keep_cubes: False: each tile's cube is built in its worker's scratch, predicted there and deleted
            (one map-tile task per tile; no cube in the output store).
        predict: Predict options over the config's predict section, e.g. {"probabilities": true, "ood":
            false, "precision": "bf16", "max_filled_fraction": 0.8}.
        label_suggestions: Propose this many points to label for training where the map is least confident or
            most out of distribution, spaced (maps/<key>/area/<country>_suggestions.gpkg); never an area sample.

    Returns:
        The COGs, STAC item, quicklook, zones, accuracy (when scored), tiles and the printed summary.
    """
    gpu = gpu_workers_enabled(gpu_workers)  # a malformed $CROPMAP_GPU_WORKERS fails here
    # so do an unknown country and output; the cubes take the checkpoint's bands
    run = resolve_run(country, year=year, out_dir=out_dir, parts=parts, model=model, keep_cubes=keep_cubes,
                      predict=predict)
    # and the checkpoint, once: its location, prediction key, bands, season and classes go to every task
    ref = run_model(run, model) if model is not None else None
    print(plan_table(run))
    if dry_run:
        plan = plan_run(run, tile_limit=tile_limit, model=ref)
        for line in plan_lines(plan):
            print(line)
        if plan.model is not None and plan.model.problem:
            raise IncompatibleInputError(plan.model.problem)
        check_limits(plan, max_tiles=max_tiles, max_dollars=max_dollars)
        return {"dry_run": True, "tiles": plan.tiles, "zones": plan.zones, "searches": plan.searches,
                "catalog_problem": plan.catalog_problem, "dollars": round(plan.estimate.dollars, 2)}
    result = mapping.map_country(run, tasks.executor(gpu=gpu), model=ref, tile_limit=tile_limit,
                                 overwrite=overwrite, area_samples=area_samples, admin_units=admin_units,
                                 admin_field=admin_field, max_tiles=max_tiles, max_dollars=max_dollars,
                                 label_suggestions=label_suggestions)
    summary, accuracy = result.tiles, result.accuracy
    create_table_artifact(key=f"tiles-{run.code.lower()}", table=summary.table(),
                          description=f"{run.code} {run.year}: {summary.describe()}")
    if accuracy is not None and accuracy["n"]:  # n 0: the mapped tiles miss the scored area
        create_table_artifact(key=f"accuracy-{run.code.lower()}", description=(
            f"{run.scenario.description}: OA {accuracy['oa']:.3f}, balanced accuracy "
            f"{accuracy['balanced_accuracy']:.3f}, macro-F1 {accuracy['macro_f1']:.3f}"),
            table=[{"class": k, "f1": round(v, 4), "recall": round(accuracy["recall"][k], 4)}
                   for k, v in accuracy["f1"].items()])
    summary_lines = map_lines(result)
    for line in summary_lines:
        print(line)
    if result.mosaic is not None:
        create_markdown_artifact(key=f"map-{run.code.lower()}", markdown="\n".join(
            [f"# {run.config.name} {run.year}", quicklook_markdown(result.mosaic.quicklook), ""]
            + [f"- {k}: `{v}`" for k, v in {**result.mosaic.cogs, "STAC item": result.mosaic.stac_item}.items()]))
    mapping.check_complete(result)  # failed tiles or zones: the others' products are written, the run Fails
    return {"cogs": {k: str(v) for k, v in result.mosaic.cogs.items()}, "item": str(result.mosaic.stac_item),
            "quicklook": str(result.mosaic.quicklook),
            "zones": {e: {k: str(v) for k, v in z.cogs.items()} for e, z in result.zones.items()},
            "accuracy": accuracy, "accuracy_path": result.accuracy_path, "tiles": summary.rows(),
            "model": result.model, "key": result.key, "season_offsets": result.season_offsets, "area": result.area,
            "summary": summary_lines}

