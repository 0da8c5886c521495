"""The DEMO country: a static STAC catalog whose pixels are the real Victoria series.

References are computed here from the raw Victoria CSV files and rasterio reads, not through cropmap.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pystac
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate
from typer.testing import CliRunner

from cropmap.cli import app
from cropmap.errors import ConfigError
from cropmap.scenarios.demo import (
    EARTH_SEARCH_KEYS,
    DemoSpec,
    build_demo,
    demo_country,
    read_layout,
)

KEYS = ["blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "swir16", "swir22"]
VICTORIA_START = np.datetime64("2017-08-01")


@pytest.fixture(scope="module")
def layout(demo_paths):
    return read_layout(demo_paths.root)


@pytest.fixture(scope="module")
def victoria(shared_data):
    """split -> (samples, 73 dates, 10 bands) DN and class names, parsed from the raw files."""
    out = {}
    for split in ("train", "test"):
        table = pd.read_csv(shared_data / f"victoria_s2/{split}_dataset.csv")
        cols = [f"b{i}" for i in range(730)]
        out[split] = table[cols].to_numpy(float).reshape(len(table), 73, 10)
    lines = (shared_data / "victoria_s2/class_map.txt").read_text().splitlines()[1:]
    out["classes"] = [line.split(",", 2) for line in lines if line.strip()]
    return out


def _item_dicts(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "sentinel-2-l2a").glob("*/*.json"))]


def _read(root: Path, item: dict, key: str) -> np.ndarray:
    with rasterio.open(root / "sentinel-2-l2a" / item["id"] / item["assets"][key]["href"]) as ds:
        return ds.read(1)


def test_items_look_like_earth_search(demo_paths, layout):
    root = demo_paths.root
    catalog = pystac.Catalog.from_file(demo_paths.catalog)
    (collection,) = list(catalog.get_children())
    assert collection.id == "sentinel-2-l2a"
    items = _item_dicts(root)
    assert len(items) == len(layout["dates"]) == len(list(collection.get_items()))
    days = np.array([it["properties"]["datetime"][:10] for it in items], dtype="datetime64[D]")
    assert np.all(np.diff(np.sort(days)) == np.timedelta64(5, "D"))
    # the southern season of 2017 (1 Nov 2017 - 31 May 2018) plus a margin on both sides
    assert days.min() < np.datetime64("2017-11-01") and days.max() > np.datetime64("2018-05-31")
    for it in items:
        props = it["properties"]
        assert props["proj:epsg"] == 32754 and props["proj:code"] == "EPSG:32754"  # stackstac and pystac
        assert 0 <= props["eo:cloud_cover"] <= 100
        assert set(it["assets"]) == set(EARTH_SEARCH_KEYS.values()) == {*KEYS, "scl"}
        for key, asset in it["assets"].items():
            assert not asset["href"].startswith("/")  # relative: the folder can move
            rb = asset["raster:bands"][0]
            assert rb["nodata"] == 0 and rb["data_type"] == "uint16"
            if key != "scl":
                assert rb["scale"] == 0.0001 and rb["offset"] == 0
                assert asset["eo:bands"][0]["name"] == key
    first = items[0]
    for key in ("red", "scl"):  # the files match the item's projection fields
        path = root / "sentinel-2-l2a" / first["id"] / first["assets"][key]["href"]
        assert cog_validate(path, strict=True)[0]
        with rasterio.open(path) as ds:
            assert ds.dtypes[0] == "uint16" and ds.nodata == 0 and ds.crs.to_epsg() == 32754
            assert [ds.height, ds.width] == first["assets"][key]["proj:shape"] == first["properties"]["proj:shape"]
            assert list(ds.transform)[:6] == first["assets"][key]["proj:transform"]


def _field_core(field: dict, margin: int = 2) -> tuple[slice, slice]:
    (r0, r1), (c0, c1) = field["rows"], field["cols"]
    return slice(r0 + margin, r1 - margin), slice(c0 + margin, c1 - margin)


def test_pixels_are_the_real_victoria_series(demo_paths, layout, victoria):
    """West fields carry train-split series, east fields test-split series, plus small noise."""
    items = {it["properties"]["datetime"][:10]: it for it in _item_dicts(demo_paths.root)}
    noise_dn = DemoSpec().noise * 10000
    fields = layout["fields"]
    assert {f["split"] for f in fields if f["part"] == "west"} == {"train"}
    assert {f["split"] for f in fields if f["part"] == "east"} == {"test"}
    half = layout["width"] // 2
    assert all(f["cols"][1] <= half for f in fields if f["part"] == "west")
    assert all(f["cols"][0] >= half for f in fields if f["part"] == "east")
    checked = 0
    for day in layout["dates"][::7]:
        item = items[day]
        t = int((np.datetime64(day) - VICTORIA_START) / np.timedelta64(5, "D"))
        scl = _read(demo_paths.root, item, "scl")
        for b, key in enumerate(KEYS):
            dn = _read(demo_paths.root, item, key).astype(float)
            for f in fields:
                rows, cols = _field_core(f)
                clear = np.isin(scl[rows, cols], (4, 5, 6))
                if clear.sum() < 20:
                    continue
                expected = max(victoria[f["split"]][f["series"], t, b], 1)  # 0 is no data: DN >= 1
                values = dn[rows, cols][clear]
                # the median (unbiased by the clip at 1 DN) within 5 standard errors of the noise's
                # median (1.25 sigma / sqrt(n)) plus rounding; every pixel within 6 sigma
                assert abs(np.median(values) - expected) < 5 * 1.25 * noise_dn / np.sqrt(values.size) + 1
                assert np.abs(values - expected).max() < 6 * noise_dn + 1
                checked += 1
    assert checked > 1000


def test_field_classes_and_series_match(layout, victoria, shared_data):
    for split in ("train", "test"):
        labels = pd.read_csv(shared_data / f"victoria_s2/{split}_dataset.csv")["lc_id"].to_numpy()
        for f in (f for f in layout["fields"] if f["split"] == split):
            assert labels[f["series"]] == f["class"]
    counts = np.bincount([f["class"] for f in layout["fields"] if f["part"] == "west"], minlength=8)
    assert counts.min() >= 5 and counts.max() - counts.min() <= 1  # balanced classes for training
    hectares = [(f["rows"][1] - f["rows"][0]) * (f["cols"][1] - f["cols"][0]) / 100 for f in layout["fields"]]
    assert 1.5 < np.median(hectares) < 10  # "fields of a few hectares" at 10 m pixels


def test_clouds_are_flagged_in_scl(demo_paths, layout, victoria):
    items = {it["properties"]["datetime"][:10]: it for it in _item_dicts(demo_paths.root)}
    field_of = np.full((layout["height"], layout["width"]), -1)
    for f in layout["fields"]:
        field_of[slice(*f["rows"]), slice(*f["cols"])] = f["id"]
    assert (field_of >= 0).all()
    water = np.array([f["class"] == 6 for f in layout["fields"]])
    cloudy = layout["cloudy_dates"]
    assert 0.2 < len(cloudy) / len(layout["dates"]) < 0.6 and max(cloudy.values()) == 1.0
    for day, cover in cloudy.items():
        item = items[day]
        scl = _read(demo_paths.root, item, "scl")
        blue = _read(demo_paths.root, item, "blue").astype(float)
        cloud = np.isin(scl, (8, 9))
        assert abs(cloud.mean() - cover) < 0.02
        assert item["properties"]["eo:cloud_cover"] == pytest.approx(100 * cloud.mean(), abs=1e-3)
        assert blue[cloud].min() > 2500  # bright, unlike any clear Victoria blue value below
        t = int((np.datetime64(day) - VICTORIA_START) / np.timedelta64(5, "D"))
        clear_blue = np.array([victoria[f["split"]][f["series"], t, 0] for f in layout["fields"]])[field_of]
        shadow = scl == 3
        if cover < 1.0:
            assert shadow.any()
            assert np.median(blue[shadow] / clear_blue[shadow]) == pytest.approx(0.4, abs=0.05)
        clear = ~cloud & ~shadow
        assert np.all(scl[clear & water[field_of]] == 6) and np.all(np.isin(scl[clear], (4, 5, 6)))
    overcast = next(day for day, cover in cloudy.items() if cover == 1.0)
    assert np.isin(_read(demo_paths.root, items[overcast], "scl"), (8, 9)).all()
    strip = items[layout["nodata_strip_date"]]
    assert (_read(demo_paths.root, strip, "red")[:, -20:] == 0).all()
    assert (_read(demo_paths.root, strip, "scl")[:, -20:] == 0).all()


def test_reference_map(demo_paths, layout, victoria):
    assert cog_validate(demo_paths.reference, strict=True)[0]
    with rasterio.open(demo_paths.reference) as ds:
        ref, cmap = ds.read(1), ds.colormap(1)
        assert ds.dtypes[0] == "uint8" and ds.nodata == 255 and ds.crs.to_epsg() == 32754
        assert list(ds.transform)[:6] == layout["transform"]
    for f in layout["fields"]:
        assert (ref[slice(*f["rows"]), slice(*f["cols"])] == f["class"]).all()
    for i, (_, _, rgb) in enumerate(victoria["classes"]):
        assert cmap[i][:3] == tuple(int(v) for v in rgb.strip().strip('"').removeprefix("rgb(").rstrip(")").split(","))


def test_odc_stac_reads_the_catalog_as_written(demo_paths, layout):
    """A real consumer: odc-stac on the static catalog (relative hrefs) gives the files' values."""
    import odc.stac

    items = list(pystac.Catalog.from_file(demo_paths.catalog).get_items(recursive=True))[:2]
    left, bottom, right, top = layout["bounds"]
    ds = odc.stac.load(items, bands=["red", "scl"], crs="EPSG:32754", resolution=10,
                       x=(left, right), y=(bottom, top))
    for i, item in enumerate(sorted(items, key=lambda it: it.datetime)):
        assert np.array_equal(ds["red"].values[i], _read(demo_paths.root, item.to_dict(), "red"))
        assert np.array_equal(ds["scl"].values[i], _read(demo_paths.root, item.to_dict(), "scl"))


