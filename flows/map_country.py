"""map-country: country, year, model -> tile cubes -> predictions -> COG mosaics + STAC item + quicklook.

Wiring only; every task calls one cropmap function. Outputs under
``<out>/<country>/<config hash>/``: ``cubes/`` (Zarr per tile), ``tiles/`` (per-tile GeoTIFFs),
``maps/`` (``<country>_class.tif``, ``<country>_confidence.tif``, ``<country>.json``,
``<country>_quicklook.png``, ``accuracy.json``). ``<out>`` is a folder or an fsspec URL
(``s3://bucket/runs``): the ``out_dir`` parameter, else ``$CROPMAP_OUTPUT_URL``, else
``$CROPMAP_OUTPUT_DIR`` (:func:`flows._runner.output_root`), so Kubernetes workers need no shared volume.
Finished tiles are skipped, so a run killed midway and started again computes only the missing tiles.
For ``DEMO`` without ``model``, the model is trained first (train-model, west half) and the map is
scored on the EAST half against the reference.

``predict-tile`` tasks request the Dask resource ``GPU=1`` when the cluster has GPU workers: the
``gpu_workers`` parameter, else ``$CROPMAP_GPU_WORKERS`` (:func:`cropmap.cluster.gpu_workers_enabled`).

    prefect deployment run map-country/map-country --param country=DEMO
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # loaded by file path (a deployment's entrypoint): make `flows` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dask
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from cropmap import pipeline, storage
from cropmap.cluster import gpu_workers_enabled, inference_annotations
from cropmap.errors import ConfigError
from flows._runner import output_root, task_runner
from flows.build_cube import build_cubes_for, country_config
from flows.train_model import train_model

__all__ = ["map_country"]


@task(name="run-file", cache_policy=NONE)
def run_file(checkpoint: str, tile_dir: str, cube_paths: list[str]) -> str:
    from cropmap.predict import PredictOptions, write_run_file

    return str(write_run_file(checkpoint, tile_dir, options=PredictOptions(), cube_paths=cube_paths))


@task(name="predict-tile", cache_policy=NONE, task_run_name="predict {cube_path}")
def predict_tile(checkpoint: str, cube_path: str, tile_dir: str) -> str:
    from cropmap.predict import predict_tile as predict

    return predict(checkpoint, cube_path, tile_dir).status


@task(name="mosaic", cache_policy=NONE)
def mosaic(tile_dir: str, map_dir: str, name: str) -> dict:
    from cropmap.mosaic import mosaic_tiles

    result = mosaic_tiles(tile_dir, map_dir, name=name)
    return {"cogs": {k: str(v) for k, v in result.cogs.items()}, "item": str(result.stac_item),
            "quicklook": str(result.quicklook)}


@task(name="score", cache_policy=NONE)
def score(class_map: str, reference: str, bounds: list[float] | None, path: str) -> dict:
    result = pipeline.score_class_map(class_map, reference, bounds=tuple(bounds) if bounds else None)
    storage.write_text(path, json.dumps(result, indent=1))
    return result


def _demo_truth() -> tuple[str, list[float]]:
    from cropmap.demo import DemoPaths, default_demo_dir, part_bounds, read_layout

    root = default_demo_dir()
    return str(DemoPaths(root).reference), list(part_bounds(read_layout(root), "east"))


@flow(name="map-country", task_runner=task_runner(), log_prints=True)
def map_country(country: str = "DEMO", year: int | None = None, model: str | None = None,
                tile_limit: int | None = None, out_dir: str | None = None, gpu_workers: bool | None = None) -> dict:
    """Map ``country``'s crops with the checkpoint ``model`` (a path or URL; DEMO: trained first when
    not given), outputs under ``out_dir`` (a folder or URL); ``gpu_workers``: inference on GPU workers."""
    config = country_config(country, year)  # an unknown country fails here, with the known ones listed
    gpu = gpu_workers_enabled(gpu_workers)  # so does a malformed $CROPMAP_GPU_WORKERS
    root = pipeline.run_dir(output_root(out_dir), config)  # so does an unwritable output location
    if model is None:
        if config.code != "DEMO":
            raise ConfigError(f"map-country for {config.code} needs model=<checkpoint path>")
        model = train_model(country=country, year=year, out_dir=out_dir)
    tile_ids = pipeline.country_tiles(config, tile_limit=tile_limit)
    cubes = build_cubes_for(country, year, tile_ids, str(storage.join(root, "cubes")))
    ready = [c for c in cubes if c["status"] != "failed"]
    tile_dir, map_dir = storage.join(root, "tiles"), storage.join(root, "maps")
    run_file(model, str(tile_dir), [c["path"] for c in ready])
    # the DaskTaskRunner submits through distributed.Client.submit, which merges these annotations:
    # with GPU workers, inference runs only there (and a CPU worker never picks it up)
    with dask.annotate(**inference_annotations(gpu)):
        futures = [predict_tile.submit(model, c["path"], str(tile_dir)) for c in ready]
    rows = {c["tile_id"]: {"tile": c["tile_id"], "cube": c["status"], "predict": "-", "reason": c["reason"]}
            for c in cubes}
    for c, future in zip(ready, futures):
        try:
            rows[c["tile_id"]]["predict"] = future.result()
        except Exception as err:  # noqa: BLE001 - reported in the table; the mosaic covers the rest
            rows[c["tile_id"]].update(predict="failed", reason=str(err)[:300])
    create_table_artifact(key=f"tiles-{country.lower()}", table=list(rows.values()),
                          description=f"{country} {config.year}: tiles done / skipped / failed")
    outputs = mosaic(str(tile_dir), str(map_dir), config.code)
    accuracy, accuracy_path = None, storage.join(map_dir, "accuracy.json")
    if config.code == "DEMO":
        reference, east = _demo_truth()
        accuracy = score(outputs["cogs"]["class"], reference, east, str(accuracy_path))
        create_table_artifact(key="accuracy-demo", description="DEMO east half (Victoria test-split series) "
                              f"vs the reference map: OA {accuracy['oa']:.3f}, macro-F1 {accuracy['macro_f1']:.3f}",
                              table=[{"class": k, "f1": round(v, 4)} for k, v in accuracy["f1"].items()])
    create_markdown_artifact(key=f"map-{country.lower()}", markdown="\n".join(
        [f"# {config.name} {config.year}", f"![quicklook]({storage.as_uri(outputs['quicklook'])})", ""]
        + [f"- {k}: `{v}`" for k, v in {**outputs["cogs"], "STAC item": outputs["item"]}.items()]))
    failed = sum(r["cube"] == "failed" or r["predict"] == "failed" for r in rows.values())
    print(f"class map:  {outputs['cogs']['class']}")
    print(f"confidence: {outputs['cogs'].get('confidence')}")
    print(f"STAC item:  {outputs['item']}")
    print(f"quicklook:  {outputs['quicklook']}")
    if accuracy is not None:
        print(f"accuracy:   {accuracy_path}: OA {accuracy['oa']:.3f} on the DEMO east half "
              f"({accuracy['n']} pixels), macro-F1 {accuracy['macro_f1']:.3f}")
    print(f"tiles: {len(rows) - failed} done or skipped, {failed} failed")
    return {**outputs, "accuracy": accuracy, "accuracy_path": str(accuracy_path) if accuracy else None,
            "tiles": list(rows.values()), "model": model}


if __name__ == "__main__":
    map_country()
