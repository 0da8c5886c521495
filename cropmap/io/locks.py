"""One run folder, one run at a time.

Two runs writing one folder (two operators, a cron job and a manual rerun) would replace each
other's published stores while the other reads them. :func:`run_lock` takes an advisory lock
(``fcntl.flock``) on ``<folder>/.cropmap.lock`` for the length of a job; a second run on the folder
fails at once with :class:`~cropmap.errors.RunInUseError` naming the holder (pid, host, start). The
kernel drops the lock when its process dies, SIGKILL included, so a killed run never blocks the
next one. Re-entrant within a process (map-country may train first in the same folder).

Object stores (``s3://``) have no such lock: runs on one bucket prefix are not guarded (docs/scaling.md).
The lock is per host's view of the filesystem: on NFS it is only as good as the server's lock support.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from cropmap.errors import RunInUseError
from cropmap.io import storage

__all__ = ["run_lock", "LOCK_NAME"]

LOCK_NAME = ".cropmap.lock"
_held: dict[str, int] = {}  # lock file -> depth, for this process
_guard = threading.Lock()


@contextlib.contextmanager
def run_lock(folder: storage.Location) -> Iterator[None]:
    """Hold ``folder``'s run lock for the block (nothing for an object store)."""
    if storage.is_remote(folder):
        yield
        return
    path = Path(folder).resolve() / LOCK_NAME
    key = str(path)
    with _guard:
        if key in _held:  # this process holds it already
            _held[key] += 1
            fd = None
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 500, 0).decode(errors="replace").strip()
                os.close(fd)
                raise RunInUseError(f"{folder} is in use by another cropmap run ({holder or 'a live process'}); "
                                    "wait for it to end, or write to another output folder") from None
            os.ftruncate(fd, 0)
            started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode(), 0)
            _held[key] = 1
    try:
        yield
    finally:
        with _guard:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
                if fd is not None:
                    os.close(fd)  # closing the descriptor releases the lock
