"""National maps across UTM zones and hemispheres: per-zone COGs, one national COG in the output CRS,
the zone rule in the overlap strip, outline parts and their seasons.

The two-zone and equator countries are the DEMO scenario's real Victoria spectra laid out astride the
zone 54/55 border (144 E) and astride the equator (33.5 E): configs that name the ``demo`` scenario
with other DemoSpec options. The national COG is checked against an independent NumPy/pyproj nearest-
neighbour reprojection of the tile GeoTIFFs themselves.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rio_cogeo.cogeo import cog_validate

from cropmap.errors import IncompatibleInputError
from cropmap.io.config import DEFAULT_CONFIGS_DIR, load_country
from cropmap.io.outlines import part_plans, tiles_for_aoi
from cropmap.jobs.executors import InlineExecutor
from cropmap.jobs.mapping import map_country
from cropmap.scenarios import resolve_run

def _owner(lon, lat):
    return np.where(lat >= 0, 32600, 32700) + (np.floor((lon + 180) / 6).astype(int) + 1)


def reference_national(national: Path, tiles: list[Path]) -> tuple[dict[int, np.ndarray], np.ndarray, np.ndarray]:
    """Per zone, the tile classes at each national pixel centre (nearest neighbour: the tile pixel holding
    the centre, by pyproj, exactly), the owner zone of each centre, and where the exact position lies
    within GDAL's approximation error (1/8 pixel) of a tile pixel's edge: there the warper's approximate
    transform may pick the neighbouring pixel, as gdalwarp's default does."""
    with rasterio.open(national) as n:
        t, (h, w), crs = n.transform, n.shape, n.crs
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    xs, ys = t * (cols, rows)
    lon, lat = Transformer.from_crs(crs, 4326, always_xy=True).transform(xs, ys)
    zones: dict[int, np.ndarray] = {}
    near_edge = np.zeros((h, w), bool)
    for path in tiles:
        with rasterio.open(path) as src:
            epsg, data, tt = src.crs.to_epsg(), src.read(1), src.transform
        zx, zy = Transformer.from_crs(crs, epsg, always_xy=True).transform(xs, ys)
        fc, fr = (zx - tt.c) / tt.a, (zy - tt.f) / tt.e
        c, r = np.floor(fc).astype(int), np.floor(fr).astype(int)
        inside = (c >= 0) & (c < data.shape[1]) & (r >= 0) & (r < data.shape[0])
        values = zones.setdefault(epsg, np.full((h, w), 255, np.uint8))
        values[inside] = data[r[inside], c[inside]]
        edge = lambda f: np.abs(f - np.rint(f)) < 0.125  # noqa: E731
        near_edge |= (c >= -1) & (c <= data.shape[1]) & (r >= -1) & (r <= data.shape[0]) & (edge(fc) | edge(fr))
    return zones, _owner(lon, lat), near_edge


@pytest.mark.slow
def test_two_zone_country_national_cog_follows_the_tiles_and_the_zone_rule(two_zone_run):
    run, result = two_zone_run
    assert set(result.zones) == {32754, 32755} and not result.zone_failures and not result.tiles.failures
    for cog in [*result.mosaic.cogs.values(), *(c for z in result.zones.values() for c in z.cogs.values())]:
        assert cog_validate(cog, strict=True)[0], cog
    national = Path(result.mosaic.cogs["class"])
    with rasterio.open(national) as n:
        got, names, cmap = n.read(1), json.loads(n.tags()["class_names"]), n.colormap(1)
        assert n.crs.to_epsg() == 3577 and n.res == (10.0, 10.0)
    assert len(names) == 8 and cmap[1][:3] != (0, 0, 0)  # class names and colours kept
    tiles = sorted(Path(run.tile_dir(result.key)).glob("*.class.tif"))
    zones, owner, near_edge = reference_national(national, tiles)
    a, b = zones[32754], zones[32755]
    sure = ~near_edge  # about 44 % of the pixels: the exact position is >= 1/8 pixel from every edge
    assert 0.3 < sure.mean() < 0.6
    only_a, only_b, strip = (a != 255) & (b == 255), (b != 255) & (a == 255), (a != 255) & (b != 255)
    assert only_a.sum() > 1000 and only_b.sum() > 1000 and strip.sum() > 1000  # both zones, and a real strip
    np.testing.assert_array_equal(got[only_a & sure], a[only_a & sure])
    np.testing.assert_array_equal(got[only_b & sure], b[only_b & sure])
    # near an edge the approximate transform may take the neighbour: never anything else
    for zone, only in ((a, only_a), (b, only_b)):
        close = only & ~sure
        assert (got[close] == zone[close]).mean() > 0.97
    # in the strip, the zone holding the pixel's centre; the two zones disagree there often enough
    # (different pixel lattices) for the rule to matter
    expected = np.where(owner == 32754, a, b)
    np.testing.assert_array_equal(got[strip & sure], expected[strip & sure])
    assert (a[strip & sure] != b[strip & sure]).sum() > 20
    assert ((a == 255) & (b == 255) & sure & (got != 255)).sum() == 0
    conf = Path(result.mosaic.cogs["confidence"])
    with rasterio.open(conf) as c:
        assert c.shape == got.shape and c.transform == rasterio.open(national).transform
        assert ((c.read(1) != 255) == (got != 255)).mean() > 0.99  # bilinear edges may differ a little


