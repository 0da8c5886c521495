"""Per-tile 5-day median cubes: STAC items -> masked observations -> composite -> one Zarr store per tile.

Layout of a tile cube (what :func:`open_tile_cube` returns and the predict stage reads)::

    <out_dir>/<tile id>.zarr            e.g. 32633-10m-1024px_r0473c0054.zarr (exists = complete;
                                        in an object store: the marker <tile id>.zarr.complete exists)
        reflectance  (time, band, y, x) float32, surface reflectance 0..1, NaN = no data
        filled_fraction (y, x) float32  share of (bin, band) values interpolated; 1 = never observed
        time  bin start dates (datetime64[ns]), band  canonical names (B02 ... B12)
        y, x  pixel-centre coordinates in metres of the tile's UTM CRS; spatial_ref (CF grid mapping)
        attrs: tile_id, tile_crs ("EPSG:32633"), tile_transform (6 floats a b c d e f of the
        rasterio Affine), season_* (Season.to_attrs), season_year, bin_edges (ISO dates),
        source_items (ids), unavailable_assets ("item/asset"), bands, invalid_scl, dilate_pixels,
        config_hash (of the above but unavailable_assets), cropmap_version, filled_fraction (tile
        mean), status ("complete" | "empty"), reason (why empty)

Loading uses odc-stac, chosen by measurement against stackstac (bench/cube.py, docs/performance.md):
identical values; on tiled COGs, the format Earth Search serves, odc-stac is as fast or faster
(1.1-7x) and lighter; stackstac wins (1.4-2.7x) only on whole-image JPEG2000 like the test fixtures,
because it keeps each file open per thread while odc-stac reopens it for every chunk.
Memory: observations are chunked (1 date, 1 band, ``chunk`` x ``chunk`` px, one odc-stac load per band); the median rechunks each
band's chunk to all dates at once, so one compositing task holds about ``4 x dates x chunk^2 x 4``
bytes (input, sorted copy, output, interpolation temporaries): 256 px and 120 dates -> ~125 MB per
worker thread, plus the loader's open files. It does not depend on the tile count or the country:
each tile is written chunk by chunk (bench/cube.py measures it); tiles are fanned out by
:mod:`cropmap.jobs.tiles`.
"""

from __future__ import annotations

import datetime as dt
import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import dask
import dask.array as da
import numpy as np
import odc.stac
import pystac
import rasterio
import rioxarray  # noqa: F401 - registers the .rio accessor
import xarray as xr
import zarr
from odc.geo.geobox import GeoBox

from cropmap import __version__
from cropmap.core.bands import S2_BANDS, SCL, canonical_band
from cropmap.core.composite import median_composite
from cropmap.core.grid import Tile
from cropmap.core.masking import DEFAULT_INVALID_SCL, valid_from_scl
from cropmap.core.season import Season
from cropmap.errors import AssetReadError, ConfigError, CropmapError, DataNotFoundError
from cropmap.io import storage
from cropmap.io.catalogs import (asset_href, implausible_band, item_profile, rasterio_env, reflectance_problem,
                                 rio_settings)
from cropmap.io.stac import asset_scale_offset, band_assets
from cropmap.io.storage import stable_hash

__all__ = ["CubeOptions", "CubeResult", "load_observations", "composite_observations", "build_tile_cube",
           "open_tile_cube", "cube_path", "AssetUnavailableWarning"]

# GDAL must read .aux.xml sidecars (the real Earth Search JPEG2000 assets keep their georeferencing
# there); remote probes fail fast instead of retrying for minutes. The catalog profile adds how its
# buckets are reached (unsigned, or the CDSE S3 endpoint and keys: cropmap.io.catalogs).
_GDAL_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "NO", "GDAL_HTTP_TIMEOUT": "10", "GDAL_HTTP_MAX_RETRY": "1"}


class AssetUnavailableWarning(UserWarning):
    """An item's asset is missing, unreachable or unreadable; the tile is built without it."""


