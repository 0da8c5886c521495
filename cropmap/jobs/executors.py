"""Where the units of a job (a tile's cube, a tile's prediction, a training) run: one small interface.

The job functions (:mod:`cropmap.jobs.mapping`, :mod:`cropmap.jobs.training`) never fan out by
themselves: they call an :class:`Executor`'s ``submit`` once per unit and collect results as they
finish (``wait_any``). Three implementations give the same results:

- :class:`DaskExecutor`: a ``distributed.Client`` (a LocalCluster for the CLI, or an existing cluster);
- the flows' Prefect executor (``flows/_runner.py``): each job function runs as its Prefect task on the
  flow's ``DaskTaskRunner``;
- :class:`InlineExecutor`: each call at once, in this process (library tests, one tile).

Per-function Dask annotations (``{"resources": {"GPU": 1}}`` for predictions on GPU workers,
:func:`cropmap.jobs.cluster.inference_annotations`) are given to the executor, not to the job.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import distributed

from cropmap.jobs.cluster import dask_target

__all__ = ["Executor", "InlineExecutor", "DaskExecutor", "first_completed", "local_executor", "Outcome", "run_all"]


class Executor(Protocol):
    """Runs job functions; handles are opaque (futures)."""

    #: How many units can run at once (worker threads); jobs keep about this many in flight.
    capacity: int

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Any:
        """Start ``fn(*args, **kwargs)``; returns a handle."""

    def wait_any(self, handles: Collection[Any]) -> list[Any]:
        """Block until at least one of ``handles`` is finished; return the finished ones."""

    def result(self, handle: Any) -> Any:
        """The value of a finished handle, or raise the error the call raised."""


@dataclass(frozen=True, eq=False)  # a handle: hashed by identity, like a future
class _Done:
    value: Any = None
    error: BaseException | None = None


class InlineExecutor:
    """Runs every call at ``submit``, in this process (errors are kept until :meth:`result`)."""

    capacity = 1

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> _Done:
        try:
            return _Done(fn(*args, **kwargs))
        except Exception as err:  # noqa: BLE001 - given back by result(), as a future would
            return _Done(error=err)

    def wait_any(self, handles: Collection[_Done]) -> list[_Done]:
        return list(handles)

    def result(self, handle: _Done) -> Any:
        if handle.error is not None:
            raise handle.error
        return handle.value


class DaskExecutor:
    """Submits to a ``distributed.Client``; ``annotations`` maps a job function to the keywords of its
    ``Client.submit`` (e.g. ``{"resources": {"GPU": 1}}``)."""

    def __init__(self, client: distributed.Client, *, annotations: Mapping[Callable, Mapping[str, Any]] | None = None):
        self.client = client
        self.annotations = dict(annotations or {})

    @property
    def capacity(self) -> int:
        return max(1, sum(self.client.nthreads().values()))

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> distributed.Future:
        key = f"{getattr(fn, '__name__', 'task')}-{uuid.uuid4().hex}"
        return self.client.submit(fn, *args, key=key, pure=False, **self.annotations.get(fn, {}), **kwargs)

    def wait_any(self, handles: Collection[distributed.Future]) -> list[distributed.Future]:
        return first_completed(handles)

    def result(self, handle: distributed.Future) -> Any:
        return handle.result()


def first_completed(futures: Collection[distributed.Future]) -> list[distributed.Future]:
    """Block until one of ``futures`` is done; return every one done by then.

    Waits on the futures' own client, never the process default, and touches no global Dask
    config: ``distributed.wait`` needs a default client, and ``Client.as_current`` sets
    ``scheduler="dask.distributed"`` in the *global* config for as long as it waits, so a task
    computing a Dask array in a worker thread meanwhile fails with "no Client active".
    """
    futures = list(futures)
    first = next(iter(distributed.as_completed(futures, loop=futures[0].client.loop)))
    return [first] + [f for f in futures if f is not first and f.done()]


@contextlib.contextmanager
def local_executor(*, address: str | None = None, n_workers: int = 1, threads: int = 2, processes: bool = False,
                   annotations: Mapping[Callable, Mapping[str, Any]] | None = None) -> Iterator[DaskExecutor]:
    """A :class:`DaskExecutor` on the cluster at ``address`` (else ``$CROPMAP_DASK_ADDRESS``), or on a
    LocalCluster of ``n_workers`` x ``threads`` (threads in this process unless ``processes``), closed
    on exit."""
    target = dask_target(address, n_workers=n_workers, threads_per_worker=threads, processes=processes)
    with target.client() as client:
        yield DaskExecutor(client, annotations=annotations)


@dataclass(frozen=True)
class Outcome:
    """One call of :func:`run_all`: its arguments' index, and its value or error."""

    index: int
    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def run_all(executor: Executor, fn: Callable, calls: list[tuple[tuple, dict]], *, window: int | None = None,
            on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """``fn(*args, **kwargs)`` for every ``(args, kwargs)`` of ``calls``, at most ``window`` (default:
    twice the executor's capacity) in flight; outcomes in the order of ``calls``. A failed call is an
    outcome with its error, not an exception: the others go on."""
    window = window or 2 * executor.capacity
    pending: dict[Any, int] = {}
    outcomes: list[Outcome | None] = [None] * len(calls)
    queue = iter(enumerate(calls))

    def start() -> None:
        for i, (args, kwargs) in queue:
            pending[executor.submit(fn, *args, **kwargs)] = i
            return

    for _ in range(window):
        start()
    while pending:
        for handle in executor.wait_any(list(pending)):
            i = pending.pop(handle)
            try:
                outcome = Outcome(i, executor.result(handle))
            except Exception as err:  # noqa: BLE001 - reported in the outcome
                outcome = Outcome(i, error=err)
            outcomes[i] = outcome
            if on_outcome is not None:
                on_outcome(outcome)
            start()
    return [o for o in outcomes if o is not None]
