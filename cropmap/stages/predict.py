"""Checkpoint + one tile cube -> the tile's class, confidence (and probability) GeoTIFFs.

Two layers (many tiles are fanned out by :mod:`cropmap.jobs.tiles`, which checks every cube against
the checkpoint first):

- :func:`predict_cube`: one composite cube in memory -> an :class:`xarray.Dataset` of maps (no I/O);
- :func:`predict_tile`: one tile cube (a folder or an fsspec URL) -> GeoTIFFs named by tile id,
  published whole (:func:`cropmap.io.storage.output_file`: temporary name then rename locally, scratch file
  then one PUT in an object store); a finished tile (same checkpoint and options) is skipped;

Features are built exactly as in training: the cube is the output of
:func:`cropmap.core.composite.median_composite`, :func:`cropmap.core.features.compute_features` turns it into
the checkpoint's feature kind, :meth:`Checkpoint.predict_proba` normalises and classifies.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import matplotlib
import numpy as np
import rasterio
import rioxarray  # noqa: F401 - registers the .rio accessor (CRS and transform of the cube)
import torch
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field

from cropmap import __version__
from cropmap.core.features import compute_features
from cropmap.core.season import Season
from cropmap.errors import DataNotFoundError, EmptyMapError, IncompatibleInputError, StorageError
from cropmap.io import storage
from cropmap.io.storage import stable_hash
from cropmap.ml.checkpoint import Checkpoint, card_path, load_checkpoint
from cropmap.stages.cube import FINISHED, check_chunks, cube_status, open_tile_cube

__all__ = [
    "NODATA",
    "PRODUCTS",
    "PredictOptions",
    "TileResult",
    "open_cube",
    "check_cube",
    "predict_cube",
    "predict_tile",
    "load_model",
    "tile_path",
    "run_key",
    "write_run_file",
    "RUN_FILE",
]

#: Nodata value of every uint8 product (class, confidence, probability).
NODATA = 255
#: Products written per tile; ``probability`` only with ``PredictOptions.probabilities``.
PRODUCTS = ("class", "confidence", "probability")
# Dataset variable of each product ("class" is the dim of the probabilities)
_VARIABLE = {"class": "label", "confidence": "confidence", "probability": "probability", "ood": "ood"}
#: File with the run's provenance (checkpoint, model card, options), written beside the tiles.
RUN_FILE = "run.json"


class PredictOptions(BaseModel):
    """Options of a prediction run (the ``predict`` section of a config)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Pixels whose fraction of interpolated (unobserved) bins exceeds this are nodata.
    max_filled_fraction: float = Field(0.8, ge=0.0, le=1.0)
    #: Pixels per forward pass; None: as many as fit in ``memory_budget_mb``
    #: (:meth:`~cropmap.ml.checkpoint.Checkpoint.batch_size_for`).
    batch_size: int | None = Field(None, ge=1)
    #: Memory (MiB, GPU memory on CUDA) one forward pass may take: sets the batch when ``batch_size`` is
    #: None. The paper's CropNet on 10 bands x 43 bins peaks at 225 kB a pixel, so 1,024 MiB gives batches
    #: of 2,383 pixels.
    memory_budget_mb: int = Field(1024, ge=1)
    #: Pixels loaded and featurised at once (whole rows of the tile): bounds memory per tile task,
    #: about ``block_pixels x bins x bands x 4 bytes x 3`` (65536 px, 73 bins, 10 bands: ~0.6 GB).
    block_pixels: int = Field(65536, ge=1)
    #: Also write per-class probabilities (uint8 percent, one band per class).
    probabilities: bool = False
    #: ``"cuda"``, ``"cpu"`` or None (CUDA when available).
    device: Literal["cuda", "cpu"] | None = None
    #: Arithmetic of the forward pass: ``"auto"`` is bf16 autocast on CUDA and fp32 on the CPU;
    #: ``"bf16"`` on a CPU with AVX512-BF16/AMX is about 2x faster (bench/predict.py,
    #: docs/performance.md) but may flip near-tie pixels.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    #: Also write the out-of-distribution score (``ood`` product, :meth:`Checkpoint.ood_score`): uint8,
    #: the Mahalanobis distance of the pixel's penultimate features (:mod:`cropmap.ml.ood`) to the nearest
    #: training class, in percent of the training threshold (the 99th percentile of the validation
    #: split's distances); > 100 = out of distribution, 254 = 254 % or more.
    #: None (the default): written when the checkpoint holds training-distribution statistics.
    ood: bool | None = None

    def for_checkpoint(self, checkpoint: Checkpoint) -> PredictOptions:
        """These options with ``ood`` decided for ``checkpoint`` (None -> whether it holds statistics)."""
        return self if self.ood is not None else self.model_copy(update={"ood": checkpoint.ood is not None})

    def output_key(self) -> dict:
        """The options that change the written pixels (the device and batch size do not)."""
        return {"max_filled_fraction": self.max_filled_fraction, "probabilities": self.probabilities,
                "precision": self.precision, **({"ood": True} if self.ood else {})}


