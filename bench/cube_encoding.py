"""Tile cube storage: bytes, error and read cost of int16 reflectance against float32 (issue 35).

Cases (each store written into a fresh folder, one process, cases taking turns ``--repeat`` times for the
read timings):

- ``real``: a tile cube built by ``cropmap.stages.cube.build_tile_cube`` from the real Sentinel-2 L2A items of
  ``s2_l2a_stac`` (33TWM, 5 dates in August 2023, B02 B03 B04 B08, SCL-masked; the local assets are 120 m, so
  the tile is on a 120 m grid: 900 x 900 px, real texture at that scale; 3 bins of 5 days);
- ``synthetic``: the real-shaped cube of ``bench/predict.py --host`` (43 bins x 10 bands, ``--rows`` x 1,024 px,
  reflectance on the 1e-4 grid of the scenes' digital numbers with 0.01 of i.i.d. noise per value: harder to
  compress than imagery);
- ``cube``: any existing float32 tile cube store given with ``--cube`` (e.g. a DEMO or TRANSFER cube),
  re-stored both ways.

Per case and encoding: reflectance bytes per pixel on disk, the ratio float32 / int16, the largest absolute
difference of the decoded int16 values from the float32 ones (reflectance), the CPU-s per megapixel of
reading the store's reflectance whole as stored (zarr, one thread: what the predict stage's host does per
pixel, :func:`cropmap.stages.inference.host_block`) and of encoding and compressing it from float32 in memory
(what the cube stage spends on storage).

    .venv/bin/python bench/cube_encoding.py [--rows 256] [--repeat 3] [--cube PATH.zarr]

Prints one JSON line per case and encoding.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/predict.py's real-shaped cube


def _reflectance_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in (store / "reflectance").rglob("*") if p.is_file())


def _write_cpu_s(store: Path) -> float:
    """CPU-s to encode and compress the store's reflectance again from float32 in memory, with its codecs and
    chunks, into memory (what the cube stage spends per pixel on storage)."""
    import xarray as xr
    import zarr

    from cropmap.stages.cube_encoding import stored_reflectance

    array = zarr.open_group(str(store), mode="r")["reflectance"]
    values = xr.open_zarr(store, consolidated=False)["reflectance"].values.astype(np.float32)
    target = zarr.create_array(zarr.storage.MemoryStore(), shape=array.shape, chunks=array.chunks, dtype=array.dtype,
                               compressors=array.compressors)
    c0 = time.process_time()
    target[...] = stored_reflectance(values, "int16" if array.dtype == np.int16 else "float32")
    return time.process_time() - c0


def _read_cpu_s(store: Path) -> float:
    import zarr

    array = zarr.open_group(str(store), mode="r")["reflectance"]
    c0 = time.process_time()
    array[...]
    return time.process_time() - c0


def _real_cubes(folder: Path) -> dict[str, Path]:
    """The 33TWM tile cube built both ways by cropmap's own cube stage."""
    import rasterio

    from cropmap.core.grid import Grid
    from cropmap.core.season import Season
    from cropmap.io.config import CatalogConfig
    from cropmap.io.data import data_file
    from cropmap.io.stac import search_items
    from cropmap.stages.cube import CubeOptions, build_tile_cube

    catalog = data_file("s2_l2a_stac/catalog.json")
    items = search_items(CatalogConfig(path=catalog), bbox=(15.5, 46.3, 16.5, 46.9),
                         start=dt.date(2023, 8, 1), end=dt.date(2023, 8, 31))
    twm = [it for it in items if "33TWM" in it.id]
    with rasterio.open(Path(twm[0].get_self_href()).parent / "B02.tif") as src:
        left, top = src.bounds.left, src.bounds.top
    tile = Grid(32633, resolution=120.0, tile_size=900, origin_x=left, origin_y=top).tile(0, 0)
    season = Season(start="08-08", end="08-22")
    return {enc: build_tile_cube(tile, twm, season, 2023, folder / enc,
                                 options=CubeOptions(bands=("B02", "B03", "B04", "B08"), encoding=enc)).path
            for enc in ("float32", "int16")}


def _restored(source: Path, folder: Path) -> dict[str, Path]:
    """A float32 cube store written again both ways (same chunks, the cube stage's codec)."""
    import xarray as xr

    from cropmap.stages.cube_encoding import int16_store_encoding

    ds = xr.open_zarr(source, consolidated=False)
    out = {}
    for enc in ("float32", "int16"):
        out[enc] = folder / f"{enc}.zarr"
        clean = ds.copy()
        for name in clean.variables:
            clean[name].encoding = {}
        chunks = ds["reflectance"].encoding["chunks"]
        encoding = {"reflectance": int16_store_encoding(chunks) if enc == "int16" else {"chunks": chunks}}
        clean.to_zarr(out[enc], mode="w", consolidated=False, encoding=encoding)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=256, help="rows of the 1,024 px wide synthetic cube")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cube", help="an existing float32 tile cube store to re-store both ways")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    import xarray as xr
    from predict import _host_cube

    threadpool_limits(1)
    root = Path(tempfile.mkdtemp(prefix="cropmap-bench-encoding-"))
    cases = {"real": _real_cubes(root / "real")}
    synthetic = root / "synthetic"
    synthetic.mkdir()
    cases["synthetic"] = {enc: _host_cube(synthetic, args.rows, encoding=enc) for enc in ("float32", "int16")}
    if args.cube:
        (root / "cube").mkdir()
        cases["cube"] = _restored(Path(args.cube), root / "cube")
    reads = {(c, e): [] for c in cases for e in cases[c]}
    writes = {key: [] for key in reads}
    for _ in range(args.repeat):  # the stores take turns
        for case, stores in cases.items():
            for enc, store in stores.items():
                reads[(case, enc)].append(_read_cpu_s(store))
                writes[(case, enc)].append(_write_cpu_s(store))
    for case, stores in cases.items():
        exact = xr.open_zarr(stores["float32"], consolidated=False)["reflectance"].values
        decoded = xr.open_zarr(stores["int16"], consolidated=False)["reflectance"].values
        same_nodata = bool(np.array_equal(np.isnan(exact), np.isnan(decoded)))
        error = float(np.nanmax(np.abs(decoded - exact)))
        px = exact.shape[2] * exact.shape[3]
        sizes = {enc: _reflectance_bytes(Path(store)) for enc, store in stores.items()}
        for enc in stores:
            print(json.dumps({"case": case, "encoding": enc, "shape": list(exact.shape),
                              "bytes_per_px": round(sizes[enc] / px, 1),
                              "float32_over_int16": round(sizes["float32"] / sizes["int16"], 2),
                              "max_abs_error": error if enc == "int16" else 0.0, "same_nodata": same_nodata,
                              "read_cpu_s_per_mpx": round(statistics.median(reads[(case, enc)]) / px * 1e6, 2),
                              "write_cpu_s_per_mpx": round(statistics.median(writes[(case, enc)]) / px * 1e6, 2),
                              "load_avg_1min": round(os.getloadavg()[0], 2)}), flush=True)


if __name__ == "__main__":
    main()
