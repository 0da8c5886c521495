"""Shared wiring of the flows: the Dask task runner and where outputs go."""

from __future__ import annotations

import os
from pathlib import Path

from prefect_dask import DaskTaskRunner

from cropmap.cluster import dask_target

__all__ = ["task_runner", "output_root"]


def task_runner(address: str | None = None, *, threads: int = 2) -> DaskTaskRunner:
    """A ``DaskTaskRunner`` on the cluster at ``address`` (else ``$CROPMAP_DASK_ADDRESS``), or a
    LocalCluster of ``threads`` threads in the flow's process, started and stopped with the flow run.

    Threads, not processes, locally: worker processes would each start their own temporary Prefect
    API when no server is configured (fragile on a loaded 2-core machine), and the tile work (GDAL
    reads, NumPy, torch) releases the GIL anyway.
    """
    return DaskTaskRunner(**dask_target(address, n_workers=1, threads_per_worker=threads,
                                        processes=False).task_runner_kwargs())


def output_root(out_dir: str | None = None) -> Path:
    """``out_dir``, else ``$CROPMAP_OUTPUT_DIR``, else ``~/.cache/cropmap/runs``."""
    return Path(out_dir or os.environ.get("CROPMAP_OUTPUT_DIR") or Path.home() / ".cache" / "cropmap" / "runs").expanduser()