@dataclass(frozen=True)
class CubeOptions:
    """How a tile cube is built.

    bands: canonical reflectance bands, in output order. invalid_scl / dilate_pixels: SCL masking
    (:func:`cropmap.core.masking.valid_from_scl`). chunk: spatial Dask chunk (pixels). on_asset_error:
    ``"warn"`` drops an unusable asset with an :class:`AssetUnavailableWarning`, ``"fail"`` raises
    :class:`AssetReadError`. threads: the threads that compute one tile (a local threaded scheduler);
    it changes no value.
    """

    bands: tuple[str, ...] = S2_BANDS
    invalid_scl: tuple[int, ...] = DEFAULT_INVALID_SCL
    dilate_pixels: int = 0
    chunk: int = 256
    on_asset_error: Literal["warn", "fail"] = "warn"
    threads: int = 1

    def __post_init__(self) -> None:
        bad = [b for b in self.bands if canonical_band(b) != b or b == SCL]
        if bad or not self.bands:
            raise ConfigError(f"bands must be canonical reflectance bands like {', '.join(S2_BANDS)}; got {bad or 'none'}")
        if self.chunk < 16 or self.on_asset_error not in ("warn", "fail") or self.dilate_pixels < 0 or self.threads < 1:
            raise ConfigError(f"bad cube options: chunk={self.chunk} (>= 16), on_asset_error="
                              f"{self.on_asset_error!r} ('warn' or 'fail'), dilate_pixels={self.dilate_pixels} (>= 0)")


@dataclass(frozen=True)
class CubeResult:
    """What happened to one tile: ``status`` is "written", "skipped" (already complete) or "empty"."""

    tile_id: str
    path: storage.Location  # a Path, or a URL string for an object store
    status: str
    reason: str = ""
    n_items: int = 0
    unavailable: tuple[str, ...] = field(default_factory=tuple)  # "item/asset" pairs dropped


@functools.lru_cache(maxsize=8192)
def _open_header(href: str, env: tuple[tuple[str, str], ...]) -> None:
    # lru_cache keeps successes only (exceptions are not cached): neighbouring tiles share items,
    # and a transient network failure is probed again on the next tile
    with rasterio_env(dict(env)), rasterio.open(href) as src:
        if src.crs is None:
            raise AssetReadError("no georeferencing (CRS missing: is the .aux.xml sidecar readable?)")


def _probe(href: str, env: dict[str, str]) -> str:
    """"" if ``href`` opens as a georeferenced raster, else the reason."""
    try:
        _open_header(href, tuple(sorted(env.items())))
    except Exception as err:  # noqa: BLE001 - GDAL raises many types for one meaning: unusable
        return str(err).splitlines()[0][:200]
    return ""


def _read_env(item: pystac.Item) -> dict[str, str]:
    return {**_GDAL_ENV, **item_profile(item).gdal_env()}


def _usable_items(items: Sequence[pystac.Item], bands: Sequence[str], on_error: str
                  ) -> tuple[list[pystac.Item], list[str]]:
    """Copies of ``items`` holding only readable assets of ``bands`` + SCL, renamed to canonical keys.

    An asset of implausible reflectance (:func:`cropmap.io.catalogs.reflectance_problem`: raw DNs, a
    wrong scale) is never passed on: dropped with a warning, :class:`ReflectanceRangeError` when
    ``on_error`` is "fail" or when no item of the band is plausible (the catalog's rule is wrong)."""
    kept, dropped = [], []
    implausible: dict[str, list[str]] = {}
    plausible: set[str] = set()
    for item in items:
        keys = band_assets(item, [*bands, SCL])
        clone = item.clone()
        clone.assets = {}
        env = _read_env(item)
        for band, key in keys.items():
            href = asset_href(item, key)
            reason = _probe(href, env)
            if not reason and band != SCL:
                try:
                    problem = reflectance_problem(item, key, href, env=env)
                except rasterio.errors.RasterioError as err:  # the header opened, the pixels do not
                    problem, reason = "", str(err).splitlines()[0][:200]
                if problem and on_error == "fail":
                    raise implausible_band(band, [problem])
                if problem:
                    implausible.setdefault(band, []).append(problem)
                    warnings.warn(problem + "; the asset is left out", AssetUnavailableWarning, stacklevel=3)
                    dropped.append(f"{item.id}/{key}")
                    continue
                plausible.update([band] if not reason else [])
            if reason:
                msg = f"item {item.id} asset {key!r} ({band}) unavailable: {href}: {reason}"
                if on_error == "fail":
                    raise AssetReadError(msg + "; set on_asset_error='warn' to build the tile without it")
                warnings.warn(msg, AssetUnavailableWarning, stacklevel=3)
                dropped.append(f"{item.id}/{key}")
                continue
            copy = item.assets[key].clone()
            copy.href = href
            clone.add_asset(band, copy)
        if SCL in clone.assets and any(b in clone.assets for b in bands):
            kept.append(clone)
        elif clone.assets:
            warnings.warn(f"item {item.id} skipped: it has no usable {SCL} or no usable band of "
                          f"{list(bands)}", AssetUnavailableWarning, stacklevel=3)
    for band in [b for b in implausible if b not in plausible]:  # systematic: the catalog's rule is wrong
        raise implausible_band(band, implausible[band])
    return kept, dropped


