"""Training points from vector reference labels (real parcels) and the validation split by field.

The parcels are WorldCereal's real Latvian/Belgian reference polygons (openeo_gfmap/wc_extraction_dataset.gpkg,
legacy CROPTYPE codes), mapped through the WorldCereal legend (worldcereal/legend). Every check is made
independently of the sampler: shapely distances to each parcel's boundary, reprojected with pyproj.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
import pytest
import rasterio
import shapely
import yaml
from pyproj import CRS, Transformer
from scipy import ndimage

from cropmap.core.harmonise import Legend
from cropmap.io.config import load_legend
from cropmap.errors import InvalidInputError
from cropmap.ml.train import group_split
from cropmap.samples.reference import SamplingOptions, sample_reference_map
from cropmap.samples.reference_labels import label_extent, read_label_vectors, sample_label_vectors

PARCELS = "openeo_gfmap/wc_extraction_dataset.gpkg"
OPTIONS = SamplingOptions(cell_deg=0.002, per_cell=2)


@pytest.fixture(scope="module")
def legend(shared_data, tmp_path_factory):
    """A legend YAML of the WorldCereal legacy crop-type codes (wc2eurocrops CSV) -> cereals / oilseeds / other."""
    table = pd.read_csv(shared_data / "worldcereal/legend/wc2eurocrops_map_legacy_croptype_codes.csv", dtype=str)
    mapping = {}
    for code, name in zip(table["croptype"], table["name"].str.lower()):
        mapping[code] = ("cereals" if any(w in name for w in ("wheat", "barley", "cereal", "rye", "oat", "maize"))
                         else "oilseeds" if any(w in name for w in ("rapeseed", "sunflower", "soy")) else "other")
    path = tmp_path_factory.mktemp("legend") / "wc.yaml"
    path.write_text(yaml.safe_dump({"name": "wc-croptype", "classes": ["cereals", "oilseeds", "other"],
                                    "mapping": mapping}))
    return path


def _metric_parcels(gpkg, epsg: int) -> np.ndarray:
    _, _, wkb, _ = pyogrio.raw.read(gpkg, columns=[])
    crs = pyogrio.read_info(gpkg)["crs"]
    to_m = Transformer.from_crs(crs, f"EPSG:{epsg}", always_xy=True)
    return shapely.transform(shapely.from_wkb(wkb), lambda xy: np.column_stack(to_m.transform(xy[:, 0], xy[:, 1])))


def _assert_inside(points: pd.DataFrame, gpkg, metres: float) -> None:
    for epsg, part in points.groupby("epsg"):
        parcels = _metric_parcels(gpkg, int(epsg))
        xs, ys = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(
            part["lon"].to_numpy(), part["lat"].to_numpy())
        pts = shapely.points(xs, ys)
        own = parcels[part["field"].to_numpy()]
        assert shapely.contains(own, pts).all()
        dist = shapely.distance(shapely.boundary(own), pts)
        assert dist.min() >= metres - 1e-6, f"a point {dist.min():.2f} m from its parcel's edge"


def test_parcel_points_lie_60_m_inside_and_no_field_straddles_the_split(shared_data, legend):
    gpkg = shared_data / PARCELS
    points = sample_label_vectors(gpkg, column="croptype_label", legend=load_legend(legend), options=OPTIONS)
    assert len(points) > 500 and points["field"].nunique() > 100
    assert set(points["class_name"]) == {"cereals", "oilseeds"}  # the file holds wheat, barley, rapeseed, sunflower
    _assert_inside(points, gpkg, 60.0)
    # the label is the parcel's own code
    values = read_label_vectors(gpkg, "croptype_label").values
    assert (points["value"].to_numpy() == values[points["field"].to_numpy()].astype(str)).all()
    # at most per_cell points per lon/lat cell and class
    cells = points.groupby([np.floor((points["lon"] + 180) / 0.002), np.floor((points["lat"] + 90) / 0.002),
                            "label"]).size()
    assert cells.max() <= 2
    tr, va = group_split(points["label"].to_numpy(), points["field"].to_numpy(), fraction=0.2, seed=0)
    assert len(va) and not set(points["field"].to_numpy()[tr]) & set(points["field"].to_numpy()[va])
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(points)
    assert len(np.unique(points["label"].to_numpy()[va])) == 2


def test_labels_in_another_crs_are_reprojected(shared_data, legend, tmp_path):
    gpkg = shared_data / PARCELS
    meta, _, wkb, fields = pyogrio.raw.read(gpkg)
    to_laea = Transformer.from_crs("EPSG:4326", "EPSG:3035", always_xy=True)
    geoms = shapely.transform(shapely.from_wkb(wkb), lambda xy: np.column_stack(to_laea.transform(xy[:, 0], xy[:, 1])))
    other = tmp_path / "parcels_3035.gpkg"
    pyogrio.raw.write(other, shapely.to_wkb(geoms), fields, fields=meta["fields"], crs="EPSG:3035",
                      geometry_type="MultiPolygon", driver="GPKG")
    assert label_extent(other)[1] == CRS.from_epsg(3035)
    points = sample_label_vectors(other, column="croptype_label", legend=load_legend(legend), options=OPTIONS)
    base = sample_label_vectors(gpkg, column="croptype_label", legend=load_legend(legend), options=OPTIONS)
    _assert_inside(points, gpkg, 60.0 - 0.01)  # checked against the ORIGINAL parcels (cm of reprojection)
    assert abs(len(points) - len(base)) <= 0.01 * len(base)


def test_geoparquet_gives_the_same_points(shared_data, legend, tmp_path):
    gpkg = shared_data / PARCELS
    _, _, wkb, (codes,) = pyogrio.raw.read(gpkg, columns=["croptype_label"])
    geo = {"version": "1.0.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["MultiPolygon"],
                                    "crs": CRS.from_epsg(4326).to_json_dict()}}}
    table = pa.table({"croptype_label": codes, "geometry": pa.array(list(wkb), pa.binary())})
    path = tmp_path / "parcels.parquet"
    pq.write_table(table.replace_schema_metadata({b"geo": json.dumps(geo).encode()}), path)
    a = sample_label_vectors(path, column="croptype_label", legend=load_legend(legend), options=OPTIONS)
    b = sample_label_vectors(gpkg, column="croptype_label", legend=load_legend(legend), options=OPTIONS)
    pd.testing.assert_frame_equal(a, b)


def test_points_are_grouped_by_a_spatial_cell(shared_data, legend, tmp_path):
    _, _, wkb, (codes,) = pyogrio.raw.read(shared_data / PARCELS, columns=["croptype_label"])
    centres = shapely.point_on_surface(shapely.from_wkb(wkb))
    path = tmp_path / "points.gpkg"
    pyogrio.raw.write(path, shapely.to_wkb(centres), [codes], fields=["code"], crs="EPSG:4326",
                      geometry_type="Point", driver="GPKG")
    points = sample_label_vectors(path, column="code", legend=load_legend(legend),
                                  options=SamplingOptions(cell_deg=1e-4))
    assert len(points) == len(codes) and (points["field"] < 0).all()
    x, y = points["x"].to_numpy(), points["y"].to_numpy()  # 1 km cells of the point's UTM zone
    cell = pd.Series(list(zip(points["epsg"], np.floor(x / 1000), np.floor(y / 1000))))
    assert cell.groupby(points["field"].to_numpy()).nunique().max() == 1
    tr, va = group_split(points["label"].to_numpy(), points["field"].to_numpy(), fraction=0.25, seed=1)
    assert not set(cell.iloc[tr]) & set(cell.iloc[va])


def test_bad_vector_labels_fail_clearly(shared_data, legend):
    gpkg = shared_data / PARCELS
    with pytest.raises(InvalidInputError, match=r"no label column 'crop'; columns: sample_id, landcover_label"):
        sample_label_vectors(gpkg, column="crop", legend=load_legend(legend))
    partial = Legend(name="part", classes=["wheat", "other"], mapping={"1120": "wheat", "1520": "other"})
    with pytest.raises(InvalidInputError, match=r"croptype_label code\(s\) absent from legend 'part': "
                                                r"1920, 4351, 4352, 4380 \(4 in all\)"):
        sample_label_vectors(gpkg, column="croptype_label", legend=partial)
    with pytest.raises(InvalidInputError, match="none of its 500 labelled features intersects the country's area"):
        sample_label_vectors(gpkg, column="croptype_label", legend=load_legend(legend),
                             bounds=(142.19, -36.74, 142.23, -36.71))


def _brute_fields(data: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Field of each pixel over the WHOLE raster at once: the smallest index row * width + col of its
    8-connected region of equal value (scipy per value, no windows)."""
    out = np.zeros(rows.size, np.int64)
    lin = np.arange(data.size, dtype=np.int64).reshape(data.shape)
    for v in np.unique(data[rows, cols]):
        region, n = ndimage.label(data == v, structure=np.ones((3, 3)))
        first = np.asarray(ndimage.minimum(lin, region, index=np.arange(1, n + 1)), dtype=np.int64)
        sel = data[rows, cols] == v
        out[sel] = first[region[rows[sel], cols[sel]] - 1]
    return out


