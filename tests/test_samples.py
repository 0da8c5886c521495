"""The Victoria and CropGlobe readers and the sample-set structure."""

from __future__ import annotations

import numpy as np
import pytest

from cropmap.core.bands import S2_BANDS
from cropmap.core.composite import median_composite
from cropmap.core.season import FULL_YEAR, NORTH
from cropmap.errors import (
    ConfigError,
    IncompatibleInputError,
    InvalidInputError,
    MissingBandError,
)
from cropmap.samples.cropglobe import CROPGLOBE_CLASSES, read_cropglobe
from cropmap.samples.sets import make_sample_set, select_bands
from cropmap.samples.victoria import VICTORIA_START, read_victoria


@pytest.fixture(scope="module")
def victoria(shared_data):
    return {split: read_victoria(split) for split in ("train", "test")}


def test_victoria_shapes_classes_and_counts(victoria, shared_data):
    # "value,class,rgb(r, g, b)": the colour holds commas, so take the second field by hand
    lines = (shared_data / "victoria_s2/class_map.txt").read_text().splitlines()[1:]
    names = [line.split(",")[1].lower() for line in lines if line.strip()]
    for split, ds in victoria.items():
        assert ds["reflectance"].dims == ("sample", "time", "band")
        assert ds["reflectance"].shape == (400, 73, 10)
        assert ds["reflectance"].dtype == np.float32
        assert ds["band"].values.tolist() == list(S2_BANDS)
        assert ds["class_name"].values.tolist() == names
        assert np.bincount(ds["label"].values).tolist() == [50] * 8
        assert ds["class_colour"].values[1] == "#ffff00"  # canola: rgb(255, 255, 0)
        assert set(ds["region"].values) == {"AUS-VIC"}


def test_victoria_values_match_an_independent_numpy_read(victoria, shared_data):
    table = np.loadtxt(shared_data / "victoria_s2/train_dataset.csv", delimiter=",", skiprows=1)
    # columns: lc_id, objectid, then b{t*10+band}
    expected = table[:, 2:].reshape(400, 73, 10) / 10000
    np.testing.assert_allclose(victoria["train"]["reflectance"].values, expected, rtol=1e-6)
    np.testing.assert_array_equal(victoria["train"]["label"].values, table[:, 0].astype(int))
    # the band order is physical: forest (class 4) reflects more in NIR (B08) than in red (B04) at
    # every step, and more in red-edge B07 than in B05
    forest = victoria["train"]["reflectance"].isel(sample=victoria["train"]["label"].values == 4).mean("sample")
    assert (forest.sel(band="B08") > 2 * forest.sel(band="B04")).all()
    assert (forest.sel(band="B07") > forest.sel(band="B05")).all()


def test_victoria_dates_are_a_documented_overridable_parameter(victoria):
    times = victoria["train"]["time"].values
    assert times[0] == np.datetime64(VICTORIA_START)
    assert (np.diff(times) == np.timedelta64(5, "D")).all()
    shifted = read_victoria("test", start="2018-01-03")
    assert shifted["time"].values[0] == np.datetime64("2018-01-03")
    np.testing.assert_array_equal(shifted["reflectance"].values, victoria["test"]["reflectance"].values)
    with pytest.raises(ConfigError, match="split"):
        read_victoria("validation")


def test_select_bands_names_the_missing_band(victoria):
    sub = select_bands(victoria["train"], ["B08", "B04"])
    assert sub["band"].values.tolist() == ["B08", "B04"]
    with pytest.raises(MissingBandError, match="B09"):
        select_bands(victoria["train"], ["B04", "B09"])


def test_make_sample_set_rejects_inconsistent_input():
    values = np.zeros((3, 2, 1), dtype=np.float32)
    times = ["2021-05-01", "2021-05-06"]
    with pytest.raises(IncompatibleInputError, match="labels"):
        make_sample_set(values, times=times, bands=["B04"], labels=np.array([0, 1]), class_names=["a", "b"],
                        region="X")
    with pytest.raises(IncompatibleInputError, match="index class_names"):
        make_sample_set(values, times=times, bands=["B04"], labels=np.array([0, 1, 2]), class_names=["a", "b"],
                        region="X")
    with pytest.raises(IncompatibleInputError, match="does not match"):
        make_sample_set(values, times=times[:1], bands=["B04"], labels=np.zeros(3, int), class_names=["a"],
                        region="X")


