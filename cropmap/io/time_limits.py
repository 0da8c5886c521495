"""Time limits that work where Prefect's cannot: :func:`time_limit` bounds a block of work (a flow's task:
a block's search, a tile's cube) in the calling thread of control, and :func:`check_time_limit`, called
between a search's pages (:mod:`cropmap.io.stac`) and between a tile's strip reads
(:mod:`cropmap.stages.reading`), raises :class:`~cropmap.errors.TimeLimitError` once it has passed.
Prefect's own ``timeout_seconds`` cannot stop a task on the Dask task runner's worker threads."""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from dataclasses import dataclass

from cropmap.errors import TimeLimitError

__all__ = ["time_limit", "check_time_limit", "time_left"]


@dataclass(frozen=True)
class _Limit:
    deadline: float  # time.monotonic()
    seconds: float
    what: str
    setting: str


_LIMIT: contextvars.ContextVar[_Limit | None] = contextvars.ContextVar("cropmap_time_limit", default=None)


@contextlib.contextmanager
def time_limit(seconds: float, *, what: str, setting: str) -> Iterator[None]:
    """Within the block, :func:`check_time_limit` raises once ``seconds`` have passed; ``what`` (``tile
    33TWL_...``) and ``setting`` (the variable that sets the limit) name it in the error. A limit
    inside another ends no later than the outer one. Per thread of control (a context variable): the
    tiles a Dask worker's threads build at once each keep their own."""
    outer = _LIMIT.get()
    limit = _Limit(time.monotonic() + seconds, seconds, what, setting)
    token = _LIMIT.set(limit if outer is None or limit.deadline < outer.deadline else outer)
    try:
        yield
    finally:
        _LIMIT.reset(token)


def time_left() -> float | None:
    """Seconds left of the current :func:`time_limit` (may be negative), or None without one."""
    limit = _LIMIT.get()
    return None if limit is None else limit.deadline - time.monotonic()


def check_time_limit() -> None:
    """Raise :class:`~cropmap.errors.TimeLimitError` when the current :func:`time_limit` has passed."""
    limit = _LIMIT.get()
    if limit is not None and time.monotonic() >= limit.deadline:
        raise TimeLimitError(
            f"{limit.what} ran past its time limit of {limit.seconds:g} s ({limit.setting}): a read hung or "
            f"answered too slowly; the task is retried and a later run starts it again (raise {limit.setting} "
            "if the work is just large)")
