"""cropmap.io.data: finding the real data, naming its source when missing, fetching it on request.

Downloads are served by a local http.server on 127.0.0.1 (``CROPMAP_DATA_URL_BASE``); nothing
reaches further.
"""

from __future__ import annotations

import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cropmap.errors import CropmapError, DataNotFoundError
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