@dataclass(frozen=True)
class TileResult:
    """What :func:`predict_tile` did: ``status`` is ``"done"`` (computed now) or ``"skipped"``."""

    tile_id: str
    status: Literal["done", "skipped"]
    paths: dict[str, storage.Location]


def tile_path(out_dir: storage.Location, tile_id: str, product: str) -> storage.Location:
    """``<out_dir>/<tile_id>.<product>.tif`` (a ``Path``, or a URL for an object store)."""
    return storage.join(out_dir, f"{tile_id}.{product}.tif")


def open_cube(path: storage.Location) -> xr.DataArray:
    """A tile cube store (folder or URL) as a lazy ``(time, band, y, x)`` DataArray:
    :func:`cropmap.stages.cube.open_tile_cube` (the layout is documented in :mod:`cropmap.stages.cube`), with a clear
    error when the store is missing, lacks a chunk (:func:`~cropmap.stages.cube.check_chunks`) or its
    status is not complete or empty (an ``incomplete`` cube, built without some asset, is refused)."""
    status, reason = cube_status(path)
    if status == "missing":
        raise DataNotFoundError(f"tile cube {path} not found; build it first (cropmap cube ...)")
    if status not in FINISHED:
        raise DataNotFoundError(f"tile cube {path} is {status} ({reason}); rebuild it (cropmap cube, or rerun "
                                "the flow) before predicting")
    check_chunks(path)
    return open_tile_cube(path)


def check_cube(checkpoint, cube: xr.DataArray, *, what: str) -> int:
    """Raise :class:`IncompatibleInputError` unless the cube's bands, season and bins fit the model; the
    cube's season may be the model's or its six-month offset in the other hemisphere, in any year.
    Returns that offset in months (0 or 6).

    Reads only metadata (dims, coords, attrs): nothing is computed.
    """
    missing = {"time", "band", "y", "x"} - set(cube.dims)
    if missing:
        raise IncompatibleInputError(f"{what}: cube lacks dim(s) {sorted(missing)}; expected (time, band, y, x)")
    if "filled_fraction" not in cube.coords:
        raise IncompatibleInputError(f"{what}: cube lacks the filled_fraction coordinate of median_composite")
    if not any(k.startswith("season_") for k in cube.attrs):
        raise IncompatibleInputError(f"{what}: cube has no season attributes (Season.to_attrs)")
    return checkpoint.check_compatible(
        bands=[str(b) for b in cube["band"].values],
        season=Season.from_attrs(cube.attrs),
        n_bins=cube.sizes["time"],
        what=what,
    )


def _model_input(checkpoint, cube: xr.DataArray) -> np.ndarray:
    """``(y * x, band, time)`` float32 features of the cube, as training builds them."""
    feats = compute_features(cube, checkpoint.feature_kind)
    if "feature" in feats.dims and checkpoint.feature_kind == "1d":
        # the 1D vector is the band x time matrix flattened band-major: the nets take the matrix
        matrix = feats.transpose("y", "x", "feature").values
        return matrix.reshape(-1, len(checkpoint.bands), checkpoint.n_bins)
    if not {"band", "time"} <= set(feats.dims):
        raise IncompatibleInputError(
            f"checkpoint feature kind {checkpoint.feature_kind!r}: predict needs band x time features"
        )
    values = feats.transpose("y", "x", "band", "time").values
    return values.reshape(-1, *values.shape[2:]).astype(np.float32, copy=False)


