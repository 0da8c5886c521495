"""The executors give the same results; a failed call is an outcome, not an exception; the tile pipeline
cubes then predicts every tile, holding at most its window in flight."""

from __future__ import annotations

import threading
import time

import pytest
from distributed import Client, LocalCluster

from cropmap.jobs.executors import DaskExecutor, InlineExecutor, run_all


def _square(x: int) -> int:
    if x == 3:
        raise ValueError("three is refused")
    return x * x


@pytest.fixture(scope="module")
def dask_executor():
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        yield DaskExecutor(client)


@pytest.mark.parametrize("kind", ["inline", "dask"])
def test_run_all_keeps_order_and_reports_failures(kind, dask_executor):
    executor = InlineExecutor() if kind == "inline" else dask_executor
    seen = []
    outcomes = run_all(executor, _square, [((i,), {}) for i in range(6)], window=2, on_outcome=seen.append)
    assert [o.index for o in outcomes] == list(range(6)) and len(seen) == 6
    assert [o.value for o in outcomes if o.ok] == [0, 1, 4, 16, 25]
    (bad,) = [o for o in outcomes if not o.ok]
    assert bad.index == 3 and isinstance(bad.error, ValueError) and "three" in str(bad.error)


_LOCK, _STATE = threading.Lock(), {"now": 0, "most": 0}


def _slow(_: int) -> None:  # module level: Dask pickles what it runs, in-process workers too
    with _LOCK:
        _STATE["now"] += 1
        _STATE["most"] = max(_STATE["most"], _STATE["now"])
    time.sleep(0.05)
    with _LOCK:
        _STATE["now"] -= 1


@pytest.mark.parametrize("window", [1, 2])
def test_run_all_holds_at_most_its_window_in_flight(dask_executor, window):
    _STATE.update(now=0, most=0)
    run_all(dask_executor, _slow, [((i,), {}) for i in range(8)], window=window)
    assert _STATE["most"] == window  # two worker threads: a window of 2 does run two at once
    assert dask_executor.capacity == 2


def _scheduler_seen_while_waited_on() -> str | None:
    time.sleep(0.5)  # the caller is inside first_completed by now
    import dask

    return dask.config.get("scheduler", None)


def test_waiting_uses_the_futures_client_and_leaves_the_global_dask_config_alone():
    """A flow's Dask client is not the process default (prefect-dask sets ``set_as_default=False``);
    waiting on its futures must work without one and must not set ``scheduler`` in the global Dask
    config, which a task computing a Dask array in a worker thread would then obey."""
    import dask

    from cropmap.jobs.executors import first_completed

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client, dask.config.set(scheduler="threads"):
        slow = client.submit(_scheduler_seen_while_waited_on, pure=False)
        later = client.submit(time.sleep, 5, pure=False)
        done = first_completed([slow, later])
        assert done == [slow] and slow.result() == "threads"  # as set above, whatever an earlier client set
        later.cancel()
