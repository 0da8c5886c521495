"""Tile prediction on the real Victoria series laid out as rasters, against the model on the samples."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import torch
import xarray as xr
from affine import Affine

from cropmap.core.composite import median_composite
from cropmap.core.features import compute_features
from cropmap.core.season import Season
from cropmap.errors import IncompatibleInputError
from cropmap.jobs.executors import DaskExecutor
from cropmap.ml.checkpoint import load_checkpoint, save_checkpoint
from cropmap.ml.models import build_model
from cropmap.ml.normalisation import fit_normalisation
from cropmap.samples.victoria import read_victoria
from builders import (  # noqa: F401 - re-used by this module's tests
    EPSG,
    ORIGIN,
    VIC_SEASON,
    VIC_YEAR,
    predict_tiles,
    raster_obs,
    train_tiny_model,
    victoria_tiles,
    write_tile_cube,
)
from cropmap.stages.predict import (
    NODATA,
    PredictOptions,
    open_cube,
    infer_cube,
    resolve_model,
    write_tile_predictions,
    tile_path,
)

def test_tile_classes_equal_the_model_on_the_samples(tiny_checkpoint, tmp_path):
    # pixel 7: no observation at all; pixel 8: 90 % of the dates missing -> both nodata
    blank = {7: slice(None), 8: slice(0, 66)}
    (cube,), samples = victoria_tiles(tmp_path, rows=1, cols=1, ny=20, nx=20, blank=blank)
    result = write_tile_predictions(resolve_model(location=tiny_checkpoint, options=PredictOptions(probabilities=True)),
                                    cube, tmp_path / "out")
    assert result.status == "done"
    ckpt = load_checkpoint(tiny_checkpoint)
    # the reference: the same model on the sample set composited as training does, no raster involved
    comp = median_composite(samples["reflectance"], VIC_SEASON, VIC_YEAR)
    proba = ckpt.predict_proba(compute_features(comp, "2d").values)
    with rasterio.open(result.paths["class"]) as src:
        classes = src.read(1).reshape(-1)
        assert src.crs.to_epsg() == EPSG and src.transform == Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1])
        assert json.loads(src.tags()["class_names"]) == list(ckpt.class_names)
        assert src.colormap(1)[1][:3] == tuple(int(ckpt.class_colours[1][i:i + 2], 16) for i in (1, 3, 5))
    with rasterio.open(result.paths["confidence"]) as src:
        confidence = src.read(1).reshape(-1)
    with rasterio.open(result.paths["probability"]) as src:
        prob = src.read().reshape(len(ckpt.class_names), -1)
    usable = np.ones(400, bool)
    usable[[7, 8]] = False
    np.testing.assert_array_equal(classes[usable], proba[usable].argmax(1))
    np.testing.assert_array_equal(confidence[usable], np.rint(proba[usable].max(1) * 100))
    np.testing.assert_array_equal(prob[:, usable], np.rint(proba[usable].T * 100))
    assert (classes[~usable] == NODATA).all() and (confidence[~usable] == NODATA).all()
    assert len(np.unique(classes[usable])) >= 4  # a trained model, not a constant map
    # the model is right on most real test pixels (tiny net, seconds of training)
    assert (classes[usable] == samples["label"].values[usable]).mean() > 0.5


def test_an_int16_cube_is_decoded_on_the_device_as_xarray_decodes_it(tiny_checkpoint, tmp_path):
    """The store as `cropmap cube` writes it (int16 counts, CF scale_factor / _FillValue), read as stored and
    decoded on the device: the classes and confidences of the model on the cube's values decoded by plain
    xarray on the host; a series holding the fill value is nodata."""
    (cube,), _ = victoria_tiles(tmp_path, rows=1, cols=1, ny=20, nx=20, blank={7: slice(None)}, encoding="int16")
    ckpt = load_checkpoint(tiny_checkpoint)
    maps = infer_cube(ckpt, open_cube(cube, stored=True), options=PredictOptions(max_filled_fraction=1.0))
    decoded = xr.open_zarr(cube, consolidated=False)["reflectance"]  # xarray's CF decoding, float64
    assert decoded.dtype == np.float64 and int(decoded.isnull().any(("time", "band")).sum()) == 1
    x = decoded.transpose("y", "x", "band", "time").values.reshape(400, 10, -1)
    finite = np.isfinite(x).all(axis=(1, 2))
    proba = ckpt.predict_proba(x[finite].astype(np.float32))
    classes, confidence = maps["label"].values.reshape(-1), maps["confidence"].values.reshape(-1)
    np.testing.assert_array_equal(classes[finite], proba.argmax(1))
    assert np.abs(confidence[finite].astype(int) - np.rint(proba.max(1) * 100)).max() <= 1
    assert classes[~finite].tolist() == [NODATA] and not finite[7]


def test_blocks_are_whole_chunks_of_the_store_covering_the_tile_once(tmp_path):
    """A window never cuts a chunk of the store (each is decompressed once), stays within the pixel budget
    when a chunk does, and the windows cover every pixel exactly once."""
    from cropmap.stages.inference import block_windows

    cube = xr.DataArray(np.zeros((2, 3, 100, 90), np.int16), dims=("time", "band", "y", "x"))
    cube.to_dataset(name="reflectance").to_zarr(tmp_path / "c.zarr", consolidated=False,
                                                encoding={"reflectance": {"chunks": (2, 1, 32, 32)}})
    stored = xr.open_zarr(tmp_path / "c.zarr", consolidated=False, chunks=None)["reflectance"]
    for budget, array in [(3000, stored), (3000, stored.chunk({"y": 32, "x": 32})), (500, stored), (10**6, cube)]:
        cover = np.zeros((100, 90), int)
        for ys, xs in block_windows(array, budget):
            cover[ys, xs] += 1
            size = (ys.stop - ys.start) * (xs.stop - xs.start)
            if array is not cube and budget >= 32 * 32:  # whole chunks: windows start on chunk borders
                assert ys.start % 32 == 0 and xs.start % 32 == 0 and size <= budget
            elif array is not cube:  # a chunk over the budget: rows of it, within its columns
                assert size <= budget and xs.start % 32 == 0 and xs.stop - xs.start <= 32
        assert (cover == 1).all()


def test_threshold_decides_nodata(tiny_checkpoint, tmp_path):
    (cube,), _ = victoria_tiles(tmp_path, rows=1, cols=1, ny=20, nx=20, blank={8: slice(0, 66)})
    filled = open_cube(cube)["filled_fraction"].values.reshape(-1)[8]
    assert 0.8 < filled < 1.0
    lenient = write_tile_predictions(resolve_model(location=tiny_checkpoint, options=PredictOptions(max_filled_fraction=1.0)),
                                     cube, tmp_path / "o")
    with rasterio.open(lenient.paths["class"]) as src:
        assert src.read(1).reshape(-1)[8] != NODATA


def test_rerun_skips_finished_tiles_and_force_redoes_them(tiny_checkpoint, tmp_path):
    cubes, _ = victoria_tiles(tmp_path, rows=1, cols=2, ny=10, nx=20)
    out = tmp_path / "out"
    first = predict_tiles(tiny_checkpoint, cubes, out)
    assert [r.status for r in first] == ["done", "done"]
    stamp = tile_path(out, "T0_0", "class").stat().st_mtime_ns
    assert [r.status for r in predict_tiles(tiny_checkpoint, cubes, out)] == ["skipped", "skipped"]
    assert tile_path(out, "T0_0", "class").stat().st_mtime_ns == stamp
    assert [r.status for r in predict_tiles(tiny_checkpoint, cubes, out, force=True)] == ["done", "done"]
    # other output options are another product: the tiles are redone, not reused
    changed = predict_tiles(tiny_checkpoint, cubes, out, options=PredictOptions(max_filled_fraction=0.5))
    assert [r.status for r in changed] == ["done", "done"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporaries left


@pytest.mark.parametrize("change", ["bands", "season"])
def test_incompatible_cube_fails_before_any_work(tiny_checkpoint, tmp_path, change):
    cubes, samples = victoria_tiles(tmp_path, rows=1, cols=2, ny=10, nx=20)
    obs = raster_obs(samples["reflectance"].values[:200], samples.time.values, samples.band.values, ny=10, nx=20)
    if change == "bands":
        obs = obs.isel(band=[0, 1, 2, 3, 4, 5, 6, 7, 9, 8])  # B12 before B11
        bad = write_tile_cube(tmp_path / "bad.zarr", obs, tile_id="bad", row=1, col=0)
        match = "bands"
    else:
        other = Season(start="08-01", end="07-31", hemisphere="north")
        bad = write_tile_cube(tmp_path / "bad.zarr", obs, tile_id="bad", row=1, col=0, season=other)
        match = "season"
    out = tmp_path / "out"
    with pytest.raises(IncompatibleInputError, match=match):
        predict_tiles(tiny_checkpoint, [*cubes, bad], out)
    assert not out.exists() or not any(out.iterdir())  # the good tiles were not computed either


def test_bf16_on_cpu_keeps_the_classes(tiny_checkpoint, tmp_path):
    (cube,), _ = victoria_tiles(tmp_path, rows=1, cols=1, ny=20, nx=20)
    ckpt = load_checkpoint(tiny_checkpoint)
    fp32 = infer_cube(ckpt, open_cube(cube), options=PredictOptions(precision="fp32"))
    bf16 = infer_cube(ckpt, open_cube(cube), options=PredictOptions(precision="bf16", device="cpu"))
    same = (fp32["label"].values == bf16["label"].values).mean()
    assert same >= 0.99, same
    assert np.abs(fp32["confidence"].values.astype(int) - bf16["confidence"].values).max() <= 5


def test_tiles_run_on_a_distributed_cluster(tiny_checkpoint, tmp_path):
    from distributed import Client, LocalCluster

    cubes, _ = victoria_tiles(tmp_path, rows=1, cols=2, ny=10, nx=20)
    local = predict_tiles(tiny_checkpoint, cubes, tmp_path / "local")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        remote = predict_tiles(tiny_checkpoint, cubes, tmp_path / "remote", executor=DaskExecutor(client))
    assert [r.tile_id for r in remote] == [r.tile_id for r in local] and {r.status for r in remote} == {"done"}
    for r in local:
        for product in ("class", "confidence"):
            with rasterio.open(r.paths[product]) as a, rasterio.open(remote[0].paths[product].parent / r.paths[product].name) as b:
                np.testing.assert_array_equal(a.read(), b.read())


def test_row_blocks_bound_memory_without_changing_the_map(tiny_checkpoint, tmp_path):
    (cube,), _ = victoria_tiles(tmp_path, rows=1, cols=1, ny=20, nx=20, blank={7: slice(None)})
    ckpt = load_checkpoint(tiny_checkpoint)
    whole = infer_cube(ckpt, open_cube(cube), options=PredictOptions(precision="fp32"))
    blocks = infer_cube(ckpt, open_cube(cube), options=PredictOptions(precision="fp32", block_pixels=70))  # 3 rows
    np.testing.assert_array_equal(blocks["label"].values, whole["label"].values)
    assert np.abs(blocks["confidence"].values.astype(int) - whole["confidence"].values).max() <= 1
    assert blocks["label"].values.reshape(-1)[7] == NODATA
    # the next block read by a prefetch thread or in the calling thread (the default): the same maps
    ahead = infer_cube(ckpt, open_cube(cube), options=PredictOptions(precision="fp32", block_pixels=70, prefetch=True))
    for name in ("label", "confidence"):
        np.testing.assert_array_equal(ahead[name].values, blocks[name].values)


@pytest.mark.parametrize("bands,bins", [(10, 43), (10, 73), (4, 37)])
def test_the_batch_follows_the_memory_budget(tiny_checkpoint, tmp_path, bands, bins):
    """The paper's CropNet: the peak per pixel is the largest conv input + output, by hand from the
    architecture (pooling rounds up), and the budget buys that many pixels twice over."""
    import dataclasses
    import math

    from cropmap.ml.models import CROPNET_V1

    ckpt = dataclasses.replace(load_checkpoint(tiny_checkpoint), bands=tuple(f"B{i}" for i in range(bands)),
                               n_bins=bins, model=build_model("cropnet", n_bands=bands, n_classes=8, **CROPNET_V1))
    b2, t2 = math.ceil(bands / 2), math.ceil(bins / 2)
    b4, t4 = math.ceil(b2 / 2), math.ceil(t2 / 2)
    by_hand = 4 * max(2 * 64 * bands * bins, 2 * 128 * b2 * t2, 2 * 256 * b2 * t2, 2 * 512 * b4 * t4)
    assert ckpt.activation_bytes_per_pixel() == by_hand
    assert ckpt.batch_size_for(1024 * 2**20) == 1024 * 2**20 // (2 * by_hand)
    assert ckpt.batch_size_for(1) == 1 and ckpt.batch_size_for(2**40) == 65536


def test_a_budget_sized_batch_gives_the_same_map(tiny_checkpoint, tmp_path):
    (cube,), _ = victoria_tiles(tmp_path, rows=1, cols=1, ny=20, nx=20)
    ckpt = load_checkpoint(tiny_checkpoint)
    fixed = infer_cube(ckpt, open_cube(cube), options=PredictOptions(precision="fp32", batch_size=4096))
    small = PredictOptions(precision="fp32", memory_budget_mb=4)
    assert ckpt.batch_size_for(4 * 2**20) < 200  # several forward passes over the tile's 400 pixels
    budget = infer_cube(ckpt, open_cube(cube), options=small)
    np.testing.assert_array_equal(budget["label"].values, fixed["label"].values)


def test_cli_predict_reports_an_incompatible_cube_and_a_bad_option(tiny_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from cropmap.cli import app

    cubes, samples = victoria_tiles(tmp_path / "cubes", rows=1, cols=1, ny=10, nx=20)
    obs = raster_obs(samples["reflectance"].values[:200], samples.time.values, samples.band.values, ny=10, nx=20)
    write_tile_cube(tmp_path / "cubes" / "bad.zarr", obs, tile_id="bad", row=1, col=0,
                    season=Season(start="08-01", end="07-31", hemisphere="north"))
    out = tmp_path / "out"
    run = CliRunner().invoke(app, ["predict", str(tiny_checkpoint), str(tmp_path / "cubes"), "--out", str(out)])
    assert run.exit_code == 2 and "season" in run.output and "bad" in run.output, run.output
    assert not out.exists()
    bad = CliRunner().invoke(app, ["predict", str(tiny_checkpoint), str(cubes[0]), "--out", str(out),
                                   "--precision", "fp8"])
    assert bad.exit_code == 2 and "precision" in bad.output
    ok = CliRunner().invoke(app, ["predict", str(tiny_checkpoint), str(cubes[0]), "--out", str(out)])
    assert ok.exit_code == 0 and "T0_0: done" in ok.output, ok.output


def test_concurrent_predictions_never_change_the_shared_model(tiny_checkpoint, tmp_path):
    """bf16 on the CPU uses channels_last weights; threads of one worker share the cached checkpoint.
    The checkpoint's own model must stay as loaded, and each thread's maps equal its sequential ones."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from cropmap.stages.predict import load_model

    (cube,), _ = victoria_tiles(tmp_path, rows=1, cols=1, ny=20, nx=20)
    ckpt = load_model(tiny_checkpoint)
    weights = {k: v.clone() for k, v in ckpt.model.state_dict().items()}
    storage = {k: p.data_ptr() for k, p in ckpt.model.named_parameters()}
    options = [PredictOptions(precision="bf16", device="cpu"), PredictOptions(precision="fp32")] * 4
    alone = [infer_cube(ckpt, open_cube(cube), options=o)["label"].values for o in options[:2]]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda o: infer_cube(ckpt, open_cube(cube), options=o)["label"].values, options))
    for i, labels in enumerate(together):
        np.testing.assert_array_equal(labels, alone[i % 2])
    for name, p in ckpt.model.named_parameters():
        assert p.is_contiguous(memory_format=torch.contiguous_format), name  # never converted in place
        assert torch.equal(p, weights[name]) and p.device.type == "cpu", name
        assert p.data_ptr() == storage[name], name  # the very same tensors: nothing moved or re-laid out


