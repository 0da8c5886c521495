"""A tile cube opens in plain xarray as a georeferenced, CF-described dataset: ``xr.open_zarr(path)`` with no
argument gives ``rio.crs`` and ``odc.geobox`` of the tile, units and names, through consolidated metadata and
without a warning; cubes written before that (nothing consolidated, ``spatial_ref`` a data variable) still
open in cropmap's readers as they did."""

from __future__ import annotations

import json
import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np
import odc.geo.xr  # noqa: F401 - registers the .odc accessor
import pytest
import xarray as xr
import zarr
from odc.geo.geobox import GeoBox

from builders import AUG, TILE

from cropmap.io import storage
from cropmap.io.storage import stable_hash
from cropmap.stages import cube as cube_stage
from cropmap.stages.cube import CubeOptions, build_tile_cube, open_tile_cube
from cropmap.stages.predict_inputs import open_cube

BANDS = ("B04", "B08")
#: root attributes written after config_hash: they describe the build's outcome or the format, not its inputs
NOT_HASHED = {"unavailable_assets", "config_hash", "cropmap_version", "Conventions", "status", "reason",
              "filled_fraction"}


@pytest.fixture(scope="module")
def cube_path(twm_items, tmp_path_factory):
    out = tmp_path_factory.mktemp("xcubes")
    return build_tile_cube(TILE, twm_items, AUG, 2023, out, options=CubeOptions(bands=BANDS, chunk=128)).path


def _open_quietly(*args, **kwargs) -> xr.Dataset:
    """``xr.open_zarr(*args, **kwargs)``, failing on any warning it emits (e.g. "Failed to open Zarr store with
    consolidated metadata")."""
    ds, caught = _open_recording(*args, **kwargs)
    assert caught == []
    return ds


