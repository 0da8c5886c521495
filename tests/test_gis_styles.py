"""GIS-native labels on the map COGs: GDAL category names and RAT, transparent unused colours, QGIS
styles of every product (class, confidence, probability, OOD) checked against the values written, CF flags
in rioxarray, percent units; read back by GDAL itself (``gdalinfo -json``)."""

from __future__ import annotations

import ctypes
import glob
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rioxarray
from builders import predict_tiles, victoria_tiles

from cropmap.stages.gis_styles import OOD_THRESHOLD, aux_path, qml_path
from cropmap.stages.mosaic import mosaic_tiles
from cropmap.stages.predict import NODATA, PredictOptions


def gdalinfo_json(path: Path) -> dict:
    """``gdalinfo -json path`` through the GDAL library rasterio ships (``GDALInfo`` of gdal_utils.h):
    the same code as the gdalinfo program, which this environment does not install."""
    libs = glob.glob(os.path.join(os.path.dirname(rasterio.__file__) + ".libs", "libgdal-*.so*"))
    lib = ctypes.CDLL(libs[0]) if libs else ctypes.CDLL("libgdal.so")
    lib.GDALAllRegister()
    lib.GDALOpen.restype, lib.GDALOpen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]
    lib.GDALInfoOptionsNew.restype = ctypes.c_void_p
    lib.GDALInfoOptionsNew.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_void_p]
    lib.GDALInfo.restype, lib.GDALInfo.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p]
    lib.GDALClose.argtypes = [ctypes.c_void_p]
    lib.VSIFree.argtypes = [ctypes.c_void_p]
    lib.GDALInfoOptionsFree.argtypes = [ctypes.c_void_p]
    ds = lib.GDALOpen(str(path).encode(), 0)
    assert ds, f"GDAL cannot open {path}"
    options = lib.GDALInfoOptionsNew((ctypes.c_char_p * 2)(b"-json", None), None)
    text = lib.GDALInfo(ds, options)
    try:
        return json.loads(ctypes.string_at(text).decode())
    finally:
        lib.VSIFree(text)
        lib.GDALInfoOptionsFree(options)
        lib.GDALClose(ds)


def ood_copy(checkpoint: Path, path: Path) -> Path:
    """``checkpoint`` with OOD statistics fitted as training fits them (:func:`cropmap.ml.ood.fit_ood` on its
    own penultimate features of the real Victoria train split, threshold on the test split's): the tiny
    model is saved without, and the maps then have no ``ood`` product."""
    from builders import VIC_SEASON, VIC_YEAR

    from cropmap.core.composite import median_composite
    from cropmap.core.features import compute_features
    from cropmap.ml.checkpoint import load_checkpoint, save_checkpoint
    from cropmap.ml.models import forward_pass
    from cropmap.ml.ood import fit_ood
    from cropmap.samples.victoria import read_victoria

    ckpt = load_checkpoint(checkpoint)
    feats = {}
    for split in ("train", "test"):
        data = read_victoria(split)
        x = compute_features(median_composite(data["reflectance"], VIC_SEASON, VIC_YEAR), "2d").values
        feats[split] = (forward_pass(ckpt.model, ckpt.normalise(x))[1], data["label"].values)
    ood = fit_ood(*feats["train"], held_out=feats["test"][0])
    save_checkpoint(path, model=ckpt.model, model_name=ckpt.model_name, model_config=ckpt.model_config,
                    feature_kind=ckpt.feature_kind, bands=list(ckpt.bands), season=ckpt.season, n_bins=ckpt.n_bins,
                    normalisation=ckpt.normalisation, class_names=list(ckpt.class_names),
                    class_colours=list(ckpt.class_colours), config=ckpt.config, scores=ckpt.scores, year=ckpt.year,
                    temperature=ckpt.temperature, ood=ood, card=ckpt.card)
    return path


@pytest.fixture(scope="module")
def labelled(tiny_checkpoint, tmp_path_factory):
    from cropmap.ml.checkpoint import load_checkpoint

    root = tmp_path_factory.mktemp("labels")
    model = ood_copy(tiny_checkpoint, root / "ood.pt")
    cubes, _ = victoria_tiles(root / "cubes", rows=1, cols=2, ny=10, nx=10, split="all")
    predict_tiles(model, cubes, root / "tiles", options=PredictOptions(probabilities=True))
    result = mosaic_tiles(root / "tiles", root / "out", name="vic", blocksize=16)
    return result, load_checkpoint(model)