def _device(options: PredictOptions) -> str:
    if options.device == "cuda" and not torch.cuda.is_available():
        raise IncompatibleInputError("device 'cuda' requested but torch sees no CUDA GPU; use device='cpu'")
    return options.device or ("cuda" if torch.cuda.is_available() else "cpu")


def predict_cube(checkpoint, cube: xr.DataArray, *, options: PredictOptions = PredictOptions()) -> xr.Dataset:
    """Classify every pixel of one composite cube.

    ``cube``: ``(time, band, y, x)`` float32 reflectance 0..1 from
    :func:`~cropmap.core.composite.median_composite` (NumPy or Dask; loaded ``options.block_pixels`` at a time),
    with its ``filled_fraction`` ``(y, x)`` coordinate and season attrs. Returns a Dataset on the
    cube's ``y``/``x`` coords:

    - ``label`` ``(y, x)`` uint8 (the ``class`` product): index into ``checkpoint.class_names``, 255 = nodata;
    - ``confidence`` ``(y, x)`` uint8: the winning softmax probability in percent (0-100), 255 = nodata;
    - ``probability`` ``(class, y, x)`` uint8 percent, only with ``options.probabilities``;
    - ``ood`` ``(y, x)`` uint8: distance of the penultimate features from the training classes in percent
      of the training threshold (> 100 = out of distribution, capped at 254), from the same forward pass,
      with ``options.ood`` (by default whenever the checkpoint holds training-distribution statistics).

    Nodata: pixels whose ``filled_fraction`` exceeds ``options.max_filled_fraction`` or whose series
    holds a NaN or ±inf. On CUDA the forward pass runs under bf16 autocast (``options.precision``).
    """
    check_cube(checkpoint, cube, what=f"tile {cube.attrs.get('tile_id', '?')}")
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    device = _device(options)
    bf16 = options.precision == "bf16" or (options.precision == "auto" and device == "cuda")
    proba = np.full((ny * nx, len(checkpoint.class_names)), np.nan, dtype=np.float32)
    options = options.for_checkpoint(checkpoint)
    ood = np.full(ny * nx, np.nan, dtype=np.float32) if options.ood else None
    # blocks of whole rows: a 1024 px tile's cube is 3 GB (73 bins x 10 bands float32), a block ~200 MB
    step = max(1, options.block_pixels // nx)
    # the cube is read here, in this call, whatever cluster runs it: a tile is one task (torch uses the
    # cores for the forward pass). The scheduler is passed to each load, never set in dask.config: that
    # config is global, and another thread's set/restore (Client.as_current) would leak into this one
    filled = _load(cube["filled_fraction"]).values.reshape(-1)
    # oneDNN's bf16 convolutions are fastest on channels_last weights: 3.5x eager fp32 against 2.3x
    # for bf16 alone (bench/predict.py, docs/performance.md); the fp32 path keeps the model as it is
    _predict_blocks(checkpoint, cube, proba, filled, step=step, options=options, device=device, bf16=bf16,
                    channels_last=bf16 and device == "cpu", ood=ood)

    ok = ~np.isnan(proba).any(axis=1)
    cls = np.where(ok, np.argmax(np.nan_to_num(proba, nan=-1.0), axis=1), NODATA).astype(np.uint8)
    conf = np.where(ok, np.rint(np.nanmax(np.where(ok[:, None], proba, 0), axis=1) * 100), NODATA)
    coords = {"y": cube["y"], "x": cube["x"]}
    out = xr.Dataset(
        {
            "label": (("y", "x"), cls.reshape(ny, nx)),
            "confidence": (("y", "x"), conf.astype(np.uint8).reshape(ny, nx)),
        },
        coords=coords,
    )
    if options.probabilities:
        pct = np.where(ok[:, None], np.rint(np.nan_to_num(proba) * 100), NODATA).astype(np.uint8)
        out["probability"] = (("class", "y", "x"), pct.T.reshape(-1, ny, nx))
        out = out.assign_coords({"class": list(checkpoint.class_names)})
    if ood is not None:
        pct = np.where(ok & np.isfinite(ood), np.minimum(np.rint(np.nan_to_num(ood) * 100), 254), NODATA)
        out["ood"] = (("y", "x"), pct.astype(np.uint8).reshape(ny, nx))
    out.attrs = {"tile_id": cube.attrs.get("tile_id", ""), "nodata": NODATA}
    return out


def _load(array: xr.DataArray) -> xr.DataArray:
    """``array`` in memory, read in the calling thread (Dask's synchronous scheduler, given per call)."""
    return array.load(scheduler="synchronous") if array.chunks else array


def _predict_blocks(checkpoint, cube: xr.DataArray, proba: np.ndarray, filled: np.ndarray, *, step: int,
                    options: PredictOptions, device: str, bf16: bool, channels_last: bool,
                    ood: np.ndarray | None = None) -> None:
    """Fill ``proba`` ``(y * x, class)`` (and ``ood`` ``(y * x,)`` if given) block of ``step`` rows by
    block; unusable pixels stay NaN."""
    nx = cube.sizes["x"]
    batch_size = options.batch_size or checkpoint.batch_size_for(options.memory_budget_mb * 2**20)
    for y0 in range(0, cube.sizes["y"], step):
        block = cube.isel(y=slice(y0, y0 + step))
        x = _model_input(checkpoint, _load(block))
        first = y0 * nx
        # ±inf is no data like NaN (the features make it NaN; a cube written elsewhere may still hold it)
        usable = (filled[first:first + len(x)] <= options.max_filled_fraction) & np.isfinite(x).all(axis=(1, 2))
        rows = np.flatnonzero(usable)
        if rows.size:
            with torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                logits, score = checkpoint.infer(x[rows], ood=ood is not None, batch_size=batch_size,
                                                 device=device, channels_last=channels_last)
            proba[first + rows] = checkpoint.probabilities(logits)
            if ood is not None:
                ood[first + rows] = score


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def run_key(checkpoint_path: storage.Location, options: PredictOptions) -> str:
    """Hash of the checkpoint's bytes and the output options (``ood`` decided for the checkpoint): a tile
    written under another key is redone."""
    options = options.for_checkpoint(load_model(checkpoint_path))
    local = storage.local_copy(checkpoint_path).resolve()
    st = local.stat()
    return stable_hash({"checkpoint": _file_sha256(str(local), st.st_size, st.st_mtime_ns),
                        "options": options.output_key()})


@functools.lru_cache(maxsize=2)
def _cached_checkpoint(path: str, mtime_ns: int):
    # one load per worker process and checkpoint version, not one per tile
    return load_checkpoint(path)


def load_model(path: storage.Location) -> Checkpoint:
    """The checkpoint at ``path`` (a file or URL), loaded once per process and version of the file."""
    try:  # a checkpoint in an object store is downloaded once per machine and version
        local = storage.local_copy(path).resolve()
    except DataNotFoundError as err:
        raise DataNotFoundError(f"checkpoint {storage.canonical(path)} not found") from err
    return _cached_checkpoint(str(local), local.stat().st_mtime_ns)


def _products(options: PredictOptions) -> tuple[str, ...]:
    return (PRODUCTS if options.probabilities else PRODUCTS[:2]) + (("ood",) if options.ood else ())


def _is_finished(out_dir: storage.Location, tile_id: str, options: PredictOptions, key: str) -> bool:
    paths = [tile_path(out_dir, tile_id, p) for p in _products(options)]
    if not all(storage.exists(p) for p in paths):
        return False
    with storage.open_raster(paths[0]) as src:  # the class map is written last: it carries the key
        return src.tags().get("cropmap_run_key") == key


def predict_tile(
    checkpoint_path: storage.Location,
    cube_path: storage.Location,
    out_dir: storage.Location,
    *,
    options: PredictOptions = PredictOptions(),
    force: bool = False,
) -> TileResult:
    """Predict one tile cube and write ``<tile_id>.{class,confidence[,probability]}.tif`` in ``out_dir``.

    Each of the three locations is a local path or an fsspec URL (:mod:`cropmap.io.storage`).

    GeoTIFFs on the cube's grid (CRS and transform from the cube), uint8, nodata 255, DEFLATE.
    The class map carries a colour table and the class names (band tags ``class_names`` as JSON and
    ``class_<i>``) and is written last, so its presence with this run's key means the tile is
    complete; such a tile is skipped unless ``force``. A map whose every pixel would be nodata (an empty
    cube, too few observed bins) is not written: :class:`~cropmap.errors.EmptyMapError` says why, and
    the next run tries the tile again.
    """
    out_dir = storage.as_location(out_dir)
    cube = open_cube(cube_path)
    tile_id = storage.safe_name(cube.attrs.get("tile_id", ""), "tile id")  # it names the outputs
    options = options.for_checkpoint(load_model(checkpoint_path))
    key = run_key(checkpoint_path, options)
    paths = {p: tile_path(out_dir, tile_id, p) for p in _products(options)}
    if not force and _is_finished(out_dir, tile_id, options, key):
        return TileResult(tile_id, "skipped", paths)
    checkpoint = load_model(checkpoint_path)
    offset = check_cube(checkpoint, cube, what=f"tile {tile_id}")
    maps = predict_cube(checkpoint, cube, options=options)
    if not (maps["label"].values != NODATA).any():  # never a "done" tile without a mapped pixel
        raise EmptyMapError(_empty_map_reason(tile_id, cube, options))
    crs, transform = cube.rio.crs, cube.rio.transform(recalc=True)
    if crs is None:
        raise IncompatibleInputError(f"tile {tile_id}: the cube has no CRS; write it with rioxarray")
    source_items = cube.attrs.get("source_items", cube.attrs.get("source_item_ids", []))
    source_items = [source_items] if isinstance(source_items, str) else [str(s) for s in source_items]
    tags = {
        "tile_id": tile_id,
        "cropmap_run_key": key,
        "model_name": checkpoint.model_name,
        "class_names": json.dumps(list(checkpoint.class_names)),
        # what the map depicts (the cube's season), the model's, and the months between them
        "season": json.dumps(Season.from_attrs(cube.attrs).model_dump()),
        "season_year": str(cube.attrs.get("season_year", "")),
        "model_season": json.dumps(checkpoint.season.model_dump()),
        "model_season_year": "" if checkpoint.year is None else str(checkpoint.year),  # training year ("": none)
        "season_offset_months": str(offset),
        "source_items": json.dumps(source_items),
    }
    hrefs = cube.attrs.get("source_hrefs", [])
    hrefs = [hrefs] if isinstance(hrefs, str) else [str(h) for h in hrefs]
    if any(hrefs):  # the scenes' STAC items, for the map item's derived_from links
        tags["source_hrefs"] = json.dumps(sorted({h for h in hrefs if h}))
    for product in [p for p in paths if p != "class"] + ["class"]:
        data = maps[_VARIABLE[product]].values
        _write_geotiff(paths[product], data if data.ndim == 3 else data[None], crs=crs, transform=transform,
                       tags=tags, product=product, checkpoint=checkpoint)
    # temporaries of this tile left by a killed run were removed when each product was written
    # (cropmap.io.storage.atomic_path: only those of dead processes, never a concurrent run's)
    return TileResult(tile_id, "done", paths)


def _empty_map_reason(tile_id: str, cube: xr.DataArray, options: PredictOptions) -> str:
    """Why every pixel of the tile's map is nodata, and what to do: one line."""
    head = f"tile {tile_id}: every pixel of its map would be nodata, so none is written"
    if cube.attrs.get("status") == "empty":
        return (f"{head}: its cube is empty ({cube.attrs.get('reason') or 'no observation'}); check that the catalog "
                "covers the tile in the season, or leave the tile out of the run")
    filled = _load(cube["filled_fraction"]).values
    over = int(np.count_nonzero(filled > options.max_filled_fraction))
    if not over:
        return (f"{head}: no pixel has a finite series (NaN or infinite values in its bins); rebuild its cube "
                "(cropmap cube --overwrite, or rerun with overwrite)")
    rest = "" if over == filled.size else ", the others no finite series"
    return (f"{head}: {over:,} of its {filled.size:,} pixels have more than max_filled_fraction "
            f"{options.max_filled_fraction:g} of their bins interpolated{rest} (too few clear dates for the season's "
            "bins); check the season against the scenes' dates and cadence, or raise predict.max_filled_fraction")


def _colormap(colours: Sequence[str] | None, n: int) -> dict[int, tuple[int, int, int, int]]:
    """Colour table entries for classes 0..n-1 (``#rrggbb``), nodata transparent."""
    if colours is None:
        colours = [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab20"].colors[:n]]
    cmap = {i: (int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16), 255) for i, c in enumerate(colours)}
    cmap[NODATA] = (0, 0, 0, 0)
    return cmap


def _write_geotiff(path: storage.Location, data: np.ndarray, *, crs, transform, tags: dict, product: str,
                   checkpoint) -> None:
    ny, nx = data.shape[1:]
    profile = {
        "driver": "GTiff", "dtype": "uint8", "count": data.shape[0], "height": ny, "width": nx,
        "crs": crs, "transform": transform, "nodata": NODATA, "compress": "deflate",
    }
    if ny >= 256 and nx >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with storage.output_file(path) as tmp, _write_errors(path):
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data)
            dst.update_tags(**tags, product=product)
            if product == "class":
                dst.write_colormap(1, _colormap(checkpoint.class_colours, len(checkpoint.class_names)))
                dst.update_tags(1, **{f"class_{i}": n for i, n in enumerate(checkpoint.class_names)})
                dst.set_band_description(1, "crop class")
            elif product == "confidence":
                dst.set_band_description(1, "confidence (max calibrated softmax, percent)")
            elif product == "ood":
                dst.set_band_description(1, "distance from the training features (percent of the training threshold)")
            else:
                for i, name in enumerate(checkpoint.class_names, start=1):
                    dst.set_band_description(i, f"probability of {name} (percent)")
        storage.check_raster(tmp, data, what=str(path))  # before the rename: never a truncated final file


