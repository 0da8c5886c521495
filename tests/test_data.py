"""cropmap.io.data: finding the real data, naming its source when missing, fetching it on request.

Downloads are served by a local http.server on 127.0.0.1 (``CROPMAP_DATA_URL_BASE``); nothing
reaches further.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cropmap.errors import CropmapError, DataNotFoundError
from cropmap.io import data as data_module
from cropmap.io.data import SOURCES, data_dir, data_file

REL = "victoria_s2/class_map.txt"
SRC = SOURCES[REL]


class _Handler(SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        if self.path.startswith("/truncated/"):
            # announce more bytes than are sent, then hang up: the client sees a truncated body
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"value,class,colour\n1,Bare")
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path, shared_data):
    """An HTTP server on 127.0.0.1 laid out like raw.githubusercontent.com: /{repo}/{commit}/{path}."""
    root = tmp_path / "www"
    target = root / SRC.repo / SRC.commit / SRC.path
    target.parent.mkdir(parents=True)
    shutil.copy(shared_data / REL, target)
    _Handler.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def empty_env(tmp_path, monkeypatch):
    """No local data, an empty cache, downloads off unless a test turns them on."""
    monkeypatch.setenv("CROPMAP_DATA_DIR", str(tmp_path / "nodata"))
    monkeypatch.setenv("CROPMAP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CROPMAP_DOWNLOAD", raising=False)
    return tmp_path / "cache"


def test_local_data_folder_is_found(shared_data):
    assert data_dir() == shared_data
    assert data_file(REL) == shared_data / REL


def test_missing_file_names_repository_commit_and_path(empty_env):
    with pytest.raises(DataNotFoundError) as info:
        data_file(REL)
    message = str(info.value)
    for part in (SRC.repo, SRC.commit, SRC.path, "CROPMAP_DATA_DIR", "CROPMAP_DOWNLOAD"):
        assert part in message
    assert isinstance(info.value, CropmapError) and isinstance(info.value, FileNotFoundError)
    with pytest.raises(DataNotFoundError, match="no/such.csv"):
        data_file("no/such.csv", download=True)


def test_download_fetches_from_the_source_and_caches(empty_env, server, monkeypatch, shared_data):
    monkeypatch.setenv("CROPMAP_DATA_URL_BASE", server)
    path = data_file(REL, download=True)
    assert path == empty_env / REL
    assert path.read_bytes() == (shared_data / REL).read_bytes()
    assert _Handler.requests == [f"/{SRC.repo}/{SRC.commit}/{SRC.path}"]
    assert not list(empty_env.rglob("*.part"))
    # cached: found again without a request, downloads allowed or not
    assert data_file(REL, download=True) == path and data_file(REL) == path
    assert len(_Handler.requests) == 1


def test_download_enabled_by_environment(empty_env, server, monkeypatch):
    monkeypatch.setenv("CROPMAP_DATA_URL_BASE", server)
    monkeypatch.setenv("CROPMAP_DOWNLOAD", "1")
    assert data_file(REL).read_text().startswith("value,class,colour")


@pytest.mark.parametrize("base", ["{server}/elsewhere", "{server}/truncated"])
def test_failed_download_leaves_nothing_behind(empty_env, server, monkeypatch, base):
    monkeypatch.setenv("CROPMAP_DATA_URL_BASE", base.format(server=server))
    with pytest.raises(DataNotFoundError, match="could not fetch") as info:
        data_file(REL, download=True)
    assert SRC.repo in str(info.value)
    assert not (empty_env / REL).exists()  # never a half-written file under the final name
    assert not list(empty_env.rglob("*.part"))


def test_the_pins_are_the_files_in_the_shared_folder(shared_data):
    """Every pinned checksum is the SHA-256 of the file the data README lists (computed here)."""
    import hashlib

    for rel, source in SOURCES.items():
        assert hashlib.sha256((shared_data / rel).read_bytes()).hexdigest() == source.sha256, rel


def test_a_download_that_is_not_the_pinned_file_is_refused_and_nothing_kept(empty_env, server, monkeypatch):
    monkeypatch.setenv("CROPMAP_DATA_URL_BASE", server)
    served = next(p for p in (empty_env.parent / "www").rglob("class_map.txt"))
    data = served.read_bytes()
    served.write_bytes(data[:-2] + bytes([data[-2] ^ 1]) + data[-1:])  # one bit off: same size, other bytes
    with pytest.raises(DataNotFoundError, match="not the pinned file.*sha256"):
        data_file(REL, download=True)
    assert not (empty_env / REL).exists() and not list(empty_env.rglob("*.part"))


@pytest.fixture
def mirror(tmp_path, shared_data):
    """Every pinned source file on a local HTTP server laid out like raw.githubusercontent.com."""
    root = tmp_path / "mirror"
    for rel, source in SOURCES.items():
        target = root / source.repo / source.commit / source.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_data / rel, target)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_the_main_jobs_countries_are_built_from_fetched_data_on_a_bare_machine(empty_env, mirror, monkeypatch,
                                                                               tmp_path, capfd):
    """No data folder, an empty cache, downloads on (scripts/demo.sh sets CROPMAP_DOWNLOAD=1 unless told
    otherwise): the TRANSFER source and target are built from files fetched from the mirror, each
    fetch said on stderr and checked against its pin; Natural Earth comes with its sidecars."""
    from cropmap.io.outlines import outline_parts
    from cropmap.scenarios import resolve_run

    monkeypatch.setenv("CROPMAP_DATA_URL_BASE", mirror)
    monkeypatch.setenv("CROPMAP_DOWNLOAD", "1")
    monkeypatch.setenv("CROPMAP_DEMO_DIR", str(tmp_path / "demo"))
    for code in ("TSRC", "TTGT"):
        assert resolve_run(code, out_dir=str(tmp_path / "runs")).tiles()
    assert (empty_env / "victoria_s2/train_dataset.csv").exists() and (empty_env / "victoria_s2/test_dataset.csv").exists()
    assert "cropmap: fetching " in capfd.readouterr().err
    from cropmap.io.config import load_country

    # Natural Earth: the pinned copy in the installed pyogrio wheel, nothing fetched
    assert outline_parts(load_country("FRA").outline)
    ne = "naturalearth_lowres/naturalearth_lowres"
    assert "pyogrio" in data_file(f"{ne}.shp").parts and not (empty_env / f"{ne}.shp").exists()
    # without that copy (another pyogrio release): the .shp is fetched with its .shx, .dbf, .prj, .cpg
    for rel in [k for k in SOURCES if k.startswith(ne)]:
        monkeypatch.setitem(SOURCES, rel, dataclasses.replace(SOURCES[rel], packaged=None))
    data_module._packaged_copy.cache_clear()
    try:
        assert outline_parts(load_country("BEL").outline)
        assert (empty_env / f"{ne}.dbf").exists() and (empty_env / f"{ne}.shx").exists()
    finally:
        data_module._packaged_copy.cache_clear()
