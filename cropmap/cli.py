"""The ``cropmap`` command line. Each command imports its module lazily, so ``--help`` stays fast."""

from __future__ import annotations

import typer

app = typer.Typer(help="cropmap: country-scale crop type maps from Sentinel-2.", no_args_is_help=True)


@app.callback()
def _main() -> None:
    """cropmap: country-scale crop type maps from Sentinel-2."""


@app.command()
def version() -> None:
    """Print cropmap's version."""
    from cropmap import __version__

    typer.echo(__version__)


# Commands of the individual stages are added below, one section per stage module.


# --- samples: the real labelled sample sets (cropmap.samples, cropmap.readers) -------------------
samples_app = typer.Typer(help="The real labelled sample sets.", no_args_is_help=True)
app.add_typer(samples_app, name="samples")


@samples_app.command("summary")
def samples_summary(
    only: list[str] = typer.Option(None, "--set", help="Only these sets (repeatable); default: all."),
) -> None:
    """Per real sample set: shape, classes and counts, and the filled-bin fraction after 5-day compositing."""
    from rich.console import Console
    from rich.table import Table

    from cropmap.readers import real_sample_sets, summarize_samples

    sets = real_sample_sets()
    unknown = sorted(set(only or []) - set(sets))
    if unknown:
        raise typer.BadParameter(f"unknown set(s) {', '.join(unknown)}; choose from {', '.join(sets)}")
    table = Table(title="Real sample sets composited onto the seed's 5-day season grid")
    for column in ("set", "sample x time x band", "dates", "regions", "classes (count)", "no data",
                   "season", "filled bins", "empty"):
        table.add_column(column)
    for name, (load, season) in sets.items():
        if only and name not in only:
            continue
        s = summarize_samples(load(), season=season)
        classes = ", ".join(f"{k} {v}" for k, v in sorted(s["class_counts"].items(), key=lambda kv: -kv[1]))
        table.add_row(
            name, " x ".join(map(str, s["shape"])), " .. ".join(s["dates"]),
            ", ".join(f"{k} {v}" for k, v in s["regions"].items()),
            f"{len(s['class_counts'])}: {classes}", f"{s['nodata_fraction']:.1%}",
            f"{s['season']} {s['season_year']}", f"{s['filled_fraction']:.1%}", str(s["empty_samples"]),
        )
    Console(width=200).print(table)


# --- models, training and experiments (cropmap.models, cropmap.experiment) ---------------------------


@app.command()
def params(
    n_bands: int = typer.Option(10, help="bands (rows of the feature matrix)"),
    n_bins: int = typer.Option(73, help="time bins (43 for May-Nov, 73 for a full year)"),
    n_classes: int = typer.Option(7, help="classes"),
) -> None:
    """Print the parameter count of every registered model."""
    import torch

    from cropmap.models import MODELS, build_model, count_parameters

    for name in MODELS:
        model = build_model(name, n_bands=n_bands, n_classes=n_classes).eval()
        with torch.no_grad():  # prove the shape works, not just the count
            model(torch.zeros(2, n_bands, n_bins))
        n = count_parameters(model)
        typer.echo(f"{name:14s} {n:>10,d}  ({n / 1e6:.2f}M) for {n_bands} bands x {n_bins} bins x {n_classes} classes")


@app.command()
def experiment(
    config: str = typer.Argument(..., help="experiment YAML, e.g. configs/experiments/victoria.yaml"),
    seeds: str = typer.Option("", help="comma-separated seeds overriding the config's, e.g. 0"),
    output: str = typer.Option("", help="folder for the table, CSV and confusion matrices (default: the config's)"),
    cache_dir: str = typer.Option("", help="checkpoint cache (default: the config's); an empty folder retrains all"),
    workers: int = typer.Option(0, help="processes training networks in parallel (default: the config's)"),
) -> None:
    """Run a source -> target experiment grid and write docs/results/<name>.md and .csv."""
    import shlex
    import sys

    from cropmap.experiment import load_experiment, run_experiment

    cfg = load_experiment(config)
    update = {}
    if seeds:
        update["seeds"] = [int(s) for s in seeds.split(",")]
    if output:
        update["output"] = output
    if cache_dir:
        update["cache_dir"] = cache_dir
    if workers:
        update["workers"] = workers
    cfg = cfg.model_copy(update=update)
    command = "cropmap " + " ".join(shlex.quote(a) for a in ["experiment", *sys.argv[2:]])
    run_experiment(cfg, command=command)


