"""The national mosaic's peak memory and time at 1x, 4x and 16x the area, with tiles in two UTM zones.

Two zone COGs (EPSG:32754 and 32755, side by side at the 144 E border near Horsham) are made from a real
DEMO class and confidence map (the map-country DEMO output, tiled to the size asked for), then
:func:`cropmap.stages.national.national_mosaic` warps them into EPSG:3577, in a fresh process per size
so that its peak RSS is its own. Peak memory must not grow with the area (it is bounded by a window).

    .venv/bin/python bench/national_mosaic.py DEMO_MAPS_DIR [--sizes 1 4 16] [--base 2048]

DEMO_MAPS_DIR: a folder holding DEMO_32754_class.tif and DEMO_32754_confidence.tif (`cropmap demo run`).
Prints one line per size: zone size in pixels, national size, seconds, peak RSS (MiB).
"""

from __future__ import annotations

import argparse
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

EPSGS = {32754: 760_000.0, 32755: 236_000.0}  # left x of each zone's block: both sides of 144 E
TOP = 5_950_000.0


def make_zone_cogs(demo_maps: Path, out: Path, size: int) -> dict[int, dict[str, str]]:
    """``size x size`` COGs per zone and product, the DEMO map repeated (real predicted classes)."""
    from cropmap.stages.mosaic import write_cog

    zones: dict[int, dict[str, str]] = {}
    for product in ("class", "confidence"):
        with rasterio.open(demo_maps / f"DEMO_32754_{product}.tif") as src:
            block, tags, cmap = src.read(1), src.tags(), (src.colormap(1) if product == "class" else None)
        data = np.tile(block, (-(-size // block.shape[0]), -(-size // block.shape[1])))[:size, :size]
        for epsg, left in EPSGS.items():
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


def _child(zones_json: str, out: str) -> None:
    from cropmap.stages.national import national_mosaic

    zones = {int(k): v for k, v in json.loads(zones_json).items()}
    started = time.perf_counter()
    result = national_mosaic(zones, out, name="NAT", crs="EPSG:3577")
    seconds = time.perf_counter() - started
    with rasterio.open(result.cogs["class"]) as n:
        shape = n.shape
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "national": shape}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("demo_maps", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--base", type=int, default=2048, help="zone side in pixels at 1x")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, rasterio {rasterio.__version__}, "
          f"GDAL {rasterio.__gdal_version__}; window 2048 px; two zones, EPSG:3577 output")
    for factor in args.sizes:
        side = int(round(args.base * factor ** 0.5))
        with tempfile.TemporaryDirectory(prefix="cropmap-bench-national-") as tmp:
            zones = make_zone_cogs(args.demo_maps, Path(tmp), side)
            run = subprocess.run([sys.executable, __file__, "--child", json.dumps(zones), str(Path(tmp) / "out")],
                                 capture_output=True, text=True, check=True)
            r = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"{factor:>3}x  zones 2 x {side} x {side} px  national {r['national'][0]} x {r['national'][1]} px  "
              f"{r['seconds']:7.1f} s  peak RSS {r['peak_mib']:7.0f} MiB", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3])
    else:
        main()
