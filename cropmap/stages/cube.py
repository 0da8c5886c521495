"""Per-tile 5-day median cubes: STAC items -> masked observations -> composite -> one Zarr store per tile.

Layout of a tile cube (what :func:`open_tile_cube` returns and the predict stage reads)::

    <out_dir>/<tile id>.zarr            e.g. 32633-10m-1024px_r0473c0054.zarr (exists = complete;
                                        in an object store: the marker <tile id>.zarr.complete exists)
        reflectance  (time, band, y, x) surface reflectance 0..1, NaN = no data, stored as int16
                     reflectance x 10,000 (CF scale_factor 1e-4, _FillValue -32768: xarray decodes it;
                     rounding error <= 5e-5) or, with CubeOptions(encoding="float32"), as float32
        filled_fraction (y, x) float32  share of (bin, band) values interpolated; 1 = never observed
        time  bin start dates (datetime64[ns]), band  canonical names (B02 ... B12)
        y, x  pixel-centre coordinates in metres of the tile's UTM CRS; spatial_ref (CF grid mapping) a
        coordinate: plain xr.open_zarr gives .rio.crs and .odc.geobox; CF units / long_name on the
        variables, metadata consolidated (:mod:`cropmap.stages.cube_layout`)
        attrs: tile_id, tile_crs ("EPSG:32633"), tile_transform (6 floats a b c d e f of the
        rasterio Affine), season_* (Season.to_attrs), season_year, bin_edges (ISO dates),
        source_items (ids), source_hrefs (the items' self hrefs, "" where none), unavailable_assets
        ("item/asset"), bands, invalid_scl, dilate_pixels, encoding,
        config_hash (of the above but unavailable_assets), cropmap_version, Conventions ("CF-1.8"),
        filled_fraction (tile mean), status ("complete" | "empty" | "incomplete": an asset could not
        be read | "degraded": too little observed, or a band without a valid value; the next run
        rebuilds the last two and predict refuses them), reason (why empty, incomplete or degraded)

Reading is :class:`cropmap.stages.reading.TileReader`: one band at a time, ``chunk`` rows at a time,
each asset opened once per tile and band, no Dask graph (it replaced 11 odc-stac loads and a header
probe of every asset per tile, which cost ~20 s of a 128 px DEMO tile: docs/performance.md). One
compositing step holds one band's strip of every date, about ``4 x dates x chunk x width x 4`` bytes:
256 rows of a 1024 px tile and 100 dates -> ~400 MB, plus the band's output (bins x tile, ~170 MB)
and the tile's SCL (dates x tile bytes). It depends on the tile, never on the country; tiles are
fanned out by :mod:`cropmap.jobs.tiles`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pystac
import rioxarray  # noqa: F401 - registers the .rio accessor
import xarray as xr
import zarr

from cropmap import __version__
from cropmap.core.bands import S2_BANDS, SCL, canonical_band
from cropmap.core.composite import median_composite
from cropmap.core.grid import Tile
from cropmap.core.masking import DEFAULT_INVALID_SCL, valid_from_scl
from cropmap.core.season import Season
from cropmap.errors import ConfigError, DataNotFoundError
from cropmap.io import outputs, storage
from cropmap.io.storage import stable_hash
from cropmap.stages.cube_encoding import ENCODINGS, int16_store_encoding, stored_reflectance
from cropmap.stages.cube_layout import CONVENTIONS, consolidate, cube_template, open_store, pixel_centres
from cropmap.stages.reading import AssetUnavailableWarning, ImplausibleAsset, NoObservations, TileReader, solar_day

__all__ = ["CubeOptions", "CubeResult", "degraded_reason", "load_observations", "composite_observations", "build_tile_cube",
           "open_tile_cube", "cube_path", "cube_status", "check_chunks", "cube_stores", "is_finished", "incomplete_reason", "FINISHED",
           "AssetUnavailableWarning"]


@dataclass(frozen=True)
class CubeOptions:
    """How a tile cube is built.

    bands: canonical reflectance bands, in output order. invalid_scl / dilate_pixels: SCL masking
    (:func:`cropmap.core.masking.valid_from_scl`). chunk: rows read and composited at once, and the
    store's spatial chunk (pixels). on_asset_error: ``"warn"`` drops an unusable asset with an
    :class:`AssetUnavailableWarning`, ``"fail"`` raises :class:`AssetReadError`. threads: assets read at
    once within a tile; it changes no value. min_observed_fraction: below this tile-mean share of
    observed (not interpolated) values, a tile with observations is ``degraded`` (as is one with a band
    that has no valid value at all): predict refuses it and the next run rebuilds it. 5-day bins are
    often 60-85 % observed over farmland; 0.02 (less than one clear date in a 43-bin season) catches a
    tile that is nodata or cloud nearly throughout. encoding: how ``reflectance`` is stored: ``"int16"``
    (reflectance x 10,000 rounded, :data:`~cropmap.stages.cube_encoding.INT16_ENCODING`; half the bytes of
    float32 to write, store and read) or ``"float32"`` (the composite's values as computed).
    """

    bands: tuple[str, ...] = S2_BANDS
    invalid_scl: tuple[int, ...] = DEFAULT_INVALID_SCL
    dilate_pixels: int = 0
    chunk: int = 256
    on_asset_error: Literal["warn", "fail"] = "warn"
    threads: int = 1
    min_observed_fraction: float = 0.02
    encoding: Literal["int16", "float32"] = "int16"

    def __post_init__(self) -> None:
        bad = [b for b in self.bands if canonical_band(b) != b or b == SCL]
        if bad or not self.bands:
            raise ConfigError(f"bands must be canonical reflectance bands like {', '.join(S2_BANDS)}; got {bad or 'none'}")
        if (self.chunk < 16 or self.on_asset_error not in ("warn", "fail") or self.encoding not in ENCODINGS
                or self.dilate_pixels < 0 or self.threads < 1 or not 0 <= self.min_observed_fraction <= 1):
            raise ConfigError(f"bad cube options: chunk={self.chunk} (>= 16), on_asset_error="
                              f"{self.on_asset_error!r} ('warn' or 'fail'), encoding={self.encoding!r} "
                              f"({' or '.join(map(repr, ENCODINGS))}), dilate_pixels={self.dilate_pixels} (>= 0), "
                              f"min_observed_fraction={self.min_observed_fraction} (0..1)")


@dataclass(frozen=True)
class CubeResult:
    """What happened to one tile: ``status`` is "written", "skipped" (already complete), "empty",
    "incomplete" (``unavailable`` assets left out) or "degraded" (too little observed, or a band with no
    valid value: ``reason``); the next run rebuilds the last two."""

    tile_id: str
    path: storage.Location  # a Path, or a URL string for an object store
    status: str
    reason: str = ""
    n_items: int = 0
    unavailable: tuple[str, ...] = field(default_factory=tuple)  # "item/asset" pairs dropped


def load_observations(
    tile: Tile,
    items: Sequence[pystac.Item],
    *,
    bands: Sequence[str] = S2_BANDS,
    chunk: int = 256,
    on_asset_error: str = "warn",
    threads: int = 1,
) -> tuple[xr.DataArray, xr.DataArray, list[str]]:
    """The observations of ``items`` on ``tile``'s grid, one date per local solar day, read now
    (:class:`cropmap.stages.reading.TileReader`).

    Returns ``(refl, scl, dropped)``: ``refl`` ``(time, band, y, x)`` float32 surface reflectance
    (DN x scale + offset of each item; nodata -> NaN), ``scl`` ``(time, y, x)`` uint8 (0 = no data),
    nearest-neighbour from each file's own georeferencing (not the item's ``proj:`` fields), read in
    strips of ``chunk`` rows; ``dropped`` lists the ``item/asset`` pairs that were unavailable. Items
    of the same solar day are fused (first valid pixel). A band no item provides raises
    :class:`~cropmap.errors.MissingBandError`. The
    whole tile is in memory: :func:`build_tile_cube` reads one band at a time instead.
    """
    reader = _reader(tile, items, bands, on_asset_error, threads)
    layers = [np.concatenate([a for _, a in _strips(reader, band, chunk)], axis=1) for band in bands]
    scl = np.concatenate([a for _, a in _strips(reader, SCL, chunk)], axis=1)
    coords = {"time": reader.times, "y": pixel_centres(tile, "y"), "x": pixel_centres(tile, "x")}
    refl = xr.DataArray(np.stack(layers, axis=1), dims=("time", "band", "y", "x"),
                        coords={**coords, "band": list(bands)}, name="reflectance",
                        attrs={"units": "surface reflectance (0-1)"})
    return refl, xr.DataArray(scl, dims=("time", "y", "x"), coords=coords), reader.dropped


def _reader(tile: Tile, items: Sequence[pystac.Item], bands: Sequence[str], on_error: str, threads: int) -> TileReader:
    return TileReader(tile, items, bands, on_error=on_error, threads=threads)


def _strips(reader: TileReader, band: str, rows: int):
    try:
        yield from reader.strips(band, rows)
    except ImplausibleAsset as err:  # raised in a reading thread: the range error itself
        raise err.error from None


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
    complete last (:func:`cropmap.io.outputs.output_dir`); a complete store is skipped unless
    ``overwrite``. A tile with no usable observation is written all-NaN with ``status="empty"`` and
    the ``reason``. Computes one tile, chunk by chunk, with the current Dask
    scheduler (a distributed client if one is active).
    """
    target = cube_path(out_dir, tile)
    if is_finished(target) and not overwrite:
        return CubeResult(tile.id, target, "skipped", "already complete")
    edges = season.bin_edges(year)
    # only the dates the composite uses are read: margin dates are searched, never opened
    in_season = [it for it in items if edges[0] <= np.datetime64(solar_day(it)) < edges[-1]]
    ids = [it.id for it in in_season]
    reason, dropped, reader = "", [], None
    try:
        reader = _reader(tile, in_season, options.bands, options.on_asset_error, options.threads)
    except NoObservations as err:
        reason = err.reason if in_season else "no STAC item found for the tile and season"
        dropped = err.dropped
    ds = cube_template(tile, season, year, bands=options.bands, chunk=options.chunk)
    ds.attrs = {**season.to_attrs(), "season_year": year, "tile_id": tile.id, "tile_crs": tile.crs,
                "tile_transform": list(tile.transform)[:6], "source_items": ids,
                "source_hrefs": [it.get_self_href() or "" for it in in_season],
                "bin_edges": [str(d) for d in edges], "unavailable_assets": dropped,
                "bands": list(options.bands), "invalid_scl": list(options.invalid_scl),
                "dilate_pixels": options.dilate_pixels, "encoding": options.encoding}
    # local: a hidden temporary store renamed when complete; remote: written in place, then marked
    # complete (cropmap.io.outputs.output_dir). The tile is computed HERE, in this call, band by band
    # and strip by strip, whatever cluster runs it: one task to the cluster (docs/scaling.md)
    # every chunk is written, all-NaN ones too: a chunk missing from the store is then detectable
    with outputs.output_dir(target) as tmp, zarr.config.set({"array.write_empty_chunks": True}):
        chunks = (season.n_bins, 1, options.chunk, options.chunk)
        encoding = {"reflectance": int16_store_encoding(chunks)} if options.encoding == "int16" else {}
        ds.to_zarr(str(tmp), mode="w", consolidated=False, compute=False, encoding=encoding)  # metadata, coordinates
        group = zarr.open_group(str(tmp), mode="r+")
        if reader is not None:
            filled, blank = _composite_bands(reader, group, season, year, options)
            dropped = reader.dropped
        else:
            filled, blank = np.ones(tile.shape, dtype=np.float32), []
            group["reflectance"][:] = stored_reflectance(np.full((1,), np.nan, np.float32), options.encoding)[0]
        group["filled_fraction"][:] = filled
        if not reason and np.all(filled >= 1.0):
            reason = "every observation is masked (cloud, shadow, snow or no data) over the whole season"
        attrs = dict(ds.attrs, unavailable_assets=dropped)
        # what the cube depends on, so that a flow can tell a stale cube from a complete one
        attrs["config_hash"] = stable_hash({k: attrs[k] for k in sorted(attrs) if k != "unavailable_assets"})
        attrs["cropmap_version"] = __version__
        status = "incomplete" if dropped else "empty" if reason else "complete"
        if dropped:  # a hole the next run may fill: never "complete", rebuilt instead of skipped
            reason = incomplete_reason(dropped)
        elif status == "complete" and (why := degraded_reason(filled, blank, options)):
            status, reason = "degraded", why
        group.attrs.update({**attrs, **CONVENTIONS, "status": status, "reason": reason,
                            "filled_fraction": round(float(np.mean(filled, dtype=np.float64)), 6)})
        consolidate(tmp)  # after the last attribute, before the rename (or the marker): one read opens it
        check_chunks(tmp)  # before the rename (or the marker): what is published is whole
    return CubeResult(tile.id, target, "written" if status == "complete" else status, reason, len(ids), tuple(dropped))