def _item_dt(item: pystac.Item) -> np.datetime64:
    when = item.datetime or item.common_metadata.start_datetime
    return np.datetime64(when.replace(tzinfo=None), "ns")


def _solar_day(item: pystac.Item) -> str:
    """Local solar date: acquisitions of one overpass split over MGRS tiles fall on the same day."""
    lon = (item.bbox[0] + item.bbox[2]) / 2 if item.bbox else 0.0
    when = item.datetime or item.common_metadata.start_datetime
    return (when + dt.timedelta(hours=lon / 15)).date().isoformat()


def load_observations(
    tile: Tile,
    items: Sequence[pystac.Item],
    *,
    bands: Sequence[str] = S2_BANDS,
    chunk: int = 256,
    on_asset_error: str = "warn",
) -> tuple[xr.DataArray, xr.DataArray, list[str]]:
    """Lazy observations of ``items`` on ``tile``'s grid, one date per local solar day.

    Returns ``(refl, scl, dropped)``: ``refl`` ``(time, band, y, x)`` float32 surface reflectance
    (DN x scale + offset from each item's ``raster:bands``; nodata -> NaN), ``scl`` ``(time, y, x)``
    uint8 (0 = no data), both Dask arrays chunked ``(1, chunk, chunk)`` in space, nearest-neighbour
    resampled from each file's own georeferencing (not the item's ``proj:`` fields); ``dropped``
    lists the ``item/asset`` pairs that were unavailable. Items of the same solar day are fused
    (first valid pixel). A band no item provides is all NaN. Nothing is read but file headers.
    """
    usable, dropped = _usable_items(items, bands, on_asset_error)
    if not usable:
        raise _NoObservations("no item has a usable SCL and reflectance asset", dropped)
    days = sorted({_solar_day(it) for it in usable})
    for it in usable:
        it.properties["cropmap:solar_day"] = _solar_day(it)
    options, aws = rio_settings(_read_env(usable[0]))  # a tile's items come from one catalog (io.stac.search_items)
    odc.stac.configure_rio(aws=aws, **options)
    geobox = GeoBox(tile.shape, tile.transform, tile.crs)
    by_day = {d: [it for it in usable if it.properties["cropmap:solar_day"] == d] for d in days}
    # one representative time per solar day: the first acquisition of the day
    times = np.array([min(_item_dt(it) for it in by_day[d]) for d in days], dtype="datetime64[ns]")

    def _load(band: str) -> tuple[xr.DataArray, list[str]] | None:
        # one load per band, over the items that have it: odc-stac takes the band list from the
        # first item, so an asset dropped from one item must not hide the band for all others
        having = [it for it in usable if band in it.assets]
        if not having:
            return None
        ds = odc.stac.load(having, bands=[band], geobox=geobox, chunks={"x": chunk, "y": chunk},
                           groupby="cropmap:solar_day", resampling="nearest",
                           fail_on_error=on_asset_error == "fail")
        have_days = sorted({it.properties["cropmap:solar_day"] for it in having})
        if ds.sizes["time"] != len(have_days):
            raise CropmapError(f"tile {tile.id}: odc-stac grouped {ds.sizes['time']} dates of {band}, "
                               f"expected {len(have_days)}")
        pos = [days.index(d) for d in have_days]
        return ds[band].drop_vars("spatial_ref", errors="ignore").assign_coords(time=times[pos]), have_days

    layers = []
    for band in bands:
        loaded = _load(band)
        if loaded is None:
            layers.append(xr.DataArray(da.full((len(days), *tile.shape), np.nan, dtype=np.float32,
                                               chunks=(1, chunk, chunk)), dims=("time", "y", "x")))
            continue
        raw, have_days = loaded
        # scale/offset per date: Earth Search changed the offset with processing baseline 04.00
        so = np.array([next(asset_scale_offset(it, band) for it in by_day[d] if band in it.assets)
                       for d in have_days], dtype=np.float64)
        nodata = raw.attrs.get("nodata", 0)
        scale = xr.DataArray(so[:, 0], dims="time")
        offset = xr.DataArray(so[:, 1], dims="time")
        # float64 arithmetic, one rounding to float32: DN 507 -> exactly float32(0.0507)
        refl = (raw.astype(np.float64) * scale + offset).astype(np.float32).where(raw != nodata)
        layers.append(refl.reindex(time=times))  # dates without this band: NaN
    y, x = geobox.coords["y"].values, geobox.coords["x"].values
    refl = xr.DataArray(da.stack([lay.data for lay in layers], axis=1), dims=("time", "band", "y", "x"),
                        coords={"time": times, "band": list(bands), "y": y, "x": x},
                        name="reflectance", attrs={"units": "surface reflectance (0-1)"})
    scl_raw, _ = _load(SCL)
    scl = scl_raw.reindex(time=times, fill_value=0).assign_coords(y=y, x=x)  # 0 = SCL "no data"
    return refl, scl, dropped


