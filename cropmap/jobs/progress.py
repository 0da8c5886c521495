"""What a job tells its caller while it runs: one callable type for every long step, and a relay that carries it
into a call made through an executor.

A job reports ``progress(stage, item, status, total=...)`` after each unit of a step: a tile in ``cube`` /
``predict`` (:mod:`cropmap.jobs.tile_pipeline`), an epoch in ``train``, a zone or the national map in
``mosaic``, a window of the national map in ``national``, the map in ``score``; ``total`` is the step's count of units when the caller cannot know it in
advance (epochs, zones). :data:`STARTED` says a unit began (a step of one long unit: the national mosaic,
the scoring), so that a display shows what is running rather than the last thing that finished.
``cropmap map`` / ``cropmap train`` pass one display (:func:`cropmap.cli.common.tile_progress`); the
flows pass none, and the jobs log instead.

An argument of a call through a Dask executor is pickled, even to a worker thread of this process, so a
display cannot be passed to :func:`cropmap.jobs.training.train_checkpoint` or
:func:`cropmap.jobs.tiles.mosaic_country` as it is: :func:`relayed` hands
a :class:`ProgressRelay` (a token) that finds the display again where the call runs in this process, and
logs the lines where it runs in another (a remote cluster's worker).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Progress", "STARTED", "ProgressRelay", "relayed", "relay_argument", "log_progress", "tell"]

#: The status of a unit that began (not counted as done by a display).
STARTED = "started"

log = logging.getLogger(__name__)
_LIVE: dict[str, Progress] = {}  # token -> the display a relay stands for, in this process
_LOCK = threading.Lock()


class Progress(Protocol):
    """``progress(stage, item, status, total=None)``: ``item`` (a tile id, ``"epoch 3/50"``, ``"EPSG:32755"``)
    of ``stage`` reached ``status`` (``"done"``, a tile's cube status, :data:`STARTED` ...); ``total``: the
    stage's count of items when the job knows it and the caller may not. A tile stage's calls pass no total
    (a display of tiles knows their count), so a plain three-argument function serves for tiles."""

    def __call__(self, stage: str, item: str, status: str, /, *, total: int | None = None) -> None: ...


def log_progress(stage: str, item: str, status: str, /, *, total: int | None = None) -> None:
    """A :class:`Progress` that logs one INFO line per call (a flow's worker, a remote worker)."""
    log.info("%s %s: %s", stage, item, status)


@dataclass(frozen=True)
class ProgressRelay:
    """A picklable :class:`Progress` standing for the one :func:`relayed` registered in this process; where
    that is not found (another process, or after the block), each call is logged (:func:`log_progress`)."""

    token: str

    def __call__(self, stage: str, item: str, status: str, /, *, total: int | None = None) -> None:
        target = _LIVE.get(self.token, log_progress)
        target(stage, item, status, total=total)


@contextlib.contextmanager
def relayed(progress: Progress) -> Iterator[ProgressRelay]:
    """A :class:`ProgressRelay` for ``progress``, valid for the block: pass it to a call through an executor."""
    token = uuid.uuid4().hex
    with _LOCK:
        _LIVE[token] = progress
    try:
        yield ProgressRelay(token)
    finally:
        with _LOCK:
            _LIVE.pop(token, None)


@contextlib.contextmanager
def relay_argument(progress: Progress | None) -> Iterator[dict[str, Any]]:
    """The keyword arguments that give a call through an executor ``progress``: ``{"progress": relay}``
    (:func:`relayed`), valid for the block; ``{}`` without a display, so that the call logs, and the
    flows' tasks, which take no progress argument, can run it."""
    if progress is None:
        yield {}
        return
    with relayed(progress) as relay:
        yield {"progress": relay}


def tell(progress: Progress | None, stage: str, item: str, status: str, total: int = 1) -> None:
    """``progress(stage, item, status, total=total)`` when there is a display."""
    if progress is not None:
        progress(stage, item, status, total=total)