def incomplete_reason(dropped: Sequence[str], *, shown: int = 20) -> str:
    """Why a cube is ``incomplete``: the ``item/asset`` pairs left out (the first ``shown``)."""
    more = f" and {len(dropped) - shown} more" if len(dropped) > shown else ""
    return f"{len(dropped)} asset(s) unavailable: {', '.join(dropped[:shown])}{more}"


def degraded_reason(filled: np.ndarray, blank: Sequence[str], options: CubeOptions) -> str:
    """Why a tile with observations is ``degraded`` ("" when it is not): a band without a single valid
    value (every pixel of it would be guessed), or a tile-mean observed share (1 - ``filled``) below
    ``options.min_observed_fraction``."""
    if blank:
        return f"band(s) {', '.join(blank)} hold no valid value in any bin (all nodata or masked)"
    observed = 1.0 - float(np.mean(filled, dtype=np.float64))
    if observed < options.min_observed_fraction:
        return (f"only {observed:.1%} of the tile's values are observed (the rest interpolated), below "
                f"min_observed_fraction {options.min_observed_fraction:.0%}")
    return ""


#: Cube statuses that a rerun keeps (``incomplete`` and ``degraded`` ones are rebuilt).
FINISHED = ("complete", "empty")


def cube_status(path: storage.Location) -> tuple[str, str]:
    """``(status, reason)`` of the complete store at ``path`` (``"complete"``, ``"empty"`` or
    ``"incomplete"``: :func:`build_tile_cube`); ``("missing", "")`` when there is none."""
    if not storage.is_complete(path):
        return "missing", ""
    try:
        attrs = zarr.open_group(str(storage.as_location(path)), mode="r").attrs
    except Exception:  # noqa: BLE001 - zarr raises several types for "no readable group here"
        return "missing", ""
    return str(attrs.get("status", "missing")), str(attrs.get("reason", ""))