# ----------------------------------------------------------------------------- CropGlobe layout
def _write_cropglobe(folder, victoria_ds, *, iso3="FRA", n_time=73, n=16):
    """A file in the authors' layout, filled with real Victoria series (x 10000, as stored)."""
    values = victoria_ds["reflectance"].values[:n, :n_time, :] * 10000  # (N, time, band)
    fea = np.transpose(values, (0, 2, 1)).astype(np.float32)  # the authors' (N, 10, time)
    lbl = np.arange(n) % len(CROPGLOBE_CLASSES)
    path = folder / f"median_S2_{iso3}_month1-12_day5.npz"
    np.savez(path, fea=fea, lbl=lbl)
    return path, fea, lbl


def test_cropglobe_full_year_file(tmp_path, victoria):
    path, fea, lbl = _write_cropglobe(tmp_path, victoria["train"])
    ds = read_cropglobe(path)
    assert ds["reflectance"].shape == (16, 73, 10)
    assert ds["region"].values[0] == "FRA"
    assert ds["class_name"].values.tolist() == list(CROPGLOBE_CLASSES)
    np.testing.assert_array_equal(ds["label"].values, lbl)
    # (N, band, time) in the file -> (sample, time, band) here
    np.testing.assert_allclose(ds["reflectance"].values[3, 40, 6], fea[3, 6, 40] * 1e-4, rtol=1e-6)
    np.testing.assert_allclose(ds["reflectance"].values, np.transpose(fea, (0, 2, 1)) * 1e-4, rtol=1e-6)
    assert ds["time"].values[0] == np.datetime64("2021-01-01")
    # 73 five-day bins from Jan 1 are exactly cropmap's FULL_YEAR grid: compositing changes nothing
    again = median_composite(ds["reflectance"], FULL_YEAR, 2021)
    np.testing.assert_array_equal(again["time"].values, ds["time"].values)
    np.testing.assert_allclose(again.values, ds["reflectance"].values, rtol=1e-6)
    # and the seed's May-Nov season is bins 24..66 of the full year (May 1 = day 121)
    season = median_composite(ds["reflectance"], NORTH, 2021)
    np.testing.assert_allclose(season.values, ds["reflectance"].values[:, 24:67], rtol=1e-6)


def test_cropglobe_may_november_file_lands_on_the_seed_season(tmp_path, victoria):
    path, fea, _ = _write_cropglobe(tmp_path, victoria["test"], iso3="ARG", n_time=43)
    ds = read_cropglobe(path, year=2020)
    assert ds["reflectance"].shape == (16, 43, 10) and ds["region"].values[0] == "ARG"
    np.testing.assert_array_equal(ds["time"].values, NORTH.bin_starts(2020))


def test_cropglobe_bad_files(tmp_path):
    bad_shape = tmp_path / "median_S2_USA_month1-12_day5.npz"
    np.savez(bad_shape, fea=np.zeros((2, 10, 50)), lbl=np.zeros(2, int))
    with pytest.raises(InvalidInputError, match="73 .* or 43"):
        read_cropglobe(bad_shape)
    no_lbl = tmp_path / "median_S2_BEL_month1-12_day5.npz"
    np.savez(no_lbl, fea=np.zeros((2, 10, 73)))
    with pytest.raises(InvalidInputError, match="lbl"):
        read_cropglobe(no_lbl)
    wrong_bands = tmp_path / "median_S2_AUS_month1-12_day5.npz"
    np.savez(wrong_bands, fea=np.zeros((2, 7, 73)), lbl=np.zeros(2, int))
    with pytest.raises(InvalidInputError, match="fea must be"):
        read_cropglobe(wrong_bands)
