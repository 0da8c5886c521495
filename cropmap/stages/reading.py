"""Reading one tile's observations from STAC assets: every asset opened once per band, no task graph.

:class:`TileReader` plans a tile from its items (one date per local solar day; items of one day fused,
first valid pixel wins, in the items' order) and reads one band at a time, optionally a strip of rows
at a time, into NumPy: ``(date, y, x)`` float32 surface reflectance (``DN x scale + offset`` of each
item, :func:`cropmap.io.catalogs.asset_scale_offset`; NaN = no data, which a float asset's nodata
value, NaN and ±inf all become) or uint8 SCL (0 = no data).

Each asset is opened on its first read and kept open while its band is read, so a block of a COG is
fetched once per tile and band (GDAL's block cache holds it across strips). A file on the tile's own
grid (same CRS, same pixel size, whole-pixel offset: Sentinel-2 COGs of the tile's UTM zone) is read as
a window; anything else (another zone, another resolution) through GDAL's warper onto the tile grid,
nearest neighbour. Assets that cannot be opened or read, or whose reflectance is implausible
(:func:`cropmap.io.catalogs.reflectance_problem`), are reported per item and asset: a warning and
:attr:`TileReader.dropped`, or :class:`~cropmap.errors.AssetReadError` with ``on_error="fail"``; so is
an item without an asset of a band (``item/B04`` in ``dropped``). A band that no item has at all is a
:class:`~cropmap.errors.MissingBandError`.
"""

from __future__ import annotations

import datetime as dt
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pystac
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from cropmap.core.bands import SCL
from cropmap.core.grid import Tile
from cropmap.errors import AssetReadError, CropmapError, MissingBandError
from cropmap.io.catalogs import asset_href, implausible_band, item_profile, rasterio_env, reflectance_problem
from cropmap.io.stac import asset_scale_offset, band_assets
from cropmap.io.time_limits import check_time_limit

__all__ = ["AssetUnavailableWarning", "NoObservations", "TileReader", "GDAL_ENV", "gdal_env"]

# GDAL must read .aux.xml sidecars (the real Earth Search JPEG2000 assets keep their georeferencing
# there). A transient HTTP error (429, 5xx, and an unreachable host) is retried 4 times, GDAL doubling
# the delay (with jitter) from 1 s: ~15-25 s in all before the asset counts as unavailable and its tile
# as incomplete. The process
# environment overrides these defaults (GDAL_HTTP_RETRY_DELAY=0.1 in a test). The catalog profile adds
# how its buckets are reached (unsigned, or the CDSE S3 endpoint and keys: cropmap.io.catalogs).
GDAL_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "NO", "GDAL_HTTP_TIMEOUT": "10", "GDAL_HTTP_MAX_RETRY": "4",
            "GDAL_HTTP_RETRY_DELAY": "1", "GDAL_HTTP_RETRY_CODES": "429,500,502,503,504"}


def gdal_env() -> dict[str, str]:
    """:data:`GDAL_ENV`, each value overridden by the process environment's where it has one."""
    return {k: os.environ.get(k, v) for k, v in GDAL_ENV.items()}


class AssetUnavailableWarning(UserWarning):
    """An item's asset is missing, unreachable or unreadable; the tile is built without it."""


class NoObservations(CropmapError):
    """No item of the tile has an SCL and a reflectance asset."""

    def __init__(self, reason: str, dropped: list[str]):
        super().__init__(reason)
        self.reason, self.dropped = reason, dropped


@dataclass(frozen=True)
class _Asset:
    item: pystac.Item
    key: str
    band: str
    href: str


def solar_day(item: pystac.Item) -> str:
    """Local solar date: acquisitions of one overpass split over MGRS tiles fall on the same day."""
    lon = (item.bbox[0] + item.bbox[2]) / 2 if item.bbox else 0.0
    when = item.datetime or item.common_metadata.start_datetime
    return (when + dt.timedelta(hours=lon / 15)).date().isoformat()


def _item_time(item: pystac.Item) -> np.datetime64:
    when = item.datetime or item.common_metadata.start_datetime
    return np.datetime64(when.replace(tzinfo=None), "ns")