def check_chunks(path: storage.Location) -> None:
    """Raise :class:`DataNotFoundError` unless every chunk of the store's ``reflectance`` and
    ``filled_fraction`` is stored (Zarr reads a missing chunk as its fill value, NaN: a silent hole).
    Lists the store's keys; reads no chunk."""
    group = zarr.open_group(str(storage.as_location(path)), mode="r")
    missing = [f"{name}: {group[name].nchunks - group[name].nchunks_initialized} of {group[name].nchunks} chunks"
               for name in ("reflectance", "filled_fraction")
               if group[name].nchunks_initialized < group[name].nchunks]
    if missing:
        raise DataNotFoundError(f"tile cube {path} is damaged ({'; '.join(m + ' missing' for m in missing)}); "
                                "remove it and rebuild it (cropmap cube, or rerun the flow)")


def cube_stores(paths: Sequence[str | Path]) -> list[Path]:
    """The cube stores among local ``paths``: a ``.zarr`` path itself, or the ``*.zarr`` stores in a
    folder (sorted), temporaries of interrupted builds (``.<tile>.tmp-<pid>.zarr``) left out."""
    found: list[Path] = []
    for p in map(Path, paths):
        found += (sorted(q for q in p.glob("*.zarr") if not storage.is_temporary(q))
                  if p.is_dir() and p.suffix != ".zarr" else [p])
    return found


