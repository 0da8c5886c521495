"""Remote files read as local ones: a cached local copy (:func:`local_copy`, a checkpoint read once per
machine rather than once per tile), a batch copied into a folder (:func:`fetch`), a raster read through
range requests (:func:`open_raster`)."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from cropmap.errors import DataNotFoundError
from cropmap.io.outputs import atomic_path
from cropmap.io.storage import Location, as_location, basename, filesystem, is_remote, uncached_filesystem

__all__ = ["local_copy", "fetch", "open_raster"]


# one download at a time per process: the temporary name of atomic_path is per process, and two
# predict tasks in one worker's threads ask for the same checkpoint at once
_DOWNLOAD_LOCK = threading.Lock()


def _cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "cropmap-cache"


def local_copy(location: Location) -> Path:
    """A local file with the content of ``location``: the path itself when local; for a remote file a
    copy in ``$TMPDIR/cropmap-cache``, keyed by the URL and the object's version (ETag, size, mtime),
    downloaded once per process group and machine (checkpoints are read once per tile otherwise).

    Raises :class:`~cropmap.errors.DataNotFoundError` when there is no file there."""
    location = as_location(location)
    if isinstance(location, Path):
        if not location.is_file():
            raise DataNotFoundError(f"{location} not found")
        return location
    fs, path = uncached_filesystem(location)
    try:
        info = fs.info(path)
    except FileNotFoundError as err:
        raise DataNotFoundError(f"{location} not found") from err
    version = [info.get(k) for k in ("ETag", "etag", "md5Hash", "size", "mtime", "LastModified", "updated")]
    key = hashlib.sha256(repr([location, version]).encode()).hexdigest()[:20]
    copy = _cache_dir() / key / basename(location)
    with _DOWNLOAD_LOCK:
        if not copy.is_file():
            with atomic_path(copy) as tmp:
                fs.get_file(path, str(tmp))
    return copy


def fetch(locations: Sequence[Location], folder: str | Path) -> list[Path]:
    """Copy files (local or remote) into the local ``folder`` under their names; returns the copies in
    order. Remote files of one store are fetched in one concurrent batch."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    targets = [folder / basename(loc) for loc in locations]
    remote = [(loc, t) for loc, t in zip(locations, targets) if is_remote(loc)]
    for loc, target in zip(locations, targets):
        if not is_remote(loc):
            shutil.copy2(as_location(loc), target)
    if remote:
        fs, _ = filesystem(remote[0][0])
        fs.get([filesystem(loc)[1] for loc, _ in remote], [str(t) for _, t in remote])
    return targets


@contextlib.contextmanager
def open_raster(location: Location) -> Iterator["rasterio.io.DatasetReader"]:  # noqa: F821
    """A rasterio dataset opened for reading; a remote file is read through fsspec with range
    requests (rasterio's ``opener``), not downloaded whole."""
    import rasterio

    location = as_location(location)
    if isinstance(location, Path):
        with rasterio.open(location) as ds:
            yield ds
        return
    fs, path = filesystem(location)
    with rasterio.open(path, opener=fs) as ds:  # rasterio >= 1.4 takes an fsspec filesystem
        yield ds
