"""The national mosaic's peak memory and time at 1x, 4x and 16x the area, with tiles in two UTM zones.

Two zone COGs (EPSG:32754 and 32755, side by side at the 144 E border near Horsham) are made from a real
DEMO class and confidence map (the map-country DEMO output, tiled to the size asked for), then
:func:`cropmap.stages.national.national_mosaic` warps them into EPSG:3577, in a fresh process per size
so that its peak RSS is its own. Peak memory must not grow with the area (it is bounded by a window), and
the seconds per output megapixel must not either.

Layouts: ``border`` (default) grows each zone's block away from the border, as a country's zones do:
the overlap strip stays ~9 km wide (at 1x, 40 % of a block's width; at 16x, 10 %). ``nested`` (the
layout before issue 35) grows both blocks eastwards from the same left edges, so at 16x they overlap over
95 % of their width and most output pixels are read from both zones and fall under the zone rule: the
code before issue 35 took 1.7x longer per output megapixel at 16x than at 1x in this layout.

    .venv/bin/python bench/national_mosaic.py DEMO_MAPS_DIR [--sizes 1 4 16] [--base 2048]
        [--layout border|nested] [--threads N] [--baseline OTHER_CHECKOUT]

DEMO_MAPS_DIR: a folder holding DEMO_32754_class.tif and DEMO_32754_confidence.tif (`cropmap demo run`).
``--baseline``: a checkout of another commit (e.g. ``git worktree add /tmp/base HEAD``): each size also runs
its ``national_mosaic`` on the same zone COGs (the two take turns, the baseline first) and the pixels of
both national COGs are compared. Prints one line per size and code: zone size in pixels, national
megapixels, seconds, s per output Mpx, s per input Mpx (both zones' pixels), CPU-s (all threads) per
output Mpx, peak RSS (MiB).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

EPSGS = {32754: 760_000.0, 32755: 236_000.0}  # left x of each zone's block at 1x: both sides of 144 E
TOP = 5_950_000.0
BASE = 2048  # zone side (px) at 1x


def make_zone_cogs(demo_maps: Path, out: Path, size: int, layout: str = "border") -> dict[int, dict[str, str]]:
    """``size x size`` COGs per zone and product, the DEMO map repeated (real predicted classes); with the
    ``border`` layout the western zone's block keeps its 1x right edge and grows westwards."""
    from cropmap.stages.mosaic import write_cog

    zones: dict[int, dict[str, str]] = {}
    for product in ("class", "confidence"):
        with rasterio.open(demo_maps / f"DEMO_32754_{product}.tif") as src:
            block, tags, cmap = src.read(1), src.tags(), (src.colormap(1) if product == "class" else None)
        data = np.tile(block, (-(-size // block.shape[0]), -(-size // block.shape[1])))[:size, :size]
        for epsg, left in EPSGS.items():
            if layout == "border" and epsg == min(EPSGS):
                left += (BASE - size) * 10.0
            raw = out / f"raw_{epsg}_{product}.tif"
            with rasterio.open(raw, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint8",
                               crs=f"EPSG:{epsg}", transform=from_origin(left, TOP, 10, 10), nodata=255,
                               tiled=True, blockxsize=512, blockysize=512, compress="deflate") as dst:
                dst.write(data, 1)
                dst.update_tags(**tags)
                if cmap:
                    dst.write_colormap(1, cmap)
            cog = out / f"Z_{epsg}_{product}.tif"
            write_cog(raw, cog, resampling="mode" if product == "class" else "average", colormap=cmap,
                      tags={k: v for k, v in tags.items() if k in ("class_names", "season", "season_year")})
            raw.unlink()
            zones.setdefault(epsg, {})[product] = str(cog)
    return zones


def _child(zones_json: str, out: str, threads: int, code: str = "") -> None:
    if code:  # the other checkout's cropmap, ahead of this one's editable install (a finder on sys.meta_path)
        sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
        sys.path.insert(0, code)
    import cropmap.stages.national as national

    zones = {int(k): v for k, v in json.loads(zones_json).items()}
    options = {"threads": threads} if threads else {}  # a baseline without the option runs its default
    if "threads" not in inspect.signature(national.national_mosaic).parameters:
        options = {}
    started, cpu = time.perf_counter(), time.process_time()
    result = national.national_mosaic(zones, out, name="NAT", crs="EPSG:3577", **options)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    with rasterio.open(result.cogs["class"]) as n:
        shape = n.shape
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_mib": peak, "national": shape,
                      "code": national.__file__,
                      "cogs": {p: str(c) for p, c in result.cogs.items()}}))


