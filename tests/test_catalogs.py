"""Every Sentinel-2 catalog read right: real items of Earth Search (sentinel-2-l2a, sentinel-2-c1-l2a),
Planetary Computer and CDSE (tests/data/stac_items), the one scale/offset rule on every combination
against ESA's definition, the reflectance range check, a Planetary-Computer-style STAC API on 127.0.0.1
(rustac) and CDSE-style assets on a local S3 API (moto), each equal to the Earth Search reading of the
same reflectances."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import itertools
import json
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import shapely

from cropmap.core.grid import Grid
from cropmap.core.season import Season
from cropmap.errors import CatalogError, ConfigError, ForbiddenHrefError
from cropmap.io.config import CatalogConfig, load_country
from cropmap.io.stac import asset_scale_offset, band_assets, search_items
from cropmap.stages.cube import AssetUnavailableWarning, CubeOptions, build_tile_cube, load_observations, open_tile_cube

ITEMS = Path(__file__).parent / "data" / "stac_items"
ES_L2A = "earth-search_sentinel-2-l2a_S2B_20EPT_20250731_0_L2A.json"
ES_C1 = "earth-search_sentinel-2-c1-l2a_S2B_T20EPT_20250731T131905_L2A.json"
PC_0510 = "planetary-computer_S2B_MSIL2A_20240419T095549_R122_T47XML_20240419T123458.json"
PC_0400 = "planetary-computer_S2B_MSIL2A_20220612T182919_R027_T24XWR_20220613T123251.json"
PC_0212 = "planetary-computer_S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json"
CDSE = "cdse_S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914.json"
AUG = Season(start="08-08", end="08-22")
TILE = Grid(32633, tile_size=128).tile(3780, 424)  # 1.28 km over 33TWM, inside the local 33TWM files
BANDS = ("B02", "B04", "B08")
DN_FILES = {"B02": "B02.tif", "B03": "B03.tif", "B04": "B04.tif", "B08": "B08.tif", "SCL": "SCL.tif"}


def _item(name: str) -> pystac.Item:
    return pystac.Item.from_dict(json.loads((ITEMS / name).read_text()), preserve_dict=False)


# ---------------------------------------------------------------- the fixtures are real STAC items


def _registry(root: Path):
    """The STAC schemas of the data folder (../shared/data/stac_schemas) by their ids."""
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT7

    resources = []
    for path in root.rglob("*.json"):
        schema = json.loads(path.read_text())
        resource = Resource.from_contents(schema, default_specification=DRAFT7)
        if "$id" in schema:
            resources.append((schema["$id"].rstrip("#"), resource))
        core = path.relative_to(root).parts
        if core[0].startswith("core-"):  # also where it is published: 1.1.0-beta.1's common.json says "commonjson"
            resources.append((f"https://schemas.stacspec.org/{core[0][5:]}/{'/'.join(core[1:])}", resource))
    # GeoJSON's own schemas are not in reach: geometry is checked with shapely instead
    for uri in ("https://geojson.org/schema/Feature.json", "https://geojson.org/schema/Geometry.json"):
        resources.append((uri, Resource.from_contents({}, default_specification=DRAFT7)))
    return Registry().with_resources(resources)


@pytest.mark.parametrize("name", [ES_L2A, ES_C1, PC_0510, PC_0400, PC_0212, CDSE])
def test_fixtures_validate_against_the_stac_schemas(name, shared_data):
    import jsonschema

    doc = json.loads((ITEMS / name).read_text())
    registry = _registry(shared_data / "stac_schemas")
    # STAC 1.1.0 items against the newest core in reach, 1.1.0-beta.1 (../shared/data/stac_schemas/README.md)
    version = {"1.0.0": "v1.0.0", "1.1.0": "v1.1.0-beta.1"}[doc["stac_version"]]
    doc_for_core = {**doc, "stac_version": "1.1.0-beta.1"} if version == "v1.1.0-beta.1" else doc
    core = registry.contents(f"https://schemas.stacspec.org/{version}/item-spec/json-schema/item.json")
    jsonschema.Draft7Validator(core, registry=registry).validate(doc_for_core)
    checked = [uri for uri in doc["stac_extensions"] if uri.rstrip("#") in {str(u) for u in registry}]
    for uri in checked:
        jsonschema.Draft7Validator(registry.contents(uri), registry=registry).validate(doc)
    assert shapely.geometry.shape(doc["geometry"]).is_valid
    assert (name != CDSE) or "https://stac-extensions.github.io/raster/v2.0.0/schema.json" in checked


# ------------------------------------------------------- real items: band keys and scale/offset by hand


def test_planetary_computer_baseline_05_gives_scale_1e4_and_offset_minus_01():
    item = _item(PC_0510)
    assert item.properties["s2:processing_baseline"] == "05.10" and "raster:bands" not in item.assets["B04"].extra_fields
    keys = band_assets(item)
    assert {b: keys[b] for b in ("B02", "B8A", "B11", "SCL")} == {"B02": "B02", "B8A": "B8A", "B11": "B11", "SCL": "SCL"}
    assert "visual" not in keys.values() and "AOT" not in keys.values()
    # ESA: L2A_BOA = (DN + BOA_ADD_OFFSET) / 10000 with BOA_ADD_OFFSET = -1000 from baseline 04.00
    for key in ("B02", "B04", "B8A", "B12"):
        scale, offset = asset_scale_offset(item, key)
        assert (scale, offset) == (0.0001, -0.1)
        assert np.isclose(2500 * scale + offset, (2500 - 1000) / 10000)
    assert asset_scale_offset(item, "SCL") == (1.0, 0.0)


def test_planetary_computer_baselines_04_00_and_02_12():
    assert asset_scale_offset(_item(PC_0400), "B04") == (0.0001, -0.1)  # the first baseline with the offset
    assert asset_scale_offset(_item(PC_0212), "B04") == (0.0001, 0.0)   # before it: DN / 10000


def test_earth_search_l2a_with_boa_offset_applied_gives_offset_0(shared_data):
    item = _item(ES_L2A)
    assert item.properties["earthsearch:boa_offset_applied"] is True
    assert item.assets["red"].extra_fields["raster:bands"][0]["offset"] == -0.1  # what the item declares
    assert asset_scale_offset(item, "red") == (0.0001, 0.0) and asset_scale_offset(item, "scl") == (1.0, 0.0)
    keys = band_assets(item)
    assert (keys["B02"], keys["B8A"], keys["SCL"]) == ("blue", "nir08", "scl") and "blue-jp2" not in keys.values()
    real = pystac.Item.from_file(str(shared_data / "s2_l2a_stac/sentinel-2-l2a/S2A_33TWM_20230815_0_L2A"
                                                   "/S2A_33TWM_20230815_0_L2A.json"))
    assert asset_scale_offset(real, "nir") == (0.0001, 0.0)


def test_earth_search_collection_1_gives_its_own_raster_bands():
    item = _item(ES_C1)
    assert "earthsearch:boa_offset_applied" not in item.properties
    declared = item.assets["red"].extra_fields["raster:bands"][0]
    assert asset_scale_offset(item, "red") == (declared["scale"], declared["offset"]) == (0.0001, -0.1)
    keys = band_assets(item)
    assert (keys["B04"], keys["B11"], keys["SCL"]) == ("red", "swir16", "scl")
    assert "cloud" not in keys.values() and "snow" not in keys.values()


def test_cdse_resolution_suffixes_map_to_bands():
    item = _item(CDSE)
    keys = band_assets(item)
    assert keys["B02"] == "B02_10m" and keys["SCL"] == "SCL_20m" and keys["B01"] == "B01_60m"  # native first
    assert "TCI_10m" not in keys.values() and "WVP_20m" not in keys.values()
    assert asset_scale_offset(item, "B02_10m") == (0.0001, -0.1)  # STAC 1.1 raster:scale / raster:offset
    assert asset_scale_offset(item, "SCL_20m") == (1.0, 0.0)
    assert band_assets(item, ["B04", "SCL", "B08"]) == {"B04": "B04_10m", "SCL": "SCL_20m"}


def test_profiles_from_items_urls_and_configs(tmp_path):
    from cropmap.io.catalogs import item_profile

    assert [item_profile(_item(n)).name for n in (ES_L2A, ES_C1, PC_0510, CDSE)] == [
        "earth-search", "earth-search-c1", "planetary-computer", "cdse"]
    assert CatalogConfig().profile == "earth-search"
    assert CatalogConfig(collection="sentinel-2-c1-l2a").profile == "earth-search-c1"
    pc = CatalogConfig(profile="planetary-computer")
    assert pc.url == "https://planetarycomputer.microsoft.com/api/stac/v1" and pc.collection == "sentinel-2-l2a"
    assert CatalogConfig(url="https://stac.dataspace.copernicus.eu/v1").profile == "cdse"
    assert CatalogConfig(profile="earth-search-c1").collection == "sentinel-2-c1-l2a"
    assert CatalogConfig(url="http://127.0.0.1:9").profile is None  # unknown URL: read per item
    base = "name: A\noutline: {bbox: [4, 50, 5, 51]}\nhemisphere: north\nseason: {start: '05-01', end: '11-30'}\nyear: 2024\n"
    (tmp_path / "ABC.yaml").write_text(base + "catalog: {url: 'http://127.0.0.1:9', profile: planetary-computer}\n")
    assert load_country("ABC", configs_dir=tmp_path).catalog.profile == "planetary-computer"
    (tmp_path / "ABD.yaml").write_text(base + "catalog: {profile: sentinelhub}\n")
    with pytest.raises(ConfigError, match=r"(?s)ABD\.yaml.*unknown catalog profile 'sentinelhub'.*planetary-computer"):
        load_country("ABD", configs_dir=tmp_path)


# ------------------------------------------------------------------------ the rule, every combination


def _esa_reflectance(dn: float, *, baseline, flag, declared_offset) -> float:
    """What a DN of the file means by ESA's definition (L2A_BOA = (DN + BOA_ADD_OFFSET) / 10000),
    given how the catalog prepared the file: harmonised when flagged (offset already removed), no
    offset before baseline 04.00, and a declared offset of 0 on newer data means harmonised too."""
    if flag is True or (baseline is not None and baseline < (4, 0)):
        return dn / 10000
    if declared_offset == 0.0:
        return dn / 10000
    return (dn - 1000) / 10000


def test_offset_rule_on_every_combination():
    from cropmap.io.catalogs import reflectance_scale_offset

    baselines = [(2, 12), (3, 1), (4, 0), (5, 10), (5, 11), None]  # 05.11: Collection 1 and CDSE today
    declared = [None, (0.0001, -0.1), (0.0001, 0.0)]                 # raster:bands absent / present
    flags = [True, False, None]                                      # Earth Search flag true, false, missing
    checked = 0
    for baseline, raster, flag, esa_dn in itertools.product(baselines, declared, flags, (True, False)):
        scale_in, offset_in = raster or (None, None)
        kwargs = dict(band="B04", raster_scale=scale_in, raster_offset=offset_in, baseline=baseline,
                      boa_offset_applied=flag, esa_dn=esa_dn)
        if raster is None and not esa_dn:
            # a generic catalog that declares nothing: values as they are, the range check decides
            assert reflectance_scale_offset(**kwargs) == (1.0, 0.0)
            continue
        if raster is None and baseline is None and flag is not True:
            with pytest.raises(CatalogError, match="no processing baseline"):
                reflectance_scale_offset(**kwargs)
            continue
        scale, offset = reflectance_scale_offset(**kwargs)
        for dn in (1, 1000, 1001, 2500, 10000, 32767):
            expected = _esa_reflectance(dn, baseline=baseline, flag=flag, declared_offset=offset_in)
            assert dn * scale + offset == pytest.approx(expected, abs=1e-12), (kwargs, dn)
        checked += 1
    assert checked == 88  # 108 combinations: 18 generic without metadata, 2 that cannot be told
    # not reflectance: SCL keeps its classes whatever the item says
    assert reflectance_scale_offset(band="SCL", raster_scale=None, raster_offset=None, baseline=(5, 10),
                                    boa_offset_applied=None, esa_dn=True) == (1.0, 0.0)


# --------------------------------------------------- PC-style STAC API with local COGs (rustac), CDSE S3


def _es_items(shared_data) -> list[pystac.Item]:
    cat = CatalogConfig(path=shared_data / "s2_l2a_stac/catalog.json")
    items = search_items(cat, bbox=TILE.lonlat_bbox(), start=dt.date(2023, 8, 1), end=dt.date(2023, 8, 31))
    assert [it.id[4:9] for it in items] == ["33TWM"] * 5
    return items


def _write_cog(src_path: Path, dst: Path, *, add: int) -> dict:
    """A 96 x 96 px window (11.5 km) around TILE of the (JPEG2000 + .aux.xml) file as a COG, ``add`` DN
    added to valid pixels; its proj: fields."""
    from rasterio.windows import Window, from_bounds

    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="NO"), rasterio.open(src_path) as src:
        centre = from_bounds(*TILE.bounds, transform=src.transform)
        window = Window(int(centre.col_off) - 40, int(centre.row_off) - 40, 96, 96)
        data, profile = src.read(1, window=window), src.profile
        profile.update(width=96, height=96, transform=src.window_transform(window))
    out = np.where(data > 0, data.astype(np.int64) + add, 0).astype(data.dtype)
    profile.update(driver="COG", compress="DEFLATE", blocksize=256, nodata=0)
    profile.pop("blockxsize", None), profile.pop("blockysize", None), profile.pop("tiled", None)
    with rasterio.open(dst, "w", **profile) as out_file:
        out_file.write(out, 1)
    t = profile["transform"]
    return {"proj:shape": [profile["height"], profile["width"]], "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f]}


def _pc_style_items(es_items, folder: Path) -> list[dict]:
    """Planetary Computer items (the real 05.10 item as template) of the Earth Search acquisitions:
    assets B02..SCL as local COGs holding ESA's raw DNs (Earth Search's harmonised DN + 1000)."""
    template = json.loads((ITEMS / PC_0510).read_text())
    out = []
    for es in es_items:
        src_dir = Path(es.get_self_href()).parent
        d = copy.deepcopy(template)
        d.update(id=es.id.replace("_L2A", "_PC"), geometry=es.geometry, bbox=es.bbox, links=[])
        d["properties"].update({"datetime": es.properties["datetime"], "eo:cloud_cover": es.properties["eo:cloud_cover"],
                                "s2:processing_baseline": es.properties["s2:processing_baseline"], "proj:epsg": 32633})
        (folder / d["id"]).mkdir(parents=True)
        assets = {}
        for band, name in DN_FILES.items():
            dst = folder / d["id"] / f"{band}.tif"
            proj = _write_cog(src_dir / name, dst, add=0 if band == "SCL" else 1000)
            asset = {k: v for k, v in template["assets"][band].items() if not k.startswith("proj:")}
            assets[band] = {**asset, **proj, "href": dst.as_uri()}  # file://: an API item has no local root
        d["assets"] = assets
        out.append(d)
    return out


@contextlib.contextmanager
def _serve(collection: Path, items: Path):
    """``rustac serve`` on a free 127.0.0.1 port (ready in ~0.1 s), stopped afterwards."""
    exe = Path(sys.executable).with_name("rustac")
    port = _free_port()
    proc = subprocess.Popen([str(exe), "serve", "--addr", f"127.0.0.1:{port}", str(collection), str(items)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/collections", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail(f"rustac serve did not start: {proc.stderr.read().decode()[:500]}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def pc_api(shared_data, tmp_path_factory):
    """A STAC API (rustac) on 127.0.0.1 serving Planetary-Computer-style items with local COG assets."""
    folder = tmp_path_factory.mktemp("pc")
    es_items = _es_items(shared_data)
    items = _pc_style_items(es_items, folder / "assets")
    coll = json.loads((ITEMS / "planetary-computer_sentinel-2-l2a.collection.json").read_text())
    coll["links"] = []
    (folder / "collection.json").write_text(json.dumps(coll))
    (folder / "items.ndjson").write_text("".join(json.dumps(d) + "\n" for d in items))
    with _serve(folder / "collection.json", folder / "items.ndjson") as url:
        yield url, items, es_items


def test_pc_api_cube_equals_the_earth_search_cube(pc_api, tmp_path, monkeypatch):
    url, _, es_items = pc_api
    catalog = CatalogConfig(url=url, profile="planetary-computer")
    pc_items = search_items(catalog, bbox=TILE.lonlat_bbox(), start=dt.date(2023, 8, 1), end=dt.date(2023, 8, 31))
    assert len(pc_items) == 5 and all(it.properties["cropmap:catalog"] == "planetary-computer" for it in pc_items)
    assert all(asset_scale_offset(it, "B04") == (0.0001, -0.1) for it in pc_items)
    opts = CubeOptions(bands=BANDS, chunk=128)
    # a STAC API's items pointing at local files are refused by default, before anything is written
    with pytest.raises(ForbiddenHrefError, match=r"href file://\S+ is not allowed.*CROPMAP_ASSET_HREF_SCHEMES.*"
                                                 r"host 127.0.0.1"):
        build_tile_cube(TILE, pc_items, AUG, 2023, tmp_path / "refused", options=opts)
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())
    monkeypatch.setenv("CROPMAP_ASSET_HREF_SCHEMES", "https,s3,file")  # this test API serves local files
    with warnings.catch_warnings():
        warnings.simplefilter("error", AssetUnavailableWarning)
        pc = build_tile_cube(TILE, pc_items, AUG, 2023, tmp_path / "pc", options=opts)
        es = build_tile_cube(TILE, es_items, AUG, 2023, tmp_path / "es", options=opts)
    assert pc.status == es.status == "written"
    pc_cube, es_cube = open_tile_cube(pc.path).values, open_tile_cube(es.path).values
    assert np.isfinite(es_cube).mean() > 0.9 and 0.01 < np.nanmedian(es_cube) < 0.5
    np.testing.assert_array_equal(pc_cube, es_cube)


def test_dn_valued_assets_without_a_scale_are_refused_naming_the_band(pc_api):
    """The same raw-DN files with nothing that says their scale (no raster:bands, no profile)."""
    from cropmap.errors import ReflectanceRangeError

    _, items, es_items = pc_api
    bare = [pystac.Item.from_dict(copy.deepcopy(d)) for d in items]
    with pytest.raises(ReflectanceRangeError, match=r"band B02: item S2B_33TWM_20230810_0_PC asset 'B02'.*"
                                                    r"median reflectance \d{3,4}.*outside -0.05..1.2") as err:
        load_observations(TILE, bare, bands=BANDS, chunk=128)
    assert "catalog.profile" in str(err.value)
    # one such item among good ones: left out with a warning, never passed on; refused with "fail"
    with pytest.warns(AssetUnavailableWarning, match=f"item {bare[0].id} asset 'B04'.*outside"):
        refl, _, dropped = load_observations(TILE, [bare[0], *es_items[1:]], bands=("B04",), chunk=128)
    # its date had no other band: nothing of it is passed on (the date stays, all no data)
    assert f"{bare[0].id}/B04" in dropped and refl.sizes["time"] == 5
    assert np.isnan(refl.sel(time=refl.time[refl.time.dt.day == 10]).values).all()
    assert 0.01 < np.nanmedian(refl.values) < 0.5  # what is passed on is reflectance
    with pytest.raises(ReflectanceRangeError, match="B04"):
        load_observations(TILE, [bare[0], *es_items[1:]], bands=("B04",), chunk=128, on_asset_error="fail")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3_process():
    """A real S3 API (moto) on 127.0.0.1 in its OWN process: GDAL's /vsis3/ requests may hold the GIL,
    and would deadlock against conftest's in-process ThreadedMotoServer."""
    url = f"http://127.0.0.1:{_free_port()}"
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p",
                             url.rsplit(":", 1)[1]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail("moto_server did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cdse_assets_on_s3_with_the_documented_keys(shared_data, s3_process, tmp_path, monkeypatch):
    """CDSE-style items (the real item's B04_10m / SCL_20m assets) on a real S3 API on 127.0.0.1,
    reached with CROPMAP_CDSE_* only: equal to the Earth Search reading of the same reflectances."""
    import boto3

    es_items = _es_items(shared_data)[:2]
    s3 = boto3.client("s3", endpoint_url=s3_process, region_name="us-east-1",
                      aws_access_key_id="cropmap-test", aws_secret_access_key="cropmap-test")
    s3.create_bucket(Bucket="eodata")
    template = json.loads((ITEMS / CDSE).read_text())
    items = []
    for es in es_items:
        d = copy.deepcopy(template)
        d.update(id=es.id.replace("_L2A", "_CDSE"), geometry=es.geometry, bbox=es.bbox)
        d["properties"].update(datetime=es.properties["datetime"])
        for name in ("start_datetime", "end_datetime"):
            d["properties"].pop(name)
        for key, band in (("B04_10m", "B04"), ("SCL_20m", "SCL")):
            local = tmp_path / f"{d['id']}_{key}.tif"
            proj = _write_cog(Path(es.get_self_href()).parent / DN_FILES[band], local, add=1000 if band == "B04" else 0)
            s3.upload_file(str(local), "eodata", f"test/{d['id']}/{key}.tif")
            d["assets"][key].update(href=f"s3://eodata/test/{d['id']}/{key}.tif", **proj)
        items.append(pystac.Item.from_dict(d))
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CROPMAP_CDSE_S3_ENDPOINT", s3_process)
    with pytest.raises(CatalogError, match="CROPMAP_CDSE_ACCESS_KEY_ID.*AWS_ACCESS_KEY_ID"):
        load_observations(TILE, items, bands=("B04",), chunk=128)
    monkeypatch.setenv("CROPMAP_CDSE_ACCESS_KEY_ID", "cropmap-test")
    monkeypatch.setenv("CROPMAP_CDSE_SECRET_ACCESS_KEY", "cropmap-test")
    with warnings.catch_warnings():
        warnings.simplefilter("error", AssetUnavailableWarning)
        cdse, cdse_scl, _ = load_observations(TILE, items, bands=("B04",), chunk=128)
        es, es_scl, _ = load_observations(TILE, es_items, bands=("B04",), chunk=128)
    assert np.isfinite(es.values).mean() > 0.9
    np.testing.assert_array_equal(cdse.values, es.values)
    np.testing.assert_array_equal(cdse_scl.values, es_scl.values)


def test_planetary_computer_signing_names_the_extra(monkeypatch):
    from cropmap.io.catalogs import get_profile

    pc = get_profile("planetary-computer")
    local = "/data/S2B/B04.tif"
    monkeypatch.setitem(sys.modules, "planetary_computer", None)  # not installed (it is not a test dependency)
    assert pc.sign(local) == local  # local and non-Azure hrefs need no token and no package
    blob = _item(PC_0510).assets["B04"].href
    with pytest.raises(CatalogError, match=r"SAS token.*pip install 'cropmap\[pc\]'"):
        pc.sign(blob)
    assert get_profile("earth-search").sign(blob) == blob


def test_asset_hrefs_are_restricted_to_the_allowed_schemes_the_api_host_and_the_catalog_folder(shared_data,
                                                                                              tmp_path, monkeypatch):
    """The real Earth Search static catalog: its local assets pass, and so do https and s3 ones; a file
    outside its folder (directly or through ``..``), a GDAL virtual path, another scheme or an http
    host are refused naming item, asset and setting. From a STAC API only its own host passes."""
    from cropmap.io.catalogs import ROOT_PROPERTY, asset_href, check_asset_href
    from cropmap.io.stac import search_items

    catalog = CatalogConfig(path=shared_data / "s2_l2a_stac" / "catalog.json")
    (item, *_) = search_items(catalog, bbox=TILE.lonlat_bbox(), start=dt.date(2023, 8, 1), end=dt.date(2023, 8, 31))
    root = Path(item.properties[ROOT_PROPERTY])
    assert root == (shared_data / "s2_l2a_stac").resolve()
    assert Path(asset_href(item, "red")).is_file()  # a local asset under the catalog's folder
    for ok in ("https://sentinel-cogs.s3.us-west-2.amazonaws.com/x/B04.tif", "s3://sentinel-s2-l2a/x/B04.jp2",
               str(root / "sentinel-2-l2a" / "x.tif"), (root / "x.tif").as_uri()):
        check_asset_href(ok, item, "red")
    for bad in ("/etc/passwd", "file:///etc/passwd", str(root / ".." / ".." / "etc" / "passwd"),
                "/vsicurl/http://169.254.169.254/latest/meta-data", "ftp://example.org/B04.tif",
                "http://10.0.0.5/B04.tif"):
        with pytest.raises(ForbiddenHrefError, match=f"item {item.id} asset 'red'.*not allowed.*files under"):
            check_asset_href(bad, item, "red")
    api = item.clone()
    api.properties[ROOT_PROPERTY] = "http://127.0.0.1:8080/api"
    check_asset_href("http://127.0.0.1:9000/cogs/B04.tif", api, "red")  # the API's own host
    with pytest.raises(ForbiddenHrefError, match="catalog's host 127.0.0.1"):
        check_asset_href("http://192.168.1.2/B04.tif", api, "red")
    with pytest.raises(ForbiddenHrefError):
        check_asset_href(str(root / "x.tif"), api, "red")  # an API item has no local folder
    monkeypatch.setenv("CROPMAP_ASSET_HREF_SCHEMES", "https,s3,http")
    check_asset_href("http://10.0.0.5/B04.tif", item, "red")
