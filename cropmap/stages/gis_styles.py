"""GIS-native styles for the map COGs: what QGIS, GDAL and rioxarray show for their values (class names, colours, units) instead of bare numbers.

rio-cogeo builds a COG through rasterio, which has no API for GDAL category names or raster
attribute tables, and a TIFF palette has no alpha channel (GDAL reads entries 8-254 of a class map
as opaque black). So the labels live in GDAL's own sidecar, ``<cog>.aux.xml`` (PAM), which GDAL,
rasterio, rioxarray and QGIS read with the COG:

- class map: category names, a thematic raster attribute table (``Value``, ``Class``, ``Red``,
  ``Green``, ``Blue``, ``Alpha``), the colour table with every entry past the last class (and the
  nodata value) transparent, and CF ``flag_values``/``flag_meanings`` as band metadata (rioxarray
  puts them in ``DataArray.attrs``; no NetCDF is written, so these tags are the CF view);
- confidence and probability: unit ``percent`` (scale 1, offset 0: a value of 87 is 87 %), the
  valid range 0-100 and nodata 255; the probability COG's band ``i`` is class ``i - 1`` (its name in
  ``long_name``);
- OOD: unit ``percent`` of the training threshold (:func:`cropmap.ml.ood.ood_score` x 100, capped at
  254), the valid range 0-254, ``threshold`` 100 (above it: out of the training distribution);
- a QGIS style (``<cog stem>.qml``, which QGIS loads by itself for a raster of the same name) beside
  every product: a paletted renderer with the class names and colours for the class map, a sequential
  pseudocolour ramp (:data:`RAMPS`: viridis over 0-100 % for confidence and probability, yellow to red
  over 0-254 for OOD with a break at the threshold, 100) for the others (band 1 for the probabilities:
  QGIS draws one band, the user picks another class in the layer's properties).

Sidecars are written to a temporary name and renamed, and hold no timestamps.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from cropmap.io.outputs import atomic_path
from cropmap.stages.predict import NODATA

__all__ = ["aux_path", "qml_path", "sidecars", "class_colour_table", "cf_flags", "write_gis_styles", "RAMPS",
           "OOD_THRESHOLD", "VALID_RANGE"]

#: Products whose values are percent (0-100, nodata 255).
PERCENT_PRODUCTS = ("confidence", "probability")
#: The OOD value of a pixel at the training threshold (:func:`cropmap.ml.ood.ood_score` = 1, in percent).
OOD_THRESHOLD = 100
#: Valid values of each continuous product (255 is nodata; OOD is capped at 254 by the inference).
VALID_RANGE = {"confidence": (0, 100), "probability": (0, 100), "ood": (0, 254)}
_VIRIDIS = ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")  # matplotlib's viridis at 0, 1/4 .. 1
#: The QGIS colour ramp of each continuous product: ``(value, #rrggbb, label)`` stops, interpolated between
#: them. OOD: light to orange up to the threshold, then a jump to red (the line QGIS shows at 100).
RAMPS: dict[str, tuple[tuple[int, str, str], ...]] = {
    "confidence": tuple((25 * i, c, f"{25 * i} %") for i, c in enumerate(_VIRIDIS)),
    "probability": tuple((25 * i, c, f"{25 * i} %") for i, c in enumerate(_VIRIDIS)),
    "ood": ((0, "#ffffcc", "0 (at a training class mean)"), (50, "#fed976", "50 % of the threshold"),
            (OOD_THRESHOLD, "#fd8d3c", "100 = training threshold"),
            (OOD_THRESHOLD + 1, "#e31a1c", "> 100: out of distribution"),
            (254, "#800026", ">= 254 (capped)")),
}


def aux_path(cog: str | Path) -> Path:
    """GDAL's PAM sidecar of ``cog``: ``<cog>.aux.xml``."""
    return Path(f"{cog}.aux.xml")


def qml_path(cog: str | Path) -> Path:
    """The QGIS style QGIS loads for ``cog``: ``<cog without .tif>.qml``."""
    return Path(cog).with_suffix(".qml")


def sidecars(cog: str | Path) -> list[Path]:
    """The label sidecars written for ``cog`` that exist (to copy or upload with it)."""
    return [p for p in (aux_path(cog), qml_path(cog)) if p.exists()]


def class_colour_table(n_classes: int, colormap: Mapping[int, Sequence[int]] | None) -> dict[int, tuple[int, int, int, int]]:
    """All 256 entries: classes ``0..n_classes-1`` opaque in their colour (grey when the map has
    none), every other entry (unused values and nodata 255) transparent black ``(0, 0, 0, 0)``."""
    colormap = colormap or {}
    table = {i: (0, 0, 0, 0) for i in range(256)}
    for i in range(n_classes):
        r, g, b = tuple(colormap.get(i, (128, 128, 128)))[:3]
        table[i] = (int(r), int(g), int(b), 255)
    return table


def _meaning(name: str) -> str:
    """A CF flag meaning: blanks and punctuation become underscores (CF: blank-separated words)."""
    return re.sub(r"[^0-9A-Za-z_.+-]+", "_", name).strip("_") or "class"


def cf_flags(names: Sequence[str]) -> dict[str, str]:
    """CF ``flag_values`` (``"0 1 2"``) and ``flag_meanings`` (``"bare_ground canola cereals"``)."""
    return {"flag_values": " ".join(str(i) for i in range(len(names))),
            "flag_meanings": " ".join(_meaning(n) for n in names)}


def _metadata(items: Mapping[str, str]) -> list[str]:
    return (["    <Metadata>"] + [f"      <MDI key={quoteattr(k)}>{escape(str(v))}</MDI>" for k, v in items.items()]
            + ["    </Metadata>"])


