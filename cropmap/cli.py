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
