"""The stage commands: ``cube`` (tile cubes from STAC), ``predict`` (tile maps), ``mosaic`` (COGs).

Many tiles run on a local Dask cluster through the same per-tile job functions the flows use
(:mod:`cropmap.jobs.tiles`, :func:`cropmap.jobs.executors.run_all`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import typer

from cropmap.cli.common import app, command, fail
from cropmap.io import storage

if TYPE_CHECKING:
    from cropmap.jobs.executors import Outcome

# the stages and jobs (Dask, torch, xarray, rasterio ...) are imported inside each command, not here: `cropmap
# --help` and `cropmap version` start without them (tests/test_cli_startup.py). The default of --min-observed
# is cropmap.stages.cube.CubeOptions.min_observed_fraction, written out here (the test checks they are the same).
MIN_OBSERVED_FRACTION = 0.02


def _report_failures(outcomes: list[Outcome], names: list[str], what: str) -> None:
    failed = [(names[o.index], o.error) for o in outcomes if not o.ok]
    for name, error in failed:
        typer.echo(f"{name}: failed: {error}", err=True)
    if failed:
        raise fail(f"{len(failed)} of {len(outcomes)} {what} failed (listed above)")


@app.command("cube")
@command
def cube(
    country: str = typer.Argument(..., help="Country code with a config in configs/countries (e.g. BEL)."),
    out: str = typer.Option(..., "--out", help="Folder for the <tile id>.zarr stores."),
    bbox: tuple[float, float, float, float] = typer.Option(
        None, "--bbox", help="Only tiles over this lon/lat box: WEST SOUTH EAST NORTH."),
    geojson: str = typer.Option(None, "--geojson", help="Only tiles over this GeoJSON area (EPSG:4326)."),
    catalog: str = typer.Option(None, "--catalog", help="Static catalog.json instead of the config's STAC API."),
    max_tiles: int = typer.Option(None, "--max-tiles", help="Build at most this many tiles (in id order)."),
    bands: str = typer.Option(None, "--bands", help="Comma-separated canonical bands (default: the 10 S2 bands)."),
    chunk: int = typer.Option(256, "--chunk", help="Spatial Dask chunk in pixels (memory per task)."),
    fail_on_asset_error: bool = typer.Option(False, "--fail-on-asset-error",
                                             help="Stop at an unreadable asset instead of warning."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rebuild tiles that are already complete."),
    min_observed: float = typer.Option(MIN_OBSERVED_FRACTION, "--min-observed", min=0, max=1,
                                       help="Below this share of observed values a tile is 'degraded' (rebuilt "
                                            "next run, refused by predict); 0 accepts any tile with data."),
    configs_dir: str = typer.Option(None, "--configs-dir", help="Folder of country YAMLs (default configs/countries)."),
    threads: int = typer.Option(2, "--threads", min=1, help="Tiles built at once (local Dask threads)."),
    encoding: str = typer.Option("int16", "--encoding", help="Reflectance stored as int16 counts of 1e-4 (half "
                                 "the bytes, error <= 5e-5) or float32."),
) -> None:
    """Build 5-day median cubes (one Zarr per tile) for a country or an area inside it."""
    from cropmap.core.bands import S2_BANDS
    from cropmap.io.config import CatalogConfig, load_country
    from cropmap.io.outlines import tiles_for_aoi, tiles_for_area
    from cropmap.jobs.country_run import resolve_country_run
    from cropmap.jobs.executors import local_executor
    from cropmap.jobs.tile_pipeline import run_tiles
    from cropmap.stages.cube import CubeOptions, cube_path, cube_status

    cfg = load_country(country, configs_dir=configs_dir)
    if catalog:
        cfg = cfg.model_copy(update={"catalog": CatalogConfig(
            path=catalog, profile=cfg.catalog.profile, collection=cfg.catalog.collection,
            max_cloud_cover=cfg.catalog.max_cloud_cover,
            margin_days=cfg.catalog.margin_days)})
    opts = CubeOptions(bands=tuple(b.strip() for b in bands.split(",")) if bands else S2_BANDS, chunk=chunk,
                       on_asset_error="fail" if fail_on_asset_error else "warn", min_observed_fraction=min_observed,
                       encoding=encoding)
    area = bbox if bbox else geojson
    # an area is checked against the country and the tile cap (--max-tiles is the explicit override)
    planned = (tiles_for_area(cfg, area, limit=None if max_tiles is None else 10**9) if area
               else tiles_for_aoi(cfg, tile_size=cfg.tile_size, limit=max_tiles))
    tiles = [t.id for t in planned][:max_tiles]
    run = resolve_country_run(cfg, out_root=out, cube=opts, cube_dir=out)
    typer.echo(f"{cfg.name}: {len(tiles)} tile(s) of {cfg.tile_size} px, season {cfg.season.describe()} {cfg.year}")

    def show(stage: str, tile_id: str, status: str) -> None:
        typer.echo(f"{tile_id}: {status}")

    with local_executor(threads=threads) as executor:
        summary = run_tiles(executor, run, tiles, progress=show, overwrite=overwrite)
    counts = summary.counts["cube"]
    typer.echo(", ".join(f"{counts.get(s, 0)} {s}" for s in ("written", "skipped", "empty", "incomplete", "degraded")))
    for f in summary.failures:
        typer.echo(f"{f.tile_id}: failed: {f.reason}", err=True)
    if summary.failures:
        raise fail(f"{len(summary.failures)} of {summary.total} tiles failed (listed above)")
    unfit = sorted(t for t, s in summary.status.items() if s.get("cube") in ("incomplete", "degraded"))
    if unfit:  # written, but with holes or too little observed: predict refuses them, a rerun rebuilds them
        status, reason = cube_status(cube_path(run.cube_dir, run.tile(unfit[0])))
        raise fail(f"{len(unfit)} of {summary.total} tile cube(s) are incomplete or degraded; the first, {unfit[0]} "
                   f"({status}): {reason}")


@app.command("predict")
@command
def predict(
    checkpoint: str = typer.Argument(..., help="Checkpoint (.pt) from `cropmap train` or `cropmap experiment`."),
    cubes: list[str] = typer.Argument(..., help="Tile cube stores (<tile id>.zarr) or folders holding them."),
    out: str = typer.Option(..., "--out", help="Folder for <tile id>.{class,confidence}.tif and run.json."),
    max_filled_fraction: float = typer.Option(0.8, help="Pixels with more interpolated bins than this are nodata."),
    batch_size: int = typer.Option(None, help="Pixels per forward pass (default: what fits in --memory-budget-mb)."),
    memory_budget_mb: int = typer.Option(1024, help="Memory one forward pass may take (GPU memory on CUDA), MiB."),
    probabilities: bool = typer.Option(False, "--probabilities", help="Also write per-class probabilities."),
    ood: bool = typer.Option(None, "--ood/--no-ood",
                             help="The out-of-distribution score product (default: when the checkpoint holds its statistics)."),
    device: Literal["cuda", "cpu"] = typer.Option(None, help="Default: CUDA when available."),
    precision: Literal["auto", "fp32", "bf16"] = typer.Option("auto", help="auto = bf16 on CUDA, fp32 on CPU."),
    force: bool = typer.Option(False, "--force", help="Redo tiles that are already complete."),
    threads: int = typer.Option(1, "--threads", min=1, help="Tiles predicted at once (torch uses the cores inside one)."),
) -> None:
    """Classify tile cubes with a checkpoint: one class map and one confidence map per tile."""
    from cropmap.stages.cube import cube_stores
    from cropmap.stages.predict import PredictOptions

    paths = cube_stores(cubes)  # a folder of stores, or stores themselves
    options = PredictOptions(max_filled_fraction=max_filled_fraction, batch_size=batch_size,
                             memory_budget_mb=memory_budget_mb, probabilities=probabilities, ood=ood, device=device,
                             precision=precision)
    from cropmap.jobs.executors import local_executor
    from cropmap.jobs.tiles import check_predict_inputs, predict_cubes, tile_annotations

    model, checked = check_predict_inputs(checkpoint, paths, options=options)  # before the cluster starts
    gpu = options.device == "cuda"
    with local_executor(threads=threads, annotations=tile_annotations(gpu)) as executor:
        outcomes = predict_cubes(model, checked, out, force=force, executor=executor)
    for o in outcomes:
        if o.ok:
            typer.echo(f"{o.value.tile_id}: {o.value.status}")
    done = [o.value.status for o in outcomes if o.ok]
    typer.echo(f"{done.count('done')} done, {done.count('skipped')} skipped")
    _report_failures(outcomes, [str(p) for p in paths], "tiles")


@app.command("mosaic")
@command
def mosaic(
    tiles: str = typer.Argument(..., help="Folder of tile outputs written by `cropmap predict`."),
    out: str = typer.Option(..., "--out", help="Folder for the COGs, STAC item and quicklook."),
    name: str = typer.Option("cropmap", help="Product name: <name>_class.tif, <name>.json ..."),
    blocksize: int = typer.Option(512, help="COG block size in pixels (multiple of 16)."),
    crs: str = typer.Option("EPSG:6933", help="CRS of the national COGs when the tiles lie in several UTM zones."),
) -> None:
    """Mosaic tile outputs into one validated COG per product, a STAC item and a quicklook PNG. Tiles of
    several UTM zones give one mosaic per zone (<name>_<epsg>_*.tif) and the national COGs in --crs."""
    from cropmap.stages.mosaic import mosaic_tiles
    from cropmap.stages.national import national_mosaic, tiles_by_zone

    storage.safe_name(name, "--name")  # it names the outputs: no path
    zones = tiles_by_zone(tiles)
    if len(zones) <= 1:
        result = mosaic_tiles(tiles, out, name=name, blocksize=blocksize)
    else:
        per_zone = {e: mosaic_tiles(tiles, out, name=f"{name}_{e}", blocksize=blocksize, tile_ids=ids, quicklook=False)
                    for e, ids in zones.items()}
        for epsg, zone in per_zone.items():
            typer.echo(f"zone EPSG:{epsg}: {zone.cogs['class']} ({len(zone.tile_ids)} tiles)")
        result = national_mosaic({e: z.cogs for e, z in per_zone.items()}, out, name=name, crs=crs)
    for product, path in result.cogs.items():
        typer.echo(f"{product}: {path}")
    typer.echo(f"STAC item: {result.stac_item}\nquicklook: {result.quicklook}\n"
               f"{sum(len(v) for v in zones.values())} tiles")


@app.command("export-onnx")
@command
def export_onnx_command(
    checkpoint: str = typer.Argument(..., help="The checkpoint (.pt) to export."),
    out: Path = typer.Option(..., "--out", help="The ONNX file to write."),
    card: Path = typer.Option(None, "--card", help="Also write the model card as markdown here."),
    mlm_item: Path = typer.Option(None, "--mlm-item", help="Also write a STAC MLM item (JSON) describing the model."),
) -> None:
    """Export a checkpoint to ONNX (reflectance in, the maps' calibrated probabilities out), checked
    against the probabilities prediction computes."""
    from cropmap.ml.checkpoint import card_markdown, load_checkpoint
    from cropmap.ml.export import export_onnx

    result = export_onnx(checkpoint, out)
    typer.echo(f"{result.path}: softmax(logits / {result.temperature:g}); max |onnx - maps| = "
               f"{result.max_abs_diff:.1e} on {result.n_checked} rows (tolerance {result.tolerance:.0e})")
    if card is not None:
        card.write_text(card_markdown(load_checkpoint(checkpoint), name=Path(checkpoint).stem))
        typer.echo(f"model card: {card}")
    if mlm_item is not None:
        from cropmap.stages.model_item import write_mlm_item

        typer.echo(f"STAC MLM item: {write_mlm_item(checkpoint, mlm_item, onnx=result.path)}")
