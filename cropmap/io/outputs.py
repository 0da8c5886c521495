"""Outputs written whole, so that "exists" means "complete" on a local folder and an object store alike.

- **one file** (GeoTIFF, COG, JSON, PNG, checkpoint, netCDF): :func:`output_file` yields a local path
  to write. Local target: a temporary name beside it, renamed on success (:func:`atomic_path`, the one
  temporary-name-then-rename helper). Remote target: a file in a scratch folder, uploaded on success
  with one PUT (an object store shows an object complete or not at all), then deleted.
- **a folder of many objects** (a Zarr store): :func:`output_dir`. Local: a temporary folder, renamed.
  Remote: written in place through fsspec (so any Dask worker can write its chunks), then the marker
  object ``<target>.complete`` (:data:`cropmap.io.storage.COMPLETE_SUFFIX`) is written LAST;
  :func:`cropmap.io.storage.is_complete` tests it. A killed run leaves no marker, and the rerun clears
  the partial folder and writes it again. A store that stops answering mid-write is one
  :class:`~cropmap.errors.StorageError` naming the output; its partial objects are removed if the store
  answers again, else they stay unmarked until the rerun.
- a raster is read back before it is published (:func:`check_raster`): GDAL reports some write errors
  only as log lines.

A process stopped by a signal (``cropmap`` on SIGTERM) removes its own temporaries at once with
:func:`discard_temporaries`, though worker threads may still be writing into them. Scratch files go to
the system temporary folder (``TMPDIR``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from cropmap.errors import CropmapError, RunInterruptedError, StorageError, one_line
from cropmap.io.storage import (
    COMPLETE_SUFFIX,
    TEMP_MARK,
    Location,
    as_location,
    basename,
    endpoint_hint,
    filesystem,
    uncached_filesystem,
)

__all__ = ["atomic_path", "scratch_path", "output_file", "publish", "output_dir", "write_text", "check_raster",
           "discard_temporaries", "remove_dead_temporaries"]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps the suffix (GDAL picks drivers by extension) and starts with a dot so
    that file listings of finished outputs do not show it. On an exception the temporary file or
    directory is removed and ``path`` is left as it was. Works for files and directories (a Zarr
    store); an existing directory at ``path`` is replaced. Temporaries of ``path`` left by dead
    processes of this host (a killed run) are removed first.

    >>> import tempfile; d = Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "a.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> (d / "a.txt").read_text(), sorted(p.name for p in d.iterdir())
    ('done', ['a.txt'])
    """
    path = Path(path)
    tmp = _fresh_temporary(path)
    try:
        try:
            yield tmp
        except BaseException:
            _discard(tmp)
            raise
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: the block wrote nothing, so {path} was not created")
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)
        _rename_unless_stopping(tmp, path)
    finally:
        _forget(tmp)


@contextlib.contextmanager
def scratch_path(path: str | Path) -> Iterator[Path]:
    """Yield the temporary name :func:`atomic_path` would use for ``path``, for an intermediate step that
    is not an output (a VRT a COG is translated from): removed when the block ends, whatever happens,
    and never renamed onto ``path``."""
    tmp = _fresh_temporary(Path(path))
    try:
        yield tmp
    finally:
        _discard(tmp)
        _forget(tmp)


# This process's temporaries in use (atomic_path / scratch_path names, remote outputs' scratch folders): a
# process stopped by a signal removes them (discard_temporaries) without unwinding its worker threads.
_LIVE: set[Path] = set()


# re-entrant: the signal handler runs in the main thread, which may be inside a rename under this lock
_LIVE_LOCK = threading.RLock()


_stopping = False


def _track(tmp: Path) -> None:
    with _LIVE_LOCK:
        if _stopping:
            raise RunInterruptedError(f"{tmp} not started: this process is stopping; rerun the same command to resume")
        _LIVE.add(tmp)


def _forget(tmp: Path) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(tmp)


