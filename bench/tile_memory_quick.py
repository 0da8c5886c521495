"""Peak memory of compositing one tile with cropmap.core.composite.median_composite on a Dask array.

What the Kubernetes resource requests in deploy/ are sized from. One 512 x 512 tile, 60 acquisition
dates over the northern season (43 five-day bins), 10 reflectance bands + the SCL mask (11 bands read),
chunked in space like cropmap.stages.cube (all dates in one chunk). Each configuration runs in a fresh
process; the figure is the peak resident set size (ru_maxrss) minus the RSS after imports and input
preparation, i.e. what the compositing graph itself adds while the tile is written chunk by chunk to
a temporary Zarr store, as cropmap.stages.cube does (the tile is never gathered whole).

The pixel values are real: the 12 raw acquisitions of ../shared/data/openeo_gfmap/cdse_sentinel2_l2a.nc
(66 x 64 px, bands B01 B04 B08 B11) tiled in space, cycled over the 10 band slots and the 60 dates;
each Dask chunk is made inside its task, so the input is never held whole, as when reading from COGs.

Run: .venv/bin/python bench/tile_memory_quick.py [--record]   (prints a table and one JSON line per run)
``--record`` writes the 1-thread chunk-256 run's process CPU seconds per megapixel as
``composite_vcpu_s_per_mpx`` into the cost figures (cropmap.jobs.cost_model.record_figure).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

TILE, DATES, N_BANDS = 512, 60, 10


def _one(chunk: int, threads: int) -> dict:
    import dask
    import dask.array as da
    import numpy as np
    import pandas as pd
    import xarray as xr

    from cropmap.core.composite import median_composite
    from cropmap.core.masking import valid_from_scl
    from cropmap.core.season import Season
    from cropmap.io.data import data_file

    ds = xr.open_dataset(data_file("openeo_gfmap/cdse_sentinel2_l2a.nc"), engine="h5netcdf").load()
    src = np.stack([ds[f"S2-L2A-{b}"].values for b in ("B01", "B04", "B08", "B11")], 1).astype(np.float32) / 1e4
    scl_src = ds["S2-L2A-SCL"].values
    season = Season()  # northern default: 05-01..11-30, 43 bins
    dates = pd.date_range("2023-05-01", "2023-11-29", periods=DATES).values

    def refl_block(block_info=None):
        (t0, t1), (b0, b1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        t = np.arange(t0, t1) % src.shape[0]
        b = np.arange(b0, b1) % src.shape[1]
        y = np.arange(y0, y1) % src.shape[2]
        x = np.arange(x0, x1) % src.shape[3]
        return src[np.ix_(t, b, y, x)]

    def scl_block(block_info=None):
        (t0, t1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        t, y, x = (np.arange(a, b) % n for (a, b), n in zip(((t0, t1), (y0, y1), (x0, x1)), scl_src.shape))
        return scl_src[np.ix_(t, y, x)]

    refl = da.map_blocks(refl_block, dtype=np.float32,
                         chunks=((DATES,), (N_BANDS,), *(((chunk,) * (TILE // chunk),) * 2)))
    scl = da.map_blocks(scl_block, dtype=scl_src.dtype, chunks=((DATES,), *(((chunk,) * (TILE // chunk),) * 2)))
    obs = xr.DataArray(refl, dims=("time", "band", "y", "x"),
                       coords={"time": dates, "band": [f"b{i}" for i in range(N_BANDS)]})
    valid = valid_from_scl(xr.DataArray(scl, dims=("time", "y", "x"), coords={"time": dates}))
    comp = median_composite(obs, season, 2023, valid=valid)

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    c = time.process_time()  # every thread of this process: the vCPU-s the tile costs
    t = time.perf_counter()
    # Written chunk by chunk to Zarr as cropmap.stages.cube does: the tile is never gathered in memory.
    with tempfile.TemporaryDirectory() as tmp, dask.config.set(scheduler="threads", num_workers=threads):
        comp.to_dataset(name="reflectance").to_zarr(f"{tmp}/tile.zarr", mode="w", consolidated=False)
        elapsed, cpu = time.perf_counter() - t, time.process_time() - c
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = xr.open_zarr(f"{tmp}/tile.zarr", consolidated=False)["reflectance"].load()
    return {
        "tile": TILE, "dates": DATES, "bands": N_BANDS + 1, "chunk": chunk, "threads": threads,
        "bins": season.n_bins, "input_bytes": DATES * (N_BANDS * 4 + 2) * TILE * TILE,
        "output_bytes": int(out.nbytes), "baseline_rss_mib": round(base / 1024),
        "peak_rss_mib": round(peak / 1024), "graph_peak_mib": round((peak - base) / 1024),
        "seconds": round(elapsed, 2), "cpu_s": round(cpu, 2),
        "cpu_s_per_mpx": round(cpu / (TILE * TILE / 1e6), 1), "load_avg_1min": round(os.getloadavg()[0], 2),
        "finite_fraction": round(float(np.isfinite(out.values).mean()), 3),
    }


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1].isdigit():
        print(json.dumps(_one(int(sys.argv[1]), int(sys.argv[2]))))
        return
    record = "--record" in sys.argv[1:]
    context = {"machine": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()}
    print(json.dumps({"context": context}))
    print(f"{'chunk':>6} {'threads':>7} {'graph peak MiB':>14} {'peak RSS MiB':>12} {'s':>6}")
    for chunk, threads in ((256, 1), (256, 2), (512, 1)):
        run = subprocess.run([sys.executable, __file__, str(chunk), str(threads)], check=True,
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        rec = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"{chunk:>6} {threads:>7} {rec['graph_peak_mib']:>14} {rec['peak_rss_mib']:>12} {rec['seconds']:>6}")
        print(json.dumps(rec))
        if record and (chunk, threads) == (256, 1):
            from cropmap.jobs.cost_model import record_figure

            record_figure("composite_vcpu_s_per_mpx", rec["cpu_s_per_mpx"], unit="vCPU-s per megapixel",
                          source=f"bench/tile_memory_quick.py: median composite of a {TILE} px tile, {DATES} dates x "
                                 f"{N_BANDS} bands + SCL, chunk 256, 1 thread, process CPU time, load "
                                 f"{rec['load_avg_1min']}",
                          command="python bench/tile_memory_quick.py --record")


if __name__ == "__main__":
    main()
