"""Training points from reference crop maps: erosion, geographic-grid sampling, legend, series extraction.

Checked against a brute-force NumPy erosion (one shifted comparison per offset of the 60 m disc) on the
DEMO reference map and on a real categorical raster (the SCL of a real Sentinel-2 L2A scene).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import rasterio
from pyproj import Transformer

from cropmap.core.harmonise import Legend
from cropmap.errors import ConfigError, IncompatibleInputError, InvalidInputError
from cropmap.samples.reference import (
    SamplingOptions,
    eroded,
    erosion_footprint,
    legend_from_raster,
    sample_reference_map,
    samples_from_cubes,
)

REAL_SCL = "s2_l2a_stac/sentinel-2-l2a/S2A_33TWM_20230815_0_L2A/SCL.tif"
SCL_NAMES = {1: "saturated", 2: "dark", 3: "shadow", 4: "vegetation", 5: "not vegetated", 6: "water",
             7: "unclassified", 8: "cloud medium", 9: "cloud high", 10: "cirrus", 11: "snow"}


def brute_keep(values: np.ndarray, *, nodata, radius_m: float, res: float, drop_edges: bool = True) -> np.ndarray:
    """Keep a pixel iff each pixel centred within ``radius_m`` holds its value (shift by shift)."""
    h, w = values.shape
    keep = np.ones((h, w), bool) if nodata is None else values != nodata
    r = int(radius_m // res)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if math.hypot(dy * res, dx * res) > radius_m:
                continue
            same = np.full((h, w), not drop_edges)  # beyond the raster: unknown, or ignored
            ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
            xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
            same[yd, xd] = values[ys, xs] == values[yd, xd]
            keep &= same
    return keep


@pytest.fixture(scope="module")
def reference(demo_paths):
    with rasterio.open(demo_paths.reference) as ds:
        return ds.read(1), ds.transform


def test_erosion_equals_brute_force_on_demo_map(reference):
    values, transform = reference
    values = values.copy()
    values[100:110, 40:47] = 255  # a nodata hole: its surroundings must be dropped too
    fp = erosion_footprint(60, res_x=10, res_y=-10)
    assert fp.shape == (13, 13) and fp.sum() == 113  # offsets within 60 m at 10 m pixels
    for drop_edges in (True, False):
        got = eroded(values, footprint=fp, nodata=255, drop_edges=drop_edges)
        want = brute_keep(values, nodata=255, radius_m=60, res=10, drop_edges=drop_edges)
        assert np.array_equal(got, want)
    assert 0.2 < want.mean() < 0.6  # fields of a few hectares lose their 60 m rims


def test_erosion_on_a_real_categorical_raster(shared_data):
    """The real SCL of an Earth Search scene (120 m, JPEG2000 + .aux.xml georeferencing, nodata 0)."""
    path = shared_data / REAL_SCL
    with rasterio.open(path) as ds:
        values = ds.read(1)
    fp = erosion_footprint(250, res_x=120, res_y=-120)
    got = eroded(values, footprint=fp, nodata=0)
    assert np.array_equal(got, brute_keep(values, nodata=0, radius_m=250, res=120))
    points = sample_reference_map(path, value_names=SCL_NAMES,
                                  options=SamplingOptions(erosion_m=250, cell_deg=0.1, per_cell=2))
    small = sample_reference_map(path, value_names=SCL_NAMES,
                                 options=SamplingOptions(erosion_m=250, cell_deg=0.1, per_cell=2, window=100))
    pd.testing.assert_frame_equal(points, small)  # the window size changes nothing
    assert got[points["row"], points["col"]].all()
    assert (values[points["row"], points["col"]] == points["value"]).all()
    assert set(points["class_name"]) >= {"vegetation", "not vegetated", "water"}
    assert points.attrs["crs"] and "32633" in points.attrs["crs"]


def _groups(keep: np.ndarray, values: np.ndarray, transform, epsg: int, cell: float) -> pd.Series:
    """Number of kept pixels per (cell, value), computed here independently of cropmap.samples.reference."""
    rows, cols = np.nonzero(keep)
    xs = transform.c + (cols + 0.5) * transform.a
    ys = transform.f + (rows + 0.5) * transform.e
    lon, lat = Transformer.from_crs(epsg, 4326, always_xy=True).transform(xs, ys)
    frame = pd.DataFrame({"cx": np.floor((lon + 180) / cell), "cy": np.floor((lat + 90) / cell),
                          "value": values[rows, cols].astype(np.int64)})
    return frame.groupby(["cx", "cy", "value"]).size()


@pytest.mark.parametrize("cell, per_cell", [(0.1, 1), (0.001, 1), (0.001, 3)])
def test_grid_sampling_on_demo_map(demo_paths, reference, cell, per_cell):
    values, transform = reference
    options = SamplingOptions(cell_deg=cell, per_cell=per_cell, seed=7)
    points = sample_reference_map(demo_paths.reference, options=options)
    keep = brute_keep(values, nodata=255, radius_m=60, res=10)
    assert keep[points["row"], points["col"]].all()
    assert (values[points["row"], points["col"]] == points["label"]).all()  # identity legend
    # every (cell, class) with an eroded pixel gets min(per_cell, its pixel count) points, no more
    want = np.minimum(_groups(keep, values, transform, 32754, cell), per_cell)
    got = points.assign(cx=np.floor((points.lon + 180) / cell), cy=np.floor((points.lat + 90) / cell)) \
        .groupby(["cx", "cy", "value"]).size()
    pd.testing.assert_series_equal(got.sort_index(), want.sort_index(), check_names=False)
    # coordinates: pixel centres in the map's CRS, lon/lat their WGS 84 transform
    assert np.allclose(points.x, transform.c + (points.col + 0.5) * 10)
    assert np.allclose(points.y, transform.f - (points.row + 0.5) * 10)
    lon, lat = Transformer.from_crs(32754, 4326, always_xy=True).transform(points.x, points.y)
    assert np.allclose(points.lon, lon) and np.allclose(points.lat, lat)
    assert list(points.columns) == ["x", "y", "lon", "lat", "row", "col", "value", "label", "field", "class_name"]


def test_sampling_is_deterministic_and_seeded(demo_paths):
    a = sample_reference_map(demo_paths.reference, options=SamplingOptions(cell_deg=0.001, seed=1))
    b = sample_reference_map(demo_paths.reference, options=SamplingOptions(cell_deg=0.001, seed=1, window=37))
    c = sample_reference_map(demo_paths.reference, options=SamplingOptions(cell_deg=0.001, seed=2))
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == len(c) and not a[["row", "col"]].equals(c[["row", "col"]])


def test_legend_mapping_and_bounds(demo_paths, reference):
    """Victoria classes onto a 4-class crop legend (water dropped); only the west half sampled."""
    legend = Legend(name="crops", classes=["oilseed", "cereal", "pulse", "other"],
                    mapping={"canola": "oilseed", "cereals": "cereal", "legumes": "pulse", "water": None,
                             "bare ground": "other", "forest": "other", "grassland": "other", "urban": "other"})
    values, transform = reference
    left, top = transform.c, transform.f
    west = (left, top - 2560, left + 1280, top)
    points = sample_reference_map(demo_paths.reference, legend=legend, bounds=west,
                                  options=SamplingOptions(cell_deg=0.0005))
    assert points.attrs["classes"] == legend.classes
    assert (points.x < left + 1280).all() and points.col.max() < 128
    source = legend_from_raster(demo_paths.reference).classes
    for value, name in zip(points["value"], points["class_name"]):
        assert name == legend.target_of(source[value])
    assert 6 not in set(points["value"]) and set(points["class_name"]) == set(legend.classes)
    # the erosion still sees the east half: a west pixel next to an east field of another class is dropped
    keep = brute_keep(values, nodata=255, radius_m=60, res=10)
    assert keep[points["row"], points["col"]].all()


def test_bad_reference_maps_fail_clearly(demo_paths, tmp_path):
    geographic = tmp_path / "lonlat.tif"
    with rasterio.open(geographic, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=rasterio.transform.from_origin(142, -36, 0.001, 0.001)) as ds:
        ds.write(np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(InvalidInputError, match="projected CRS"):
        sample_reference_map(geographic, value_names={0: "a", 1: "b"}, legend=Legend(classes=["a", "b"]))
    with pytest.raises(InvalidInputError, match="class_<value>"):
        sample_reference_map(geographic)
    with pytest.raises(ConfigError, match="maps none"):
        sample_reference_map(demo_paths.reference, legend=Legend(classes=["corn", "soy"]))
    with pytest.raises(ConfigError, match="do not overlap"):
        sample_reference_map(demo_paths.reference, bounds=(0, 0, 10, 10))


def test_series_from_tile_cubes_are_the_fields_series(demo_paths, shared_data, tmp_path):
    """Demo -> STAC search -> cube (cropmap.stages.cube) -> points -> samples: each sample's series is its
    pixel in the cube, and on clear dates the real Victoria series of its field."""
    from cropmap.io.outlines import tiles_for_aoi
    from cropmap.io.stac import search_items, season_search_window
    from cropmap.scenarios.demo import demo_country, read_layout
    from cropmap.stages.cube import build_tile_cube, open_tile_cube

    layout = read_layout(demo_paths.root)
    config = demo_country(demo_paths)
    tile = next(t for t in tiles_for_aoi(config, tile_size=config.tile_size) if t.col == 474 and t.row == 3175)
    start, end = season_search_window(config.season, config.year, config.catalog.margin_days)
    items = search_items(config.catalog, bbox=tile.lonlat_bbox(), start=start, end=end)
    cube = open_tile_cube(build_tile_cube(tile, items, config.season, config.year, tmp_path).path)

    points = sample_reference_map(demo_paths.reference, options=SamplingOptions(cell_deg=0.001))
    with pytest.warns(UserWarning, match="outside every cube"):
        samples = samples_from_cubes([cube], points, region="DEMO")
    assert samples.sizes["sample"] > 50 and samples.sizes["time"] == config.season.n_bins
    chosen = points.iloc[samples["point"].values]
    assert (samples["label"].values == chosen["label"].values).all()
    assert list(samples["class_name"].values) == points.attrs["classes"]
    # the pixel: index computed here from the tile's bounds
    left, _, _, top = tile.bounds
    rows = ((top - chosen.y.values) // 10).astype(int)
    cols = ((chosen.x.values - left) // 10).astype(int)
    cube_values = cube.values
    assert np.array_equal(samples["reflectance"].values, cube_values[:, :, rows, cols].transpose(2, 0, 1))
    # the series: the field's Victoria row (raw CSV) on the dates where the pixel was clear
    tables = {s: pd.read_csv(shared_data / f"victoria_s2/{s}_dataset.csv") for s in ("train", "test")}
    field_at = {}
    for f in layout["fields"]:
        for r in range(*f["rows"]):
            for c in range(f["cols"][0], f["cols"][1]):
                field_at[r, c] = f
    # the Victoria date in each 5-day bin (dates are 2017-08-01 + 5 k) and its SCL, read once
    start = np.datetime64("2017-08-01")
    bin_days = samples["time"].values.astype("datetime64[D]")
    ends = [*bin_days[1:], np.datetime64("2018-06-01")]  # the last bin (May 30-31) holds no Victoria date
    dates = [d + np.timedelta64(int((start - d).astype(int) % 5), "D") for d in bin_days]
    assert sum(d >= e for d, e in zip(dates, ends)) == 1
    scl = []
    for date, end in zip(dates, ends):
        if date >= end:
            scl.append(np.zeros((256, 256), np.uint16))  # interpolated bin: not compared
            continue
        folder = next((demo_paths.root / "sentinel-2-l2a").glob(f"*_DEMO_{str(date).replace('-', '')}_0_L2A"))
        with rasterio.open(folder / "scl.tif") as ds:
            scl.append(ds.read(1))
    steps = [int((d - start) / np.timedelta64(5, "D")) for d in dates]
    errors = []
    for s, (row, col) in enumerate(zip(chosen.row, chosen.col)):
        f = field_at[row, col]
        csv = tables[f["split"]][[f"b{i}" for i in range(730)]].to_numpy(float)[f["series"]].reshape(73, 10) / 1e4
        for b, (t, layer) in enumerate(zip(steps, scl)):
            if layer[row, col] in (4, 5, 6):
                errors.append(samples["reflectance"].values[s, b] - csv[t])
    errors = np.abs(np.concatenate(errors))
    # noise sigma 0.005: 6 sigma + rounding at most, and the mean |N| = 0.8 sigma
    assert errors.size > 20000 and errors.max() < 0.0301 and errors.mean() < 0.0045


def test_samples_from_cubes_refuses_mismatched_input(reference):
    points = pd.DataFrame({"lon": [0.0], "lat": [0.0], "label": [0]})
    with pytest.raises(ConfigError, match="class_names"):
        samples_from_cubes([], points)
    with pytest.raises(IncompatibleInputError, match="none of the 1 points"):
        samples_from_cubes([], points, class_names=["a", "b"])