def test_stackstac_reads_item_dicts(demo_paths, layout):
    """stackstac needs proj:epsg (in the JSON) and absolute hrefs; then it lands on the same grid."""
    import stackstac

    dicts = _item_dicts(demo_paths.root)[:2]
    for d in dicts:
        for asset in d["assets"].values():
            asset["href"] = str(demo_paths.root / "sentinel-2-l2a" / d["id"] / asset["href"])
    arr = stackstac.stack(dicts, assets=["nir"], dtype="uint16", fill_value=np.uint16(0), rescale=False,
                          chunksize=256).compute(scheduler="synchronous")
    assert arr.shape[-2:] == (layout["height"], layout["width"])
    assert float(arr.x[0]) == layout["bounds"][0] and float(arr.y[0]) == layout["bounds"][3]  # top-left coords
    for i, d in enumerate(dicts):
        assert np.array_equal(arr.values[i, 0], _read(demo_paths.root, d, "nir"))


def test_demo_yaml_grid_is_the_demo_area(layout):
    from cropmap.io.outlines import tiles_for_aoi

    config = demo_country("/nowhere")
    assert config.catalog.path == Path("/nowhere/catalog.json")
    spec = DemoSpec()
    assert config.tile_size == spec.tile_px and config.year == spec.season_year and config.season == spec.season
    tiles = tiles_for_aoi(config, tile_size=config.tile_size)
    assert len(tiles) == 4 and {t.grid.epsg for t in tiles} == {32754}
    assert sorted(list(t.bounds) for t in tiles) == sorted(t["bounds"] for t in layout["tiles"])


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_build_is_deterministic_skips_when_complete_and_protects_folders(tmp_path):
    small = DemoSpec(tile_px=64, tiles_y=1, margin_days=0)
    a = build_demo(tmp_path / "a", spec=small)
    b = build_demo(tmp_path / "b", spec=small)
    assert _digest(a.root) == _digest(b.root)
    stamp = a.layout.stat().st_mtime_ns
    assert build_demo(tmp_path / "a", spec=small) == a and a.layout.stat().st_mtime_ns == stamp
    other = DemoSpec(tile_px=64, tiles_y=1, margin_days=0, seed=1)  # another spec: rebuilt
    build_demo(tmp_path / "a", spec=other)
    assert read_layout(a.root)["token"] == other.token() != small.token()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="not a cropmap demo folder"):
        build_demo(tmp_path / "mine", spec=small)
    with pytest.raises(ConfigError, match="tiles_x"):
        DemoSpec(tiles_x=3)