@pytest.mark.slow
def test_the_national_map_has_an_ood_cog_with_its_flagged_share_in_the_item_and_the_summary(two_zone_run):
    """The third product: the OOD score mosaicked like the confidence, its share over 100 (counted here)
    in the STAC item and the run summary, and the scored map's layers rated as detectors of its errors."""
    from cropmap.jobs.reports import map_lines

    run, result = two_zone_run
    assert set(result.mosaic.cogs) >= {"class", "confidence", "ood"}
    assert all("ood" in z.cogs for z in result.zones.values())
    with rasterio.open(result.mosaic.cogs["ood"]) as src, rasterio.open(result.mosaic.cogs["class"]) as cls:
        ood, classes = src.read(1), cls.read(1)
        assert src.transform == cls.transform and cog_validate(result.mosaic.cogs["ood"], strict=True)[0]
    valid = ood != 255
    assert ((ood != 255) == (classes != 255)).mean() > 0.99
    share = float((ood[valid] > 100).mean())
    item = json.loads(Path(result.mosaic.stac_item).read_text())
    assert item["properties"]["cropmap:ood_flagged_share"] == pytest.approx(share, abs=1e-6)
    assert item["assets"]["ood"]["href"] == f"./{Path(result.mosaic.cogs['ood']).name}"
    assert any(line.startswith("national OOD score:") and f"({share:.1%} of the mapped pixels" in line
               for line in map_lines(result))
    assert (result.accuracy is None) == (run.scenario is None or run.scenario.score_bounds is None)
    if result.accuracy is not None:  # scored: both layers rated against the map's errors
        assert set(result.accuracy["error_detection"]) == {"confidence", "ood"}
        assert 0 <= result.accuracy["ood_flagged"] <= 1


@pytest.mark.slow
def test_equator_country_gets_each_sides_season_and_one_national_map(zone_configs, demo_paths, slim_model, tmp_path,
                                                                      monkeypatch):
    """Mapped with the slim DEMO model: seasons, zones and the national map do not depend on the weights."""
    monkeypatch.setenv("CROPMAP_CONFIGS_DIR", str(zone_configs))
    monkeypatch.setenv("CROPMAP_DEMO_DIR", str(demo_paths.root))
    run = resolve_run("DEQ", out_dir=str(tmp_path))
    plans = {p.hemisphere: p for p in run.parts_plan()}
    assert plans["south"].season == run.config.season and plans["north"].season.start == "05-01"
    result = map_country(run, InlineExecutor(), model=slim_model)
    assert set(result.zones) == {32636, 32736} and result.season_offsets == {"north": 6, "south": 0}
    north_tile = next(Path(run.tile_dir(result.key)).glob("32636-*.class.tif"))
    with rasterio.open(north_tile) as src:
        tags = src.tags()
    assert json.loads(tags["season"])["hemisphere"] == "north" and json.loads(tags["model_season"])["hemisphere"] == "south"
    assert tags["season_offset_months"] == "6"
    national = result.mosaic.cogs["class"]
    assert cog_validate(national, strict=True)[0]
    with rasterio.open(national) as n:
        assert n.crs.to_epsg() == 6933 and (n.read(1) != 255).mean() > 0.5


