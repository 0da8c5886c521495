"""STAC search on the real Earth Search items: static catalog (pystac) and a STAC API on 127.0.0.1 (rustac)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pystac
import pytest
import shapely

from cropmap.core.season import SOUTH, Season
from cropmap.errors import CatalogError
from cropmap.io.config import CatalogConfig
from cropmap.io.stac import (
    asset_scale_offset,
    band_assets,
    search_items,
    season_search_window,
)

TWM_ONLY = (15.7, 46.6, 15.8, 46.7)  # north of the 33TWL footprint
AUGUST = (dt.date(2023, 8, 1), dt.date(2023, 8, 31))


@pytest.fixture(scope="module")
def catalog(shared_data) -> CatalogConfig:
    return CatalogConfig(path=shared_data / "s2_l2a_stac/catalog.json")


def _item_files(shared_data) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((shared_data / "s2_l2a_stac/sentinel-2-l2a").glob("*/*_L2A.json"))]


def _brute_force(shared_data, bbox, start, end, max_cloud):
    """Ids the filters should keep, straight from the item JSON files."""
    keep = []
    for d in _item_files(shared_data):
        day = dt.date.fromisoformat(d["properties"]["datetime"][:10])
        if (start <= day <= end and d["properties"]["eo:cloud_cover"] <= max_cloud
                and shapely.geometry.shape(d["geometry"]).intersects(shapely.box(*bbox))):
            keep.append(d["id"])
    return sorted(keep)


def test_static_search_applies_bbox_dates_and_cloud_cover(catalog, shared_data):
    items = search_items(catalog, bbox=TWM_ONLY, start=AUGUST[0], end=AUGUST[1])
    assert sorted(it.id for it in items) == _brute_force(shared_data, TWM_ONLY, *AUGUST, 80)
    assert len(items) == 5 and all("33TWM" in it.id for it in items)
    assert [it.datetime for it in items] == sorted(it.datetime for it in items)
    assert all(Path(it.assets["blue"].href).is_absolute() for it in items)
    covers = sorted(it.properties["eo:cloud_cover"] for it in items)
    limit = (covers[1] + covers[2]) / 2  # keep exactly the two clearest scenes
    clear = search_items(catalog, bbox=TWM_ONLY, start=AUGUST[0], end=AUGUST[1], max_cloud_cover=limit)
    assert sorted(it.id for it in clear) == _brute_force(shared_data, TWM_ONLY, *AUGUST, limit) and len(clear) == 2
    window = search_items(catalog, bbox=TWM_ONLY, start=dt.date(2023, 8, 13), end=dt.date(2023, 8, 15))
    assert [it.datetime.day for it in window] == [13, 15]
    both = search_items(catalog, bbox=(15.7, 45.9, 15.8, 46.7), start=AUGUST[0], end=AUGUST[1])
    assert len(both) == 10


def test_band_assets_both_naming_schemes(catalog):
    item = search_items(catalog, bbox=TWM_ONLY, start=AUGUST[0], end=AUGUST[1])[0]
    es = band_assets(item)
    assert es["B02"] == "blue" and es["B8A"] == "nir08" and es["B11"] == "swir16" and es["SCL"] == "scl"
    assert "blue-jp2" not in es.values() and "visual" not in es.values()
    renamed = item.clone()
    renamed.assets = {{"blue": "B02", "red": "B04", "nir08": "B8A", "scl": "SCL"}.get(k, k): a
                      for k, a in item.assets.items() if k in ("blue", "red", "nir08", "scl")}
    assert band_assets(renamed) == {"B02": "B02", "B04": "B04", "B8A": "B8A", "SCL": "SCL"}
    assert band_assets(item, ["B04", "SCL", "B01"]) == {"B04": "red", "SCL": "scl", "B01": "coastal"}
    # data sets that name assets arbitrarily but describe them with eo:bands
    odd = item.clone()
    odd.assets = {"band_3": item.assets["red"]}
    assert band_assets(odd) == {"B04": "band_3"}


def test_scale_offset_from_raster_bands(catalog):
    item = search_items(catalog, bbox=TWM_ONLY, start=AUGUST[0], end=AUGUST[1])[0]
    assert item.properties["earthsearch:boa_offset_applied"] is True
    assert asset_scale_offset(item, "red") == (0.0001, 0.0)  # offset already in the DNs
    raw = item.clone()
    raw.properties["earthsearch:boa_offset_applied"] = False
    assert asset_scale_offset(raw, "red") == (0.0001, -0.1)
    assert asset_scale_offset(item, "scl") == (1.0, 0.0)


def test_season_window_with_margin():
    assert season_search_window(SOUTH, 2022, 15) == (dt.date(2022, 10, 17), dt.date(2023, 6, 15))
    assert season_search_window(Season(start="08-08", end="08-22"), 2023, 0) == (dt.date(2023, 8, 8), dt.date(2023, 8, 22))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stac_api(shared_data, tmp_path_factory):
    """A real STAC API (rustac, in-memory) on 127.0.0.1 serving the same 10 items."""
    exe = Path(sys.executable).with_name("rustac")
    exe = str(exe) if exe.exists() else shutil.which("rustac")
    if exe is None:
        pytest.fail("rustac not installed (pip install rustac, a dev dependency)")
    folder = tmp_path_factory.mktemp("api")
    root = shared_data / "s2_l2a_stac/sentinel-2-l2a"
    coll = json.loads((root / "collection.json").read_text())
    coll["links"] = []
    (folder / "collection.json").write_text(json.dumps(coll))
    lines = []
    for path in sorted(root.glob("*/*_L2A.json")):
        item = pystac.Item.from_file(str(path))
        item.make_asset_hrefs_absolute()
        d = item.to_dict(include_self_link=False)
        d["links"] = []
        lines.append(json.dumps(d))
    (folder / "items.ndjson").write_text("\n".join(lines) + "\n")
    port = _free_port()
    proc = subprocess.Popen([exe, "serve", "--addr", f"127.0.0.1:{port}", str(folder / "collection.json"),
                             str(folder / "items.ndjson")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{url}/collections/sentinel-2-l2a/items?limit=1", timeout=1).read()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"rustac serve did not start: {proc.stderr.read().decode()[:500]}")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_api_search_equals_static_search(stac_api, catalog, shared_data):
    api = CatalogConfig(url=stac_api)
    for bbox, (start, end), cloud in [(TWM_ONLY, AUGUST, 80), ((15.7, 45.9, 15.8, 46.7), AUGUST, 80),
                                      (TWM_ONLY, (dt.date(2023, 8, 13), dt.date(2023, 8, 15)), 80),
                                      ((15.7, 45.9, 15.8, 46.7), AUGUST, 5)]:
        got = search_items(api, bbox=bbox, start=start, end=end, max_cloud_cover=cloud)
        static = search_items(catalog, bbox=bbox, start=start, end=end, max_cloud_cover=cloud)
        assert [it.id for it in got] == [it.id for it in static] == sorted(
            _brute_force(shared_data, bbox, start, end, cloud), key=[it.id for it in static].index)
        assert got and band_assets(got[0]) == band_assets(static[0])
    # outside the data: an empty result is a result, not an error
    assert search_items(api, bbox=(-60, -35, -59, -34), start=AUGUST[0], end=AUGUST[1]) == []


def test_unreachable_catalog_gives_one_error_after_retries(tmp_path, shared_data):
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(CatalogError, match=r"(?s)could not be searched after 3 attempt\(s\).*127\.0\.0\.1") as err:
        search_items(CatalogConfig(url=url), bbox=TWM_ONLY, start=AUGUST[0], end=AUGUST[1], retries=3, backoff_s=0.05)
    assert time.perf_counter() - t0 >= 0.05 + 0.1  # it waited between the attempts
    assert err.value.__cause__ is not None
    with pytest.raises(CatalogError, match="does not exist"):
        search_items(CatalogConfig(path=tmp_path / "nope.json"), bbox=TWM_ONLY, start=AUGUST[0], end=AUGUST[1])
    with pytest.raises(CatalogError, match="no collection 'landsat'"):
        search_items(CatalogConfig(path=shared_data / "s2_l2a_stac/catalog.json",
                                   collection="landsat"), bbox=TWM_ONLY, start=AUGUST[0], end=AUGUST[1])
