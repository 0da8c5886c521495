"""A quicklook PNG of a class map, read from its overviews: a title (country or map name, season, model,
the score when the map was scored, and the credit line: the Copernicus Sentinel attribution and the
map's licence), coordinates in kilometres of the map's CRS, a scale bar and a legend below the map.
The credit is also the PNG's ``Copyright`` text. Nothing is drawn over the map but the scale bar.
A map scored after its mosaic gets its quicklook drawn again with the score (:func:`rescore_quicklook`)."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import rasterio
from matplotlib.patches import Patch
from rasterio.enums import Resampling

from cropmap.core.season import Season
from cropmap.io import downloads, outputs, storage
from cropmap.io.outputs import atomic_path
from cropmap.stages.predict import NODATA
from cropmap.stages.stac_assets import multihash_sha256
from cropmap.stages.stac_item import credit_line, scene_years, season_years
from cropmap.stages.tile_files import class_legend

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the file-only backend

__all__ = ["write_quicklook", "quicklook_title", "rescore_quicklook"]


def _title(stem: str, tags: dict) -> str:
    """``<map> - <season> <year> - model <name>`` from the COG's tags (parts it lacks left out)."""
    parts = [stem]
    if "season" in tags:
        try:
            season = Season(**json.loads(tags["season"]))
            parts.append(f"season {season.start}..{season.end} {tags.get('season_year', '')}".strip())
        except (ValueError, TypeError):
            pass
    if tags.get("model_name"):
        parts.append(f"model {tags['model_name']}")
    return " - ".join(parts)


def _score_line(score: Mapping) -> str:
    """``scored: OA 0.912, macro-F1 0.845 on 12,345 reference pixels`` from a score of
    :func:`cropmap.jobs.scoring.score_class_map` or ``accuracy.json`` (figures it lacks left out)."""
    labels = {"oa": "OA", "macro_f1": "macro-F1", "kappa": "kappa"}
    given = {key: float(score[key]) for key in labels if score.get(key) is not None}
    # NaN: a map scored on no pixel, or kappa of one class everywhere
    figures = [f"{labels[key]} {value:.3f}" for key, value in given.items() if math.isfinite(value)]
    pixels = score.get("n", score.get("pixels"))
    on = f" on {int(pixels):,} reference pixels" if pixels else ""
    return f"scored: {', '.join(figures)}{on}" if figures else ""


def quicklook_title(stem: str, tags: Mapping[str, str], *, place: str | None = None, score: Mapping | None = None,
                    years: Sequence[int] | None = None) -> str:
    """The quicklook's title, one item a line: ``<place or map> - season <start..end> <year> - model <name>``,
    the score (``score``: OA, macro-F1, kappa, pixels) when the map was scored, and the credit line
    (:func:`cropmap.stages.stac_item.credit_line`) of the scenes' ``years`` (default: those of the map's
    season window, from its ``tags``)."""
    lines = [_title(place or stem, dict(tags)), _score_line(score) if score else "",
             credit_line(years if years else scene_years(tags))]
    return "\n".join(line for line in lines if line)


def scale_bar_length(width_m: float) -> float:
    """A round scale bar length (1, 2 or 5 x 10^k metres) of about a fifth of ``width_m``."""
    target = max(width_m / 5, 1e-9)
    base = 10 ** math.floor(math.log10(target))
    return max(m * base for m in (1, 2, 5) if m * base <= target) if target >= base else base