def test_a_tile_that_does_not_fit_is_refused_before_any_compute(demo_run, demo_model, tmp_path):
    from cropmap.jobs.tiles import run_model

    run = demo_run.model_copy(update={"root": str(tmp_path / "run")})
    tile = run.tiles()[0]
    key = run_model(run, demo_model).key
    folder = Path(run.tile_dir(key))
    folder.mkdir(parents=True)
    profile = {"driver": "GTiff", "width": 4, "height": 4, "count": 1, "dtype": "uint8", "crs": "EPSG:32754",
               "transform": rasterio.transform.from_origin(0, 40, 10, 10)}
    with rasterio.open(folder / f"{tile}.class.tif", "w", **profile) as dst:  # another model's classes
        dst.write(np.zeros((1, 4, 4), np.uint8))
        dst.update_tags(cropmap_run_key=key, class_names=json.dumps(["wheat", "maize"]))
    with pytest.raises(IncompatibleInputError, match=tile):
        map_country(run, InlineExecutor(), model=demo_model)
    assert not Path(run.cube_dir).exists()  # not one cube was built


def test_france_maps_metropolitan_france_by_default():
    fra = load_country("FRA", DEFAULT_CONFIGS_DIR)
    tiles = tiles_for_aoi(fra)
    assert len(tiles) > 4000 and min(t.lonlat_bbox()[0] for t in tiles) > -10
    assert {t.grid.epsg for t in tiles} == {32630, 32631, 32632}
    asked = tiles_for_aoi(fra, parts=("metropolitan", "french-guiana"))
    assert min(t.lonlat_bbox()[0] for t in asked) < -50 and len(asked) > len(tiles) + 800


