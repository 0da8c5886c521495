"""How a tile cube stores its reflectance (:class:`cropmap.stages.cube.CubeOptions` ``encoding``): int16 counts of
1e-4 reflectance with CF ``scale_factor`` / ``_FillValue`` (plain ``xr.open_zarr`` decodes them) and the cube
stage's codec (:func:`int16_store_encoding`), or float32 as computed; the values as stored
(:func:`stored_reflectance`) and back (:func:`decoded_reflectance`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from zarr.codecs import BloscCodec

__all__ = ["ENCODINGS", "INT16_ENCODING", "int16_store_encoding", "stored_reflectance", "decoded_reflectance"]

ENCODINGS = ("int16", "float32")

#: ``reflectance`` as int16 (CF): stored = round(reflectance / scale_factor), no data = _FillValue.
INT16_ENCODING = {"dtype": "int16", "scale_factor": 1e-4, "_FillValue": -32768}


def int16_store_encoding(chunks: Sequence[int]) -> dict:
    """:data:`INT16_ENCODING` with the cube stage's codec for a store of ``chunks``: Blosc zstd level 1 over
    byte-shuffled counts, one Blosc block per chunk (smaller, cheaper to write and to read than zarr's default
    zstd on real-shaped cubes; the choice is measured in docs/performance.md, bench/cube_encoding.py)."""
    block = 2 * int(np.prod(chunks))
    return {**INT16_ENCODING, "chunks": tuple(chunks),
            "compressors": (BloscCodec(cname="zstd", clevel=1, shuffle="shuffle", typesize=2, blocksize=block),)}


def stored_reflectance(reflectance: np.ndarray, encoding: str) -> np.ndarray:
    """``reflectance`` (float32, NaN = no data) as a store of ``encoding`` holds it: int16 counts per
    :data:`INT16_ENCODING` (values beyond its range clipped: |reflectance| > 3.27 is no surface), or as is."""
    if encoding == "float32":
        return reflectance
    scale, fill = INT16_ENCODING["scale_factor"], INT16_ENCODING["_FillValue"]
    with np.errstate(invalid="ignore"):
        counts = np.clip(np.rint(reflectance / np.float32(scale)), fill + 1, np.iinfo(np.int16).max)
    return np.where(np.isfinite(reflectance), counts, fill).astype(np.int16)


def decoded_reflectance(stored: np.ndarray, scale_factor: float, fill_value: float | None) -> np.ndarray:
    """Float32 reflectance of values as stored: ``stored x scale_factor``, NaN where it is ``fill_value``
    (None: a float store, NaN already its no data). The device's twin is
    :func:`cropmap.stages.inference._gather`."""
    if fill_value is None:
        return np.asarray(stored, dtype=np.float32)
    return np.where(stored == fill_value, np.float32(np.nan), stored * np.float32(scale_factor)).astype(np.float32)
