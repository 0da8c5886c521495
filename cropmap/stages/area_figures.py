"""The area tables as pictures, beside their CSVs: the estimates (mapped vs area-adjusted hectares with
their 95 % CIs), the error matrix in area proportions, and the mapped hectares per admin unit.

Colours are the class map's own colour table (the classes look as they do on the map); a class the
table lacks gets grey. Legends sit outside the axes (below or to the right, constrained layout), never
over a bar.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.patches import Patch
import pandas as pd

from cropmap.io.outputs import atomic_path

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the file-only backend

__all__ = ["class_colours", "plot_area_estimates", "plot_zonal_areas", "MAX_UNITS"]

#: Units drawn in a per-unit picture: the largest by mapped area (a country's 500 districts would not
#: read as bars; the CSV holds them all, and the title says how many are left out).
MAX_UNITS = 40
_GREY = (0.6, 0.6, 0.6, 1.0)


def class_colours(names: Sequence[str], colormap: Mapping[int, Sequence[int]] | None) -> list[tuple]:
    """Matplotlib RGBA (0..1) of each class ``names[k]`` from a GDAL colour table (value -> 0..255 RGBA)."""
    table = colormap or {}
    return [tuple(c / 255 for c in table[k]) if k in table and table[k][3] > 0 else _GREY for k in range(len(names))]


def plot_area_estimates(table: pd.DataFrame, png: str | Path, *, colours: Sequence[tuple], title: str) -> Path:
    """One row per class of :func:`cropmap.stages.area.area_table`: the mapped hectares (hatched) and the
    area-adjusted hectares (solid) with their 95 % CI as error bars. Shape: ``len(table)`` bar pairs."""
    k = len(table)
    y = np.arange(k)
    fig, ax = plt.subplots(figsize=(7.5, 1.6 + 0.45 * k), layout="constrained")
    ax.barh(y - 0.2, table["mapped_ha"], height=0.38, color=colours, alpha=0.45, hatch="//", edgecolor="0.3")
    ax.barh(y + 0.2, table["area_ha"], height=0.38, color=colours, edgecolor="0.2",
            xerr=table["area_ci95_ha"], error_kw={"ecolor": "black", "capsize": 3, "lw": 1})
    ax.set_yticks(y, table["class"])
    ax.invert_yaxis()
    ax.set_xlabel("hectares")
    ax.set_xlim(left=0)
    ax.grid(axis="x", lw=0.3)
    fig.legend(handles=[Patch(facecolor="0.75", hatch="//", edgecolor="0.3", label="mapped (pixel count)"),
                        Patch(facecolor="0.45", edgecolor="0.2", label="area-adjusted, 95 % CI")],
               fontsize=7, loc="outside lower center", ncols=2, frameon=False)
    ax.set_title(title, fontsize=9)
    return _save(fig, png)


def plot_zonal_areas(table: pd.DataFrame, field: str, png: str | Path, *, class_names: Sequence[str],
                     class_columns: Sequence[str], colours: Sequence[tuple], title: str) -> Path:
    """Mapped hectares of each class (stacked, the map's colours; ``class_columns[k]`` holds class
    ``class_names[k]``) in each unit of :func:`cropmap.stages.area_zonal.zonal_areas`, the :data:`MAX_UNITS`
    largest units by mapped area, then the unit's unmapped hectares (``nodata_ha`` + ``outside_map_ha``,
    an empty bar) so that a partly mapped unit reads as one."""
    shown = table.sort_values("mapped_ha", ascending=False).head(MAX_UNITS)
    left_out = len(table) - len(shown)
    y = np.arange(len(shown))
    fig, ax = plt.subplots(figsize=(8.5, 1.6 + 0.35 * len(shown)), layout="constrained")
    start = np.zeros(len(shown))
    for name, column, colour in zip(class_names, class_columns, colours):
        values = shown[column].to_numpy(float)
        if values.any():
            ax.barh(y, values, left=start, color=colour, edgecolor="0.3", lw=0.3, label=name)
            start += values
    unmapped = sum(shown[c].to_numpy(float) for c in ("nodata_ha", "outside_map_ha") if c in shown)
    if np.any(unmapped):
        ax.barh(y, unmapped, left=start, color="white", edgecolor="0.3", lw=0.5, hatch="..", label="not mapped")
    ax.set_yticks(y, shown[field].astype(str))
    ax.invert_yaxis()
    ax.set_xlabel("hectares (pixel counts, not area-adjusted)")
    ax.grid(axis="x", lw=0.3)
    if ax.get_legend_handles_labels()[0]:  # a map with nothing in the units draws no bar to name
        fig.legend(fontsize=7, loc="outside right upper", frameon=False)
    ax.set_title(title + (f" ({len(shown)} largest of {len(table)} units)" if left_out else ""), fontsize=9)
    return _save(fig, png)


def _save(fig, png: str | Path) -> Path:
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(png)
