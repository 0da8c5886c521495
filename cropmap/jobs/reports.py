"""What a country run says about itself, as text: its plan (parts, hemispheres, tiles, seasons) before any
work, and its products after. The flows print these lines; the CLI prints them too."""

from __future__ import annotations

import base64
import json

from cropmap.io import storage
from cropmap.jobs.country_run import CountryRun
from cropmap.jobs.mapping import MapResult

__all__ = ["plan_table", "map_lines", "quicklook_markdown"]

#: Largest quicklook embedded in a markdown artifact (bytes); a larger one is described instead.
EMBED_LIMIT = 2_000_000


def quicklook_markdown(quicklook: storage.Location | None, *, title: str = "quicklook") -> str:
    """The quicklook PNG as markdown that renders where the file cannot be reached (the Prefect UI is
    served elsewhere, so a ``file://`` link shows nothing): the image inline as a ``data:`` URI up to
    :data:`EMBED_LIMIT` bytes, an ``https://`` link as it is, otherwise a line naming where it lies."""
    if quicklook is None:
        return f"_{title}: none written_"
    text = str(quicklook)
    if text.startswith(("https://", "http://")):
        return f"![{title}]({text})"
    try:
        data = storage.read_bytes(quicklook)
    except (OSError, FileNotFoundError):
        return f"_{title}: `{text}` (not readable from here)_"
    if len(data) > EMBED_LIMIT:
        return f"_{title}: `{text}` ({len(data) / 1e6:.1f} MB, too large to embed)_"
    return f"![{title}](data:image/png;base64,{base64.b64encode(data).decode()})"


def plan_table(run: CountryRun) -> str:
    """One line per outline part and side of the equator: tiles and season (the season each tile gets)."""
    rows = [("part", "hemisphere", "tiles", "season")]
    rows += [(p.part, p.hemisphere, f"~{p.tiles:,}" if p.estimated else str(p.tiles), f"{p.season.describe()} {run.year}")
             for p in run.parts_plan()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"{run.config.name} {run.year}: output CRS {run.config.output_crs}; outputs in {run.root}"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _item_properties(item: storage.Location | None) -> dict:
    """The ``properties`` of the STAC item at ``item`` ({} without one)."""
    return {} if item is None else json.loads(storage.read_bytes(item)).get("properties", {})


def map_lines(result: MapResult) -> list[str]:
    """Where the products are, zone by zone and national, with the season offsets and the score."""
    lines = []
    for epsg, zone in result.zones.items():
        lines.append(f"zone EPSG:{epsg}:  {zone.cogs['class']} ({len(zone.tile_ids)} tiles)")
    for epsg, reason in result.zone_failures.items():
        lines.append(f"zone EPSG:{epsg}:  FAILED: {reason}")
    if result.mosaic is not None:
        lines += [f"national class:      {result.mosaic.cogs['class']}",
                  f"national confidence: {result.mosaic.cogs.get('confidence')}"]
        if "ood" in result.mosaic.cogs:
            share = _item_properties(result.mosaic.stac_item).get("cropmap:ood_flagged_share")
            lines.append(f"national OOD score:  {result.mosaic.cogs['ood']}"
                         + ("" if share is None else f" ({share:.1%} of the mapped pixels out of the training "
                                                     "distribution)"))
        lines += [f"STAC item:           {result.mosaic.stac_item}",
                  f"quicklook:           {result.mosaic.quicklook}"]
        props = _item_properties(result.mosaic.stac_item)
        if props.get("cropmap:attribution"):  # whoever shares the map from this summary shares its credit
            lines.append(f"data licence:        {props['cropmap:attribution']}; map licence {props.get('license')}")
    offsets = ", ".join(f"{h} {m} months" for h, m in result.season_offsets.items())
    lines.append(f"model:               {result.model} (season offset: {offsets})")
    if result.accuracy is not None:
        acc = result.accuracy
        lines.append(f"accuracy:            {result.accuracy_path}: " + (
            f"OA {acc['oa']:.3f}, balanced accuracy {acc['balanced_accuracy']:.3f}, macro-F1 {acc['macro_f1']:.3f} "
            f"({acc['n']} pixels of the scored area)" if acc["n"]
            else "not scored: the mapped tiles hold no pixel of the scored area"))
        if acc["n"] and acc.get("recall"):
            lines.append("recall by class:     " + ", ".join(f"{k} {v:.2f}" for k, v in acc["recall"].items()))
        for layer, d in acc.get("error_detection", {}).items():
            lines.append(f"errors by {layer}:{' ' * max(1, 10 - len(layer))}AUROC {d['auroc_errors']:.3f}; OA of the "
                         f"80 % most trusted pixels {d['oa_at_80']:.3f}, of 95 % {d['oa_at_95']:.3f}")
    for product, location in result.area.items():
        lines.append(f"area ({product}):{' ' * max(1, 12 - len(product))}{location}")
    lines.append(f"tiles:               {result.tiles.describe()}")
    return lines
