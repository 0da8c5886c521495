"""One composite cube in memory -> its maps (:func:`infer_cube`), no file written.

Features are built exactly as in training: the cube is the output of
:func:`cropmap.core.composite.median_composite`, :func:`cropmap.core.features.compute_features` turns it into
the checkpoint's feature kind, :meth:`Checkpoint.infer` runs the forward pass (normalisation, model, and the
OOD score from the same pass) and :meth:`Checkpoint.probabilities` calibrates. The cube is loaded
``PredictOptions.block_pixels`` (whole rows) at a time, in the calling thread.

The maps are uint8 with one nodata value, :data:`NODATA` (255), for every product; why a tile's map would
hold nothing else is :func:`empty_map_reason`. Files: :mod:`cropmap.stages.tile_geotiffs`.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import xarray as xr

from cropmap.core.features import compute_features
from cropmap.errors import IncompatibleInputError
from cropmap.stages.predict_inputs import check_cube
from cropmap.stages.predict_options import PredictOptions

__all__ = ["NODATA", "infer_cube", "empty_map_reason"]

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
