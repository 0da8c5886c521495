"""One exception tree for cropmap: every error a user can cause derives from :class:`CropmapError`.

Messages say what went wrong *and* what to do about it.
"""

from __future__ import annotations

from pydantic import ValidationError

__all__ = [
    "CropmapError",
    "ConfigError",
    "UnknownCountryError",
    "DataNotFoundError",
    "MissingBandError",
    "IncompatibleInputError",
    "CatalogError",
    "EmptyAOIError",
    "AssetReadError",
    "StorageError",
    "InvalidInputError",
    "MosaicError",
    "DaskClusterError",
    "ScenarioError",
    "CubeBuildError",
    "ReflectanceRangeError",
    "ForbiddenHrefError",
    "RunInUseError",
    "CheckpointError",
    "EmptyMapError",
    "is_transient",
    "one_line",
    "RunInterruptedError",
    "PlanTooLargeError",
    "MalformedItemError",
    "TimeLimitError",
]


class CropmapError(Exception):
    """Base class of every error cropmap raises on purpose."""


class ConfigError(CropmapError, ValueError):
    """A configuration file or value is malformed."""


class UnknownCountryError(ConfigError):
    """A country code that has no config in ``configs/countries``."""


class DataNotFoundError(CropmapError, FileNotFoundError):
    """An input file is missing; the message names its public source."""


class MissingBandError(CropmapError, KeyError):
    """A band the computation needs is absent from the input."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class IncompatibleInputError(CropmapError, ValueError):
    """Inputs that must agree (season, bands, bins, CRS) do not."""


class CatalogError(CropmapError, ConnectionError):
    """A STAC catalog or API could not be reached or read."""


class EmptyAOIError(CropmapError, ValueError):
    """An area of interest intersects no tile."""


class AssetReadError(CropmapError, OSError):
    """An asset (band file) is missing, unreadable or corrupt."""


class StorageError(CropmapError, OSError):
    """The output location (a folder or an fsspec URL such as ``s3://bucket/prefix``) cannot be used."""


class InvalidInputError(CropmapError, ValueError):
    """An input data set is malformed: a wrong shape, a missing array or column, a layout not understood."""


class MosaicError(CropmapError):
    """A mosaic could not be built or failed COG validation."""


class DaskClusterError(CropmapError, ConnectionError):
    """The Dask scheduler named by the config or ``$CROPMAP_DASK_ADDRESS`` cannot be reached."""


class ScenarioError(ConfigError):
    """A scenario named by a country config is unknown or cannot be prepared."""


class CubeBuildError(CropmapError):
    """Tile cubes a job needs could not be built (the message names the tiles and why)."""


class ReflectanceRangeError(InvalidInputError):
    """Scaled reflectance of an item's band is implausible (e.g. raw DNs): the catalog profile's scale or
    offset does not fit the catalog (the message names the item, the band and the profile to choose)."""


class ForbiddenHrefError(InvalidInputError):
    """An item's asset points where this installation does not read from (a scheme, a host or a local
    file outside the catalog's folder): see ``CROPMAP_ASSET_HREF_SCHEMES``."""


class RunInUseError(CropmapError):
    """Another live cropmap run holds the output folder (:func:`cropmap.io.locks.run_lock`)."""


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` may pass on a retry: an I/O-shaped error (network, a remote read or write, a
    timeout: ``OSError`` and its kin, :class:`CatalogError`, :class:`AssetReadError`,
    :class:`StorageError`), never a config, data-shape or compatibility error, a missing input file
    (:class:`DataNotFoundError`) or a build that already reported its failed reads."""
    if isinstance(err, (ValueError, KeyError, TypeError, DataNotFoundError, MosaicError, CubeBuildError)):
        return False
    return isinstance(err, OSError)  # ConnectionError, TimeoutError and rasterio's RasterioIOError among them


def one_line(err: BaseException, *, limit: int = 3) -> str:
    """``err`` as one short line for a message: a pydantic ``ValidationError`` as ``field: problem``
    pairs (the first ``limit``, without pydantic's web links and input dumps), anything else as its
    text with the line breaks folded."""
    if isinstance(err, ValidationError):
        items = err.errors()
        parts = []
        for e in items[:limit]:
            where, msg = ".".join(str(p) for p in e.get("loc", ())), str(e.get("msg", "")).removeprefix("Value error, ")
            parts.append(f"{where}: {msg}" if where else msg)
        more = len(items) - limit
        return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
    return " ".join(str(err).split())


class CheckpointError(ConfigError):
    """A checkpoint is unreadable, or describes a model that cannot make a correct map: normalisation,
    temperature, classes, model options or weights that do not agree or are not usable (the message
    names the field)."""


class EmptyMapError(CropmapError):
    """A map would hold no mapped pixel: every pixel of it is nodata (no finite series, or too many bins
    interpolated); it is not written, and the next run tries it again."""


class PlanTooLargeError(ConfigError):
    """A plan would hold more tiles than can be planned at all (``$CROPMAP_MAX_PLAN_TILES``): refused from
    an estimate, before the tiles are made (the message names the estimate, the limit and how to raise it)."""


class MalformedItemError(InvalidInputError):
    """Every item a STAC search found is malformed (a ``datetime`` that is not a date, a null one without
    ``start_datetime``/``end_datetime``, no geometry): the catalog's items, not the network, are at fault."""


class TimeLimitError(CropmapError, TimeoutError):
    """A flow's search or cube task ran past its time limit (``$CROPMAP_SEARCH_TIMEOUT_S``,
    ``$CROPMAP_CUBE_TIMEOUT_S``), checked between pages and reads: transient, so the task is retried."""


class RunInterruptedError(CropmapError):
    """This process is stopping on a signal (SIGTERM): its temporaries are removed and nothing more is
    published (:func:`cropmap.io.outputs.discard_temporaries`); rerun the same command to resume."""