@pytest.mark.parametrize("window", [2048, 100, 37])
def test_raster_fields_are_the_whole_maps_regions_whatever_the_window(shared_data, window):
    """The real SCL of a Sentinel-2 scene (915 x 915 px): windows of 37 or 100 px cut its regions, the
    field ids are still those of the whole map's regions."""
    path = shared_data / "s2_l2a_stac/sentinel-2-l2a/S2A_33TWM_20230815_0_L2A/SCL.tif"
    names = {4: "vegetation", 5: "not vegetated", 6: "water", 8: "cloud medium", 9: "cloud high"}
    points = sample_reference_map(path, value_names=names,
                                  options=SamplingOptions(erosion_m=250, cell_deg=0.02, per_cell=3, window=window))
    with rasterio.open(path) as ds:
        data = ds.read(1)
    rows, cols = points["row"].to_numpy(), points["col"].to_numpy()
    assert np.array_equal(points["field"].to_numpy(), _brute_fields(data, rows, cols))
    assert points["field"].nunique() < len(points)  # regions hold several points: what a row split leaks


def test_demo_points_carry_their_field(demo_paths):
    points = sample_reference_map(demo_paths.reference, options=SamplingOptions(cell_deg=0.0005))
    with rasterio.open(demo_paths.reference) as ds:
        data = ds.read(1)
    assert np.array_equal(points["field"].to_numpy(),
                          _brute_fields(data, points["row"].to_numpy(), points["col"].to_numpy()))
    assert points["field"].nunique() < len(points) / 2  # several points per field