@contextlib.contextmanager
def _write_errors(path: storage.Location):
    """GDAL's write errors (``RasterioIOError``, ``OSError``) as one :class:`StorageError` naming ``path``."""
    try:
        yield
    except StorageError:
        raise
    except (rasterio.errors.RasterioError, OSError) as err:
        raise StorageError(f"could not write {path} (disk full or quota?): "
                           f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err


def write_run_file(checkpoint_path: storage.Location, out_dir: storage.Location, *, options: PredictOptions,
                   cube_paths: Sequence[storage.Location] = ()) -> storage.Location:
    """``<out_dir>/run.json``: the provenance the mosaic's STAC item reports (no timestamps: reruns
    write the same bytes)."""
    card = card_path(checkpoint_path)
    ckpt = load_model(checkpoint_path)
    record = {
        "checkpoint": storage.canonical(checkpoint_path),
        "run_key": run_key(checkpoint_path, options),
        "model_card": json.loads(storage.read_bytes(card)) if storage.exists(card) else {
            "model_name": ckpt.model_name, "scores": ckpt.scores, "config": ckpt.config},
        "class_names": list(ckpt.class_names),
        "class_colours": None if ckpt.class_colours is None else list(ckpt.class_colours),
        "options": options.model_dump(),
        "cubes": sorted(storage.canonical(p) for p in cube_paths),
        "software_version": __version__,
    }
    return storage.write_text(storage.join(out_dir, RUN_FILE), json.dumps(record, indent=2, sort_keys=True))