def test_a_part_across_the_equator_gets_the_six_month_offset_season():
    """Kenya (Natural Earth) straddles the equator: each side gets its own hemisphere's season."""
    from cropmap.io.config import CountryConfig

    kenya = CountryConfig.model_validate({
        "code": "KEN", "name": "Kenya", "outline": {"natural_earth": "Kenya"}, "hemisphere": "north",
        "season": {"start": "05-01", "end": "11-30", "hemisphere": "north"}, "year": 2023})
    plans = {p.hemisphere: p for p in part_plans(kenya)}
    assert set(plans) == {"north", "south"} and plans["north"].tiles > 0 and plans["south"].tiles > 0
    assert plans["north"].season == kenya.season
    south = plans["south"].season
    assert (south.start, south.end, south.hemisphere, south.n_bins) == ("11-01", "05-31", "south", kenya.season.n_bins)
    assert kenya.season.require_aligned(south, what="KEN") == 6
    tiles = tiles_for_aoi(kenya)
    assert {t.grid.epsg // 100 for t in tiles} == {326, 327}


def _zone_pair(folder: Path) -> dict[int, Path]:
    """Two class COGs at 20 m astride 144 E (EPSG:32754 and 32755), overlapping over ~10 km around the
    meridian, random classes with holes: the zones disagree on almost every overlap pixel."""
    from cropmap.stages.mosaic import write_cog

    rng = np.random.default_rng(35)
    cogs = {}
    for epsg, left in ((32754, 762_000.0), (32755, 224_000.0)):
        data = rng.integers(0, 8, (1, 600, 600), dtype=np.uint8)
        data[:, 100:160, 200:400] = 255  # a hole the other zone fills
        raw = folder / f"raw_{epsg}.tif"
        with rasterio.open(raw, "w", driver="GTiff", width=600, height=600, count=1, dtype="uint8", nodata=255,
                           crs=f"EPSG:{epsg}", transform=rasterio.transform.from_origin(left, 5_950_000, 20, 20),
                           tiled=True, blockxsize=256, blockysize=256) as dst:
            dst.write(data)
        cogs[epsg] = write_cog(raw, folder / f"Z_{epsg}_class.tif", resampling="mode")
    return cogs


def _reference_combine(cogs: dict[int, Path], crs: str, resolution: float, window: int) -> np.ndarray:
    """The zone rule pixel by pixel (the computation before issue 35): every zone's GDAL warp (read by the
    same windows: GDAL's approximate transform is fitted per request), the lowest EPSG's value where the
    others have none, and in the overlap the value of the zone whose UTM zone holds the pixel's centre, by
    pyproj for every centre."""
    from rasterio.vrt import WarpedVRT

    from cropmap.stages.national import national_grid

    transform, width, height = national_grid(list(cogs.values()), crs, resolution=resolution)
    warped = {}
    for epsg, path in cogs.items():
        with rasterio.open(path) as src, WarpedVRT(src, crs=crs, transform=transform, width=width, height=height,
                                                   resampling=rasterio.enums.Resampling.nearest, nodata=255,
                                                   src_nodata=255, tolerance=0.125) as vrt:
            warped[epsg] = np.block([[vrt.read(1, window=rasterio.windows.Window(c, r, min(window, width - c),
                                                                                 min(window, height - r)))
                                      for c in range(0, width, window)] for r in range(0, height, window)])
    owner = _owner(*_lonlat(transform, (height, width), crs))
    out = np.full((height, width), 255, np.uint8)
    for epsg in sorted(warped, reverse=True):  # the lowest EPSG's value last, so it wins ...
        out = np.where(warped[epsg] != 255, warped[epsg], out)
    both = np.sum([w != 255 for w in warped.values()], axis=0) >= 2
    for epsg, values in warped.items():  # ... and in the overlap, the owner zone's
        out = np.where(both & (owner == epsg), values, out)
    return out


def test_national_windows_in_parallel_give_one_threads_bytes_and_the_zone_rule_pixel_by_pixel(tmp_path):
    """Many small windows warped by 3 threads: the same COG bytes as one thread, and the same pixels as
    the zone rule applied to every pixel centre by pyproj (so the lattice lookup of the owner zone is exact)."""
    from cropmap.stages.national import write_national_cog

    cogs = _zone_pair(tmp_path)
    crs = "EPSG:3577"
    one = write_national_cog(cogs, tmp_path / "one" / "N_class.tif", crs=crs, product="class", resolution=20,
                             window=96, threads=1)
    many = write_national_cog(cogs, tmp_path / "many" / "N_class.tif", crs=crs, product="class", resolution=20,
                              window=96, threads=3)
    assert one.read_bytes() == many.read_bytes()
    expected = _reference_combine(cogs, crs, 20, 96)
    with rasterio.open(many) as n:
        got, transform = n.read(1), n.transform
    strip = _in_both_zones(cogs, transform, got.shape, crs)
    lon, lat = _lonlat(transform, got.shape, crs)
    assert strip.sum() > 10_000 and set(np.unique(_owner(lon[strip], lat[strip]))) == {32754, 32755}
    np.testing.assert_array_equal(got, expected)


def _lonlat(transform, shape: tuple[int, int], crs: str) -> tuple[np.ndarray, np.ndarray]:
    """Lon and lat (degrees, ``shape``) of the pixel centres of a raster."""
    cols, rows = np.meshgrid(np.arange(shape[1]) + 0.5, np.arange(shape[0]) + 0.5)
    return Transformer.from_crs(crs, 4326, always_xy=True).transform(*(transform * (cols, rows)))


def _in_both_zones(cogs: dict[int, Path], transform, shape: tuple[int, int], crs: str) -> np.ndarray:
    """Where both zone rasters have data at a national pixel centre (the zone pixel holding it, by pyproj)."""
    cols, rows = np.meshgrid(np.arange(shape[1]) + 0.5, np.arange(shape[0]) + 0.5)
    xs, ys = transform * (cols, rows)
    inside = np.ones(shape, bool)
    for path in cogs.values():
        with rasterio.open(path) as src:
            data, t = src.read(1), src.transform
            zx, zy = Transformer.from_crs(crs, src.crs, always_xy=True).transform(xs, ys)
        c, r = np.floor((zx - t.c) / t.a).astype(int), np.floor((zy - t.f) / t.e).astype(int)
        ok = (c >= 0) & (c < data.shape[1]) & (r >= 0) & (r < data.shape[0])
        inside &= ok & (data[np.clip(r, 0, data.shape[0] - 1), np.clip(c, 0, data.shape[1] - 1)] != 255)
    return inside


def test_the_owner_lattice_equals_the_owner_of_every_centre_across_a_meridian_and_the_equator():
    """:func:`_owner_map` against pyproj at every pixel centre, on windows where 144 E (EPSG:3577), 30 E,
    and 36 E and the equator (EPSG:6933) cross the window, and on a one-row window."""
    from cropmap.stages.national import _owner_map, owner_zone

    for crs, lon, lat in (("EPSG:3577", 144.0, -36.6), ("EPSG:6933", 36.0, 0.0), ("EPSG:6933", 30.0, 0.0)):
        x, y = Transformer.from_crs(4326, crs, always_xy=True).transform(lon, lat)
        transform = rasterio.transform.from_origin(x - 7_013.0, y + 5_021.0, 10.0, 10.0)  # the point inside
        to_lonlat = Transformer.from_crs(crs, 4326, always_xy=True)
        for h, w in ((1000, 1401), (1, 1400)):
            cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
            exact = owner_zone(*to_lonlat.transform(*(transform * (cols, rows))))
            assert len(np.unique(exact)) >= 2  # the boundary crosses the window
            np.testing.assert_array_equal(_owner_map(transform, h, w, to_lonlat), exact)


def test_the_national_probability_cog_keeps_the_class_its_confidence_and_its_sum(tiny_checkpoint, tmp_path,
                                                                               shared_data):
    """The real Victoria series as 8 tiles predicted with probabilities, their zone mosaic warped to EPSG:3577:
    at every national pixel the class is a most probable band (the only one where the top is not tied), the
    confidence is the top percent and the bands sum to 100 within rounding (n_classes / 2), as in the tiles.
    Bilinear warping of the probabilities (before) broke the first two on 12 % of the pixels. The national
    item lists every COG's label sidecars, names the probability bands and validates offline."""
    from builders import predict_tiles, victoria_tiles

    from cropmap.io.stac_validation import validate_stac
    from cropmap.stages.gis_styles import sidecars
    from cropmap.stages.mosaic import mosaic_tiles
    from cropmap.stages.national import national_mosaic
    from cropmap.stages.predict import NODATA, PredictOptions

    cubes, _ = victoria_tiles(tmp_path / "cubes", rows=2, cols=4, ny=10, nx=10, split="all")
    predict_tiles(tiny_checkpoint, cubes, tmp_path / "tiles", options=PredictOptions(probabilities=True))
    zone = mosaic_tiles(tmp_path / "tiles", tmp_path / "zone", name="vic_32755", blocksize=16)
    result = national_mosaic({32755: zone.cogs}, tmp_path / "national", name="vic", crs="EPSG:3577", threads=1)
    assert set(result.cogs) == {"class", "confidence", "probability"}
    with rasterio.open(result.cogs["class"]) as c, rasterio.open(result.cogs["probability"]) as p, \
            rasterio.open(result.cogs["confidence"]) as f, rasterio.open(zone.cogs["probability"]) as z:
        cls, prob, conf = c.read(1), p.read().astype(np.int64), f.read(1)
        assert p.crs.to_epsg() == 3577 and list(p.descriptions) == list(z.descriptions) and z.descriptions[0]
        assert json.loads(p.tags()["class_names"]) == list(z.descriptions)
    mapped = cls != NODATA
    assert mapped.sum() > 700 and ((prob != NODATA) == mapped).all() and ((conf != NODATA) == mapped).all()
    pm = prob[:, mapped]
    top = pm.max(0)
    single = (pm == top).sum(0) == 1
    assert (np.take_along_axis(pm, cls[mapped][None].astype(np.int64), 0)[0] == top).all()
    assert single.sum() > mapped.sum() / 2 and (pm.argmax(0)[single] == cls[mapped][single]).all()
    assert (conf[mapped] == top).all() and (np.abs(pm.sum(0) - 100) <= len(pm) / 2).all()
    item = json.loads(Path(result.stac_item).read_text())
    hrefs = {a["href"][2:] for a in item["assets"].values()}
    assert {s.name for cog in result.cogs.values() for s in sidecars(cog)} <= hrefs
    assert [b["name"] for b in item["assets"]["probability"]["raster:bands"]] == \
        [k["name"] for k in item["assets"]["class"]["classification:classes"][:-1]]
    validate_stac(result.stac_item, shared_data / "stac_schemas")


def test_the_national_quicklook_names_the_country_gives_the_score_and_its_item_describes_its_bytes(two_zone_run):
    from PIL import Image

    from cropmap.stages.stac_assets import multihash_sha256

    run, result = two_zone_run
    png = Path(result.mosaic.quicklook)
    title = Image.open(png).text["Title"]
    assert title.startswith(f"{run.config.name} (DMZ) - season "), title
    if result.accuracy is not None and result.accuracy["n"]:  # scored after the mosaic: drawn again
        assert f"scored: OA {result.accuracy['oa']:.3f}, macro-F1 {result.accuracy['macro_f1']:.3f}" in title, title
    else:
        assert "scored" not in title, title
    asset = json.loads(Path(result.mosaic.stac_item).read_text())["assets"]["quicklook"]
    assert asset["href"] == f"./{png.name}"
    assert (asset["file:size"], asset["file:checksum"]) == (png.stat().st_size, multihash_sha256(png))
