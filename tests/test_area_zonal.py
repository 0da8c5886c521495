"""Mapped hectares per admin unit on the DEMO reference map (real Victoria classes): per class against a
point-in-polygon count of every pixel centre, the share of each unit mapped / nodata / outside the map
against exact geometry on pixel edges, and snake_case columns in every file (issue 37)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import rasterio

from cropmap.errors import InvalidInputError
from cropmap.stages.area_zonal import column_name, write_zonal_report, zonal_areas
from test_area import _units, demo_class_map  # noqa: F401 - the DEMO class map fixture and the units, shared

SNAKE = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)*$")


def test_zonal_areas_equal_a_point_in_polygon_count(demo_class_map, tmp_path):  # noqa: F811
    """Mapped hectares per class per unit against NumPy/shapely: each pixel centre, moved to lon/lat,
    counted in the polygon that contains it; each unit's area against the shoelace formula on its
    corners moved to the map's CRS."""
    import shapely
    from pyproj import Transformer

    class_map, _ = demo_class_map
    units = _units(tmp_path / "units.gpkg", class_map)
    table = zonal_areas(class_map, tmp_path / "units.gpkg", field="NAME")
    with rasterio.open(class_map) as src:
        data, t, crs = src.read(1), src.transform, src.crs
        names = json.loads(src.tags()["class_names"])
    cols, rows = np.meshgrid(np.arange(data.shape[1]) + 0.5, np.arange(data.shape[0]) + 0.5)
    lon, lat = Transformer.from_crs(crs, 4326, always_xy=True).transform(*(t * (cols, rows)))
    to_map = Transformer.from_crs(4326, crs, always_xy=True)
    pixel_ha = abs(t.a * t.e) / 1e4
    for i, geom in enumerate(units["geometry"]):
        inside = shapely.contains_xy(geom, lon, lat)
        row = table.iloc[i]
        assert row["name"] == units["NAME"][i]
        for k, name in enumerate(names):
            assert row[f"{column_name(name)}_ha"] == pytest.approx(((data == k) & inside).sum() * pixel_ha, abs=1e-3)
        assert row["nodata_ha"] == pytest.approx(((data == 255) & inside).sum() * pixel_ha, abs=1e-3)
        x, y = to_map.transform(*np.asarray(geom.exterior.coords).T)
        shoelace_ha = abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2 / 1e4
        assert row["unit_ha"] == pytest.approx(shoelace_ha, abs=6e-5)  # written to 4 decimals
    assert table["mapped_ha"].iloc[:2].sum() == pytest.approx((data != 255).sum() * pixel_ha)  # two cover it
    # the map's extent in the two units: their area less the part outside (500 m margins round the map)
    assert (table["unit_ha"] - table["outside_map_ha"]).iloc[:2].sum() == pytest.approx(data.size * pixel_ha)
    far = table.iloc[2]
    assert (far["mapped_ha"], far["mapped_share"], far["nodata_share"], far["outside_map_share"]) == (0, 0, 0, 1)
    paths = write_zonal_report(table, tmp_path / "report", class_map=class_map, name="demo")
    assert paths["by_unit"].read_text().startswith("name,")
    with pytest.raises(InvalidInputError, match="column 'PROVINCE'.*columns: NAME"):
        zonal_areas(class_map, tmp_path / "units.gpkg", field="PROVINCE")


@pytest.fixture
def holed_map(demo_class_map, tmp_path):  # noqa: F811
    """The DEMO class map with a nodata rectangle (rows 0-63, columns 100-163: clouds, a failed tile)."""
    class_map, _ = demo_class_map
    with rasterio.open(class_map) as src:
        profile, data, tags, colormap = src.profile, src.read(), src.tags(), src.colormap(1)
    data[0, :64, 100:164] = 255
    out = tmp_path / "holed.tif"
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(**tags)
        dst.write_colormap(1, colormap)
    return out, data[0]