class TileReader:
    """The observations of ``items`` on ``tile``'s grid, read band by band (see the module docstring).

    ``days`` (solar dates, sorted) and ``times`` (the first acquisition of each day) index the first
    axis of every array :meth:`read` returns; ``bands`` are the reflectance bands asked for.
    """

    def __init__(self, tile: Tile, items: Sequence[pystac.Item], bands: Sequence[str], *,
                 on_error: str = "warn", threads: int = 1):
        self.tile, self.bands, self.on_error, self.threads = tile, tuple(bands), on_error, threads
        self.dropped: list[str] = []
        self._implausible: dict[str, list[str]] = {}
        self._plausible: set[str] = set()
        by_day: dict[str, list[_Asset]] = {}
        self._assets: dict[str, dict[str, list[_Asset]]] = {b: {} for b in (*self.bands, SCL)}
        for item in items:
            keys = band_assets(item, [*self.bands, SCL])
            if SCL not in keys or not any(b in keys for b in self.bands):
                warnings.warn(f"item {item.id} skipped: it has no {SCL} or no asset of {list(self.bands)}",
                              AssetUnavailableWarning, stacklevel=2)
                self.dropped += [f"{item.id}/{k}" for k in keys.values()]
                continue
            for band in (b for b in self.bands if b not in keys):  # recorded: the tile will not be complete
                warnings.warn(f"item {item.id} has no asset of band {band}", AssetUnavailableWarning, stacklevel=2)
                self.dropped.append(f"{item.id}/{band}")
            day = solar_day(item)
            by_day.setdefault(day, [])
            for band, key in keys.items():
                self._assets[band].setdefault(day, []).append(_Asset(item, key, band, asset_href(item, key)))
        if not by_day:
            raise NoObservations("no item has an SCL and a reflectance asset", self.dropped)
        absent = [b for b in self.bands if not self._assets[b]]
        if absent:  # the catalog does not provide it: an all-NaN band would be a silent hole in every tile
            raise MissingBandError(f"band(s) {', '.join(absent)} in none of the tile's {len(items)} items "
                                   f"(asset keys of the first: {sorted(items[0].assets)}); drop them from the "
                                   "cube's bands or use a catalog that has them")
        self.days = sorted(by_day)
        times = {d: min(_item_time(a.item) for b in self._assets.values() for a in b.get(d, [])) for d in self.days}
        self.times = np.array([times[d] for d in self.days], dtype="datetime64[ns]")
        self.items = [a.item for d in self.days for a in self._assets[SCL].get(d, [])]

    # --- reading -------------------------------------------------------------------------------------

    def read(self, band: str, rows: slice = slice(None)) -> np.ndarray:
        """``(date, y, x)`` of ``band`` over the tile's ``rows``: float32 reflectance (NaN = no data), or
        uint8 codes for SCL (0 = no data)."""
        y0, y1, _ = rows.indices(self.tile.shape[0])
        return next(self.strips(band, y1 - y0, start=y0, stop=y1))[1]

    def strips(self, band: str, strip_rows: int, *, start: int = 0, stop: int | None = None):
        """``(rows, array)`` for consecutive strips of ``strip_rows`` rows of ``band`` (as :meth:`read`);
        each asset is opened once for all strips, so GDAL's block cache serves a block that two strips
        share."""
        stop = self.tile.shape[0] if stop is None else stop
        jobs = [(i, a) for i, d in enumerate(self.days) for a in self._assets[band].get(d, [])]
        handles: dict[int, object] = {}
        try:
            with ThreadPoolExecutor(self.threads) as pool:
                for y0 in range(start, stop, strip_rows):
                    check_time_limit()  # here, in the task's thread: the pool's threads do not see its limit
                    y1 = min(y0 + strip_rows, stop)
                    raws = list(pool.map(lambda job: self._read_asset(job, y0, y1, handles), enumerate(jobs)))
                    yield slice(y0, y1), self._fuse(band, jobs, raws, (len(self.days), y1 - y0, self.tile.shape[1]))
        finally:
            for src in handles.values():
                if src is not None:
                    src.close()
        if band != SCL:
            self._check_band(band)

    def _fuse(self, band: str, jobs: list, raws: list, shape: tuple[int, int, int]) -> np.ndarray:
        scl = band == SCL
        out = np.full(shape, 0 if scl else np.nan, dtype=np.uint8 if scl else np.float32)
        filled = np.zeros(shape, dtype=bool)
        scale_offset: dict[int, tuple[float, float]] = {}
        for (i, asset), raw in zip(jobs, raws):
            if raw is None:
                continue
            dn, valid = raw
            take = valid & ~filled[i]  # items of one day: the first valid pixel wins
            if scl:
                out[i][take] = dn[take]
            else:
                # the day's scale/offset: its first item's (Earth Search changed the offset with 04.00)
                scale, offset = scale_offset.setdefault(i, asset_scale_offset(asset.item, asset.key))
                # float64 arithmetic, one rounding to float32: DN 507 -> exactly float32(0.0507)
                out[i][take] = (dn[take].astype(np.float64) * scale + offset).astype(np.float32)
            filled[i] |= take
        return out

    def _read_asset(self, job: tuple, y0: int, y1: int, handles: dict) -> tuple[np.ndarray, np.ndarray] | None:
        n, (_, asset) = job
        env = {**gdal_env(), **item_profile(asset.item).gdal_env()}
        if n in handles and handles[n] is None:  # failed before: reported once
            return None
        try:
            with rasterio_env(env):
                if n not in handles:
                    handles[n] = None
                    if asset.band != SCL:
                        problem = reflectance_problem(asset.item, asset.key, asset.href, env=env)
                        if problem:
                            return self._implausible_asset(asset, problem)
                    src = rasterio.open(asset.href)
                    if src.crs is None:
                        src.close()
                        raise AssetReadError("no georeferencing (CRS missing: is the .aux.xml sidecar readable?)")
                    handles[n] = src
                src = handles[n]
                return self._window(src, y0, y1, _nodata(asset, src))
        except ImplausibleAsset:
            raise
        except CropmapError as err:
            return self._unavailable(asset, str(err), handles, n)
        except Exception as err:  # noqa: BLE001 - GDAL raises many types for one meaning: unusable
            reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            return self._unavailable(asset, reason, handles, n)

    def _window(self, src, y0: int, y1: int, nodata: float) -> tuple[np.ndarray, np.ndarray]:
        tile, (height, width) = self.tile, (y1 - y0, self.tile.shape[1])
        t = tile.transform
        strip = rasterio.transform.Affine(t.a, t.b, t.c, t.d, t.e, t.f + y0 * t.e)
        s = src.transform
        col, row = ~s * (strip.c, strip.f)
        aligned = (src.crs == rasterio.crs.CRS.from_user_input(tile.crs) and (s.a, s.b, s.d, s.e) == (t.a, 0, 0, t.e)
                   and abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6)
        if aligned:
            data = _read_padded(src, Window(round(col), round(row), width, height), nodata)
        else:
            with WarpedVRT(src, crs=tile.crs, transform=strip, width=width, height=height,
                           resampling=Resampling.nearest, src_nodata=nodata, nodata=nodata) as vrt:
                data = vrt.read(1)
        valid = data != nodata
        if np.issubdtype(data.dtype, np.floating):
            # ±inf is no data like NaN: scaled, it would pass as an observation and survive the median
            valid &= np.isfinite(data)
        return data, valid

    def _unavailable(self, asset: _Asset, reason: str, handles: dict, n: int) -> None:
        src = handles.get(n)
        if src is not None:
            src.close()
        handles[n] = None
        msg = f"item {asset.item.id} asset {asset.key!r} ({asset.band}) unavailable: {asset.href}: {reason}"
        if self.on_error == "fail":
            raise AssetReadError(msg + "; set on_asset_error='warn' to build the tile without it")
        warnings.warn(msg, AssetUnavailableWarning, stacklevel=4)
        self.dropped.append(f"{asset.item.id}/{asset.key}")
        return None

    def _implausible_asset(self, asset: _Asset, problem: str) -> None:
        if self.on_error == "fail":
            raise ImplausibleAsset(implausible_band(asset.band, [problem]))
        self._implausible.setdefault(asset.band, []).append(problem)
        warnings.warn(problem + "; the asset is left out", AssetUnavailableWarning, stacklevel=4)
        self.dropped.append(f"{asset.item.id}/{asset.key}")
        return None

    def _check_band(self, band: str) -> None:
        bad = self._implausible.get(band, [])
        n = sum(len(v) for v in self._assets[band].values())
        if bad and len(bad) == n:  # systematic: the catalog's rule is wrong for every item of the band
            raise implausible_band(band, bad)


