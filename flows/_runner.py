"""Shared wiring of the flows: the Dask task runner and where outputs go."""

from __future__ import annotations

import os
from pathlib import Path

from prefect_dask import DaskTaskRunner

from cropmap import storage
from cropmap.cluster import dask_target

__all__ = ["task_runner", "output_root", "OUTPUT_URL_ENV", "OUTPUT_DIR_ENV"]

#: Output location as an fsspec URL (``s3://bucket/prefix``; what deploy/ sets) or a folder.
OUTPUT_URL_ENV = "CROPMAP_OUTPUT_URL"
#: Output folder (local path), the older variable; ``CROPMAP_OUTPUT_URL`` wins when both are set.
OUTPUT_DIR_ENV = "CROPMAP_OUTPUT_DIR"


def task_runner(address: str | None = None, *, threads: int = 2) -> DaskTaskRunner:
    """A ``DaskTaskRunner`` on the cluster at ``address`` (else ``$CROPMAP_DASK_ADDRESS``), or a
    LocalCluster of ``threads`` threads in the flow's process, started and stopped with the flow run.

    Threads, not processes, locally: worker processes would each start their own temporary Prefect
    API when no server is configured (fragile on a loaded 2-core machine), and the tile work (GDAL
    reads, NumPy, torch) releases the GIL anyway.
    """
    return DaskTaskRunner(**dask_target(address, n_workers=1, threads_per_worker=threads,
                                        processes=False).task_runner_kwargs())


def output_root(out_dir: str | None = None) -> storage.Location:
    """Where a flow's outputs go, checked writable before any task runs.

    ``out_dir`` (the flow parameter), else ``$CROPMAP_OUTPUT_URL``, else ``$CROPMAP_OUTPUT_DIR``, else
    ``~/.cache/cropmap/runs``; empty strings count as unset. A local folder (returned as a ``Path``) or an
    fsspec URL such as ``s3://bucket/runs`` (returned as a ``str``; credentials and endpoint from the
    environment, see :mod:`cropmap.storage`). A location that cannot be written raises
    :class:`~cropmap.errors.StorageError` naming it and where it came from, here in the flow's process,
    not later inside a Dask task.
    """
    for value, source in ((out_dir, "the out_dir parameter"), (os.environ.get(OUTPUT_URL_ENV), f"${OUTPUT_URL_ENV}"),
                          (os.environ.get(OUTPUT_DIR_ENV), f"${OUTPUT_DIR_ENV}")):
        if value and str(value).strip():
            return storage.check_writable(str(value).strip(), source=source)
    return storage.check_writable(Path.home() / ".cache" / "cropmap" / "runs", source="the default")
