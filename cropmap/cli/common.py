"""The Typer app the command modules register on, the one error handler, SIGTERM, and the progress display."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress  # not cropmap's Progress, the callback type

from cropmap import __version__
from cropmap.errors import CropmapError, one_line
from cropmap.io import outputs
from cropmap.jobs.progress import STARTED, Progress

__all__ = ["app", "command", "fail", "tile_progress", "INTERRUPTED_EXIT", "LOG_LINES"]

#: Most lines a step writes where stderr is not a terminal (:func:`tile_progress`), starts and failures aside.
LOG_LINES = 20

#: Exit status of a command stopped by SIGTERM: 128 + 15, what a shell reports for a process that
#: SIGTERM ended, so that a scheduler (Kubernetes, systemd, CI) sees an interruption, not 2, the status
#: of a bad input that a rerun would not fix.
INTERRUPTED_EXIT = 128 + signal.SIGTERM

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
    """Wrap a command so that expected failures end in one line and exit code 2, never a traceback, and
    SIGTERM in one line and exit code :data:`INTERRUPTED_EXIT` (:func:`_stop_on_sigterm`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _sigterm_stops_cleanly():
            try:
                return fn(*args, **kwargs)
            except CropmapError as err:
                raise fail(str(err)) from err
            except ValidationError as err:  # pydantic: field and problem, without the web link
                raise fail(one_line(err)) from err
            except (OSError, KeyError, *_raster_errors()) as err:
                raise fail(f"{type(err).__name__}: {err}") from err
            except (typer.Exit, typer.Abort, typer.exceptions.TyperException):  # typer's own exits and usage errors
                raise
            except KeyboardInterrupt:
                outputs.discard_temporaries()
                typer.echo("error: interrupted (Ctrl-C); rerun the same command to resume", err=True)
                raise typer.Exit(130) from None
            except Exception as err:  # a cropmap bug, not a bad input: one line, exit 1, the traceback kept
                raise _internal_error(err) from err

    return wrapper


def _raster_errors() -> tuple[type[Exception], ...]:
    """rasterio's error class once rasterio is imported (no command raises one before): not imported here,
    so that ``cropmap --help`` and ``cropmap version`` start without rasterio (tests/test_cli_startup.py)."""
    module = sys.modules.get("rasterio.errors")
    return (module.RasterioError,) if module is not None else ()


def _internal_error(err: Exception) -> typer.Exit:
    """One line naming the unexpected error and the file that keeps its traceback; the Exit(1) to raise
    (1, not 2: no input of the user's is known to be at fault, so changing one may not help)."""
    report = Path(tempfile.gettempdir()) / f"cropmap-error-{os.getpid()}.txt"
    try:
        report.write_text("".join(traceback.format_exception(err)))
        where = f"the traceback is in {report}"
    except OSError:
        where = "the traceback could not be written"
    message = " ".join(str(err).split())[:300]
    typer.echo(f"error: unexpected {type(err).__name__}: {message} (a cropmap bug: please report it; {where})",
               err=True)
    return typer.Exit(1)


@contextlib.contextmanager
def _sigterm_stops_cleanly() -> Iterator[None]:
    """:func:`_stop_on_sigterm` handles SIGTERM for the block (signals reach the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        yield
    finally:
        if previous is not None:  # None: a handler not set from Python, which cannot be set back
            signal.signal(signal.SIGTERM, previous)


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """Print ``error: interrupted (SIGTERM); ...``, remove this process's temporaries and exit at once.

    Not by unwinding the main thread: closing the local Dask cluster waits for the tiles its threads
    are computing, which may outlast the grace period before a SIGKILL, and logs Dask's warnings.
    Nothing is left to a cleanup that would not run: the kernel drops the run lock, Dask's worker
    processes end with their parent, and a remote cube has no completion marker (the rerun rebuilds it)."""
    signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    try:
        with contextlib.suppress(Exception):  # a closed stderr must not keep the temporaries
            console = Console(stderr=True)
            if console.is_terminal:  # a progress display hid the cursor, and its line is not finished
                console.show_cursor(True)
                console.line()
            fail(f"interrupted ({signal.Signals(signum).name}); rerun the same command to resume")
        outputs.discard_temporaries()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(INTERRUPTED_EXIT)


@contextlib.contextmanager
def tile_progress(total: int, stages: tuple[str, ...]) -> Iterator[Progress]:
    """The one progress display of a job; yields the ``progress(stage, item, status, total=None)`` callback
    (:class:`cropmap.jobs.progress.Progress`) that the jobs call after each tile of ``stages`` (``total``
    tiles each: :mod:`cropmap.jobs.tile_pipeline`) and each unit of their other long steps, shown as they
    come with the total the job gives (training epochs, the zones' and national mosaics, scoring).

    On a terminal, a rich bar per stage (the elapsed time runs while a unit that was :data:`STARTED` works);
    elsewhere (a log file, a pipe, a CI job) lines ``<stage> <item>: <status> (<k>/<n>)``, since a bar is drawn
    there only when it ends: one per call of a step of at most :data:`LOG_LINES` units, else one a
    :data:`LOG_LINES`-th of the step (and every start and failure), so that a country's windows or tiles do not
    flood the log."""
    console = Console(stderr=True)
    totals = dict.fromkeys(stages, total)
    seen: dict[str, set[str]] = {s: set() for s in stages}  # a tile cubed for training is not counted twice
    lock = threading.Lock()  # calls come from the executor's threads

    def count(stage: str, item: str, status: str, given: int | None) -> tuple[int, int]:
        done = seen.setdefault(stage, set())
        if status != STARTED:
            done.add(item)
        totals[stage] = max(given or totals.get(stage, 0), len(done))
        return len(done), totals[stage]

    if not console.is_terminal:
        def line(stage: str, item: str, status: str, /, *, total: int | None = None) -> None:
            with lock:
                k, n = count(stage, item, status, total)
                if status not in (STARTED, "failed") and k < n and k % -(-n // LOG_LINES):
                    return
                console.print(f"{stage} {item}: {status} ({k}/{n})", markup=False, highlight=False, soft_wrap=True)

        yield line
        return
    columns = (TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[last]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with RichProgress(*columns, console=console, transient=False) as bar:
        ids = {s: bar.add_task(s, total=total, last="") for s in stages}

        def update(stage: str, item: str, status: str, /, *, total: int | None = None) -> None:
            with lock:
                k, n = count(stage, item, status, total)
                if stage not in ids:
                    ids[stage] = bar.add_task(stage, total=n, last="")
                bar.update(ids[stage], completed=k, total=n, last=f"{item} {status}")

        yield update
