"""cropmap on a real multi-process Dask cluster: a `dask scheduler` and two `dask worker` processes on
127.0.0.1 (not a LocalCluster), a compositing graph over real Sentinel-2 acquisitions, and a worker
killed mid-computation.

The worker-kill test runs last in this file: it leaves the module's cluster with one worker.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import dask_processes
import numpy as np
import pytest
import xarray as xr
from dask_processes import dask_cluster_processes, wait_for

from cropmap.core.composite import median_composite
from cropmap.core.masking import valid_from_scl
from cropmap.core.season import Season
from cropmap.errors import ConfigError, DaskClusterError
from cropmap.jobs.cluster import (
    ADDRESS_ENV,
    GPU_RESOURCE,
    GPU_WORKERS_ENV,
    dask_target,
    gpu_workers_enabled,
    inference_annotations,
)

APRIL = Season(start="04-01", end="04-30")
BANDS = ["B01", "B04", "B08", "B11"]
# The file stores one chunk per date; splitting y/x on purpose makes tile-like tasks to distribute.
pytestmark = pytest.mark.filterwarnings("ignore:The specified chunks separate the stored chunks")


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """Address and worker processes of a scheduler + 2 single-thread, nanny-less workers on 127.0.0.1;
    w1 advertises the Dask resource GPU=1 the way deploy/'s GPU worker group does (no GPU needed)."""
    common = ["--nthreads", "1", "--memory-limit", "1GiB"]
    workers = {"w0": common, "w1": [*common, "--resources", f"{GPU_RESOURCE}=1"]}
    with dask_cluster_processes(tmp_path_factory.mktemp("dask"), workers, timeout=30) as started:
        # the processes run the installed package only (tests/dask_processes.py): the test functions
        # they run travel as files, the way Dask ships a client's own code
        with dask_target(started[0]).client() as client:
            client.wait_for_workers(len(workers), timeout=60)
            for module in (dask_processes.__file__, __file__):
                client.upload_file(module)
        yield started


def _remote_latency(block: np.ndarray) -> np.ndarray:
    # Stands in for object-store latency (a real tile read takes seconds), so a worker can be
    # killed while work is still pending; the values pass through unchanged.
    time.sleep(0.05)
    return block


def _composite_graph(path: Path) -> xr.DataArray:
    """Lazy composite of 12 raw real acquisitions: 4 bands, SCL-masked, 12 spatial chunks; computes nothing."""
    ds = xr.open_dataset(path, engine="h5netcdf", chunks={"t": -1, "y": 22, "x": 16})
    refl = xr.concat([ds[f"S2-L2A-{b}"].astype("float32") / 10000 for b in BANDS], dim="band")
    refl = refl.assign_coords(band=BANDS).rename(t="time").transpose("time", "band", "y", "x")
    refl = refl.copy(data=refl.data.map_blocks(_remote_latency, dtype=refl.dtype))
    valid = valid_from_scl(ds["S2-L2A-SCL"].rename(t="time"))
    return median_composite(refl, APRIL, 2023, valid=valid)


@pytest.fixture(scope="module")
def cube_path(shared_data) -> Path:
    return shared_data / "openeo_gfmap/cdse_sentinel2_l2a.nc"


@pytest.fixture(scope="module")
def local_result(cube_path) -> xr.DataArray:
    """The same graph computed in this process (threads), the reference for the cluster runs."""
    return _composite_graph(cube_path).compute(scheduler="threads")


def _assert_identical(got: xr.DataArray, want: xr.DataArray) -> None:
    assert got.dims == want.dims == ("time", "band", "y", "x")
    assert got.shape == (6, 4, 66, 64)
    # bitwise: same float32 values and the same NaN positions
    np.testing.assert_array_equal(got.values.view(np.uint32), want.values.view(np.uint32))
    np.testing.assert_array_equal(got.filled_fraction.values, want.filled_fraction.values)
    assert np.isfinite(want.values).mean() > 0.5  # a real, mostly observed composite, not all-NaN


def test_target_resolution_order(monkeypatch):
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    assert dask_target().is_local
    assert dask_target(n_workers=2).task_runner_kwargs() == {
        "cluster_class": "distributed.LocalCluster",
        "cluster_kwargs": {"processes": True, "dashboard_address": ":0", "n_workers": 2}}
    monkeypatch.setenv(ADDRESS_ENV, "tcp://10.1.2.3:8786")
    assert (dask_target().address, dask_target().source) == ("tcp://10.1.2.3:8786", "env")
    # the config wins over the environment; an empty config value does not
    assert dask_target("cropmap-scheduler.cropmap.svc.cluster.local:8786").source == "config"
    assert dask_target("").address == "tcp://10.1.2.3:8786"