# --- demo: the offline DEMO country (cropmap.demo) ---------------------------------------------------
demo_app = typer.Typer(help="The offline DEMO country (synthetic layout, real Victoria spectra).",
                       no_args_is_help=True)
app.add_typer(demo_app, name="demo")


@demo_app.command("build")
def demo_build(
    out: str = typer.Option(None, "--out", help="Output folder (default $CROPMAP_DEMO_DIR or ~/.cache/cropmap/demo)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the folder is complete."),
) -> None:
    """Write the DEMO static STAC catalog, reference crop map and layout (skipped if complete)."""
    import time

    from cropmap.demo import build_demo, read_layout
    from cropmap.errors import CropmapError

    started = time.perf_counter()
    try:
        paths = build_demo(out, force=force)
    except CropmapError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    layout = read_layout(paths.root)
    typer.echo(f"DEMO catalog:   {paths.catalog}")
    typer.echo(f"reference map:  {paths.reference}")
    typer.echo(f"layout:         {paths.layout} ({len(layout['fields'])} fields, {len(layout['dates'])} dates, "
               f"{len(layout['tiles'])} tiles of {layout['tile_px']} px)")
    typer.echo(f"done in {time.perf_counter() - started:.1f} s")


@demo_app.command("run")
def demo_run(
    out: str = typer.Option(None, "--out", help="Output root, a folder or an fsspec URL such as s3://bucket/runs "
                            "(default $CROPMAP_OUTPUT_URL, else $CROPMAP_OUTPUT_DIR, else ~/.cache/cropmap/runs)."),
    tile_limit: int = typer.Option(None, "--tile-limit", min=1, help="Map at most this many tiles."),
) -> None:
    """The whole job on the DEMO, offline: the map-country Prefect flow (build the demo if missing, train
    the slim CPU CropNet on the west half, cubes through the STAC code, predict, mosaic, OA on the east)."""
    import os
    import sys
    import time
    from pathlib import Path

    from cropmap.errors import CropmapError
    from cropmap.pipeline import DEMO_TRAINING

    root = Path(__file__).resolve().parents[1]
    if not (root / "flows" / "map_country.py").exists():  # the flows are part of the checkout, not the wheel
        typer.echo(f"error: no flows/ next to {Path(__file__).parent}: run from a cropmap checkout", err=True)
        raise typer.Exit(2)
    sys.path.insert(0, str(root))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    model = DEMO_TRAINING["model_options"]
    typer.echo(f"DEMO model: SLIM CropNet for CPU (channels {model['channels']}, first stride "
               f"{model['first_stride']}; not the paper's 4.7M-parameter net), {DEMO_TRAINING['epochs']} epochs, "
               f"augmentation {DEMO_TRAINING['augment']!r}, one sample per {DEMO_TRAINING['cell_deg']} degree cell "
               "and class on the WEST half; scored on the EAST half")
    started = time.perf_counter()
    try:
        from flows.map_country import map_country

        result = map_country(country="DEMO", out_dir=out, tile_limit=tile_limit)
    except CropmapError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    acc = result["accuracy"]
    typer.echo("")
    typer.echo(f"class map COG:      {result['cogs']['class']}")
    typer.echo(f"confidence COG:     {result['cogs'].get('confidence')}")
    typer.echo(f"STAC item:          {result['item']}")
    typer.echo(f"quicklook:          {result['quicklook']}")
    typer.echo(f"accuracy report:    {result['accuracy_path']}")
    typer.echo(f"model:              {result['model']}")
    typer.echo(f"OA on the DEMO east half: {acc['oa']:.3f} (macro-F1 {acc['macro_f1']:.3f}, {acc['n']} pixels)")
    typer.echo(f"done in {time.perf_counter() - started:.0f} s")


