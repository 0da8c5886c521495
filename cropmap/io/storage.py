"""Where outputs live: a local folder or an fsspec URL (``s3://``, ``gs://``, ...), one set of helpers for both.

A *location* is either a local path (``str`` or ``Path``; a ``file://`` URL counts as local) or a URL
that fsspec knows (``s3://bucket/prefix``, ``gs://...``, ``az://...``, ``memory://...``). Local locations
take a fast path (pathlib, ``os.replace``) and come back as ``Path``; remote ones stay ``str``. Build
locations with :func:`join`, never with ``Path(location) / name`` (``Path("s3://b/k")`` is ``s3:/b/k``).

Publishing, so that "exists" means "complete" on both kinds of store:

- **one file** (GeoTIFF, COG, JSON, PNG, checkpoint, netCDF): :func:`output_file` yields a local path
  to write. Local target: a temporary name beside it, renamed on success
  (:func:`cropmap.io.storage.atomic_path`). Remote target: a file in a scratch folder, uploaded on success
  with one PUT (an object store shows an object complete or not at all), then deleted.
- **a folder of many objects** (a Zarr store): :func:`output_dir`. Local: a temporary folder, renamed.
  Remote: written in place through fsspec (so any Dask worker can write its chunks), then the marker
  object ``<target>.complete`` (:data:`COMPLETE_SUFFIX`) is written LAST; :func:`is_complete` tests it.
  A killed run leaves no marker, and the rerun clears the partial folder and writes it again. A store
  that stops answering mid-write is one :class:`~cropmap.errors.StorageError` naming the output; its
  partial objects are removed if the store answers again, else they stay unmarked until the rerun.

A process stopped by a signal (``cropmap`` on SIGTERM) removes its own temporaries at once with
:func:`discard_temporaries`, though worker threads may still be writing into them.

Configuration comes from the environment of every process (flow run and Dask workers alike), as for
any fsspec/boto user: for S3 ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` and, for an
S3-compatible store (MinIO, Ceph, moto), ``AWS_ENDPOINT_URL=http://host:port``; fsspec's own variables
(``FSSPEC_S3_ENDPOINT_URL``, ...) work too. Scratch files go to the system temporary folder (``TMPDIR``).

Also here, because every stage names and publishes its outputs the same way: :func:`atomic_path` (the one
temporary-name-then-rename helper; a final name is never a partial file) and :func:`stable_hash` (the key
under which run folders, cached checkpoints, cubes and tile predictions are found again).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Union
from urllib.parse import unquote, urlparse

from cropmap.errors import (CropmapError, DataNotFoundError, InvalidInputError, RunInterruptedError, StorageError,
                            one_line)

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = ["Location", "COMPLETE_SUFFIX", "is_remote", "as_location", "join", "basename", "as_uri",
           "canonical", "filesystem", "exists", "is_complete", "list_files", "read_bytes", "write_text",
           "output_file", "publish", "output_dir", "local_copy", "fetch", "open_raster", "check_writable",
           "atomic_path", "scratch_path", "is_temporary", "remove_dead_temporaries", "discard_temporaries", "TEMP_MARK",
           "stable_hash", "check_raster", "safe_name"]

#: Marker in every temporary name (``.name.tmp-<pid>``), so that globs for outputs can skip them.
TEMP_MARK = ".tmp-"


def stable_hash(settings: object) -> str:
    """16 hex digits of the sha256 of ``settings`` as sorted-key JSON (non-JSON values as ``str``): the
    key under which run folders, cached checkpoints, cubes and tile predictions are found again."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def safe_name(name: object, what: str) -> str:
    """``name`` if it can be one component of an output name (letters, digits, ``_ . -``, not starting
    with a dot, no ``..``, at most 128 characters); else :class:`InvalidInputError` naming ``what``
    (e.g. ``"tile id"``): a name read from an input file must not write outside its folder."""
    text = str(name)
    if not _SAFE_NAME.match(text) or ".." in text:
        raise InvalidInputError(f"{what} {text!r} is not a safe name (letters, digits, '_', '.', '-'; no path)")
    return text