def _open_recording(*args, **kwargs) -> tuple[xr.Dataset, list[str]]:
    """``xr.open_zarr(*args, **kwargs)`` and the messages of the warnings it emitted."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = xr.open_zarr(*args, **kwargs)
    return ds, [str(w.message) for w in caught]


def _as_written_before(cube: str, to: str) -> str:
    """A copy of ``cube`` as cubes were written before they were consolidated: no consolidated metadata and
    ``spatial_ref`` listed by no variable (xarray then reads it as a data variable)."""
    shutil.copytree(cube, to)
    root = json.loads((Path(to) / "zarr.json").read_text())
    assert root.pop("consolidated_metadata", None) is not None
    (Path(to) / "zarr.json").write_text(json.dumps(root))
    for name in ("reflectance", "filled_fraction"):
        meta_path = Path(to) / name / "zarr.json"
        meta = json.loads(meta_path.read_text())
        meta["attributes"].pop("coordinates", None)
        meta_path.write_text(json.dumps(meta))
    return to


def test_plain_open_zarr_gives_the_tiles_crs_and_geobox(cube_path):
    ds, warned = _open_recording(cube_path)  # no argument at all
    assert "spatial_ref" in ds.coords and "spatial_ref" not in ds.data_vars
    assert ds.rio.crs is not None and ds.rio.crs.to_epsg() == 32633 and ds["reflectance"].rio.crs.to_epsg() == 32633
    assert ds.rio.transform() == TILE.transform
    assert ds.odc.geobox == GeoBox(TILE.shape, TILE.transform, TILE.crs)
    assert ds["filled_fraction"].odc.geobox == ds.odc.geobox
    for name in ("reflectance", "filled_fraction"):
        assert ds[name].attrs["grid_mapping"] == "spatial_ref"
    # the values are the ones cropmap reads (xarray decodes the int16 counts to float64)
    np.testing.assert_array_equal(ds["reflectance"].values.astype(np.float32), open_tile_cube(cube_path).values)
    assert warned == []  # consolidated: not "Failed to open Zarr store with consolidated metadata"


def test_cube_variables_carry_cf_units_and_names(cube_path):
    ds = _open_quietly(cube_path)
    refl, filled, time = ds["reflectance"].attrs, ds["filled_fraction"].attrs, ds["time"].attrs
    assert refl["units"] == "1" and refl["standard_name"] == "surface_bidirectional_reflectance"
    assert "surface reflectance" in refl["long_name"]
    assert filled["units"] == "1" and "interpolated" in filled["long_name"]
    assert time["long_name"] == "start of 5-day bin" and time["standard_name"] == "time" and time["axis"] == "T"
    assert "since" in ds["time"].encoding["units"]  # still a CF time axis, decoded to datetime64
    assert ds["x"].attrs["units"] == "metre" and ds["y"].attrs["standard_name"] == "projection_y_coordinate"
    assert ds.attrs["Conventions"].startswith("CF-")


def test_metadata_is_consolidated(cube_path):
    meta = zarr.open_group(str(cube_path), mode="r").metadata.consolidated_metadata
    assert meta is not None and {"reflectance", "filled_fraction", "time", "band", "x", "y", "spatial_ref"} <= set(
        meta.metadata)
    # the consolidated copy is the final one: it holds the status written last
    _open_quietly(cube_path, consolidated=True)


def test_the_config_hash_covers_the_build_inputs_only(cube_path):
    """New format attributes (CF, Conventions) leave config_hash as it was: a cube of the same inputs built
    before them has the same hash."""
    attrs = zarr.open_group(str(cube_path), mode="r").attrs.asdict()
    inputs = {k: attrs[k] for k in sorted(attrs) if k not in NOT_HASHED}
    assert attrs["config_hash"] == stable_hash(inputs)
    assert set(inputs) == {"tile_id", "tile_crs", "tile_transform", "season_year", "source_items", "source_hrefs",
                           "bin_edges", "bands", "invalid_scl", "dilate_pixels", "encoding"} | {
        k for k in inputs if k.startswith("season_")}


def test_a_cube_written_before_consolidation_still_opens(cube_path, tmp_path):
    old = _as_written_before(str(cube_path), str(tmp_path / f"{TILE.id}.zarr"))
    with pytest.raises(ValueError):  # it is the old layout: nothing consolidated
        xr.open_zarr(old, consolidated=True)
    assert "spatial_ref" in _open_quietly(old, consolidated=False).data_vars  # the old layout
    for stored in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            was, now = open_cube(old, stored=stored), open_cube(cube_path, stored=stored)
        assert was.dtype == now.dtype == (np.int16 if stored else np.float32)
        np.testing.assert_array_equal(was.values, now.values)
        np.testing.assert_array_equal(was["filled_fraction"].values, now["filled_fraction"].values)
        assert was.rio.crs == now.rio.crs and was.rio.transform() == now.rio.transform() == TILE.transform
        assert was.attrs == now.attrs


def test_a_remote_store_is_consolidated_before_its_marker(twm_items, monkeypatch, tmp_path):
    """Written in place in an object store, the cube's consolidated metadata is written before its
    completeness marker (a reader that sees the marker sees the consolidated copy); locally, before the rename."""
    seen = []
    real = cube_stage.consolidate

    def watching(path):
        seen.append((str(path), storage.is_complete(target)))
        real(path)

    monkeypatch.setattr(cube_stage, "consolidate", watching)
    for out, encoding in ((f"memory://cubes-{uuid.uuid4().hex[:8]}", "float32"), (tmp_path, "int16")):
        seen.clear()
        target = cube_stage.cube_path(out, TILE)
        res = build_tile_cube(TILE, twm_items[:2], AUG, 2023, out,
                              options=CubeOptions(bands=("B04",), chunk=256, encoding=encoding))
        assert res.status == "written" and storage.is_complete(target)
        assert [complete for _, complete in seen] == [False]  # consolidated once, before publication
        ds = _open_quietly(str(target))
        assert ds.rio.crs.to_epsg() == 32633 and ds.odc.geobox == GeoBox(TILE.shape, TILE.transform, TILE.crs)
        assert ds["reflectance"].attrs["grid_mapping"] == "spatial_ref" and ds["reflectance"].attrs["units"] == "1"