class ImplausibleAsset(CropmapError):
    """Carries a :class:`~cropmap.errors.ReflectanceRangeError` out of a reading thread."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def _nodata(asset: _Asset, src) -> float:
    if src.nodata is not None:
        return src.nodata
    fields = asset.item.assets[asset.key].extra_fields
    value = (fields.get("raster:bands") or [{}])[0].get("nodata", fields.get("nodata"))
    return 0 if value is None else value


def _read_padded(src, window: Window, fill: float) -> np.ndarray:
    """Band 1 in ``window``, ``fill`` where the window lies outside the file."""
    out = np.full((int(window.height), int(window.width)), fill, dtype=src.dtypes[0])
    inner_c0, inner_r0 = max(int(window.col_off), 0), max(int(window.row_off), 0)
    inner_c1 = min(int(window.col_off + window.width), src.width)
    inner_r1 = min(int(window.row_off + window.height), src.height)
    if inner_c1 > inner_c0 and inner_r1 > inner_r0:
        data = src.read(1, window=Window(inner_c0, inner_r0, inner_c1 - inner_c0, inner_r1 - inner_r0))
        r, c = inner_r0 - int(window.row_off), inner_c0 - int(window.col_off)
        out[r:r + data.shape[0], c:c + data.shape[1]] = data
    return out