def test_gdal_reports_class_names_rat_and_transparent_unused_colours(labelled):
    result, ckpt = labelled
    names = list(ckpt.class_names)
    info = gdalinfo_json(result.cogs["class"])
    band = info["bands"][0]
    assert band["categories"] == names
    rat = info["rat"]
    assert rat["tableType"] == "thematic"
    assert [f["name"] for f in rat["fieldDefn"]] == ["Value", "Class", "Red", "Green", "Blue", "Alpha"]
    rows = [r["f"] for r in rat["row"]]
    assert [r[:2] for r in rows] == [[i, n] for i, n in enumerate(names)]
    entries = band["colorTable"]["entries"]
    assert len(entries) == 256
    for i, colour in enumerate(ckpt.class_colours):
        rgb = [int(colour[k:k + 2], 16) for k in (1, 3, 5)]
        assert entries[i] == rgb + [255] and rows[i][2:] == rgb + [255]
    assert all(e[3] == 0 for e in entries[len(names):])  # 8..254 and nodata: transparent
    with rasterio.open(result.cogs["class"]) as src:  # rasterio sees the same table
        assert src.colormap(1)[len(names)] == (0, 0, 0, 0) and src.colormap(1)[NODATA][3] == 0
    assert info["bands"][0]["noDataValue"] == NODATA


def test_rioxarray_shows_cf_flags_and_percent(labelled):
    result, ckpt = labelled
    cls = rioxarray.open_rasterio(result.cogs["class"])
    assert cls.attrs["flag_values"] == " ".join(str(i) for i in range(len(ckpt.class_names)))
    meanings = cls.attrs["flag_meanings"].split(" ")
    assert len(meanings) == len(ckpt.class_names) and all(" " not in m for m in meanings)
    assert meanings[0] == ckpt.class_names[0].replace(" ", "_")
    conf = rioxarray.open_rasterio(result.cogs["confidence"])
    assert conf.attrs["units"] == "percent" and conf.attrs["_FillValue"] == NODATA
    assert conf.attrs["valid_range"] == "0 100"
    info = gdalinfo_json(result.cogs["probability"])
    assert {b["unit"] for b in info["bands"]} == {"percent"}
    assert len(info["bands"]) == len(ckpt.class_names)


def test_qgis_style_beside_the_class_map(labelled):
    result, ckpt = labelled
    qml = qml_path(result.cogs["class"])
    assert qml.name == "vic_class.qml"
    entries = ET.parse(qml).getroot().findall(".//rasterrenderer[@type='paletted']/colorPalette/paletteEntry")
    assert [e.get("label") for e in entries] == list(ckpt.class_names)
    assert [e.get("value") for e in entries] == [str(i) for i in range(len(ckpt.class_names))]
    assert entries[0].get("color") == ckpt.class_colours[0].lower()


def test_labels_survive_a_rerun_byte_identical(labelled, tmp_path):
    result, _ = labelled
    tiles = result.cogs["class"].parent.parent / "tiles"
    again = mosaic_tiles(tiles, tmp_path, name="vic", blocksize=16)
    for cog in result.cogs.values():
        assert aux_path(again.cogs[cog.name.split("_")[-1][:-4]]).read_bytes() == aux_path(cog).read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def _ramp(qml: Path) -> tuple[ET.Element, list[tuple[float, str]]]:
    """The pseudocolour renderer of a QML and its (value, label) items, as QGIS reads them."""
    root = ET.parse(qml).getroot()
    renderer = root.find("./pipe/rasterrenderer[@type='singlebandpseudocolor']")
    assert renderer is not None, qml
    shader = renderer.find("./rastershader/colorrampshader")
    items = [(float(i.get("value")), i.get("label")) for i in shader.findall("item")]
    assert all(i.get("color", "").startswith("#") and len(i.get("color")) == 7 for i in shader.findall("item"))
    assert shader.get("colorRampType") == "INTERPOLATED"
    assert (float(shader.get("minimumValue")), float(shader.get("maximumValue"))) == (items[0][0], items[-1][0])
    assert (float(renderer.get("classificationMin")), float(renderer.get("classificationMax"))) == (items[0][0], items[-1][0])
    assert [v for v, _ in items] == sorted({v for v, _ in items})  # strictly increasing stops
    return renderer, items