def test_gpu_workers_setting_then_environment(monkeypatch):
    monkeypatch.delenv(GPU_WORKERS_ENV, raising=False)
    assert not gpu_workers_enabled() and inference_annotations(gpu_workers_enabled()) == {}
    monkeypatch.setenv(GPU_WORKERS_ENV, "1")
    assert gpu_workers_enabled() and inference_annotations(True) == {"resources": {GPU_RESOURCE: 1}}
    assert not gpu_workers_enabled(False)  # the flow parameter wins over the environment
    monkeypatch.setenv(GPU_WORKERS_ENV, "gpu")
    with pytest.raises(ConfigError, match=f"\\${GPU_WORKERS_ENV} = 'gpu' is not a yes/no"):
        gpu_workers_enabled()


@pytest.mark.parametrize("bad", ["tcp://", "http://host:8786", "host:port", "two words:8786"])
def test_malformed_address_is_a_config_error(monkeypatch, bad):
    monkeypatch.setenv(ADDRESS_ENV, bad)
    with pytest.raises(ConfigError, match=ADDRESS_ENV):
        dask_target()


def test_unreachable_scheduler_names_the_address(monkeypatch):
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    with pytest.raises(DaskClusterError, match="127.0.0.1:9"):
        dask_target("tcp://127.0.0.1:9", timeout_s=1).client()  # port 9 (discard): nothing listens


def test_local_cluster_when_no_address(monkeypatch, cube_path, local_result):
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    with dask_target(n_workers=1, threads_per_worker=2, processes=False).client() as client:
        assert len(client.scheduler_info()["workers"]) == 1
        got = client.compute(_composite_graph(cube_path)).result()
    _assert_identical(got, local_result)


def test_graph_computes_on_external_scheduler_identically(monkeypatch, scheduler, cube_path, local_result):
    address, _ = scheduler
    monkeypatch.setenv(ADDRESS_ENV, address)
    with dask_target().client() as client:
        client.wait_for_workers(2, timeout=60)
        workers = client.scheduler_info()["workers"]
        assert sorted(w["name"] for w in workers.values()) == ["w0", "w1"]
        graph = _composite_graph(cube_path)
        future = client.compute(graph)
        got = future.result(timeout=120)
        # both worker processes executed part of the graph (tasks were shipped, not run here)
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
        assert len(executed) == 2 and all(n > 0 for n in executed.values()), executed
    _assert_identical(got, local_result)


def _worker_name(i: int) -> str:
    from distributed import get_worker

    return get_worker().name


def test_workers_of_the_installed_package_run_the_flows_tasks(scheduler):
    """A worker started as the image starts it (installed package, no PYTHONPATH, another working directory)
    unpickles the flows' Prefect tasks and reads the packaged country configs and outlines. Fails when the
    tasks live outside the installed package (the checkout's top-level ``flows``: "No module named 'flows'")."""
    from cropmap.flows import tasks
    from cropmap.io.config import load_country
    from cropmap.io.outlines import load_aoi

    address, _ = scheduler
    with dask_target(address).client() as client:
        client.wait_for_workers(1, timeout=60)
        # a Task object is pickled with a reference to its function's module, as the task runner ships it
        task_module = client.submit(lambda t: t.fn.__module__, tasks.cube_tile, pure=False).result(timeout=60)
        assert task_module == tasks.cube_tile.fn.__module__
        argentina = client.submit(load_country, "ARG", pure=False).result(timeout=60)
        assert argentina.code == "ARG" and argentina.catalog is not None
        outline = client.submit(load_aoi, argentina, pure=False).result(timeout=60)
        assert not outline.is_empty


def test_gpu_annotated_tasks_run_only_where_a_gpu_is_advertised(scheduler):
    import dask

    address, _ = scheduler
    with dask_target(address).client() as client:
        client.wait_for_workers(2, timeout=60)
        with dask.annotate(resources={GPU_RESOURCE: 1}):
            gpu_tasks = [dask.delayed(_worker_name, pure=False)(i) for i in range(8)]
        free_tasks = [dask.delayed(_worker_name, pure=False)(i) for i in range(8)]
        gpu_ran, _ = client.gather(client.compute([gpu_tasks, free_tasks]))
    assert set(gpu_ran) == {"w1"}


def test_killing_a_worker_mid_run_loses_nothing(scheduler, cube_path, local_result):
    address, procs = scheduler
    with dask_target(address).client() as client:
        client.wait_for_workers(2, timeout=60)
        by_name = {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}
        future = client.compute(_composite_graph(cube_path))
        # kill w1 once it holds finished pieces of the result and work is still pending: its results
        # are lost and must be recomputed on w0, its running task rescheduled
        held = wait_for(lambda: len(client.has_what().get(by_name["w1"], ())) >= 5 and not future.done()
                         and len(client.has_what()[by_name["w1"]]), 60, "w1 to hold results")
        assert not future.done()
        procs["w1"].send_signal(signal.SIGKILL)
        procs["w1"].wait(timeout=10)
        got = future.result(timeout=120)
        assert list(client.scheduler_info()["workers"]) == [by_name["w0"]]
    assert held >= 5
    _assert_identical(got, local_result)