def is_finished(path: storage.Location) -> bool:
    """Whether the cube at ``path`` is complete or empty (a rerun skips it), not missing, incomplete or degraded."""
    return cube_status(path)[0] in FINISHED


def _composite_bands(reader: TileReader, group, season: Season, year: int,
                     options: CubeOptions) -> tuple[np.ndarray, list[str]]:
    """Composite every band into the store, one band and ``options.chunk`` rows at a time; returns the
    filled fraction ``(y, x)`` (bins interpolated over all bands) and the bands with no valid value at all."""
    n_bins, (height, width) = season.n_bins, reader.tile.shape
    scl = np.concatenate([a for _, a in _strips(reader, SCL, options.chunk)], axis=1)
    valid = valid_from_scl(xr.DataArray(scl, dims=("time", "y", "x")), invalid=options.invalid_scl,
                           dilate_pixels=options.dilate_pixels)
    gaps = np.zeros((height, width), dtype=np.int64)
    blank: list[str] = []
    for b, band in enumerate(options.bands):
        out = np.empty((n_bins, height, width), dtype=np.float32)
        for rows, data in _strips(reader, band, options.chunk):
            obs = xr.DataArray(data, dims=("time", "y", "x"), coords={"time": reader.times})
            composite = median_composite(obs, season, year, valid=valid.isel(y=rows))
            out[:, rows] = composite.values
            # a band's filled fraction is its gap count / bins: counted back exactly to sum over bands
            gaps[rows] += np.rint(composite["filled_fraction"].values.astype(np.float64) * n_bins).astype(np.int64)
        group["reflectance"][:, b] = stored_reflectance(out, options.encoding)
        if not np.isfinite(out).any():
            blank.append(band)
    return (gaps / (n_bins * len(options.bands))).astype(np.float32), blank