def _layer(path, boxes, names, crs, field="Unit Name"):
    import pyogrio.raw
    import shapely

    pyogrio.raw.write(str(path), geometry=np.asarray(shapely.to_wkb(boxes), dtype=object),
                      field_data=[np.array(names, dtype=object)], fields=[field], crs=crs,
                      geometry_type="Polygon", driver="GPKG")
    return path


def test_shares_of_a_unit_partly_outside_and_partly_unmapped(holed_map, tmp_path):
    """A unit on pixel edges in the map's CRS: 1 km west of the map, 128 x 128 pixels inside it, 64 x 28 of
    them nodata: mapped, nodata and outside shares are those fractions of its area exactly (NumPy counts
    and the rectangle's sides), and sum to 1; one unit wholly inside the map is 100 % mapped."""
    from shapely.geometry import box

    class_map, data = holed_map
    with rasterio.open(class_map) as src:
        left, _, _, top = src.bounds
        crs = src.crs.to_wkt()
    partial = box(left - 1000, top - 1280, left + 1280, top)  # 2,280 m x 1,280 m
    whole = box(left + 1700, top - 2500, left + 2500, top - 1700)  # rows 170-249, columns 170-249
    units = _layer(tmp_path / "u.gpkg", [partial, whole], ["partly mapped", "inside"], crs)
    table = zonal_areas(class_map, units, field="Unit Name")
    part, inner = table.iloc[0], table.iloc[1]
    unit_ha, outside_ha = 2280 * 1280 / 1e4, 1000 * 1280 / 1e4
    nodata_px = int((data[:128, :128] == 255).sum())
    assert nodata_px == 64 * 28
    assert part["unit_ha"] == pytest.approx(unit_ha) and part["outside_map_ha"] == pytest.approx(outside_ha)
    assert part["nodata_ha"] == pytest.approx(nodata_px * 0.01)
    assert part["mapped_ha"] == pytest.approx((128 * 128 - nodata_px) * 0.01)
    assert part["mapped_share"] == pytest.approx((128 * 128 - nodata_px) * 0.01 / unit_ha, abs=1e-6)
    assert part["nodata_share"] == pytest.approx(nodata_px * 0.01 / unit_ha, abs=1e-6)
    assert part["outside_map_share"] == pytest.approx(outside_ha / unit_ha, abs=1e-6)
    assert part[["mapped_share", "nodata_share", "outside_map_share"]].sum() == pytest.approx(1, abs=1e-5)
    assert (inner["mapped_share"], inner["nodata_share"], inner["outside_map_share"]) == (1, 0, 0)
    assert inner["mapped_ha"] == pytest.approx(80 * 80 * 0.01)
    md = write_zonal_report(table, tmp_path / "r", class_map=class_map)["by_unit_markdown"].read_text()
    assert "Units less than 99 % mapped: 1 of 2 (partly mapped)." in md


def test_every_column_is_snake_case(demo_class_map, tmp_path):  # noqa: F811
    """Class names with spaces (``bare ground``) and a field with a space and capitals give snake_case
    columns in the CSV and the markdown; two names that meet in snake_case are refused."""
    class_map, _ = demo_class_map
    from shapely.geometry import box

    with rasterio.open(class_map) as src:
        crs, bounds = src.crs.to_wkt(), src.bounds
    units = _layer(tmp_path / "u.gpkg", [box(*bounds)], ["all"], crs)
    table = zonal_areas(class_map, units, field="Unit Name")
    paths = write_zonal_report(table, tmp_path / "r", class_map=class_map)
    header = pd.read_csv(paths["by_unit"]).columns
    assert "bare_ground_ha" in header and header[0] == "unit_name"
    assert [c for c in header if not SNAKE.match(c)] == []
    md_header = next(line for line in paths["by_unit_markdown"].read_text().splitlines() if line.startswith("| "))
    assert [c.strip() for c in md_header.strip("|").split("|")] == list(header)
    assert column_name(" Winter  Wheat (ha)") == "winter_wheat_ha"
    with pytest.raises(InvalidInputError, match=r"\['mapped_ha'\] come twice"):
        zonal_areas(class_map, _layer(tmp_path / "m.gpkg", [box(*bounds)], ["x"], crs, "Mapped HA"), field="Mapped HA")