def _rename_unless_stopping(tmp: Path, path: Path) -> None:
    # under the lock: discard_temporaries never removes a temporary halfway through its rename, and a
    # writer thread that finishes after it cannot publish what it removed part of
    with _LIVE_LOCK:
        if not _stopping:
            os.replace(tmp, path)
            return
    _discard(tmp)
    raise RunInterruptedError(f"{path} not published: this process is stopping; rerun the same command to resume")


def discard_temporaries() -> list[Path]:
    """Remove this process's temporaries (:func:`atomic_path` and :func:`scratch_path` names, remote outputs'
    scratch folders) and refuse new ones and every later rename: for a process about to exit on a signal
    while worker threads still write (``cropmap`` on SIGTERM). Returns the ones that were there.

    Best effort: a worker thread may recreate a folder (a Zarr chunk's parents) in the instant between the
    last check and the process's exit; the next run removes it (:func:`remove_dead_temporaries`), and no reader lists it."""
    global _stopping
    with _LIVE_LOCK:
        _stopping = True
        live = sorted(_LIVE)
    found = [tmp for tmp in live if os.path.lexists(tmp)]
    # a writer thread's next chunk recreates the folder it wrote into: remove until none has come back
    # for a moment (the caller exits right after), for at most a few seconds
    deadline = time.monotonic() + 3.0
    while True:
        for tmp in live:
            _discard(tmp)
        time.sleep(0.05)
        if not any(os.path.lexists(tmp) for tmp in live) or time.monotonic() > deadline:
            break
    return found


def _fresh_temporary(path: Path) -> Path:
    """``.<stem>.tmp-<pid><suffix>`` beside ``path``, empty, with dead processes' temporaries removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # the pid keeps two processes that race on the same tile from writing into one temporary file
    tmp = path.with_name(f".{path.stem}{TEMP_MARK}{os.getpid()}{path.suffix}")
    _remove(tmp)
    remove_dead_temporaries(path)
    _track(tmp)
    return tmp


def remove_dead_temporaries(path: Path) -> None:
    """Remove ``path``'s temporaries (``.<stem>.tmp-<pid><suffix>``) left by processes of this host that
    are gone (a SIGKILLed run); a live process's, or one with another name, is never touched."""
    for stale in path.parent.glob(f".{path.stem}{TEMP_MARK}*{path.suffix}"):
        pid = stale.name[len(path.stem) + 1 + len(TEMP_MARK):len(stale.name) - len(path.suffix)]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # no such process: its temporary is litter
            with contextlib.suppress(OSError):
                _remove(stale)
        except PermissionError:  # another user's live process
            continue


def _discard(path: Path) -> None:
    """Remove a failed block's temporary, the error that failed it kept: a Zarr store's writer threads may
    still be putting a chunk into it (rmtree: "Directory not empty"), so try again for a second."""
    for _ in range(10):
        with contextlib.suppress(OSError):
            return _remove(path)
        time.sleep(0.1)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def write_text(location: Location, text: str) -> Location:
    """Write ``text`` (UTF-8) to the location atomically (:func:`output_file`); returns the location."""
    with output_file(location) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return as_location(location)


@contextlib.contextmanager
def output_file(location: Location) -> Iterator[Path]:
    """Yield a local path to write one file to; publish it at ``location`` if the block succeeds.

    Local: :func:`~cropmap.io.storage.atomic_path` (temporary name beside the target, then rename).
    Remote: a scratch file with the target's name (GDAL picks drivers by extension), uploaded with one
    PUT and removed. On an exception nothing is published and the temporary file is removed.
    """
    location = as_location(location)
    if isinstance(location, Path):
        with atomic_path(location) as tmp:
            yield tmp
        return
    with tempfile.TemporaryDirectory(prefix="cropmap-out-") as scratch:
        _track(Path(scratch))
        try:
            tmp = Path(scratch) / basename(location)
            yield tmp
            if not tmp.is_file():
                raise FileNotFoundError(f"{tmp}: the block wrote no file, so {location} was not created")
            publish(tmp, location)
        finally:
            _forget(Path(scratch))