def open_tile_cube(path: storage.Location, *, stored: bool = False) -> xr.DataArray:
    """A tile cube written by :func:`build_tile_cube` (a folder or a URL): ``(time, band, y, x)``
    float32 reflectance, lazy (Dask).

    ``.rio.crs`` / ``.rio.transform()`` give the tile's grid; ``.attrs`` the metadata listed in the
    module docstring; coordinate ``filled_fraction`` ``(y, x)``. Use
    ``Season.from_attrs(cube.attrs)`` to check the season against a checkpoint. ``stored=True``: the values
    as the store holds them, not decoded (int16 counts of an int16 cube, with its CF ``scale_factor`` and
    ``_FillValue`` in ``.attrs``; a float32 cube's values as they are), lazily indexed without Dask (the
    store's chunk shape in ``.encoding["preferred_chunks"]``): for a reader that takes windows of whole
    chunks and decodes them itself, e.g. on a GPU (:func:`cropmap.stages.inference.infer_cube`).
    """
    zarr_meta = any(storage.exists(storage.join(path, m)) for m in ("zarr.json", ".zgroup"))
    if not (zarr_meta and storage.is_complete(path)):
        raise DataNotFoundError(f"{path} is not a tile cube (no complete Zarr store there); "
                                "build it with `cropmap cube`")
    # as stored: lazily indexed, no Dask (a window's chunks go straight from the store into one array)
    ds = open_store(path, mask_and_scale=not stored, **({"chunks": None} if stored else {}))
    refl = ds["reflectance"]
    if stored:
        scaling = {k: refl.attrs[k] for k in ("scale_factor", "_FillValue") if k in refl.attrs}
    else:  # xarray decodes int16 with a float64 scale_factor to float64: the layout is float32
        refl, scaling = refl.astype(np.float32), {}
    cube = refl.assign_coords(filled_fraction=ds["filled_fraction"])
    cube.attrs = {**ds.attrs, **scaling}
    return cube.rio.write_crs(ds.attrs["tile_crs"]).rio.write_transform(_affine(ds.attrs["tile_transform"]))


def _affine(values: Sequence[float]):
    from affine import Affine

    return Affine(*values[:6])
