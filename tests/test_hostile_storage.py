"""Unlucky ends of a write (issue 33): an S3 endpoint that dies while a cube store or a file is written
into it (a real S3 API, moto's server on 127.0.0.1, reached through a TCP relay that is cut mid-write), a
cropmap error inside a Dask task, and ``cropmap cube`` stopped by SIGTERM. Each must end in one line that
says what to do, leave nothing that counts as complete or under a temporary name, and let a rerun finish.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import xarray as xr
from conftest import _free_port, use_s3_env

from cropmap.errors import StorageError
from cropmap.io import outputs, storage
from cropmap.io.storage import TEMP_MARK

ROOT = Path(__file__).resolve().parents[1]
CROPMAP = str(Path(sys.executable).with_name("cropmap"))
INTERRUPTED = "error: interrupted (SIGTERM); rerun the same command to resume"


@contextlib.contextmanager
def tcp_relay(upstream: str) -> Iterator[tuple[str, Callable[[], None]]]:
    """A TCP relay on 127.0.0.1 to ``upstream`` (``http://host:port``); yields ``(its URL, cut)``: ``cut()``
    closes it and every connection through it, as an endpoint that dies (new connections are refused)."""
    target = urlparse(upstream)
    listener = socket.create_server(("127.0.0.1", 0))
    sockets: list[socket.socket] = []
    lock = threading.Lock()

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                server = socket.create_connection((target.hostname, target.port))
                with lock:
                    sockets.extend((client, server))
                for a, b in ((client, server), (server, client)):
                    threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    def cut() -> None:
        listener.close()
        with lock:
            for s in sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", cut
    finally:
        cut()


def _dataset(name: str) -> xr.Dataset:
    return xr.Dataset({name: (("y", "x"), np.arange(12, dtype="float32").reshape(3, 4))})


def test_an_s3_endpoint_dying_mid_cube_fails_in_one_line_and_the_rerun_rebuilds(bucket, s3_env, monkeypatch):
    """An S3 endpoint that dies while a Zarr store is being written into it."""
    cube = storage.join(bucket, "cubes", "t1.zarr")
    with tcp_relay(s3_env["AWS_ENDPOINT_URL"]) as (endpoint, cut):
        use_s3_env(monkeypatch, {**s3_env, "AWS_ENDPOINT_URL": endpoint, "AWS_MAX_ATTEMPTS": "1"})
        with pytest.raises(StorageError) as failed:
            with outputs.output_dir(cube) as target:
                _dataset("v").to_zarr(target, mode="w", consolidated=False)  # part of the store is written
                cut()
                _dataset("w").to_zarr(target, mode="a", consolidated=False)
    message = str(failed.value)
    assert "\n" not in message, message
    assert message.startswith(f"could not write {cube}: the store failed while writing it; it is not marked "
                              "complete, so the next run rebuilds it: rerun once the store answers. "), message
    assert f"EndpointConnectionError: Could not connect to the endpoint URL: \"{endpoint}/" in message
    use_s3_env(monkeypatch, {**s3_env, "AWS_MAX_ATTEMPTS": "1"})  # the store answers again
    fs, path = storage.filesystem(cube)
    assert any("/v/" in key for key in fs.find(path))  # the partial objects under the final key...
    assert not storage.is_complete(cube)  # ...do not count: no marker
    with outputs.output_dir(cube) as target:
        _dataset("u").to_zarr(target, mode="w", consolidated=False)
    assert storage.is_complete(cube) and not any("/v/" in key for key in fs.find(path))
    assert xr.open_zarr(cube, consolidated=False)["u"].values.sum() == 66


def test_an_upload_to_a_dead_endpoint_fails_in_one_line_naming_the_output(s3_env, monkeypatch):
    """A finished file uploaded to an S3 endpoint that refuses connections."""
    closed = f"http://127.0.0.1:{_free_port()}"
    use_s3_env(monkeypatch, {**s3_env, "AWS_ENDPOINT_URL": closed, "AWS_MAX_ATTEMPTS": "1"})
    target = "s3://bucket-of-a-dead-store/runs/t1.class.tif"
    with pytest.raises(StorageError) as failed:
        with outputs.output_file(target) as tmp:
            tmp.write_bytes(b"a whole file")
    message = str(failed.value)
    assert "\n" not in message and message.startswith(f"could not upload {target}: nothing was published there; "
                                                       "rerun once the store answers. EndpointConnectionError: ")
    assert f"endpoint {closed} is reachable" in message


# a Dask worker in its own process, as on a cluster: it imports cropmap.jobs.cluster to unpickle the task
_FAILING_TASKS = """
import cropmap.jobs.cluster as cluster
from distributed import Client

if __name__ == "__main__":
    with Client(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                worker_dashboard_address=None) as client:
        for fn, arg in ((cluster.dask_target, "not an address!"), (int, "x")):
            print(type(client.submit(fn, arg, pure=False).exception()).__name__, flush=True)
"""


def test_a_cropmap_error_in_a_dask_task_is_logged_in_one_line(tmp_path):
    """A Dask task that raises a CropmapError (ConfigError), next to one that raises a plain bug (ValueError)."""
    script = tmp_path / "tasks.py"
    script.write_text(_FAILING_TASKS)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.split() == ["ConfigError", "ValueError"], proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    failed = [i for i, line in enumerate(lines) if "Compute Failed" in line]
    assert len(failed) == 2, proc.stderr
    config_error, bug = (lines[i] for i in failed)
    assert "ERROR - Compute Failed: dask_target-" in config_error, proc.stderr
    assert config_error.endswith(": ConfigError: the config's dask address = 'not an address!' is not a Dask "
                                 "scheduler address; expected e.g. 'tcp://127.0.0.1:8786' or "
                                 "'cropmap-scheduler.cropmap.svc.cluster.local:8786'"), config_error
    assert "Traceback" not in "\n".join(lines[failed[0]:failed[1]])  # nothing between it and the next record
    assert bug.endswith("Compute Failed") and "ValueError" in "\n".join(lines[failed[1]:])  # a bug keeps its dump


def test_sigterm_while_cube_writes_prints_one_line_and_leaves_no_temporary(demo_paths, tmp_path):
    """`cropmap cube` stopped by SIGTERM while its tile cubes are being written."""
    out = tmp_path / "cubes"
    env = {**os.environ, "CROPMAP_DEMO_DIR": str(demo_paths.root), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([CROPMAP, "cube", "DEMO", "--out", str(out), "--max-tiles", "2", "--threads", "2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob(f".*{TEMP_MARK}*.zarr")):  # a cube under its temporary name: writing
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, stdout + stderr
    assert [line for line in stderr.splitlines() if line.strip()] == [INTERRUPTED], stderr
    assert [str(p) for p in out.rglob(f"*{TEMP_MARK}*")] == []
