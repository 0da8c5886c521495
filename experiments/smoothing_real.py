"""Spatial smoothing on the REAL scenes (issue 37 part 2): what it does to a map of real Sentinel-2 scenes that
nothing scores (there is no reference for them), as speckle: appended to docs/results/smoothing.md.

Per seed: the REAL scenario's 4-band checkpoint trained with that seed (:func:`cropmap.scenarios.real.
train_real_checkpoint`: Victoria series moved six months, the scenario's CPU-sized settings), the config's two
``drava`` tiles mapped with per-class probabilities (:func:`cropmap.jobs.mapping.map_country`, inline) from the
ten real Earth Search items behind a STAC API on 127.0.0.1 (``rustac serve``, as tests/http_servers.py serves
them), then the same tiles mosaicked per smoothing (:func:`cropmap.stages.mosaic.mosaic_tiles`). Per map:
the share of mapped pixels whose class differs from every one of their 8 neighbours' (isolated pixels), the
mean size of the 8-connected same-class patches (pixels), and the share of pixels whose class the smoothing
changed.

    .venv/bin/python experiments/smoothing_real.py [--seeds 0 1 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import rasterio
from scipy import ndimage

from cropmap.core.smoothing import BayesSmoothing
from cropmap.io.config import load_country
from cropmap.jobs.executors import InlineExecutor
from cropmap.jobs.mapping import map_country
from cropmap.scenarios import resolve_run
from cropmap.scenarios.real import REAL_TRAINING, train_real_checkpoint
from cropmap.stages.mosaic import mosaic_tiles

REPO = Path(__file__).resolve().parents[1]
SMOOTHINGS = {"none": None, "bayes-9": BayesSmoothing(window=9), "bayes-5": BayesSmoothing(window=5),
              "bayes-5-all": BayesSmoothing(window=5, neigh_fraction=1.0)}
NODATA = 255


def speckle(classes: np.ndarray) -> tuple[float, float]:
    """(share of mapped pixels unlike all 8 neighbours, mean 8-connected same-class patch size in pixels)."""
    mapped = classes != NODATA
    padded = np.pad(classes.astype(np.int16), 1, constant_values=-1)
    h, w = classes.shape
    same = np.zeros(classes.shape, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                same |= padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] == classes
    isolated = float((~same & mapped).sum() / max(mapped.sum(), 1))
    patches = sum(ndimage.label(classes == c, structure=np.ones((3, 3)))[1] for c in np.unique(classes[mapped]))
    return isolated, float(mapped.sum() / max(patches, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("/tmp/cropmap-smoothing-real"))
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "tests"))  # the STAC API the tests serve the scenes with
    from http_servers import stac_api_server

    shared = Path(os.environ.get("CROPMAP_DATA_DIR", REPO.parent / "shared" / "data"))
    configs = args.out / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    rows = []
    with stac_api_server(shared / "s2_l2a_stac" / "catalog.json", None, args.out) as (url, _):
        text = (REPO / "cropmap" / "configs" / "countries" / "REAL.yaml").read_text()
        (configs / "REAL.yaml").write_text(text.replace("http://127.0.0.1:8765", url))
        os.environ["CROPMAP_CONFIGS_DIR"] = str(configs)
        for seed in args.seeds:
            settings = REAL_TRAINING.model_copy(update={"seed": seed})
            model = train_real_checkpoint(args.out / f"real-{seed}.pt", config=load_country("REAL", configs),
                                          settings=settings).path
            run = resolve_run("REAL", out_dir=str(args.out / f"runs-{seed}"), parts=["drava"], model=model,
                              predict={"probabilities": True})
            result = map_country(run, InlineExecutor(), model=model)
            tiles = run.tile_dir(result.key)
            base = None
            for name, smoothing in SMOOTHINGS.items():
                out = mosaic_tiles(tiles, args.out / f"maps-{seed}" / name, name="REAL", smoothing=smoothing,
                                   stac=False, quicklook=False)
                with rasterio.open(out.cogs["class"]) as src:
                    classes = src.read(1)
                base = classes if base is None else base
                isolated, patch = speckle(classes)
                mapped = classes != NODATA
                changed = float((classes[mapped] != base[mapped]).mean())
                rows.append((seed, name, int(mapped.sum()), isolated, patch, changed))
                print(f"seed {seed} {name}: {mapped.sum()} px mapped, isolated {isolated:.4f}, mean patch "
                      f"{patch:.1f} px, changed {changed:.4f}", flush=True)
    print("\n| smoothing | isolated pixels (share of mapped) | mean patch (px) | class changed vs none |")
    print("|---|---|---|---|")
    for name in SMOOTHINGS:
        got = np.array([r[3:] for r in rows if r[1] == name])
        print(f"| {name} | {got[:, 0].mean():.4f} ± {got[:, 0].std():.4f} | {got[:, 1].mean():.1f} ± "
              f"{got[:, 1].std():.1f} | {got[:, 2].mean():.4f} ± {got[:, 2].std():.4f} |")


if __name__ == "__main__":
    main()
