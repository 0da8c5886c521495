"""The WorldCereal, sits and openEO readers against independent pandas/NumPy reads of the real files."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cropmap.core.bands import S2_BANDS
from cropmap.errors import (
    CropmapError,
    IncompatibleInputError,
    InvalidInputError,
    MissingBandError,
)
from cropmap.io.openeo import read_openeo_cube
from cropmap.samples.sits import read_sits
from cropmap.samples.summary import summarize_samples
from cropmap.samples.worldcereal import read_worldcereal

# resolution suffix of each band in the wide WorldCereal columns (from the files' column names)
_RES = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B05": 20, "B06": 20, "B07": 20, "B8A": 20, "B11": 20,
        "B12": 20}


def _ewoc_names(shared_data) -> dict[int, str]:
    """ewoc_code -> label_full, parsed with the csv module (independent of the reader's pandas path)."""
    import csv

    path = shared_data / "worldcereal/legend/crop_type_class_mappings_ewoc.csv"
    with open(path, encoding="utf-8-sig", newline="") as f:
        return {int(r["ewoc_code"].replace("-", "")): r["label_full"] for r in csv.DictReader(f, delimiter=";")}


def _wide_reference(table: pd.DataFrame, n_time: int) -> np.ndarray:
    out = np.empty((len(table), n_time, len(S2_BANDS)), dtype=np.float64)
    for j, band in enumerate(S2_BANDS):
        for k in range(n_time):
            out[:, k, j] = table[f"OPTICAL-{band}-ts{k}-{_RES[band]}m"].to_numpy(np.float64)
    return np.where(out == 65535, np.nan, out / 10000)


# ----------------------------------------------------------------------------- WorldCereal, wide
@pytest.fixture(scope="module")
def public(shared_data):
    path = shared_data / "worldcereal/test_public_extractions.parquet"
    return read_worldcereal(path), pd.read_parquet(path)


def test_worldcereal_wide_uga_ssd_values_dates_and_shape(public):
    ds, table = public
    assert ds.attrs["layout"] == "wide"
    assert ds["reflectance"].dims == ("sample", "time", "band")
    assert ds["reflectance"].shape == (500, 12, 10)  # data README: 500 points, monthly Dec 2016 - Nov 2017
    assert ds["band"].values.tolist() == list(S2_BANDS)
    np.testing.assert_allclose(ds["reflectance"].values, _wide_reference(table, 12), rtol=1e-6, equal_nan=True)
    nodata = (table.filter(regex=r"^OPTICAL-").to_numpy() == 65535).sum()
    assert nodata > 0 and np.isnan(ds["reflectance"].values).sum() == nodata
    expected = pd.date_range(table["start_date"].iloc[0], table["end_date"].iloc[0], freq="MS")
    assert (ds["time"].values == expected.values).all() and len(expected) == 12


def test_worldcereal_wide_labels_regions_and_coordinates(public, shared_data):
    ds, table = public
    names = ds["class_name"].values[ds["label"].values]
    # the legend mapping of ewoc_code reproduces the file's own label_full column, sample by sample
    assert (names == table["label_full"].to_numpy()).all()
    legend = _ewoc_names(shared_data)
    assert (names == np.array([legend[c] for c in table["ewoc_code"]])).all()
    counts = dict(zip(*np.unique(names, return_counts=True)))
    assert counts == table["label_full"].value_counts().to_dict()
    assert len(counts) == ds.sizes["class"] == table["ewoc_code"].nunique()
    for country in ("UGA", "SSD", "AF"):
        expected = table["ref_id"].str.contains(f"^\\d{{4}}_{country}_").sum()
        assert (ds["region"].values == country).sum() == expected > 0
    assert (ds["region"].values == "UGA").sum() + (ds["region"].values == "SSD").sum() == 479
    np.testing.assert_array_equal(ds["lat"].values, table["lat"].to_numpy())
    np.testing.assert_array_equal(ds["sample"].values, table["sample_id"].to_numpy())


# ----------------------------------------------------------------------------- WorldCereal, long
def test_worldcereal_long_belgium_matches_a_pandas_pivot(shared_data):
    path = shared_data / "worldcereal/private_extractions_dummy_BEL.parquet"
    ds = read_worldcereal(path)
    table = pd.read_parquet(path)
    assert ds.attrs["layout"] == "long"
    assert ds["reflectance"].shape == (100, 16, 10)  # 100 samples x 16 months (Aug 2020 - Nov 2021)
    assert ds["band"].values.tolist() == list(S2_BANDS)
    assert str(ds["time"].values[0])[:10] == "2020-08-01" and str(ds["time"].values[-1])[:10] == "2021-11-01"
    for j, band in enumerate(S2_BANDS):
        pivot = table.pivot(index="sample_id", columns="timestamp", values=f"S2-L2A-{band}")
        pivot = pivot.loc[ds["sample"].values, ds["time"].values].to_numpy(np.float64)
        expected = np.where(pivot == 65535, np.nan, pivot / 10000)
        np.testing.assert_allclose(ds["reflectance"].values[:, :, j], expected, rtol=1e-6, equal_nan=True)
    # B8A is 65535 everywhere in this file: all NaN, never 6.5535
    assert np.isnan(ds["reflectance"].sel(band="B8A")).all()
    assert set(ds["region"].values) == {"BEL"}
    legend = _ewoc_names(shared_data)
    codes = table.drop_duplicates("sample_id").set_index("sample_id").loc[ds["sample"].values, "ewoc_code"]
    assert (ds["class_name"].values[ds["label"].values] == [legend[c] for c in codes]).all()
    assert ds.sizes["class"] == table["ewoc_code"].nunique() == 16


# ----------------------------------------------------------------------------- prometheo (legacy codes)
@pytest.mark.parametrize("name, n_time, step_days", [
    ("prometheo_worldcereal_dataset.parquet", 16, (28, 31)),
    ("prometheo_worldcereal_dataset_10D.parquet", 49, (8, 11)),
])
def test_prometheo_monthly_and_dekadal(shared_data, name, n_time, step_days):
    path = shared_data / f"worldcereal/{name}"
    ds, table = read_worldcereal(path), pd.read_parquet(path)
    assert ds["reflectance"].shape == (50, n_time, 10)
    np.testing.assert_allclose(ds["reflectance"].values, _wide_reference(table, n_time), rtol=1e-6,
                               equal_nan=True)
    times = pd.DatetimeIndex(ds["time"].values)
    steps = np.diff(times).astype("timedelta64[D]").astype(int)
    assert steps.min() >= step_days[0] and steps.max() <= step_days[1]
    assert times[-1] == pd.Timestamp(table["end_date"].iloc[0])
    assert pd.Timestamp(table["start_date"].iloc[0]) in times
    # steps before start_date hold no data at all (the dekadal file's padding ts0)
    before = times < pd.Timestamp(table["start_date"].iloc[0])
    assert np.isnan(ds["reflectance"].values[:, before]).all()
    # CROPTYPE_LABEL -> ewoc code through wc2eurocrops_map_legacy_croptype_codes.csv
    legacy = pd.read_csv(shared_data / "worldcereal/legend/wc2eurocrops_map_legacy_croptype_codes.csv")
    to_ewoc = dict(zip(legacy["croptype"], legacy["ewoc_code"].str.replace("-", "").astype(int)))
    np.testing.assert_array_equal(ds["ewoc_code"].values, [to_ewoc[c] for c in table["CROPTYPE_LABEL"]])
    maize = (table["CROPTYPE_LABEL"] == 1200).sum()  # legacy 1200 = Maize
    assert maize > 0 and (ds["class_name"].values[ds["label"].values] == "maize").sum() == maize


# ----------------------------------------------------------------------------- errors
def test_missing_band_is_named(shared_data, tmp_path):
    path = shared_data / "worldcereal/test_public_extractions.parquet"
    table = pd.read_parquet(path)
    with pytest.raises(MissingBandError, match="B09"):
        read_worldcereal(path, bands=[*S2_BANDS, "B09"])
    chosen = read_worldcereal(path, bands=["B08", "B04"], region="EAF")
    assert chosen["band"].values.tolist() == ["B08", "B04"] and set(chosen["region"].values) == {"EAF"}
    nir = _wide_reference(table, 12)[..., S2_BANDS.index("B08")]
    np.testing.assert_allclose(chosen["reflectance"].values[..., 0], nir, rtol=1e-6, equal_nan=True)
    no_b05 = tmp_path / "no_b05.parquet"
    table.drop(columns=[c for c in table.columns if c.startswith("OPTICAL-B05-")]).to_parquet(no_b05)
    assert "B05" not in read_worldcereal(no_b05)["band"].values  # default: the bands the file has
    with pytest.raises(MissingBandError, match="B05"):
        read_worldcereal(no_b05, bands=S2_BANDS)
    one_step = tmp_path / "no_b05_ts3.parquet"
    table.drop(columns=["OPTICAL-B05-ts3-20m"]).to_parquet(one_step)
    with pytest.raises(MissingBandError, match="B05@ts3"):
        read_worldcereal(one_step)


def test_time_axis_errors(shared_data, tmp_path):
    path = shared_data / "worldcereal/test_public_extractions.parquet"
    with pytest.raises(InvalidInputError, match="dekad"):  # 12 dekads cannot reach back to start_date
        read_worldcereal(path, cadence="dekad")
    table = pd.read_parquet(path)
    table.loc[3, "start_date"] = "2017-01-01"
    mixed = tmp_path / "mixed_start.parquet"
    table.to_parquet(mixed)
    with pytest.raises(IncompatibleInputError, match="start_date"):
        read_worldcereal(mixed)


def test_not_a_worldcereal_table(tmp_path):
    path = tmp_path / "other.parquet"
    pd.DataFrame({"a": [1, 2]}).to_parquet(path)
    with pytest.raises(InvalidInputError, match="not a WorldCereal extraction"):
        read_worldcereal(path)
    with pytest.raises(CropmapError, match="layout"):
        read_worldcereal(path, layout="diagonal")


# ----------------------------------------------------------------------------- sits
@pytest.fixture(scope="module")
def sits(shared_data):
    import rdata

    path = shared_data / "sits_mato_grosso/samples_mt_9classes.rda"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tibble = next(iter(rdata.read_rda(str(path)).values()))
    return read_sits(path), tibble


def test_sits_mato_grosso_shapes_classes_and_values(sits):
    ds, tibble = sits
    assert ds["reflectance"].shape == (2115, 23, 6)
    assert ds["band"].values.tolist() == ["MIR", "BLUE", "NIR", "RED", "EVI", "NDVI"]
    counts = dict(zip(ds["class_name"].values, np.bincount(ds["label"].values)))
    assert counts == tibble["label"].astype(str).value_counts().to_dict()
    assert set(counts) == {"Soy_Corn", "Soy_Cotton", "Soy_Millet", "Soy_Fallow", "Soy_Sunflower",
                           "Fallow_Cotton", "Cerrado", "Pasture", "Forest"}
    for i in (0, 700, 2114):
        series = tibble["time_series"].iloc[i]
        np.testing.assert_allclose(ds["reflectance"].values[i], series[["mir", "blue", "nir", "red", "evi",
                                                                        "ndvi"]].to_numpy(), rtol=1e-6)
        first = np.datetime64("1970-01-01") + int(series["Index"].iloc[0])
        assert ds["start_date"].values[i].astype("datetime64[D]") == first
    np.testing.assert_array_equal(ds["lat"].values, tibble["latitude"].to_numpy())


def test_sits_dates_are_real_16_day_modis_steps(sits):
    ds, tibble = sits
    times = ds["time"].values.astype("datetime64[D]")
    # every sample whose series starts on the reference date has exactly these dates
    same = ds["start_date"].values.astype("datetime64[D]") == times[0]
    assert same.sum() > 100
    i = int(np.flatnonzero(same)[0])
    days = tibble["time_series"].iloc[i]["Index"].to_numpy().astype(int)
    assert (times == np.datetime64("1970-01-01") + days).all()
    assert str(times[0])[5:] == "09-14"  # MODIS 16-day period starting on day-of-year 257
    assert set(np.diff(times).astype(int)) <= {13, 16}  # 16-day steps, reset on Jan 1


# ----------------------------------------------------------------------------- openEO cubes
def test_openeo_cube_reflectance_and_scl(shared_data):
    path = shared_data / "openeo_gfmap/cdse_sentinel2_l2a.nc"
    cube = read_openeo_cube(path)
    raw = xr.open_dataset(path)
    assert cube.dims == ("time", "band", "y", "x")
    assert cube.shape == (12, 4, 66, 64)
    assert cube["band"].values.tolist() == ["B01", "B04", "B08", "B11"]  # AOT is not a reflectance band
    for band in cube["band"].values:
        ref = raw[f"S2-L2A-{band}"].values.astype(np.float64)
        ref = np.where((ref == 0) | (ref == 65535), np.nan, ref / 10000)
        np.testing.assert_allclose(cube.sel(band=band).values, ref, rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(cube["scl"].values, raw["S2-L2A-SCL"].values)
    assert cube.rio.crs.to_epsg() == 32631
    assert float(cube.max()) < 2 and cube.dtype == np.float32
    with pytest.raises(MissingBandError, match="B02"):
        read_openeo_cube(path, bands=["B02", "B04"])


def test_openeo_cube_lazy_with_float_input(shared_data):
    # bap_quintad stores float32 with NaN; opened with Dask nothing is read until asked
    cube = read_openeo_cube(shared_data / "openeo_gfmap/bap_quintad_cdse.nc", chunks={})
    assert cube.chunks is not None and cube.shape == (20, 4, 66, 64)
    raw = xr.open_dataset(shared_data / "openeo_gfmap/bap_quintad_cdse.nc")["S2-L2A-B03"].values
    np.testing.assert_allclose(cube.sel(band="B03").values, raw / 10000, rtol=1e-6, equal_nan=True)


# ----------------------------------------------------------------------------- summary
def test_summary_of_monthly_samples_on_the_5_day_grid(public):
    ds, table = public
    s = summarize_samples(ds)
    assert s["shape"] == (500, 12, 10) and s["season_year"] == 2017 and s["n_bins"] == 43
    assert s["class_counts"]["maize"] == (table["label_full"] == "maize").sum()
    # monthly values on 5-day bins: at most 7 of the 43 May-Nov bins hold an observation
    assert 36 / 43 - 1e-6 <= s["filled_fraction"] < 1


def test_samples_summary_command_prints_the_real_sets():
    from typer.testing import CliRunner

    from cropmap.cli import app

    result = CliRunner().invoke(app, ["samples", "summary", "--set", "victoria-train", "--set",
                                      "worldcereal-bel-long"])
    assert result.exit_code == 0, result.output
    assert "400 x 73 x 10" in result.output and "100 x 16 x 10" in result.output
    assert "canola 50" in result.output and "BEL 100" in result.output
    assert "worldcereal-uga-ssd" not in result.output
    bad = CliRunner().invoke(app, ["samples", "summary", "--set", "nowhere"])
    assert bad.exit_code != 0 and "nowhere" in bad.output
