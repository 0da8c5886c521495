"""Commands about data and models: ``samples summary``, ``params``, ``experiment``, ``demo build``."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import typer

from cropmap.cli.common import app, command

# the library (torch, scikit-learn, xarray ...) is imported inside each command, not here: `cropmap --help`
# and `cropmap version` start without it (tests/test_cli_startup.py)

samples_app = typer.Typer(help="The real labelled sample sets.", no_args_is_help=True)
app.add_typer(samples_app, name="samples")
demo_app = typer.Typer(help="The offline DEMO country (synthetic layout, real Victoria spectra).",
                       no_args_is_help=True)
app.add_typer(demo_app, name="demo")


@samples_app.command("summary")
@command
def samples_summary(
    paths: list[str] = typer.Argument(None, help="Sample files (.parquet, .npz, .rda, .csv) or set names."),
    only_sets: list[str] = typer.Option(None, "--set", help="Only these sets or files (repeatable); default: all."),
) -> None:
    """Per sample set or file: shape, classes and counts, and the filled-bin fraction after 5-day compositing."""
    from rich.console import Console
    from rich.table import Table

    from cropmap.samples.sources import read_sample_file, resolve_path
    from cropmap.samples.summary import real_sample_sets, summarize_samples

    sets = real_sample_sets()
    only = []
    for item in [*(paths or []), *(only_sets or [])]:
        if item not in sets:  # a path: any sample file, its reader by suffix, shown by its name
            if not resolve_path(item).exists():
                raise typer.BadParameter(f"{item}: neither a sample file nor a set ({', '.join(sets)})")
            sets[item] = ((lambda p=item: read_sample_file(p)), None)
        only.append(item)
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
            Path(name).name, " x ".join(map(str, s["shape"])), " .. ".join(s["dates"]),
            ", ".join(f"{k} {v}" for k, v in s["regions"].items()),
            f"{len(s['class_counts'])}: {classes}", f"{s['nodata_fraction']:.1%}",
            f"{s['season']} {s['season_year']}", f"{s['filled_fraction']:.1%}", str(s["empty_samples"]),
        )
    Console(width=200).print(table)


@app.command()
@command
def params(
    n_bands: int = typer.Option(10, help="bands (rows of the feature matrix)"),
    n_bins: int = typer.Option(73, help="time bins (43 for May-Nov, 73 for a full year)"),
    n_classes: int = typer.Option(7, help="classes"),
) -> None:
    """Print the parameter count of every registered model."""
    import torch

    from cropmap.ml.models import MODELS, build_model, count_parameters

    for name in MODELS:
        model = build_model(name, n_bands=n_bands, n_classes=n_classes).eval()
        with torch.no_grad():  # prove the shape works, not just the count
            model(torch.zeros(2, n_bands, n_bins))
        n = count_parameters(model)
        typer.echo(f"{name:14s} {n:>10,d}  ({n / 1e6:.2f}M) for {n_bands} bands x {n_bins} bins x {n_classes} classes")


@app.command()
@command
def experiment(
    config: str = typer.Argument(..., help="experiment YAML, e.g. configs/experiments/victoria.yaml"),
    seeds: str = typer.Option("", help="comma-separated seeds overriding the config's, e.g. 0"),
    output: str = typer.Option("", help="folder for the table, CSV and confusion matrices (default: the config's)"),
    cache_dir: str = typer.Option("", help="checkpoint cache (default: the config's); an empty folder retrains all"),
    workers: int = typer.Option(0, help="processes training networks in parallel (default: the config's)"),
) -> None:
    """Run a source -> target experiment grid and write docs/results/<name>.md and .csv."""
    from cropmap.research.config import load_experiment
    from cropmap.research.runner import run_experiment

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
    run_experiment(cfg, command="cropmap " + " ".join(shlex.quote(a) for a in ["experiment", *sys.argv[2:]]))


@demo_app.command("build")
@command
def demo_build(
    out: str = typer.Option(None, "--out", help="Output folder (default $CROPMAP_DEMO_DIR or ~/.cache/cropmap/demo)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the folder is complete."),
) -> None:
    """Write the DEMO static STAC catalog, reference crop map and layout (skipped if complete)."""
    from cropmap.scenarios.demo import build_demo, read_layout

    started = time.perf_counter()
    paths = build_demo(out, force=force)
    layout = read_layout(paths.root)
    typer.echo(f"DEMO catalog:   {paths.catalog}")
    typer.echo(f"reference map:  {paths.reference}")
    typer.echo(f"layout:         {paths.layout} ({len(layout['fields'])} fields, {len(layout['dates'])} dates, "
               f"{len(layout['tiles'])} tiles of {layout['tile_px']} px)")
    typer.echo(f"done in {time.perf_counter() - started:.1f} s")


@app.command("scenario-model")
@command
def scenario_model_(
    country: str = typer.Argument(..., help="A country whose scenario trains its own model (REAL)."),
    out: str = typer.Option(..., "--out", help="Checkpoint path (.pt), kept when already there."),
    epochs: int = typer.Option(None, "--epochs", min=1, help="Override the scenario's epochs."),
) -> None:
    """Train the checkpoint a scenario brings (REAL: a 4-band CropNet on the Victoria series in its season)."""
    from cropmap.scenarios import scenario_model

    result = scenario_model(country, out, epochs=epochs)
    typer.echo(f"checkpoint: {result.path} ({result.status}; validation macro-F1 "
               f"{result.scores.get('val_macro_f1', float('nan')):.3f})")