def publish(local: str | Path, location: Location) -> Location:
    """Copy the finished local file ``local`` to ``location`` whole (:func:`output_file` semantics:
    rename into place, or one upload); returns the location."""
    location = as_location(location)
    if isinstance(location, Path):
        with atomic_path(location) as tmp:
            shutil.copyfile(local, tmp)
        return location
    fs, path = filesystem(location)
    try:
        fs.put_file(str(local), path)
    except Exception as err:  # noqa: BLE001 - botocore's errors are no OSError: the user needs the location
        raise StorageError(f"could not upload {location}: nothing was published there; rerun once the store "
                           f"answers. {_what_failed(err)}{endpoint_hint(location)}") from err
    fs.invalidate_cache(path)
    return location


@contextlib.contextmanager
def output_dir(location: Location) -> Iterator[Location]:
    """Yield where to write a folder output (a Zarr store); make it complete at ``location`` on success.

    Local: a temporary folder beside the target (a ``Path``), renamed onto it. Remote: the URL itself
    (a ``str``), after removing the completion marker and any partial folder a killed run left; on
    success the marker is written last. On an exception the partial output is removed.
    """
    location = as_location(location)
    if isinstance(location, Path):
        with atomic_path(location) as tmp:
            yield tmp
        return
    fs, path = uncached_filesystem(location)
    marker = path + COMPLETE_SUFFIX
    try:  # the marker goes first: from here until it is written again the store counts as missing
        if fs.exists(marker):
            fs.rm(marker)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except Exception as err:  # noqa: BLE001 - botocore's errors are no OSError
        raise _store_failed(location, err, "clearing the previous one") from err
    try:
        yield location
    except BaseException as err:
        try:  # best effort: without the marker the partial store counts as missing anyway
            with contextlib.suppress(FileNotFoundError):  # the block wrote nothing
                fs.rm(path, recursive=True)
        except Exception:  # noqa: BLE001 - the store failed again: the write failed because of it
            if isinstance(err, Exception) and not isinstance(err, CropmapError):
                raise _store_failed(location, err, "writing it") from err
        raise
    fs.invalidate_cache(path)
    if not fs.exists(path):
        raise FileNotFoundError(f"the block wrote nothing at {location}, so it was not marked complete")
    try:
        fs.pipe_file(marker, b"")
    except Exception as err:  # noqa: BLE001
        raise _store_failed(location, err, "marking it complete") from err


def _what_failed(err: BaseException) -> str:
    return f"{type(err).__name__}: {one_line(err)}" if str(err).strip() else type(err).__name__


def _store_failed(location: str, err: BaseException, step: str) -> StorageError:
    """The one-line error of a folder output whose store failed while ``step``: it has no completion
    marker, so it counts as missing and the next run clears and rebuilds it. What to do comes before the
    store's own words, which name a long URL (a tile's failure keeps the first 300 characters)."""
    return StorageError(f"could not write {location}: the store failed while {step}; it is not marked complete, so "
                        f"the next run rebuilds it: rerun once the store answers. {_what_failed(err)}"
                        f"{endpoint_hint(location)}")


def check_raster(path: str | Path, expected=None, *, what: str | None = None, last_block_only: bool = False) -> None:
    """Read the raster at ``path`` back whole (every band; equal to ``expected`` ``(band, y, x)`` when
    given) before it is published: GDAL reports some write errors (a full disk, a file-size limit while
    it flushes at close, a short file left by a warp) only as log lines, leaving a truncated file.
    ``last_block_only``: read only the block holding the last pixel of band 1 (a national raster, not
    read whole). Raises :class:`StorageError` naming ``what`` (default ``path``)."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    try:
        with rasterio.open(path) as src:
            if last_block_only:
                src.read(1, window=Window(src.width - 1, src.height - 1, 1, 1))
                return
            data = src.read()
    except Exception as err:  # noqa: BLE001 - any failure to read back means the write did not finish
        raise StorageError(f"could not write {what or path} (disk full or quota?): reading it back failed: "
                           f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    if expected is not None and not np.array_equal(data, expected):
        raise StorageError(f"could not write {what or path} (disk full or quota?): it reads back different")
