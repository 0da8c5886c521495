"""The Typer app the command modules register on, the one error handler, and the tile progress display."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import typer
from pydantic import ValidationError
from rasterio.errors import RasterioError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cropmap import __version__
from cropmap.errors import CropmapError, one_line

__all__ = ["app", "command", "fail", "tile_progress"]

app = typer.Typer(help="cropmap: country-scale crop type maps from Sentinel-2.", no_args_is_help=True)


@app.callback()
def _main() -> None:
    """cropmap: country-scale crop type maps from Sentinel-2."""


@app.command()
def version() -> None:
    """Print cropmap's version."""
    typer.echo(__version__)


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` (one line) on stderr; the Exit(2) to raise."""
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
    return typer.Exit(2)


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command so that expected failures end in one line and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CropmapError as err:
            raise fail(str(err)) from err
        except ValidationError as err:  # pydantic: field and problem, without the web link
            raise fail(one_line(err)) from err
        except (OSError, RasterioError, KeyError) as err:
            raise fail(f"{type(err).__name__}: {err}") from err

    return wrapper


@contextlib.contextmanager
def tile_progress(total: int, stages: tuple[str, ...]) -> Iterator[Callable[[str, str, str], None]]:
    """A rich progress display of ``total`` tiles per stage; yields the ``progress(stage, tile, status)``
    callback that the jobs call after each tile (:mod:`cropmap.jobs.tile_pipeline`)."""
    columns = (TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[last]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        ids = {s: bar.add_task(s, total=total, last="") for s in stages}
        seen: dict[str, set[str]] = {s: set() for s in stages}  # a tile cubed for training is not counted twice

        def update(stage: str, tile_id: str, status: str) -> None:
            if stage in ids:
                new = tile_id not in seen[stage]
                seen[stage].add(tile_id)
                bar.update(ids[stage], advance=int(new), total=max(total, len(seen[stage])), last=f"{tile_id} {status}")

        yield update
