"""GIS-native labels on the map COGs: GDAL category names and RAT, transparent unused colours, QGIS
style, CF flags in rioxarray, percent units; read back by GDAL itself (``gdalinfo -json``)."""

from __future__ import annotations

import ctypes
import glob
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import rasterio
import rioxarray
from builders import predict_tiles, victoria_tiles

from cropmap.stages.gis_styles import aux_path, qml_path
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


@pytest.fixture(scope="module")
def labelled(tiny_checkpoint, tmp_path_factory):
    from cropmap.ml.checkpoint import load_checkpoint

    root = tmp_path_factory.mktemp("labels")
    cubes, _ = victoria_tiles(root / "cubes", rows=1, cols=2, ny=10, nx=10, split="all")
    predict_tiles(tiny_checkpoint, cubes, root / "tiles", options=PredictOptions(probabilities=True))
    result = mosaic_tiles(root / "tiles", root / "out", name="vic", blocksize=16)
    return result, load_checkpoint(tiny_checkpoint)


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