def _run(zones: dict, out: Path, threads: int, code: Path | None = None) -> dict:
    """One ``national_mosaic`` in a fresh process (its own peak RSS), of the checkout ``code`` if given."""
    run = subprocess.run([sys.executable, __file__, "--child", json.dumps(zones), str(out), str(threads),
                          str(code or "")], capture_output=True, text=True, check=True)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    if code and not result["code"].startswith(str(code.resolve())):
        raise SystemExit(f"the baseline ran {result['code']}, not the code in {code}")
    return result


def _same_pixels(a: dict, b: dict) -> bool:
    """Whether two runs' national COGs hold the same grid and pixels, product by product."""
    for product in a["cogs"]:
        with rasterio.open(a["cogs"][product]) as x, rasterio.open(b["cogs"][product]) as y:
            if x.transform != y.transform or x.shape != y.shape or not np.array_equal(x.read(), y.read()):
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("demo_maps", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--base", type=int, default=BASE, help="zone side in pixels at 1x")
    parser.add_argument("--layout", choices=("border", "nested"), default="border")
    parser.add_argument("--threads", type=int, default=0, help="windows warped at once (0: the default)")
    parser.add_argument("--baseline", type=Path, help="another checkout whose national_mosaic runs in turn")
    parser.add_argument("--record", action="store_true", help="write the largest size's s/output Mpx into the cost "
                        "figures as mosaic_national_s_per_mpx (cropmap.jobs.cost_model.record_figure)")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, rasterio {rasterio.__version__}, "
          f"GDAL {rasterio.__gdal_version__}; window 2048 px; two zones, EPSG:3577 output; layout {args.layout}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| code | size | zone px | national Mpx | s | s/output Mpx | s/input Mpx | CPU-s/output Mpx | peak RSS MiB |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    last = None
    for factor in args.sizes:
        side = int(round(args.base * factor ** 0.5))
        with tempfile.TemporaryDirectory(prefix="cropmap-bench-national-") as tmp:
            zones = make_zone_cogs(args.demo_maps, Path(tmp), side, args.layout)
            runs = {}
            if args.baseline:
                runs["baseline"] = _run(zones, Path(tmp) / "base", args.threads, args.baseline)
            runs["this"] = _run(zones, Path(tmp) / "out", args.threads)
            for code, r in runs.items():
                mpx = r["national"][0] * r["national"][1] / 1e6
                print(f"| {code} | {factor}x | 2 x {side} x {side} | {mpx:.1f} | {r['seconds']:.1f} | "
                      f"{r['seconds'] / mpx:.3f} | {r['seconds'] / (2 * side * side / 1e6):.3f} | "
                      f"{r['cpu_seconds'] / mpx:.3f} | {r['peak_mib']:.0f} |", flush=True)
            last = (factor, runs["this"]["seconds"] / (runs["this"]["national"][0] * runs["this"]["national"][1] / 1e6))
            if args.baseline:
                print(f"#   {factor}x: same pixels as the baseline: {_same_pixels(runs['baseline'], runs['this'])}; "
                      f"load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.record and last is not None:
        from cropmap.jobs.cost_model import record_figure

        where = record_figure("mosaic_national_s_per_mpx", round(last[1], 3),
                              unit="s per output megapixel, class + confidence, one process",
                              source=f"bench/national_mosaic.py, {last[0]}x, layout {args.layout}, load "
                                     f"{os.getloadavg()[0]:.1f}",
                              command="python bench/national_mosaic.py " + " ".join(sys.argv[1:]))
        print(f"# recorded mosaic_national_s_per_mpx = {last[1]:.3f} in {where}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:4], int(sys.argv[4]), *sys.argv[5:6])
    else:
        main()
