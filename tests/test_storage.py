"""cropmap.io.storage on a local folder and on a real S3 API (moto's server on 127.0.0.1, reached through
``AWS_ENDPOINT_URL`` as a user would reach MinIO or Ceph): outputs appear whole or not at all, folder
outputs are complete only with their marker, and a bad location fails early naming itself."""

from __future__ import annotations

import time

import numpy as np
import pytest
import rasterio
import xarray as xr
from conftest import _free_port, use_s3_env
from rasterio.transform import from_origin

from cropmap.errors import DataNotFoundError, StorageError
from cropmap.io import downloads, outputs, storage
from cropmap.io.storage import TEMP_MARK


def _small_dataset() -> xr.Dataset:
    return xr.Dataset({"v": (("y", "x"), np.arange(12, dtype="float32").reshape(3, 4))}, attrs={"a": 1})


def _write_tif(path, value: int) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=4, height=3, count=1, dtype="uint8", crs="EPSG:32755",
                       transform=from_origin(600000, 5900000, 10, 10)) as dst:
        dst.write(np.full((1, 3, 4), value, dtype="uint8"))
        dst.update_tags(cropmap_run_key=f"key-{value}")


def test_local_locations_keep_paths_and_rename_into_place(tmp_path):
    root = storage.as_location(f"file://{tmp_path}")
    assert root == tmp_path and storage.join(tmp_path, "a", "b.txt") == tmp_path / "a" / "b.txt"
    target = storage.join(tmp_path, "out", "x.tif")
    with pytest.raises(RuntimeError):
        with outputs.output_file(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not storage.exists(target) and list((tmp_path / "out").iterdir()) == []
    _write_tif(tmp_path / "out" / f".y{TEMP_MARK}1.tif", 1)  # litter of a killed run: never listed
    with outputs.output_file(target) as tmp:
        _write_tif(tmp, 7)
    assert storage.list_files(tmp_path / "out", "*.tif") == [target]
    with downloads.open_raster(target) as src:
        assert src.tags()["cropmap_run_key"] == "key-7"
    with outputs.output_dir(tmp_path / "c.zarr") as tmp:
        assert tmp != tmp_path / "c.zarr"  # a temporary name, renamed on success
        _small_dataset().to_zarr(str(tmp), mode="w", consolidated=False)
    assert storage.is_complete(tmp_path / "c.zarr") and not (tmp_path / "c.zarr.complete").exists()
    assert storage.check_writable(tmp_path / "new" / "runs", source="test") == tmp_path / "new" / "runs"
    assert (tmp_path / "new" / "runs").is_dir()


def test_s3_files_are_published_whole(bucket, tmp_path):
    target = storage.join(bucket, "runs", "tiles", "t1.class.tif")
    assert target == f"{bucket}/runs/tiles/t1.class.tif"
    with pytest.raises(RuntimeError):
        with outputs.output_file(target) as tmp:
            _write_tif(tmp, 3)
            raise RuntimeError("killed before the upload")
    assert not storage.exists(target)  # nothing half-written, nothing at all
    with outputs.output_file(target) as tmp:
        assert tmp.name == "t1.class.tif" and not storage.is_remote(tmp)  # GDAL writes a local file
        _write_tif(tmp, 5)
    outputs.write_text(storage.join(bucket, "runs", "tiles", "run.json"), '{"k": 1}')
    assert storage.exists(target) and storage.read_bytes(storage.join(bucket, "runs/tiles/run.json")) == b'{"k": 1}'
    assert storage.list_files(storage.join(bucket, "runs", "tiles"), "*.*.tif") == [target]
    with downloads.open_raster(target) as src:  # range reads through fsspec, no download
        assert src.tags()["cropmap_run_key"] == "key-5" and src.read(1).max() == 5
    (copy,) = downloads.fetch([target], tmp_path / "fetched")
    assert copy.read_bytes() == storage.read_bytes(target)
    with pytest.raises(DataNotFoundError, match="missing.json"):
        storage.read_bytes(storage.join(bucket, "missing.json"))


def test_s3_folder_output_is_complete_only_with_its_marker(bucket):
    cube = storage.join(bucket, "cubes", "t1.zarr")
    fs, path = storage.filesystem(cube)
    # what a killed run leaves: part of the store, no marker; it does not count, and is cleared
    fs.pipe_file(f"{path}/stale-chunk", b"x")
    assert storage.exists(cube) and not storage.is_complete(cube)
    with pytest.raises(RuntimeError):
        with outputs.output_dir(cube) as target:
            _small_dataset().to_zarr(target, mode="w", consolidated=False)
            raise RuntimeError("killed before the end")
    assert not storage.is_complete(cube) and not fs.exists(f"{path}/stale-chunk")
    with outputs.output_dir(cube) as target:
        assert target == cube  # written in place: Dask workers write their chunks straight to the store
        _small_dataset().to_zarr(target, mode="w", consolidated=False)
        assert not storage.is_complete(cube)  # the marker comes last
    assert storage.is_complete(cube) and fs.exists(path + storage.COMPLETE_SUFFIX)
    assert xr.open_zarr(cube, consolidated=False)["v"].values.sum() == 66


def test_local_copy_downloads_each_version_once(bucket):
    model = storage.join(bucket, "models", "m.pt")
    outputs.write_text(model, "version 1")
    first = downloads.local_copy(model)
    stamp = first.stat().st_mtime_ns
    assert first.read_text() == "version 1" and downloads.local_copy(model) == first
    assert first.stat().st_mtime_ns == stamp  # cached, not downloaded again
    outputs.write_text(model, "version 2, longer")
    second = downloads.local_copy(model)
    assert second != first and second.read_text() == "version 2, longer"
    with pytest.raises(DataNotFoundError, match="nothing.pt"):
        downloads.local_copy(storage.join(bucket, "models", "nothing.pt"))


def test_bad_locations_fail_early_naming_themselves(bucket, s3_server, monkeypatch):
    assert storage.check_writable(storage.join(bucket, "runs"), source="$CROPMAP_OUTPUT_URL") == f"{bucket}/runs"
    assert storage.list_files(bucket, "runs/*") == []  # the probe object is gone again
    missing = "s3://no-such-bucket-cropmap/runs"
    with pytest.raises(StorageError, match=f"{missing} .from \\$CROPMAP_OUTPUT_URL.*bucket exists"):
        storage.check_writable(missing, source="$CROPMAP_OUTPUT_URL")
    with pytest.raises(StorageError, match="nosuchproto://x/runs"):
        storage.check_writable("nosuchproto://x/runs", source="test")
    closed = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    use_s3_env(monkeypatch, {**s3_server, "AWS_ENDPOINT_URL": closed})
    started = time.monotonic()
    with pytest.raises(StorageError, match=f"{bucket}/runs .from the out_dir parameter.*endpoint {closed}"):
        storage.check_writable(f"{bucket}/runs", source="the out_dir parameter")
    assert time.monotonic() - started < 60