def _aux_band(cog: Path, band: int = 1) -> dict[str, str]:
    root = ET.parse(aux_path(cog)).getroot()
    node = root.find(f"./PAMRasterBand[@band='{band}']")
    return {"unit": node.findtext("UnitType"), **{m.get("key"): m.text for m in node.findall("./Metadata/MDI")}}


def test_every_products_qml_covers_the_values_its_cog_holds(labelled):
    """Each product's QML, read as XML: the class palette has an entry for every class value in the COG;
    the confidence, probability and OOD ramps span their valid range, which holds every value written;
    the OOD ramp marks the training threshold at 100, and its .aux.xml gives unit, valid range and threshold."""
    result, ckpt = labelled
    assert set(result.cogs) == {"class", "confidence", "probability", "ood"}
    values = {}
    for product, cog in result.cogs.items():
        with rasterio.open(cog) as src:
            data = src.read()
        values[product] = data[data != NODATA]
        assert values[product].size > 100, product
    palette = ET.parse(qml_path(result.cogs["class"])).getroot().findall(".//paletteEntry")
    assert set(np.unique(values["class"]).tolist()) <= {int(e.get("value")) for e in palette}
    for product in ("confidence", "probability", "ood"):
        cog = result.cogs[product]
        assert qml_path(cog).name == f"vic_{product}.qml"
        renderer, items = _ramp(qml_path(cog))
        assert renderer.get("band") == "1"
        aux = _aux_band(cog)
        low, high = (float(v) for v in aux["valid_range"].split())
        assert aux["unit"] == "percent" and aux["nodata"] == str(NODATA)
        assert (items[0][0], items[-1][0]) == (low, high), product  # the ramp spans the valid range ...
        assert low <= values[product].min() and values[product].max() <= high, product  # ... and the data
    assert _ramp(qml_path(result.cogs["confidence"]))[1][-1][0] == 100
    _, items = _ramp(qml_path(result.cogs["ood"]))
    at = dict(items)
    assert OOD_THRESHOLD == 100 and "threshold" in at[100.0]
    above = [v for v, _ in items if v > 100]
    assert above and min(above) <= 101 and max(above) == 254  # a break just past 100, up to the cap
    aux = _aux_band(result.cogs["ood"])
    assert aux["valid_range"] == "0 254" and aux["threshold"] == "100" and "threshold" in aux["long_name"]
    for b, name in enumerate(ckpt.class_names, start=1):  # each probability band says its class
        assert _aux_band(result.cogs["probability"], b)["long_name"] == f"probability of {name}"
    with rasterio.open(result.cogs["probability"]) as src:
        assert list(src.descriptions) == list(ckpt.class_names)


def test_the_probability_cog_agrees_with_the_class_and_sums_to_100(labelled):
    """Tiles and zone mosaic: the class is the most probable band at every mapped pixel (ties of rounded
    percents aside: the class is one of the maxima), the confidence is that maximum, and the percents sum to
    100 within the rounding of each band (n_classes / 2); nodata is the same pixels in every product."""
    result, ckpt = labelled
    n = len(ckpt.class_names)
    tiles = result.cogs["class"].parent.parent / "tiles"
    pairs = [(tiles / f"{t}.class.tif", tiles / f"{t}.probability.tif", tiles / f"{t}.confidence.tif")
             for t in result.tile_ids]
    pairs.append((result.cogs["class"], result.cogs["probability"], result.cogs["confidence"]))
    for cls_path, prob_path, conf_path in pairs:
        with rasterio.open(cls_path) as c, rasterio.open(prob_path) as p, rasterio.open(conf_path) as f:
            cls, prob, conf = c.read(1), p.read().astype(np.int64), f.read(1)
        assert prob.shape[0] == n
        mapped = cls != NODATA
        assert mapped.sum() > 50 and ((prob != NODATA) == mapped).all() and ((conf != NODATA) == mapped).all()
        p = prob[:, mapped]
        top = p.max(0)
        assert (np.take_along_axis(p, cls[mapped][None].astype(np.int64), 0)[0] == top).all(), cls_path.name
        assert (conf[mapped] == top).all()
        assert (np.abs(p.sum(0) - 100) <= n / 2).all(), cls_path.name
        single = (p == top).sum(0) == 1
        assert single.sum() > 0.5 * mapped.sum()  # not vacuous: most pixels have one most probable class
        assert (p.argmax(0)[single] == cls[mapped][single]).all()