def test_group_split_needs_two_fields():
    with pytest.raises(InvalidInputError, match="from 1 field"):
        group_split(np.array([0, 1, 0]), np.array([7, 7, 7]), fraction=0.2, seed=0)


def test_vector_labels_outside_the_country_are_refused_before_any_tile(demo_run, shared_data):
    with pytest.raises(InvalidInputError, match=r"wc_extraction_dataset.gpkg \(extent .*EPSG:4326\) do not "
                                                r"intersect DEMO's tiles"):
        demo_run.tiles(reference=shared_data / PARCELS)


def _demo_parcels(demo_paths, path):
    """The DEMO reference map's fields as polygons in WGS 84 (a reprojection on the way in), column ``crop``."""
    from rasterio import features

    with rasterio.open(demo_paths.reference) as ds:
        data, transform, crs = ds.read(1), ds.transform, ds.crs
        names = {int(k[6:]): v for k, v in ds.tags(1).items() if k.startswith("class_")}
    shapes = [(shapely.geometry.shape(g), int(v)) for g, v in features.shapes(data, mask=data != 255,
                                                                             transform=transform, connectivity=8)]
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    geoms = shapely.transform(np.array([g for g, _ in shapes]),
                              lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])))
    crops = np.array([names[v] for _, v in shapes], dtype=object)
    pyogrio.raw.write(path, shapely.to_wkb(geoms), [crops], fields=["crop"], crs="EPSG:4326",
                      geometry_type="Polygon", driver="GPKG")
    return sorted(set(crops))


@pytest.mark.slow
def test_train_country_from_vector_parcels(demo_run, demo_paths, tmp_path):
    """train-model's job from a GeoPackage of parcels: the sample set's points lie 60 m inside their
    parcel and carry it as ``field`` (what validation groups by)."""
    import xarray as xr

    from cropmap.jobs.executors import InlineExecutor
    from cropmap.jobs.mapping import train_country
    from cropmap.ml.checkpoint import load_checkpoint

    gpkg = tmp_path / "parcels.gpkg"
    classes = _demo_parcels(demo_paths, gpkg)
    legend = tmp_path / "legend.yaml"
    legend.write_text(yaml.safe_dump({"name": "demo", "classes": classes}))
    settings = demo_run.scenario.training.model_copy(update={"epochs": 1, "cell_deg": 0.001})  # ~500 points
    result = train_country(demo_run, InlineExecutor(), reference=str(gpkg), label_column="crop",
                           legend=str(legend), settings=settings)
    samples = xr.load_dataset(result.samples.path, engine="h5netcdf")
    assert samples.sizes["sample"] > 100 and "field" in samples.coords
    points = pd.DataFrame({"lon": samples["lon"].values, "lat": samples["lat"].values,
                           "field": samples["field"].values, "epsg": 32754})
    _assert_inside(points, gpkg, 60.0 - 0.01)  # cm: the parcels went to WGS 84 and back
    assert load_checkpoint(result.checkpoint.path).scores["val_macro_f1"] >= 0


def test_cli_train_refuses_labels_off_the_country_in_one_line(demo_paths, shared_data, legend, tmp_path,
                                                               monkeypatch):
    from typer.testing import CliRunner

    from cropmap.cli import app

    monkeypatch.setenv("CROPMAP_DEMO_DIR", str(demo_paths.root))
    out = CliRunner().invoke(app, ["train", "DEMO", "--labels", str(shared_data / PARCELS), "--label-column",
                                   "croptype_label", "--legend", str(legend), "--out", str(tmp_path)])
    assert out.exit_code == 2, out.output
    assert "do not intersect DEMO's tiles" in out.output and "Traceback" not in out.output
    assert not (tmp_path / "DEMO").exists() or not any((tmp_path / "DEMO").rglob("*.zarr"))  # nothing computed