# --- cube: per-tile 5-day median cubes from STAC (cropmap.cube) --------------------------------------
@app.command("cube")
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
    configs_dir: str = typer.Option(None, "--configs-dir", help="Folder of country YAMLs (default configs/countries)."),
) -> None:
    """Build 5-day median cubes (one Zarr per tile) for a country or an area inside it."""
    from cropmap.bands import S2_BANDS
    from cropmap.config import CatalogConfig, load_country
    from cropmap.cube import CubeOptions, build_cubes
    from cropmap.errors import CropmapError
    from cropmap.grid import tiles_for_aoi

    try:
        cfg = load_country(country, configs_dir=configs_dir)
        if catalog:
            cfg = cfg.model_copy(update={"catalog": CatalogConfig(
                path=catalog, collection=cfg.catalog.collection, max_cloud_cover=cfg.catalog.max_cloud_cover,
                margin_days=cfg.catalog.margin_days)})
        aoi = bbox if bbox else (geojson if geojson else cfg)
        tiles = tiles_for_aoi(aoi, tile_size=cfg.tile_size)
        if max_tiles is not None:
            tiles = tiles[:max_tiles]
        opts = CubeOptions(bands=tuple(b.strip() for b in bands.split(",")) if bands else S2_BANDS, chunk=chunk,
                           on_asset_error="fail" if fail_on_asset_error else "warn")
        typer.echo(f"{cfg.name}: {len(tiles)} tile(s) of {cfg.tile_size} px, season {cfg.season.describe()} {cfg.year}")
        results = build_cubes(cfg, out, tiles=tiles, options=opts, overwrite=overwrite,
                              progress=lambda r: typer.echo(f"{r.tile_id}: {r.status} {r.reason}".rstrip()))
    except CropmapError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    counts = {s: sum(r.status == s for r in results) for s in ("written", "skipped", "empty")}
    typer.echo(", ".join(f"{n} {s}" for s, n in counts.items()))


# --- predict and mosaic: tile maps and country COGs (cropmap.predict, cropmap.mosaic) ----------------
@app.command("predict")
def predict(
    checkpoint: str = typer.Argument(..., help="Checkpoint (.pt) from `cropmap experiment` / training."),
    cubes: list[str] = typer.Argument(..., help="Tile cube stores (<tile id>.zarr) or folders holding them."),
    out: str = typer.Option(..., "--out", help="Folder for <tile id>.{class,confidence}.tif and run.json."),
    max_filled_fraction: float = typer.Option(0.8, help="Pixels with more interpolated bins than this are nodata."),
    batch_size: int = typer.Option(4096, help="Pixels per forward pass."),
    probabilities: bool = typer.Option(False, "--probabilities", help="Also write per-class probabilities."),
    device: str = typer.Option(None, help="cuda or cpu (default: CUDA when available)."),
    precision: str = typer.Option("auto", help="auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16."),
    force: bool = typer.Option(False, "--force", help="Redo tiles that are already complete."),
) -> None:
    """Classify tile cubes with a checkpoint: one class map and one confidence map per tile."""
    from pathlib import Path

    from cropmap.errors import CropmapError
    from cropmap.predict import PredictOptions, predict_tiles

    paths = []
    for c in cubes:  # a folder of stores, or stores themselves
        p = Path(c)
        paths += sorted(p.glob("*.zarr")) if p.is_dir() and p.suffix != ".zarr" else [p]
    from pydantic import ValidationError

    try:
        options = PredictOptions(max_filled_fraction=max_filled_fraction, batch_size=batch_size,
                                 probabilities=probabilities, device=device, precision=precision)
    except ValidationError as err:
        raise typer.BadParameter(str(err)) from err
    try:
        results = predict_tiles(checkpoint, paths, out, options=options, force=force)
    except CropmapError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    for r in results:
        typer.echo(f"{r.tile_id}: {r.status}")
    typer.echo(f"{sum(r.status == 'done' for r in results)} done, {sum(r.status == 'skipped' for r in results)} skipped")


@app.command("mosaic")
def mosaic(
    tiles: str = typer.Argument(..., help="Folder of tile outputs written by `cropmap predict`."),
    out: str = typer.Option(..., "--out", help="Folder for the COGs, STAC item and quicklook."),
    name: str = typer.Option("cropmap", help="Product name: <name>_class.tif, <name>.json ..."),
    blocksize: int = typer.Option(512, help="COG block size in pixels (multiple of 16)."),
) -> None:
    """Mosaic tile outputs into one validated COG per product, a STAC item and a quicklook PNG."""
    from cropmap.errors import CropmapError
    from cropmap.mosaic import mosaic_tiles

    try:
        result = mosaic_tiles(tiles, out, name=name, blocksize=blocksize)
    except CropmapError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    for product, path in result.cogs.items():
        typer.echo(f"{product}: {path}")
    typer.echo(f"STAC item: {result.stac_item}\nquicklook: {result.quicklook}\n{len(result.tile_ids)} tiles")
