"""Shared wiring of the flows: the Dask task runner, and the executor that runs cropmap's job functions as
this flow's Prefect tasks (:mod:`cropmap.flows.tasks`)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

import dask
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture, as_completed
from prefect.tasks import Task
from prefect_dask import DaskTaskRunner

from cropmap.jobs.cluster import dask_target
from cropmap.jobs.executors import first_completed
from cropmap.settings import get_settings
from cropmap.flows import _prefect_engine

__all__ = ["task_runner", "PrefectExecutor"]

# Every process that runs cropmap's tasks imports this module (a Dask worker does, to unpickle them).
if get_settings().prefect_reuse_enabled:
    _prefect_engine.install()


def task_runner(address: str | None = None, *, threads: int = 2) -> DaskTaskRunner:
    """A ``DaskTaskRunner`` on the cluster at ``address`` (else ``$CROPMAP_DASK_ADDRESS``), or a
    LocalCluster of ``threads`` threads in the flow's process, started and stopped with the flow run.

    Threads, not processes, locally: worker processes would each start their own temporary Prefect
    API when no server is configured (fragile on a loaded 2-core machine), and the tile work (GDAL
    reads, NumPy, torch) releases the GIL anyway.
    """
    return DaskTaskRunner(**dask_target(address, n_workers=1, threads_per_worker=threads,
                                        processes=False).task_runner_kwargs())


class PrefectExecutor:
    """A :class:`cropmap.jobs.executors.Executor` whose units are Prefect tasks: ``tasks`` maps each job
    function to the task that runs it, ``annotations`` a job function to its ``dask.annotate`` keywords
    (the DaskTaskRunner submits through ``distributed.Client.submit``, which merges them)."""

    def __init__(self, tasks: Mapping[Callable, Task], annotations: Mapping[Callable, Mapping[str, Any]] | None = None):
        self.tasks = dict(tasks)
        self.annotations = dict(annotations or {})

    @property
    def capacity(self) -> int:
        runner = FlowRunContext.get().task_runner
        if isinstance(runner, DaskTaskRunner):
            return max(1, sum(runner.client.nthreads().values()))
        return 1

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> PrefectFuture:
        if fn not in self.tasks:
            raise KeyError(f"no Prefect task wraps {fn.__module__}.{fn.__qualname__}")
        with dask.annotate(**self.annotations.get(fn, {})):
            return self.tasks[fn].submit(*args, **kwargs)

    def wait_any(self, handles: Collection[PrefectFuture]) -> list[PrefectFuture]:
        wrapped = {getattr(h, "wrapped_future", None): h for h in handles}
        if None not in wrapped:  # Dask futures underneath: ask the scheduler, not the Prefect API
            return [wrapped[f] for f in first_completed(list(wrapped))]
        return [next(as_completed(list(handles)))]

    def result(self, handle: PrefectFuture) -> Any:
        return handle.result()
