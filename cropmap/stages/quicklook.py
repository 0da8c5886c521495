"""A quicklook PNG of a class map, read from its overviews, with a legend."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import rasterio
from matplotlib.patches import Patch
from rasterio.enums import Resampling

from cropmap.io.storage import atomic_path
from cropmap.stages.predict import NODATA
from cropmap.stages.tile_files import class_legend

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the file-only backend

__all__ = ["write_quicklook"]


def write_quicklook(class_cog: str | Path, path: str | Path, *, max_pixels: int = 1024) -> Path:
    """A PNG of the class map (at most ``max_pixels`` on the long side, read from the overviews with
    mode resampling) with a legend of the classes it shows."""
    names, colours = class_legend(Path(class_cog))
    with rasterio.open(class_cog) as src:
        scale = max(src.width, src.height) / max_pixels
        shape = (max(1, round(src.height / max(scale, 1))), max(1, round(src.width / max(scale, 1))))
        data = src.read(1, out_shape=shape, resampling=Resampling.mode)
    lut = np.zeros((256, 4), dtype=np.uint8)
    for k, c in colours.items():
        lut[k] = c
    lut[NODATA] = (0, 0, 0, 0)
    fig, ax = plt.subplots(figsize=(8, 8 * shape[0] / shape[1] + 1), dpi=100)
    ax.imshow(lut[data], interpolation="nearest")
    ax.set_axis_off()
    present = [i for i in range(len(names)) if (data == i).any()]
    handles = [Patch(facecolor=np.array(colours.get(i, (0, 0, 0, 255))) / 255, edgecolor="k", label=names[i])
               for i in present]
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=min(4, len(handles)),
                  frameon=False, fontsize=9)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path
