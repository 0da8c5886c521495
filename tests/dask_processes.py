"""A real Dask scheduler and worker processes on 127.0.0.1 for the cluster tests (not a LocalCluster)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

DASK = Path(sys.executable).with_name("dask")


def wait_for(predicate, timeout: float, what: str):
    """Poll ``predicate`` until it returns something truthy (returned), or raise TimeoutError."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def spawn_dask(args: Sequence[str], log: Path) -> subprocess.Popen:
    """``dask <args>`` in its own session (a kill reaches only this process), output to ``log``.

    Started as the image starts its scheduler and workers: the installed package only, no
    ``PYTHONPATH`` and the working directory elsewhere (``log``'s folder), so a task that needs the
    checkout fails here as it would on Kubernetes. Tests whose tasks are test functions ship them by
    value (``cloudpickle.register_pickle_by_value``).
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen([str(DASK), *args], stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True, env=env, cwd=log.parent)


@contextmanager
def dask_cluster_processes(folder: Path, workers: Mapping[str, Sequence[str]], *,
                           timeout: float = 60) -> Iterator[tuple[str, dict[str, subprocess.Popen]]]:
    """A scheduler and one nanny-less worker process per entry of ``workers`` (name -> extra
    ``dask worker`` arguments), logs in ``folder``; yields the address and the worker processes.

    ``--no-nanny``: killing a worker's process kills the worker (a nanny would restart it).
    """
    sched_file = folder / "scheduler.json"
    procs = [spawn_dask(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                         "--scheduler-file", str(sched_file)], folder / "scheduler.log")]
    try:
        wait_for(lambda: sched_file.exists() and sched_file.stat().st_size > 0, timeout, "the scheduler file")
        address = json.loads(sched_file.read_text())["address"]
        started = {name: spawn_dask(["worker", address, "--name", name, "--no-nanny", "--no-dashboard",
                                     "--host", "127.0.0.1", *extra], folder / f"{name}.log")
                   for name, extra in workers.items()}
        procs += started.values()
        yield address, started
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # a graceful close is not what is tested here
                proc.kill()
                proc.wait()


def task_stream(dask_scheduler, name: str = "cropmap-test-stream") -> list[tuple[str, str]]:
    """(task key, worker address) of every task finished since the plugin was added (scheduler side)."""
    from distributed.diagnostics.task_stream import TaskStreamPlugin

    if name not in dask_scheduler.plugins:  # first call: start recording (no length limit to speak of)
        dask_scheduler.add_plugin(TaskStreamPlugin(dask_scheduler, maxlen=1_000_000), name=name)
        return []
    return [(str(r["key"]), r["worker"]) for r in dask_scheduler.plugins[name].buffer]