def composite_observations(
    refl: xr.DataArray,
    scl: xr.DataArray,
    season: Season,
    year: int,
    *,
    options: CubeOptions = CubeOptions(),
) -> xr.DataArray:
    """SCL-mask ``refl`` ``(time, band, y, x)`` with ``scl`` ``(time, y, x)`` and composite it.

    The one compositing path of cubes: :func:`cropmap.core.masking.valid_from_scl` with the options' classes
    and dilation, then :func:`cropmap.core.composite.median_composite` (the function pixel samples use).
    Returns ``(time=bins, band, y, x)`` float32, lazy when the inputs are.
    """
    valid = valid_from_scl(scl, invalid=options.invalid_scl, dilate_pixels=options.dilate_pixels)
    return median_composite(refl, season, year, valid=valid)


class _NoObservations(CropmapError):
    def __init__(self, reason: str, dropped: list[str]):
        super().__init__(reason)
        self.reason, self.dropped = reason, dropped


def cube_path(out_dir: storage.Location, tile: Tile) -> storage.Location:
    """``<out_dir>/<tile id>.zarr`` (a local folder or a URL, :mod:`cropmap.io.storage`)."""
    return storage.join(out_dir, f"{tile.id}.zarr")


def build_tile_cube(
    tile: Tile,
    items: Sequence[pystac.Item],
    season: Season,
    year: int,
    out_dir: storage.Location,
    *,
    options: CubeOptions = CubeOptions(),
    overwrite: bool = False,
) -> CubeResult:
    """Build and write ``tile``'s 5-day median cube (layout in the module docstring).

    Compositing is :func:`cropmap.core.composite.median_composite` (the one used for pixel samples), after
    SCL masking. ``out_dir`` is a folder or an fsspec URL (``s3://...``): a local store is written under a
    hidden temporary name and renamed when complete, a remote one is written in place and marked
    complete last (:func:`cropmap.io.storage.output_dir`); a complete store is skipped unless
    ``overwrite``. A tile with no usable observation is written all-NaN with ``status="empty"`` and
    the ``reason``. Computes one tile, chunk by chunk, with the current Dask
    scheduler (a distributed client if one is active).
    """
    target = cube_path(out_dir, tile)
    if storage.is_complete(target) and not overwrite:
        return CubeResult(tile.id, target, "skipped", "already complete")
    ids = [it.id for it in items]
    reason, dropped = "", []
    try:
        refl, scl, dropped = load_observations(tile, items, bands=options.bands, chunk=options.chunk,
                                               on_asset_error=options.on_asset_error)
        cube = composite_observations(refl, scl, season, year, options=options)
    except _NoObservations as err:
        reason, dropped = err.reason if items else "no STAC item found for the tile and season", err.dropped
        cube = _empty_cube(tile, season, year, options)
    cube = cube.assign_coords(y=_centres(tile, "y"), x=_centres(tile, "x"))
    ds = cube.to_dataset(name="reflectance")
    ds = ds.reset_coords("filled_fraction")
    # band names as variable-length strings: Zarr v3 has no stable fixed-width unicode type
    ds = ds.assign_coords(band=ds["band"].values.astype(object))
    ds = ds.rio.write_crs(tile.crs).rio.write_transform(tile.transform)
    # not "crs"/"transform": rioxarray strips attributes of those names as legacy georeferencing
    ds.attrs = {**season.to_attrs(), "season_year": year, "tile_id": tile.id, "tile_crs": tile.crs,
                "tile_transform": list(tile.transform)[:6], "source_items": ids,
                "bin_edges": [str(d) for d in season.bin_edges(year)], "unavailable_assets": dropped,
                "bands": list(options.bands), "invalid_scl": list(options.invalid_scl),
                "dilate_pixels": options.dilate_pixels}
    # what the cube depends on, so that a flow can tell a stale cube from a complete one
    ds.attrs["config_hash"] = stable_hash({k: ds.attrs[k] for k in sorted(ds.attrs) if k != "unavailable_assets"})
    ds.attrs["cropmap_version"] = __version__
    # local: a hidden temporary store renamed when complete; remote: written in place, then marked
    # complete (cropmap.io.storage.output_dir). The tile is computed HERE, by a threaded scheduler of
    # options.threads threads, whatever cluster runs this call: a tile is one task to the cluster, and
    # its thousands of chunk tasks never reach a scheduler (docs/scaling.md)
    with storage.output_dir(target) as tmp, dask.config.set(scheduler="threads", num_workers=options.threads):
        # Zarr chunks = compositing chunks (all bins, 1 band, chunk x chunk): no merge task holds more
        ds.chunk({"time": -1, "band": 1, "y": options.chunk, "x": options.chunk}).to_zarr(
            str(tmp), mode="w", consolidated=False)
        # status needs the computed filled fraction: read back the small (y, x) layer, not the cube
        filled = xr.open_zarr(str(tmp), consolidated=False)["filled_fraction"].values
        if not reason and np.all(filled >= 1.0):
            reason = "every observation is masked (cloud, shadow, snow or no data) over the whole season"
        zarr.open_group(str(tmp), mode="r+").attrs.update(
            {"status": "empty" if reason else "complete", "reason": reason, "filled_fraction": round(float(np.mean(filled, dtype=np.float64)), 6)})
    return CubeResult(tile.id, target, "empty" if reason else "written", reason, len(ids), tuple(dropped))


