"""One composite cube in memory -> its maps (:func:`infer_cube`), no file written.

Features are built exactly as in training: the cube is the output of
:func:`cropmap.core.composite.median_composite`; the 2D/1D features of
:func:`cropmap.core.features.compute_features` are its band x time matrix per pixel, which the device reads
straight from the block (other kinds go through ``compute_features``). :func:`~cropmap.ml.device_pass.device_pass` runs
the normalisation, the model and the OOD score from the same pass, and the softmax with the checkpoint's
temperature calibrates, all on the device. The cube is loaded about ``PredictOptions.block_pixels`` at a
time, in windows of whole store chunks (:func:`block_windows`), within the call: in the calling thread, or with ``PredictOptions.prefetch`` in a second thread
that reads the next block while the device computes this one.

The maps are uint8 with one nodata value, :data:`NODATA` (255), for every product; why a tile's map would
hold nothing else is :func:`empty_map_reason`. Files: :mod:`cropmap.stages.tile_geotiffs`.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import xarray as xr

from cropmap.core.features import compute_features
from cropmap.errors import IncompatibleInputError
from cropmap.ml.device_pass import device_pass
from cropmap.stages.cube_encoding import decoded_reflectance
from cropmap.stages.predict_inputs import check_cube
from cropmap.stages.predict_options import PredictOptions

__all__ = ["NODATA", "infer_cube", "block_windows", "host_block", "empty_map_reason"]

#: Nodata value of every uint8 product (class, confidence, probability).
NODATA = 255


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


def infer_cube(checkpoint, cube: xr.DataArray, *, options: PredictOptions = PredictOptions()) -> xr.Dataset:
    """Classify every pixel of one composite cube.

    ``cube``: ``(time, band, y, x)`` float32 reflectance 0..1 from
    :func:`~cropmap.core.composite.median_composite`, or a cube store's int16 counts as stored (with CF
    ``scale_factor`` / ``_FillValue`` attrs: :func:`~cropmap.stages.cube.open_tile_cube` ``stored=True``),
    NumPy or Dask, loaded ``options.block_pixels`` at a time,
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

    The host reads a block and sends it whole to the device (pinned memory, non-blocking on CUDA); the
    gather of the usable pixels, the normalisation, the model, the OOD score (float32), the softmax and the
    uint8 products are computed there (:func:`~cropmap.ml.device_pass.device_pass`), and only the uint8 products come back.
    """
    check_cube(checkpoint, cube, what=f"tile {cube.attrs.get('tile_id', '?')}")
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    device = _device(options)
    bf16 = options.precision == "bf16" or (options.precision == "auto" and device == "cuda")
    options = options.for_checkpoint(checkpoint)
    n_classes = len(checkpoint.class_names)
    maps = {"label": np.full(ny * nx, NODATA, np.uint8), "confidence": np.full(ny * nx, NODATA, np.uint8)}
    if options.probabilities:
        maps["probability"] = np.full((n_classes, ny * nx), NODATA, np.uint8)
    if options.ood:
        maps["ood"] = np.full(ny * nx, NODATA, np.uint8)
    # the cube is read here, in this call, whatever cluster runs it: a tile is one task (torch uses the
    # cores for the forward pass). The scheduler is passed to each load, never set in dask.config: that
    # config is global, and another thread's set/restore (Client.as_current) would leak into this one
    filled = _load(cube["filled_fraction"]).values
    # oneDNN's bf16 convolutions are fastest on channels_last weights: 3.5x eager fp32 against 2.3x
    # for bf16 alone (bench/predict.py, docs/performance.md); the fp32 path keeps the model as it is
    _predict_blocks(checkpoint, cube, maps, filled, options=options, device=device, bf16=bf16,
                    channels_last=bf16 and device == "cpu")
    out = xr.Dataset({"label": (("y", "x"), maps["label"].reshape(ny, nx)),
                      "confidence": (("y", "x"), maps["confidence"].reshape(ny, nx))},
                     coords={"y": cube["y"], "x": cube["x"]})
    if options.probabilities:
        out["probability"] = (("class", "y", "x"), maps["probability"].reshape(-1, ny, nx))
        out = out.assign_coords({"class": list(checkpoint.class_names)})
    if options.ood:
        out["ood"] = (("y", "x"), maps["ood"].reshape(ny, nx))
    out.attrs = {"tile_id": cube.attrs.get("tile_id", ""), "nodata": NODATA}
    return out


def _load(array: xr.DataArray) -> xr.DataArray:
    """``array`` in memory, read in the calling thread (Dask's synchronous scheduler, given per call)."""
    return array.load(scheduler="synchronous") if array.chunks else array


def _block_input(checkpoint, block: xr.DataArray) -> np.ndarray:
    """``(time, band, y * x)`` (a view where it can) of a loaded block, as stored (int16 counts or float32):
    the model's input matrix per pixel, band x time, is read from it transposed and decoded on the device.
    The 2D/1D features are this same matrix; other kinds are computed here from the decoded block
    (:func:`_model_input`), float32."""
    if checkpoint.feature_kind not in ("2d", "1d"):
        x = _model_input(checkpoint, _decoded(block))  # (y * x, band, time)
        return np.ascontiguousarray(x.transpose(2, 1, 0))
    values = block.transpose("time", "band", "y", "x").values
    return values.reshape(*values.shape[:2], -1)


def _scaling(cube: xr.DataArray) -> tuple[float, float | None]:
    """``(scale_factor, _FillValue)`` of a cube opened as stored (:func:`~cropmap.stages.cube.open_tile_cube`
    ``stored=True``); ``(1.0, None)`` for float reflectance (NaN is its no data)."""
    if np.issubdtype(cube.dtype, np.floating):
        return 1.0, None
    if "scale_factor" not in cube.attrs or "_FillValue" not in cube.attrs:
        raise IncompatibleInputError(f"tile {cube.attrs.get('tile_id', '?')}: an integer cube without its CF "
                                     "scale_factor and _FillValue; open it with open_tile_cube")
    return float(cube.attrs["scale_factor"]), float(cube.attrs["_FillValue"])


def _decoded(block: xr.DataArray) -> xr.DataArray:
    """Float32 reflectance of a block as stored (NaN where the fill value is)."""
    return block.copy(data=decoded_reflectance(block.values, *_scaling(block)))


def block_windows(cube: xr.DataArray, block_pixels: int) -> list[tuple[slice, slice]]:
    """The ``(y, x)`` windows a cube is read in: whole chunks of its store (each chunk is decompressed once),
    as many as fit in ``block_pixels``, x first; when one chunk is larger than that, rows of at most
    ``block_pixels`` within the chunk's columns. A NumPy cube: whole rows. The chunks are Dask's, or a lazily
    indexed store's (``encoding["preferred_chunks"]``)."""
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    stored = cube.encoding.get("preferred_chunks", {})  # a lazily indexed store's own chunks
    if cube.chunks:
        cy, cx = cube.chunksizes["y"][0], cube.chunksizes["x"][0]
    else:
        cy, cx = min(stored.get("y", ny), ny), min(stored.get("x", nx), nx)
    if cy * cx <= block_pixels:
        per_block = block_pixels // (cy * cx)
        kx = min(per_block, -(-nx // cx))
        wy, wx = cy * max(1, per_block // kx), cx * kx
    else:
        wx = min(nx, cx)
        wy = max(1, block_pixels // wx)
    return [(slice(y0, min(y0 + wy, ny)), slice(x0, min(x0 + wx, nx)))
            for y0 in range(0, ny, wy) for x0 in range(0, nx, wx)]


def _predict_blocks(checkpoint, cube: xr.DataArray, maps: dict, filled: np.ndarray, *,
                    options: PredictOptions, device: str, bf16: bool, channels_last: bool) -> None:
    """Fill ``maps`` (uint8 ``label``, ``confidence``, and ``probability``/``ood`` if present, flat ``y * x``)
    window by window (:func:`block_windows`); unusable pixels stay :data:`NODATA`.

    The host reads a block as stored (int16 counts: half the bytes of float32) and finds the pixels within
    the filled-fraction bound (one value per pixel), pinned on CUDA; with ``options.prefetch`` a second thread
    does that for the next block while this one computes. On the device, batch by batch over consecutive
    pixels: one transposing, decoding copy to ``(pixel, band, time)`` float32 reflectance of those pixels
    (:func:`_gather`), :func:`~cropmap.ml.device_pass.device_pass` in place on it (a series holding no data
    comes back NaN, hence nodata), softmax and the uint8 products (:func:`_products`); one copy back of
    those per block, the only sync."""
    nx = cube.sizes["x"]
    batch_size = options.batch_size or checkpoint.batch_size_for(options.memory_budget_mb * 2**20)
    dev = torch.device(device)
    model = checkpoint.inference_model(dev, channels_last=channels_last)
    ood = "ood" in maps
    windows = block_windows(cube, options.block_pixels)
    scale, fill = _scaling(cube) if checkpoint.feature_kind in ("2d", "1d") else (1.0, None)

    def read(window: tuple[slice, slice]):
        return host_block(checkpoint, cube, filled, window=window, max_filled_fraction=options.max_filled_fraction,
                          pin=dev.type == "cuda")

    with ThreadPoolExecutor(1, thread_name_prefix="cropmap-prefetch") if options.prefetch else \
            contextlib.nullcontext() as pool:
        pending = pool.submit(read, windows[0]) if pool else None
        for k, window in enumerate(windows):
            host, rows = pending.result() if pool else read(window)
            if pool and k + 1 < len(windows):
                pending = pool.submit(read, windows[k + 1])
            if not rows.size:
                continue
            block = host.to(dev, non_blocking=True)
            index = torch.from_numpy(rows).to(dev, non_blocking=True)
            outs = {key: [] for key in maps}
            for i in range(0, len(rows), batch_size):
                xb = _gather(block, index[i:i + batch_size], scale=scale, fill=fill,
                             chunk=batch_size if dev.type == "cuda" else 1024)
                with torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                    logits, score = device_pass(checkpoint, xb, ood=ood, model=model, scratch=True)
                _products(checkpoint, logits, score, outs)
            (ys, xs), width = window, window[1].stop - window[1].start
            target = (ys.start + rows // width) * nx + xs.start + rows % width  # flat index in the tile
            for key, parts in outs.items():
                maps[key][..., target] = torch.cat(parts, dim=-1).cpu().numpy()


def host_block(checkpoint, cube: xr.DataArray, filled: np.ndarray, *, window: tuple[slice, slice],
               max_filled_fraction: float, pin: bool = False) -> tuple[torch.Tensor, np.ndarray]:
    """The host's whole share of one block: the ``(y, x)`` ``window`` of ``cube`` read as stored, as a
    ``(time, band, px)`` tensor (pixels row-major in the window; pinned with ``pin``, for a non-blocking copy
    to a GPU), and the indices in it of the pixels whose ``filled`` fraction (``(y, x)`` of the tile) is at
    most ``max_filled_fraction``. Whether a series is finite is found on the device."""
    ys, xs = window
    host = torch.from_numpy(_block_input(checkpoint, _load(cube.isel(y=ys, x=xs))))
    usable = filled[ys, xs].reshape(-1) <= max_filled_fraction
    return (host.pin_memory() if pin else host), np.flatnonzero(usable)


def _gather(block: torch.Tensor, rows: torch.Tensor, *, scale: float = 1.0, fill: float | None = None,
            chunk: int) -> torch.Tensor:
    """``block[:, :, rows]`` of a ``(time, band, px)`` block (as stored) as a new contiguous ``(rows, band, time)``
    float32 reflectance batch: times ``scale``, NaN where the value is ``fill``; transposed and decoded ``chunk``
    pixels at a time (on a CPU a chunk's source stays in the cache: measured ~2x faster than one transposing
    copy of the whole batch)."""
    n_time, n_band = block.shape[:2]
    flat = block.reshape(n_time * n_band, -1)  # a view of the contiguous block
    out = torch.empty((len(rows), n_band, n_time), dtype=torch.float32, device=block.device)
    for i in range(0, len(rows), chunk):
        part = flat[:, rows[i:i + chunk]]  # (time * band, n) gathered pixels
        dst = out[i:i + chunk]
        dst.copy_(part.view(n_time, n_band, -1).permute(2, 1, 0))  # int16 counts are exact in float32
        if fill is not None:
            dst.masked_fill_(dst == fill, float("nan"))
        if scale != 1.0:
            dst.mul_(scale)
    return out


def _products(checkpoint, logits: torch.Tensor, score: torch.Tensor | None, outs: dict) -> None:
    """Append one batch's uint8 products to ``outs`` (on the device): the calibrated softmax's winning class
    and its percent, the per-class percents if asked, the OOD percent (capped at 254); NODATA where the
    logits or the score are not finite."""
    proba = checkpoint.probabilities(logits)  # float32 on the device
    top, cls = proba.max(dim=1)
    ok = ~torch.isnan(top)
    outs["label"].append(torch.where(ok, cls, NODATA).to(torch.uint8))
    outs["confidence"].append(torch.where(ok, torch.round(top * 100), NODATA).to(torch.uint8))
    if "probability" in outs:
        outs["probability"].append(torch.where(ok[:, None], torch.round(proba * 100), NODATA).to(torch.uint8).T)
    if "ood" in outs:
        pct = torch.clamp(torch.round(score * 100), max=254)
        outs["ood"].append(torch.where(ok & torch.isfinite(score), pct, NODATA).to(torch.uint8))


def empty_map_reason(tile_id: str, cube: xr.DataArray, options: PredictOptions) -> str:
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