def test_cli_demo_build(demo_paths, tmp_path, monkeypatch):
    # the session's demo is complete: the command finds it through $CROPMAP_DEMO_DIR and skips the build
    monkeypatch.setenv("CROPMAP_DEMO_DIR", str(demo_paths.root))
    stamp = demo_paths.layout.stat().st_mtime_ns
    result = CliRunner().invoke(app, ["demo", "build"])
    assert result.exit_code == 0, result.output
    assert str(demo_paths.catalog) in result.output and "4 tiles of 128 px" in result.output
    assert demo_paths.layout.stat().st_mtime_ns == stamp
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("x")
    result = CliRunner().invoke(app, ["demo", "build", "--out", str(tmp_path / "taken")])
    assert result.exit_code == 2 and "not a cropmap demo folder" in result.output


def test_a_northern_spec_moves_the_dates_and_fills_both_halves_from_one_split(tmp_path, victoria):
    """``hemisphere: north`` with ``date_shift_days: -184``: every scene is a Victoria date moved 184 days
    earlier, inside the northern May-Nov window (plus margin), and carries that date's real spectra;
    ``halves: [train, train]`` puts train-split series in both halves."""
    spec = DemoSpec(epsg=32614, origin=(606720.0, 4100480.0), tile_px=64, tiles_y=1, hemisphere="north",
                    date_shift_days=-184, halves=("train", "train"))
    root = build_demo(tmp_path / "north", spec=spec).root
    layout = read_layout(root)
    assert {f["split"] for f in layout["fields"]} == {"train"}
    dates = np.array(layout["dates"], dtype="datetime64[D]")
    assert dates.min() >= np.datetime64("2017-04-01") and dates.max() <= np.datetime64("2017-12-30")
    assert np.datetime64("2017-05-04") in dates  # 2017-11-04, the first Victoria date of the south window, - 184 d
    items = {it["properties"]["datetime"][:10]: it for it in _item_dicts(root)}
    assert len(items) == len(dates) and all(it["properties"]["proj:epsg"] == 32614 for it in items.values())
    day = next(d for d in layout["dates"] if d not in layout["cloudy_dates"] and d != layout["nodata_strip_date"])
    t = int((np.datetime64(day) + np.timedelta64(184, "D") - VICTORIA_START) / np.timedelta64(5, "D"))
    red = _read(root, items[day], "red").astype(float)
    f = max(layout["fields"], key=lambda f: (f["rows"][1] - f["rows"][0]) * (f["cols"][1] - f["cols"][0]))
    rows, cols = _field_core(f)
    assert abs(np.median(red[rows, cols]) - victoria["train"][f["series"], t, 2]) < 30  # noise sigma 50 DN
    with pytest.raises(ConfigError, match="halves"):
        DemoSpec(halves=("train", "valid"))
    with pytest.raises(ConfigError, match="hemisphere"):
        DemoSpec(hemisphere="east")