def test_prediction_reads_its_cube_whatever_another_thread_sets_in_the_global_dask_config(tiny_checkpoint, tmp_path):
    """``distributed.Client.as_current`` (a flow waiting on its tasks) sets ``scheduler="dask.distributed"``
    in the process-global Dask config while it waits. A prediction in a worker thread meanwhile must
    still read its cube in its own thread, not fail with "no Client active" (CI, map-country rerun)."""
    import threading

    import dask

    from cropmap.stages.predict import load_model

    (cube,), _ = victoria_tiles(tmp_path, rows=1, cols=1, ny=20, nx=20)
    ckpt = load_model(tiny_checkpoint)
    options = PredictOptions(precision="fp32", block_pixels=20)  # one row per block: 20 reads
    alone = infer_cube(ckpt, open_cube(cube), options=options)["label"].values
    stop = threading.Event()

    def waiting_flow() -> None:
        while not stop.is_set():
            with dask.config.set(scheduler="dask.distributed"):
                time.sleep(0.002)
            time.sleep(0.0002)

    flow = threading.Thread(target=waiting_flow)
    flow.start()
    try:
        for _ in range(3):
            np.testing.assert_array_equal(infer_cube(ckpt, open_cube(cube), options=options)["label"].values, alone)
    finally:
        stop.set()
        flow.join()
