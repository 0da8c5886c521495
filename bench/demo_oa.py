"""DEMO east-half OA of training settings (docs/demo.md, "Why the DEMO east-half OA ..."): the pipeline
steps of the train-model flow on the west half, every tile predicted and mosaicked, scored on both halves.

    .venv/bin/python bench/demo_oa.py [WORK_DIR]      # default /tmp/cropmap-demo-oa; ~1 min per setting

Uses ``$CROPMAP_DEMO_DIR`` (the demo is built there if missing). Prints one line per setting.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from cropmap import pipeline
from cropmap.demo import DemoPaths, default_demo_dir, part_bounds, read_layout
from cropmap.mosaic import mosaic_tiles
from cropmap.predict import predict_tile

SLIM = pipeline.DEMO_TRAINING["model_options"]
SETTINGS = {  # name: (samples per cell and class, epochs, augmentation)
    "none": (1, 30, "none"),
    "all": (1, 30, "all"),
    "none-4-per-cell": (4, 30, "none"),
    "shift+scale": (1, 30, "shift+scale"),
    "all-60-epochs": (1, 60, "all"),
}


def main(work: Path) -> None:
    config = pipeline.resolve_country("DEMO")
    paths = DemoPaths(default_demo_dir())
    layout = read_layout(paths.root)
    west, east = part_bounds(layout, "west"), part_bounds(layout, "east")
    cubes = {t: pipeline.build_tile(config, t, work / "cubes")["path"] for t in pipeline.country_tiles(config)}
    west_cubes = [cubes[t] for t in pipeline.country_tiles(config, bounds=west)]
    for name, (per_cell, epochs, augment) in SETTINGS.items():
        started = time.perf_counter()
        samples = pipeline.training_set(paths.reference, west_cubes, work / f"samples-{per_cell}.nc", region="DEMO",
                                        cell_deg=pipeline.DEMO_TRAINING["cell_deg"], per_cell=per_cell, bounds=west)
        model = pipeline.train_checkpoint(samples["path"], work / f"{name}.pt", threads=1, train_config={
            "model_options": SLIM, "epochs": epochs, "lr": 1e-3, "batch_size": 64, "augment": augment,
            "progress": False})
        seconds = time.perf_counter() - started
        for cube in cubes.values():
            predict_tile(model["path"], cube, work / f"tiles-{name}")
        class_map = mosaic_tiles(work / f"tiles-{name}", work / f"maps-{name}", name="DEMO").cogs["class"]
        oa = {part: pipeline.score_class_map(class_map, paths.reference, bounds=b)["oa"]
              for part, b in (("west", west), ("east", east))}
        print(f"{name}: {samples['n_samples']} samples, train {seconds:.0f} s, validation macro-F1 "
              f"{model['scores']['val_macro_f1']:.3f}, west OA {oa['west']:.3f}, east OA {oa['east']:.3f}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/cropmap-demo-oa"))
