"""Cube building benchmarks: compositing throughput, loader choice, peak memory vs tile count.

Three measurements, each case in a fresh subprocess so that its peak memory is its own (RSS sampled
every 5 ms with psutil; "peak" = highest RSS during the measured call minus RSS just before it):

1. compositing: cropmap's ``median_composite`` (sort-based per-bin median + gap interpolation) against
   xarray's own ``resample(time="5D").median()`` on the SAME lazy Dask array: real raw Sentinel-2
   acquisitions (openeo_gfmap/cdse_sentinel2_l2a.nc, Belgium, 12 dates in April 2023, bands B01 B04 B08
   B11, SCL-masked to NaN) repeated 6 times 30 days apart (72 dates, 2 Apr - 27 Sep: a season at
   Sentinel-2's 2-3 day revisit) and tiled in space to SIZE x SIZE, chunked (1 date, 4 bands, CHUNK,
   CHUNK) like a cube loaded from STAC. Observed bins of both results are checked equal first.
2. loader: cropmap's TileReader (cropmap.stages.cube.load_observations) against stackstac, loading one 512 px tile over 33TWM
   (4 bands + SCL, 5 dates), values checked equal: from the real static catalog as it is (whole-image
   JPEG2000 at 120 m) and from 10 m tiled COG crops of the same values (what Earth Search serves).
   stackstac twice, both computed inside the call with the threaded scheduler local to it: chunked
   (1 date, 1 band, CHUNK, CHUNK), and one chunk per tile band (all dates, 1 band, the whole tile);
   each records its graph's task count. These are the two ways issue 15 named to compute a tile's cube
   inside one task; the TileReader builds no graph.
3. tiles: ``build_tile_cube`` over 1, 2, 4, 8 tiles of 512 px (real catalog, 4 bands) one after the
   other, as a country run builds them (cropmap.jobs.tile_pipeline): peak memory should not grow with the tile count.

Run: .venv/bin/python bench/cube.py [--size 1024] [--chunk 256] [--threads 2]
Prints one JSON line per case (with machine, threads, shapes, chunks) and a Markdown summary.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

N_REPEAT, SHIFT_DAYS = 6, 30
BANDS = ["B01", "B04", "B08", "B11"]
STAC_BANDS = ("B02", "B03", "B04", "B08")


class PeakRSS:
    """Highest resident set size seen while the ``with`` block runs, minus the RSS at entry (bytes)."""

    def __enter__(self):
        import psutil

        self._proc = psutil.Process()
        self.start = self._proc.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        self.delta = self.peak - self.start


def _raw_block():
    """(72, 4, 66, 64) float32 real reflectance, NaN where SCL says cloud/shadow/no data, and its dates."""
    import xarray as xr

    from cropmap.core.masking import DEFAULT_INVALID_SCL
    from cropmap.io.data import data_file

    ds = xr.open_dataset(data_file("openeo_gfmap/cdse_sentinel2_l2a.nc")).load()
    refl = np.stack([ds[f"S2-L2A-{b}"].values.astype(np.float32) / 10000 for b in BANDS], axis=1)
    refl[np.isin(ds["S2-L2A-SCL"].values, DEFAULT_INVALID_SCL)[:, None] | (refl <= 0)] = np.nan
    dates = ds["t"].values.astype("datetime64[D]")
    all_dates = np.concatenate([dates + np.timedelta64(SHIFT_DAYS * k, "D") for k in range(N_REPEAT)])
    return np.concatenate([refl] * N_REPEAT), all_dates


def _dask_obs(size: int, chunk: int):
    """The shared lazy input: real block tiled to (72, 4, size, size), chunks (1, 4, chunk, chunk)."""
    import dask.array as da
    import xarray as xr

    block, dates = _raw_block()
    _, _, by, bx = block.shape

    def make(block_info=None):
        (t0, t1), _, (y0, y1), (x0, x1) = block_info[None]["array-location"]
        yy, xx = np.arange(y0, y1) % by, np.arange(x0, x1) % bx
        return block[t0:t1][:, :, yy][:, :, :, xx]

    arr = da.map_blocks(make, dtype=np.float32, chunks=((1,) * len(dates), (4,), *([_split(size, chunk)] * 2)))
    return xr.DataArray(arr, dims=("time", "band", "y", "x"),
                        coords={"time": dates.astype("datetime64[ns]"), "band": BANDS}, name="reflectance")


def _split(n: int, c: int) -> tuple[int, ...]:
    return (c,) * (n // c) + ((n % c,) if n % c else ())


SEASON = dict(start="04-01", end="09-30")


def case_composite(which: str, size: int, chunk: int, threads: int) -> dict:
    import dask
    import pandas as pd

    from cropmap.core.composite import median_composite
    from cropmap.core.season import Season

    obs = _dask_obs(size, chunk)
    if which == "cropmap":
        result = median_composite(obs, Season(**SEASON), 2023)
    else:
        result = obs.resample(time="5D", origin=pd.Timestamp("2023-04-01")).median()
    with dask.config.set(scheduler="threads", num_workers=threads), PeakRSS() as mem:
        t0 = time.perf_counter()
        values = result.compute()
        seconds = time.perf_counter() - t0
    pixel_dates = obs.sizes["time"] * obs.sizes["y"] * obs.sizes["x"]
    return {"case": f"composite-{which}", "seconds": seconds, "peak_mb": mem.delta / 2**20,
            "pixel_dates_per_s": pixel_dates / seconds, "shape": list(obs.shape), "chunks": [1, 4, chunk, chunk],
            "out_shape": list(values.shape)}


def check_composite_equal() -> dict:
    """Observed bins: cropmap == xarray resample median (before cropmap interpolates the gaps)."""
    import pandas as pd

    from cropmap.core.composite import bin_index, median_by_bin, median_composite
    from cropmap.core.season import Season

    obs = _dask_obs(128, 64).compute()
    season = Season(**SEASON)
    ours = median_composite(obs, season, 2023).values
    theirs = obs.resample(time="5D", origin=pd.Timestamp("2023-04-01")).median()
    observed = median_by_bin(obs.values, bin_index(obs.time.values, season.bin_edges(2023)), season.n_bins)
    starts = season.bin_starts(2023)
    theirs = theirs.reindex(time=starts).values  # xarray drops nothing but may stop at the last date
    seen = ~np.isnan(observed)
    equal = bool(np.array_equal(ours[seen], theirs[seen]) and np.array_equal(observed[seen], theirs[seen]))
    return {"case": "composite-check", "observed_bins_equal": equal, "observed_fraction": float(seen.mean())}


def _stac_tiles(n: int):
    from cropmap.core.grid import Grid

    grid = Grid(32633, tile_size=512)
    # rows of 8 tiles inside 33TWM (north of 33TWL), x from 537.6 km, y top at 5 161 600 m
    return [grid.tile(945 + i // 8, 105 + i % 8) for i in range(n)]


def _stac_items(tile):
    from cropmap.io.config import CatalogConfig
    from cropmap.io.data import data_file
    from cropmap.io.stac import search_items

    cat = CatalogConfig(path=data_file("s2_l2a_stac/catalog.json"))
    return search_items(cat, bbox=tile.lonlat_bbox(), start=dt.date(2023, 8, 1), end=dt.date(2023, 8, 31))


def make_cog_items(folder: Path) -> None:
    """10 m tiled COG crops (1024 px, 512 px blocks, DEFLATE) of the local assets around the loader tile.

    The real files are whole-image JPEG2000 at 120 m; Earth Search serves tiled COGs at 10-20 m. The
    crops resample the real values (nearest) onto the 10 m grid so both loaders see COG access patterns.
    """
    import rasterio
    from affine import Affine
    from rasterio.vrt import WarpedVRT

    from cropmap.io.catalogs import ROOT_PROPERTY

    tile = _stac_tiles(1)[0]
    xmin, _, _, ymax = tile.bounds
    transform = Affine(10, 0, xmin - 2560, 0, -10, ymax + 2560)  # the tile plus 256 px all round
    lines = []
    for item in _stac_items(tile):
        new = item.clone()
        new.assets = {}
        new.properties.pop(ROOT_PROPERTY, None)  # the crops are not files of that catalog
        for key in ("blue", "green", "red", "nir", "scl"):
            asset = item.assets[key].clone()
            target = folder / f"{item.id}_{key}.tif"
            with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="NO"), rasterio.open(asset.get_absolute_href()) as src:
                with WarpedVRT(src, crs=src.crs, transform=transform, width=1024, height=1024) as vrt:
                    data = vrt.read(1)
                profile = dict(driver="COG", width=1024, height=1024, count=1, dtype=data.dtype, crs=src.crs,
                               transform=transform, nodata=0, compress="DEFLATE", blocksize=512)
            with rasterio.open(target, "w", **profile) as dst:
                dst.write(data, 1)
            asset.href = str(target)
            asset.extra_fields["proj:shape"] = [1024, 1024]
            asset.extra_fields["proj:transform"] = list(transform)[:6]
            new.add_asset(key, asset)
        new.set_self_href(str(folder / f"{item.id}.json"))
        lines.append(json.dumps(new.to_dict()))
    (folder / "items.ndjson").write_text("\n".join(lines))


def _cog_items(folder: Path):
    import pystac

    return [pystac.Item.from_dict(json.loads(line)) for line in (folder / "items.ndjson").read_text().splitlines()]


def case_loader(which: str, chunk: int, threads: int, cog_dir: str | None = None, repeat: int = 3,
                per_band: bool = False) -> dict:
    """Best of ``repeat`` runs, each on a freshly built graph (no reader objects reused)."""
    runs = [_load_once(which, chunk, threads, cog_dir, per_band) for _ in range(repeat)]
    best = min(runs, key=lambda r: r["seconds"])
    # time: the best run; memory: the first run (later runs reuse what the first one allocated)
    return {**best, "peak_mb": runs[0]["peak_mb"], "repeat": repeat,
            "all_seconds": [round(r["seconds"], 3) for r in runs]}


def _load_once(which: str, chunk: int, threads: int, cog_dir: str | None, per_band: bool = False) -> dict:
    import dask

    tile = _stac_tiles(1)[0]
    items = _stac_items(tile) if cog_dir is None else _cog_items(Path(cog_dir))
    if which == "cropmap":  # cropmap's own loader (TileReader, eager: timed with its reads)
        from cropmap.stages.cube import load_observations

        with PeakRSS() as mem:
            t0 = time.perf_counter()
            refl, scl, _ = load_observations(tile, items, bands=STAC_BANDS, chunk=chunk)
            out = (np.asarray(refl), np.asarray(scl))
            seconds = time.perf_counter() - t0
        tasks, chunks = 0, [1, chunk, chunk]
    else:  # stackstac on the same grid (one item per day on this tile: no same-day fusing needed)
        import rasterio
        import stackstac

        from cropmap.io.stac import band_assets

        dicts = []
        for it in items:  # stackstac reads proj:epsg and needs absolute hrefs (../shared/notes/stack.md)
            d = it.to_dict(transform_hrefs=False)
            for k in d["assets"]:
                d["assets"][k]["href"] = it.assets[k].get_absolute_href()
            d["properties"].setdefault("proj:epsg", 32633)
            dicts.append(d)
        keys = band_assets(items[0], [*STAC_BANDS, "SCL"])
        env = stackstac.DEFAULT_GDAL_ENV.updated(always=dict(GDAL_DISABLE_READDIR_ON_OPEN="NO"),
                                                 open=dict(GDAL_DISABLE_READDIR_ON_OPEN="NO"))
        chunks = [len(dicts), 512, 512] if per_band else [1, chunk, chunk]
        arr = stackstac.stack(dicts, assets=list(keys.values()), epsg=32633, resolution=10, bounds=tile.bounds,
                              chunksize=(chunks[0], 1, chunks[1], chunks[2]), resampling=rasterio.enums.Resampling.nearest,
                              dtype=np.dtype("uint16"), fill_value=np.uint16(0), rescale=False, gdal_env=env,
                              snap_bounds=False, sortby_date=False, properties=False, band_coords=False)
        with dask.config.set(scheduler="threads", num_workers=threads), PeakRSS() as mem:
            t0 = time.perf_counter()
            out = dask.compute(arr.data)
            seconds = time.perf_counter() - t0
        tasks = len(arr.data.__dask_graph__())
    if which == "cropmap":  # back to DNs for the comparison: reflectance = DN * 1e-4 here
        dn = np.nan_to_num(np.rint(out[0] * 10000), nan=0).astype(np.int64)
        scl = out[1].astype(np.int64)
    else:
        dn, scl = out[0][:, :4].astype(np.int64), out[0][:, 4].astype(np.int64)
    fmt = "jp2-120m" if cog_dir is None else "cog-10m"
    name = f"{which}band" if per_band else which
    return {"case": f"loader-{name}-{fmt}", "seconds": seconds, "peak_mb": mem.delta / 2**20, "tile_px": 512,
            "dates": len(items), "bands": [*STAC_BANDS, "SCL"], "chunks": chunks, "graph_tasks": tasks,
            "checksum": int(dn.sum() * 7 + scl.sum())}


def case_tiles(n: int, chunk: int, threads: int) -> dict:
    import warnings

    import dask

    from cropmap.core.season import Season
    from cropmap.stages.cube import CubeOptions, build_tile_cube

    tiles = _stac_tiles(n)
    item_sets = [_stac_items(t) for t in tiles]
    season = Season(start="08-08", end="08-22")
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with dask.config.set(scheduler="threads", num_workers=threads), PeakRSS() as mem:
            t0 = time.perf_counter()
            for tile, items in zip(tiles, item_sets):
                build_tile_cube(tile, items, season, 2023, out, options=CubeOptions(bands=STAC_BANDS, chunk=chunk))
            seconds = time.perf_counter() - t0
    return {"case": f"tiles-{n}", "tiles": n, "seconds": seconds, "seconds_per_tile": seconds / n,
            "peak_mb": mem.delta / 2**20, "tile_px": 512, "chunks": [1, chunk, chunk], "dates": len(item_sets[0])}


def _child(args) -> None:
    if args.case.startswith("composite-"):
        res = case_composite(args.case.split("-", 1)[1], args.size, args.chunk, args.threads)
    elif args.case.startswith("loader-"):
        which = "cropmap" if "cropmap" in args.case else "stackstac"
        res = case_loader(which, args.chunk, args.threads, args.cog_dir if args.case.endswith("cog") else None,
                          repeat=args.repeat, per_band="stackstacband" in args.case)
    elif args.case.startswith("tiles-"):
        res = case_tiles(int(args.case.split("-")[1]), args.chunk, args.threads)
    else:
        res = check_composite_equal()
    print("RESULT " + json.dumps(res))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=1024, help="compositing input side in pixels")
    p.add_argument("--chunk", type=int, default=256, help="spatial chunk in pixels")
    p.add_argument("--threads", type=int, default=2, help="Dask threads")
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--cog-dir", help=argparse.SUPPRESS)
    p.add_argument("--tiles", type=int, nargs="+", default=[1, 2, 4, 8], help="tile counts to build")
    p.add_argument("--repeat", type=int, default=5, help="loader runs per case (best is kept)")
    p.add_argument("--skip", default="", help="comma-separated groups to skip: composite,loader,tiles")
    args = p.parse_args()
    if args.case:
        return _child(args)
    context = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
               "threads": args.threads, "scheduler": "dask threads", "load_avg": os.getloadavg()}
    print("CONTEXT " + json.dumps(context))
    cases = ["check"]
    skip = set(args.skip.split(","))
    if "composite" not in skip:
        cases += ["composite-cropmap", "composite-xarray"]
    cog_dir = tempfile.mkdtemp(prefix="cropmap-bench-cog-")
    if "loader" not in skip:
        make_cog_items(Path(cog_dir))
        # both orders, so that a warm cache favours neither loader
        cases += ["loader-cropmap-jp2", "loader-stackstac-jp2", "loader-stackstacband-jp2", "loader-cropmap-cog",
                  "loader-stackstac-cog", "loader-stackstacband-cog", "loader-stackstacband-cog",
                  "loader-stackstac-cog", "loader-cropmap-cog"]
    if "tiles" not in skip:
        cases += [f"tiles-{n}" for n in args.tiles]
    results = {}
    for case in cases:
        cmd = [sys.executable, __file__, "--case", case, "--size", str(args.size), "--chunk", str(args.chunk),
               "--threads", str(args.threads), "--cog-dir", cog_dir, "--repeat", str(args.repeat)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"{case} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        res = json.loads(line[7:])
        if case not in results or res.get("seconds", 0) < results[case].get("seconds", 0):
            results[case] = res  # a case run twice keeps its best
        print(line)
    shutil.rmtree(cog_dir, ignore_errors=True)
    if "composite-cropmap" in results and "composite-xarray" in results:
        a, b = results["composite-cropmap"], results["composite-xarray"]
        print(f"\ncompositing {a['shape']}: cropmap {a['pixel_dates_per_s'] / 1e6:.2f} M pixel-dates/s, "
              f"{a['peak_mb']:.0f} MB peak; xarray resample {b['pixel_dates_per_s'] / 1e6:.2f} M pixel-dates/s, "
              f"{b['peak_mb']:.0f} MB peak; speed-up x{a['pixel_dates_per_s'] / b['pixel_dates_per_s']:.1f}")
    for fmt in ("jp2", "cog"):
        if f"loader-cropmap-{fmt}" in results and f"loader-stackstac-{fmt}" in results:
            a, b = results[f"loader-cropmap-{fmt}"], results[f"loader-stackstac-{fmt}"]
            print(f"loader 512 px tile, {fmt}: cropmap {a['seconds']:.2f} s {a['peak_mb']:.0f} MB; stackstac "
                  f"{b['seconds']:.2f} s {b['peak_mb']:.0f} MB {b['graph_tasks']} tasks; same values: "
                  f"{a['checksum'] == b['checksum']}")
            c = results.get(f"loader-stackstacband-{fmt}")
            if c:
                print(f"  stackstac one chunk per tile band: {c['seconds']:.2f} s {c['peak_mb']:.0f} MB "
                      f"{c['graph_tasks']} tasks; same values: {a['checksum'] == c['checksum']}")
    tiles = [results[c] for c in results if c.startswith("tiles-")]
    if tiles:
        print("tiles: " + "; ".join(f"{r['tiles']} -> {r['peak_mb']:.0f} MB peak, {r['seconds_per_tile']:.2f} s/tile"
                                    for r in tiles))


if __name__ == "__main__":
    main()