def _centres(tile: Tile, dim: str) -> np.ndarray:
    xmin, _, _, ymax = tile.bounds
    r, n = tile.grid.resolution, tile.grid.tile_size
    return (xmin + (np.arange(n) + 0.5) * r) if dim == "x" else (ymax - (np.arange(n) + 0.5) * r)


def _empty_cube(tile: Tile, season: Season, year: int, options: CubeOptions) -> xr.DataArray:
    n, c = season.n_bins, options.chunk
    data = da.full((n, len(options.bands), *tile.shape), np.nan, dtype=np.float32, chunks=(n, -1, c, c))
    frac = xr.DataArray(da.ones(tile.shape, dtype=np.float32, chunks=c), dims=("y", "x"))
    return xr.DataArray(data, dims=("time", "band", "y", "x"),
                        coords={"time": season.bin_starts(year), "band": list(options.bands), "filled_fraction": frac},
                        name="reflectance")


def open_tile_cube(path: storage.Location) -> xr.DataArray:
    """A tile cube written by :func:`build_tile_cube` (a folder or a URL): ``(time, band, y, x)``
    float32, lazy (Dask).

    ``.rio.crs`` / ``.rio.transform()`` give the tile's grid; ``.attrs`` the metadata listed in the
    module docstring; coordinate ``filled_fraction`` ``(y, x)``. Use
    ``Season.from_attrs(cube.attrs)`` to check the season against a checkpoint.
    """
    zarr_meta = any(storage.exists(storage.join(path, m)) for m in ("zarr.json", ".zgroup"))
    if not (zarr_meta and storage.is_complete(path)):
        raise DataNotFoundError(f"{path} is not a tile cube (no complete Zarr store there); "
                                "build it with `cropmap cube`")
    ds = xr.open_zarr(str(storage.as_location(path)), consolidated=False)
    cube = ds["reflectance"].assign_coords(filled_fraction=ds["filled_fraction"])
    cube.attrs = dict(ds.attrs)
    return cube.rio.write_crs(ds.attrs["tile_crs"]).rio.write_transform(_affine(ds.attrs["tile_transform"]))


def _affine(values: Sequence[float]):
    from affine import Affine

    return Affine(*values[:6])
