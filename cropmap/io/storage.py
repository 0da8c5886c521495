"""Where outputs live: a local folder or an fsspec URL (``s3://``, ``gs://``, ...), one set of helpers for both.

A *location* is either a local path (``str`` or ``Path``; a ``file://`` URL counts as local) or a URL
that fsspec knows (``s3://bucket/prefix``, ``gs://...``, ``az://...``, ``memory://...``). Local locations
take a fast path (pathlib) and come back as ``Path``; remote ones stay ``str``. Build locations with
:func:`join`, never with ``Path(location) / name`` (``Path("s3://b/k")`` is ``s3:/b/k``).

This module names and inspects locations (:func:`exists`, :func:`is_complete`, :func:`list_files`,
:func:`read_bytes`), checks that a run can write to one before it starts (:func:`check_writable`), and
holds the names every output shares: :func:`stable_hash` (the key under which run folders, cached
checkpoints, cubes and tile predictions are found again), :func:`safe_name`, the temporary mark
(:data:`TEMP_MARK`) and the completion marker (:data:`COMPLETE_SUFFIX`). Writing an output whole is
:mod:`cropmap.io.outputs`; a remote file read as a local one is :mod:`cropmap.io.downloads`.

Configuration comes from the environment of every process (flow run and Dask workers alike), as for
any fsspec/boto user: for S3 ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` and, for an
S3-compatible store (MinIO, Ceph, moto), ``AWS_ENDPOINT_URL=http://host:port``; fsspec's own variables
(``FSSPEC_S3_ENDPOINT_URL``, ...) work too.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Union
from urllib.parse import unquote, urlparse

from cropmap.errors import DataNotFoundError, InvalidInputError, StorageError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = ["Location", "COMPLETE_SUFFIX", "TEMP_MARK", "is_remote", "as_location", "join", "basename", "as_uri",
           "canonical", "filesystem", "uncached_filesystem", "exists", "is_complete", "is_temporary", "list_files",
           "read_bytes", "check_writable", "endpoint_hint", "stable_hash", "safe_name"]


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


def uncached_filesystem(location: Location) -> tuple["AbstractFileSystem", str]:
    """:func:`filesystem`, its listing cache for ``location`` dropped first."""
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
    fs, path = uncached_filesystem(location)
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
    fs, path = uncached_filesystem(folder)
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
                           f"{timeout_s:g} s{endpoint_hint(location)}") from err
    except Exception as err:  # noqa: BLE001 - whatever the store says, the user needs the location
        raise StorageError(f"cannot write outputs to {location} (from {source}): {type(err).__name__}: "
                           f"{err}{endpoint_hint(location)}") from err
    finally:
        pool.shutdown(wait=False)
    return location


def endpoint_hint(location: str) -> str:
    """For an S3 location, what to check (bucket, credentials, endpoint) after a failure; else empty."""
    if _scheme(location) not in ("s3", "s3a"):
        return ""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or \
        os.environ.get("FSSPEC_S3_ENDPOINT_URL")
    where = f"endpoint {endpoint}" if endpoint else "AWS's endpoint (AWS_ENDPOINT_URL unset)"
    return (f". Check that the bucket exists, the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
            f"or the pod's role) allow writing, and the {where} is reachable")