def is_temporary(path: str | Path) -> bool:
    """True for a name made by :func:`atomic_path` (a left-over of an interrupted run)."""
    return TEMP_MARK in Path(path).name


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

    Best effort: a worker thread may recreate a folder (a Zarr chunk's parents) in the instant before the
    process exits; the next run removes it (:func:`remove_dead_temporaries`), and no reader lists it."""
    global _stopping
    with _LIVE_LOCK:
        _stopping = True
        live = sorted(_LIVE)
    found = [tmp for tmp in live if os.path.lexists(tmp)]
    for _ in range(2):  # twice: a writer thread's next chunk recreates the folder it wrote into
        for tmp in live:
            _discard(tmp)
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


#: A local path or an fsspec URL.
Location = Union[str, Path]
#: Suffix of the marker object that :func:`output_dir` writes last beside a remote folder output.
COMPLETE_SUFFIX = ".complete"


def _scheme(location: Location) -> str:
    text = str(location)
    return text.split("://", 1)[0].lower() if "://" in text else ""


def is_remote(location: Location) -> bool:
    """True for a URL with a scheme other than ``file`` (``s3://``, ``gs://``, ``memory://`` ...)."""
    return _scheme(location) not in ("", "file")


def as_location(location: Location) -> Location:
    """The canonical form: a ``Path`` (``~`` expanded, ``file://`` stripped) or a URL without a trailing ``/``."""
    if is_remote(location):
        return str(location).rstrip("/")
    if _scheme(location) == "file":
        return Path(unquote(urlparse(str(location)).path))
    return Path(location).expanduser()


def join(base: Location, *parts: str) -> Location:
    """``base/part/...``: a ``Path`` for a local base, a URL string for a remote one."""
    base = as_location(base)
    if isinstance(base, Path):
        return base.joinpath(*parts)
    return "/".join([base, *(p.strip("/") for p in parts)])


def basename(location: Location) -> str:
    """The last component of the location (file or folder name)."""
    location = as_location(location)
    return location.name if isinstance(location, Path) else location.rsplit("/", 1)[-1]


def as_uri(location: Location) -> str:
    """A URI for links (Markdown artifacts, logs): ``file:///abs/path`` or the URL itself."""
    location = as_location(location)
    return location.resolve().as_uri() if isinstance(location, Path) else location


def canonical(location: Location) -> str:
    """The absolute path (symlinks resolved) or the URL: what provenance records store."""
    location = as_location(location)
    return str(location.resolve()) if isinstance(location, Path) else location


def filesystem(location: Location) -> tuple["AbstractFileSystem", str]:
    """The fsspec filesystem of a remote location and the path inside it (``bucket/key``).

    Raises :class:`StorageError` when no fsspec implementation handles the scheme (e.g. ``gs://``
    without gcsfs installed)."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(str(location))
    except (ImportError, ValueError) as err:
        raise StorageError(f"cannot use storage location {location}: {err}") from err


def _fresh(location: Location) -> tuple["AbstractFileSystem", str]:
    # s3fs & co. cache directory listings per process; Dask workers live long and other processes
    # write the same prefixes, so every question about existence asks the store itself
    fs, path = filesystem(location)
    fs.invalidate_cache(path)
    return fs, path


def exists(location: Location) -> bool:
    """Whether a file or folder exists at the location."""
    location = as_location(location)
    if isinstance(location, Path):
        return location.exists()
    fs, path = _fresh(location)
    return fs.exists(path)


def is_complete(location: Location) -> bool:
    """Whether a folder output of :func:`output_dir` is complete: local, it exists (it was renamed into
    place whole); remote, its completion marker ``<location>.complete`` exists."""
    location = as_location(location)
    if isinstance(location, Path):
        return location.exists()
    return exists(location + COMPLETE_SUFFIX)


def list_files(folder: Location, pattern: str) -> list[Location]:
    """Files directly in ``folder`` whose names match the glob ``pattern``, sorted; temporary names
    left by interrupted runs (:func:`cropmap.io.storage.is_temporary`) are left out."""
    folder = as_location(folder)
    if isinstance(folder, Path):
        return sorted(p for p in folder.glob(pattern) if p.is_file() and not is_temporary(p))
    fs, path = _fresh(folder)
    protocol = _scheme(folder)
    found = sorted(fs.glob(f"{path.rstrip('/')}/{pattern}"))
    return [f"{protocol}://{p}" for p in found if not is_temporary(p.rsplit("/", 1)[-1])]


def read_bytes(location: Location) -> bytes:
    """The whole content of a (small) file."""
    location = as_location(location)
    if isinstance(location, Path):
        return location.read_bytes()
    fs, path = filesystem(location)
    try:
        return fs.cat_file(path)
    except FileNotFoundError as err:
        raise DataNotFoundError(f"{location} not found") from err


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
                           f"answers. {_what_failed(err)}{_endpoint_hint(location)}") from err
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
    fs, path = _fresh(location)
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
                        f"{_endpoint_hint(location)}")


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
    fs, path = _fresh(location)
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


def check_writable(location: Location, *, source: str, timeout_s: float = 60.0) -> Location:
    """Make sure outputs can be written at ``location`` BEFORE any work starts; returns it canonical.

    Local: the folder is created. Remote: a small probe object is written and deleted, within
    ``timeout_s`` (an unreachable endpoint otherwise retries for minutes). Raises
    :class:`~cropmap.errors.StorageError` naming the location, where it came from (``source``, e.g.
    ``"$CROPMAP_OUTPUT_URL"``) and what to check.
    """
    location = as_location(location)
    if isinstance(location, Path):
        try:
            location.mkdir(parents=True, exist_ok=True)
            if not os.access(location, os.W_OK):
                raise PermissionError(f"no write permission on {location}")
        except OSError as err:
            raise StorageError(f"cannot write outputs to {location} (from {source}): {err}") from err
        return location
    fs, path = filesystem(location)
    probe = f"{path}/.cropmap-write-check-{uuid.uuid4().hex}"

    def _probe() -> None:
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)

    # the probe runs in a thread so that a black-holed endpoint cannot hold the flow past timeout_s
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(_probe).result(timeout=timeout_s)
    except concurrent.futures.TimeoutError as err:
        raise StorageError(f"cannot write outputs to {location} (from {source}): no answer within "
                           f"{timeout_s:g} s{_endpoint_hint(location)}") from err
    except Exception as err:  # noqa: BLE001 - whatever the store says, the user needs the location
        raise StorageError(f"cannot write outputs to {location} (from {source}): {type(err).__name__}: "
                           f"{err}{_endpoint_hint(location)}") from err
    finally:
        pool.shutdown(wait=False)
    return location


def _endpoint_hint(location: str) -> str:
    if _scheme(location) not in ("s3", "s3a"):
        return ""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or \
        os.environ.get("FSSPEC_S3_ENDPOINT_URL")
    where = f"endpoint {endpoint}" if endpoint else "AWS's endpoint (AWS_ENDPOINT_URL unset)"
    return (f". Check that the bucket exists, the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
            f"or the pod's role) allow writing, and the {where} is reachable")


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