def _class_band(names: Sequence[str], table: Mapping[int, tuple[int, int, int, int]]) -> list[str]:
    lines = ['  <PAMRasterBand band="1">', "    <CategoryNames>"]
    lines += [f"      <Category>{escape(n)}</Category>" for n in names]
    lines += ["    </CategoryNames>", "    <ColorTable>"]
    lines += [f'      <Entry c1="{c[0]}" c2="{c[1]}" c3="{c[2]}" c4="{c[3]}"/>' for c in (table[i] for i in range(256))]
    lines += ["    </ColorTable>", '    <GDALRasterAttributeTable tableType="thematic">']
    # GFT_Integer 0 / GFT_String 2; GFU_MinMax 5, GFU_Name 2, GFU_Red..Alpha 6..9
    fields = [("Value", 0, 5), ("Class", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8), ("Alpha", 0, 9)]
    lines += [f'      <FieldDefn index="{i}"><Name>{n}</Name><Type>{t}</Type><Usage>{u}</Usage></FieldDefn>'
              for i, (n, t, u) in enumerate(fields)]
    for i, name in enumerate(names):
        r, g, b, a = table[i]
        lines.append(f'      <Row index="{i}"><F>{i}</F><F>{escape(name)}</F><F>{r}</F><F>{g}</F><F>{b}</F><F>{a}</F></Row>')
    lines.append("    </GDALRasterAttributeTable>")
    lines += _metadata({**cf_flags(names), "long_name": "crop class"})
    lines.append("  </PAMRasterBand>")
    return lines


def _write(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def write_gis_styles(cog: str | Path, *, product: str, names: Sequence[str], colormap: Mapping | None = None,
                 count: int = 1) -> list[Path]:
    """Write the label sidecars of one product COG (see the module docstring); returns their paths.

    ``names``: the class names in value order (``class_names`` tag); ``colormap``: value -> RGB(A) of
    the classes; ``count``: the COG's band count (one per class for ``probability``).
    Products other than class/confidence/probability/ood get none.
    """
    cog = Path(cog)
    head = ["<PAMDataset>"]
    if product == "class":
        table = class_colour_table(len(names), colormap)
        body = _class_band(names, table)
        written = [_write(aux_path(cog), "\n".join(head + body + ["</PAMDataset>"]) + "\n")]
        written.append(_write(qml_path(cog), _qml(_palette(names, table))))
        return written
    if product not in RAMPS:
        return []
    low, high = VALID_RANGE[product]
    body = []
    for b in range(1, count + 1):
        items = {"units": "percent", "valid_range": f"{low} {high}", "nodata": str(NODATA)}
        if product == "confidence":
            items["long_name"] = "confidence (winning class probability)"
        elif product == "probability":
            items.update(long_name=f"probability of {names[b - 1]}", class_value=str(b - 1))
        else:
            items.update(long_name="distance from the training features in percent of the training threshold",
                         threshold=str(OOD_THRESHOLD),
                         comment=f"> {OOD_THRESHOLD}: out of the training distribution; {high}: {high} or more")
        body += [f'  <PAMRasterBand band="{b}">', "    <UnitType>percent</UnitType>"]
        body += _metadata(items)
        body.append("  </PAMRasterBand>")
    return [_write(aux_path(cog), "\n".join(head + body + ["</PAMDataset>"]) + "\n"),
            _write(qml_path(cog), _qml(_pseudocolor(RAMPS[product])))]


def _palette(names: Sequence[str], table: Mapping[int, tuple[int, int, int, int]]) -> str:
    """A paletted renderer: one entry per class."""
    entries = "\n".join(
        f'        <paletteEntry value="{i}" color="#{table[i][0]:02x}{table[i][1]:02x}{table[i][2]:02x}" '
        f'alpha="255" label={quoteattr(n)}/>' for i, n in enumerate(names))
    return f"""    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
{_MINMAX}
      <colorPalette>
{entries}
      </colorPalette>
      <colorramp type="randomcolors" name="[source]"/>
    </rasterrenderer>"""


def _pseudocolor(stops: Sequence[tuple[int, str, str]]) -> str:
    """A single-band pseudocolour renderer of band 1: colours interpolated between ``stops`` (value,
    colour, label), the first stop's value up to the last's (QGIS shows nodata transparent)."""
    low, high = stops[0][0], stops[-1][0]
    items = "\n".join(f'          <item alpha="255" value="{v}" color="{c}" label={quoteattr(label)}/>'
                      for v, c, label in stops)
    return f"""    <rasterrenderer type="singlebandpseudocolor" band="1" opacity="1" alphaBand="-1" nodataColor="" classificationMin="{low}" classificationMax="{high}">
      <rasterTransparency/>
{_MINMAX}
      <rastershader>
        <colorrampshader colorRampType="INTERPOLATED" classificationMode="1" clip="0" minimumValue="{low}" maximumValue="{high}" labelPrecision="0">
{items}
        </colorrampshader>
      </rastershader>
    </rasterrenderer>"""


_MINMAX = """      <minMaxOrigin>
        <limits>None</limits>
        <extent>WholeRaster</extent>
        <statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower>
        <cumulativeCutUpper>0.98</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor>
      </minMaxOrigin>"""


def _qml(renderer: str) -> str:
    """A QGIS 3 style around one ``renderer`` (``<rasterrenderer>`` element), no resampling (a class, a
    pixel's own value)."""
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.28.0" styleCategories="AllStyleCategories">
  <pipe>
    <provider>
      <resampling enabled="false" maxOversampling="2" zoomedInResamplingMethod="nearestNeighbour" zoomedOutResamplingMethod="nearestNeighbour"/>
    </provider>
{renderer}
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation colorizeOn="0" saturation="0" grayscaleMode="0" invertColors="0"/>
    <rasterresampler maxOversampling="2"/>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""