def write_quicklook(class_cog: str | Path, path: str | Path, *, max_pixels: int = 1024, title: str | None = None,
                    years: Sequence[int] | None = None, place: str | None = None,
                    score: Mapping | None = None) -> Path:
    """A PNG of the class map (at most ``max_pixels`` on the long side, read from the overviews with
    mode resampling) under its :func:`quicklook_title` (``place``: the country's name, else the map's;
    ``score``: the map's score, when scored; ``years``: the scenes' years for the credit) or ``title``
    in its stead (the credit line still below it), axes in km of the map's CRS, a scale bar, and a
    legend of the classes it shows below the map."""
    names, colours = class_legend(Path(class_cog))
    with rasterio.open(class_cog) as src:
        scale = max(src.width, src.height) / max_pixels
        shape = (max(1, round(src.height / max(scale, 1))), max(1, round(src.width / max(scale, 1))))
        data = src.read(1, out_shape=shape, resampling=Resampling.mode)
        bounds, crs, tags = src.bounds, src.crs, src.tags()
    lut = np.zeros((256, 4), dtype=np.uint8)
    for k, c in colours.items():
        lut[k] = c
    lut[NODATA] = (0, 0, 0, 0)
    fig, ax = plt.subplots(figsize=(8, 8 * shape[0] / shape[1] + 1), dpi=100)
    km = (bounds.left / 1e3, bounds.right / 1e3, bounds.bottom / 1e3, bounds.top / 1e3)
    ax.imshow(lut[data], interpolation="nearest", extent=km)
    epsg = crs.to_epsg() if crs else None
    unit = f"km, EPSG:{epsg}" if epsg else "km"
    ax.set_xlabel(f"easting ({unit})", fontsize=8)
    ax.set_ylabel(f"northing ({unit})", fontsize=8)
    ax.tick_params(labelsize=7)
    # the credit in the title, not only in the metadata: a quicklook is shared alone, and its source must
    # go with it; in the title it covers no pixel of the map (a corner box hid the map's south-east)
    credit = credit_line(years if years else scene_years(tags))
    heading = (f"{title}\n{credit}" if title else
               quicklook_title(Path(class_cog).stem, tags, place=place, score=score, years=years))
    ax.set_title(heading, fontsize=10)
    bar = scale_bar_length(bounds.right - bounds.left) / 1e3
    x0 = km[0] + 0.05 * (km[1] - km[0])
    y0 = km[2] + 0.05 * (km[3] - km[2])
    ax.plot([x0, x0 + bar], [y0, y0], color="k", linewidth=4, solid_capstyle="butt")
    ax.text(x0 + bar / 2, y0 + 0.02 * (km[3] - km[2]), f"{bar:g} km", ha="center", va="bottom", fontsize=8,
            bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})
    present = [i for i in range(len(names)) if (data == i).any()]
    handles = [Patch(facecolor=np.array(colours.get(i, (0, 0, 0, 255))) / 255, edgecolor="k", label=names[i])
               for i in present]
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=min(4, len(handles)),
                  frameon=False, fontsize=9)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, bbox_inches="tight", metadata={"Software": None, "Copyright": credit,
                                                     "Title": " - ".join(heading.split("\n")[:-1])})
    plt.close(fig)
    return path


def rescore_quicklook(out_dir: storage.Location, name: str, *, score: Mapping,
                      place: str | None = None) -> storage.Location | None:
    """Draw the quicklook of the map whose STAC item is ``<out_dir>/<name>.json`` again with its ``score``
    (:func:`write_quicklook`; the credit of the item's datetimes, as its ``cropmap:attribution``) and publish
    it over the same file, then the item with the quicklook asset's new ``file:size`` and ``file:checksum``
    (its href is unchanged), the item last. ``out_dir``: a folder or an fsspec URL. Returns the quicklook's
    location; None when there is no item, or it lists no quicklook."""
    item_location = storage.join(out_dir, f"{name}.json")
    if not storage.exists(item_location):
        return None
    item = json.loads(storage.read_bytes(item_location))
    assets = item.get("assets", {})
    if "quicklook" not in assets or "class" not in assets:
        return None
    quicklook = storage.join(out_dir, assets["quicklook"]["href"].removeprefix("./"))
    class_cog = downloads.local_copy(storage.join(out_dir, assets["class"]["href"].removeprefix("./")))
    props = item.get("properties", {})
    start, end = props.get("start_datetime"), props.get("end_datetime")
    with tempfile.TemporaryDirectory(prefix="cropmap-quicklook-") as tmp:
        png = write_quicklook(class_cog, Path(tmp) / storage.basename(quicklook), place=place, score=score,
                              years=season_years(start, end) if start and end else None)
        asset = assets["quicklook"]
        if "file:size" in asset or "file:checksum" in asset:  # the item must describe the bytes it points at
            asset["file:size"], asset["file:checksum"] = png.stat().st_size, multihash_sha256(png)
        outputs.publish(png, quicklook)
    outputs.write_text(item_location, json.dumps(item, indent=2) + "\n")
    return quicklook
