"""Atomic outputs: "exists" means "complete"; and the one hash that names outputs by their settings.

Every stage that writes a file per tile (cube stores, tile predictions, mosaics) writes it under a
temporary name beside the final one and renames it when it is complete. A run killed half-way leaves
only temporary names, which a rerun ignores and overwrites; a final name is never a partial file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "is_temporary", "TEMP_MARK", "stable_hash"]

#: Marker in every temporary name (``.name.tmp-<pid>``), so that globs for outputs can skip them.
TEMP_MARK = ".tmp-"


def stable_hash(settings: object) -> str:
    """16 hex digits of the sha256 of ``settings`` as sorted-key JSON (non-JSON values as ``str``): the
    key under which run folders, cached checkpoints, cubes and tile predictions are found again."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_temporary(path: str | Path) -> bool:
    """True for a name made by :func:`atomic_path` (a left-over of an interrupted run)."""
    return TEMP_MARK in Path(path).name


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps the suffix (GDAL picks drivers by extension) and starts with a dot so
    that file listings of finished outputs do not show it. On an exception the temporary file or
    directory is removed and ``path`` is left as it was. Works for files and directories (a Zarr
    store); an existing directory at ``path`` is replaced.

    >>> import tempfile; d = Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "a.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> (d / "a.txt").read_text(), sorted(p.name for p in d.iterdir())
    ('done', ['a.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the pid keeps two processes that race on the same tile from writing into one temporary file
    tmp = path.with_name(f".{path.stem}{TEMP_MARK}{os.getpid()}{path.suffix}")
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if not tmp.exists():
        raise FileNotFoundError(f"{tmp}: the block wrote nothing, so {path} was not created")
    if tmp.is_dir() and path.is_dir():
        shutil.rmtree(path)
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
