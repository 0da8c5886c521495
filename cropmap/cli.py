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
