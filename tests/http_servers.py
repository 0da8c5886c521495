"""Small HTTP servers on 127.0.0.1 for tests that count requests: a file server answering byte ranges
(what GDAL's /vsicurl/ asks of a COG server), and a counting reverse proxy in front of a STAC API."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _RangeHandler(BaseHTTPRequestHandler):
    """Serves ``server.root`` with byte ranges; appends ``path first last`` per GET to ``server.log``.
    The first ``server.fail_first`` requests (HEAD or GET) of each path are answered HTTP 500."""

    def log_message(self, *args) -> None:  # quiet
        pass

    def _target(self) -> Path | None:
        root = self.server.root  # type: ignore[attr-defined]
        path = (root / self.path.split("?")[0].lstrip("/")).resolve()
        return path if path.is_file() and root in path.parents else None

    def _failing(self) -> bool:
        """Answer 500 to the first ``fail_first`` requests of a path (a transient server error)."""
        with self.server.lock:  # type: ignore[attr-defined]
            seen = self.server.seen  # type: ignore[attr-defined]
            seen[self.path] = seen.get(self.path, 0) + 1
            if seen[self.path] > self.server.fail_first:  # type: ignore[attr-defined]
                return False
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()
        return True

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        path = self._target()
        if self._failing():
            return
        if path is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        path = self._target()
        if self._failing():
            return
        if path is None:
            self.send_error(404)
            return
        size = path.stat().st_size
        match = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        first, last = (int(match[1]), int(match[2]) if match[2] else size - 1) if match else (0, size - 1)
        last = min(last, size - 1)
        with open(path, "rb") as f:
            f.seek(first)
            body = f.read(last - first + 1)
        with self.server.lock:  # type: ignore[attr-defined]
            with open(self.server.log, "a") as log:  # type: ignore[attr-defined]
                log.write(f"{path.relative_to(self.server.root)} {first} {last}\n")  # type: ignore[attr-defined]
        self.send_response(206 if match else 200)
        if match:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)


def _serve_ranges(root: str, log: str, fail_first: int = 0) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    server.root, server.log, server.lock = Path(root).resolve(), log, threading.Lock()  # type: ignore[attr-defined]
    server.fail_first, server.seen = fail_first, {}  # type: ignore[attr-defined]
    print(server.server_address[1], flush=True)
    server.serve_forever()


@contextlib.contextmanager
def range_file_server(root: Path, *, fail_first: int = 0) -> Iterator[tuple[str, Callable[[], list[tuple[str, int, int]]]]]:
    """Serve ``root`` with HTTP Range support from another process; yields ``(base URL, log)`` where
    ``log()`` returns ``(path, first byte, last byte)`` of every GET so far (a whole-file GET logs the
    whole range). ``fail_first``: the first requests of each URL answered HTTP 500 (a flaky server).

    Another process, because rasterio holds the GIL while GDAL opens a URL: a server thread in the
    reading process would never get to answer."""
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "ranges.log"
        log_path.touch()
        proc = subprocess.Popen([sys.executable, __file__, "ranges", str(root), str(log_path), str(fail_first)],
                                stdout=subprocess.PIPE, text=True)
        try:
            port = int(proc.stdout.readline())  # type: ignore[union-attr]

            kept: list[str] = []  # the log's lines once the server is gone

            def log() -> list[tuple[str, int, int]]:
                lines = kept or log_path.read_text().splitlines()
                return [(path, int(first), int(last)) for path, first, last in (ln.rsplit(" ", 2) for ln in lines)]

            yield f"http://127.0.0.1:{port}", log
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            kept.extend(log_path.read_text().splitlines())


@contextlib.contextmanager
def counting_proxy(upstream: str, *, throttle_searches: int = 0, edit: Callable[[dict], None] | None = None,
                   delay_s: float = 0.0, times: list[float] | None = None) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """A reverse proxy to ``upstream``; yields ``(base URL, log)`` of ``(method, path)`` per request
    (``times``, if given, gets each request's ``time.monotonic()``). Links in the answers keep pointing at
    the proxy (the upstream's address is rewritten). The first ``throttle_searches`` requests to ``/search``
    are answered HTTP 429 with ``Retry-After: 1``, as a busy public API answers; ``edit`` changes each
    feature of a search answer (a catalog serving malformed items), ``delay_s`` holds each search answer
    back (a slow API)."""
    log: list[tuple[str, str]] = []
    throttled = [0]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _forward(self, method: str) -> None:
            log.append((method, self.path))
            if times is not None:
                times.append(time.monotonic())
            if self.path.startswith("/search") and throttled[0] < throttle_searches:
                throttled[0] += 1
                self.send_response(429)
                self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")}
            request = urllib.request.Request(upstream + self.path, data=body, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    status, data, ctype = answer.status, answer.read(), answer.headers.get("Content-Type", "")
            except urllib.error.HTTPError as err:
                status, data, ctype = err.code, err.read(), err.headers.get("Content-Type", "")
            if self.path.startswith("/search") and status == 200:
                if edit is not None:
                    doc = json.loads(data)
                    for feature in doc.get("features", []):
                        edit(feature)
                    data = json.dumps(doc).encode()
                time.sleep(delay_s)
            data = data.replace(upstream.encode(), self.server.base.encode())  # type: ignore[attr-defined]
            with contextlib.suppress(OSError):  # a client that gave up waiting
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            self._forward("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._forward("POST")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.base = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.base, log  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def stac_api_server(catalog: Path, cog_root: Path | None, folder: Path) -> Iterator[tuple[str, Callable[[], list]]]:
    """The one collection of the static ``catalog`` served by ``rustac serve`` on 127.0.0.1, its asset
    files by :func:`range_file_server` over ``cog_root`` (as a public catalog serves both); the item
    files go to ``folder``. Yields ``(API URL, COG log)``. ``cog_root`` None: the items keep their local
    files as absolute ``file://`` hrefs (a STAC API over local files; the log is then empty)."""
    import json
    import time
    import urllib.request

    import pystac

    (collection,) = list(pystac.Catalog.from_file(str(catalog)).get_children())
    with (range_file_server(cog_root) if cog_root is not None else contextlib.nullcontext(("", list))) \
            as (cog_url, cog_log):
        lines = []
        for item in collection.get_items():
            item.make_asset_hrefs_absolute()
            for asset in item.assets.values():
                if cog_root is None:
                    if "://" not in asset.href:
                        asset.href = Path(asset.href).resolve().as_uri()
                    continue
                asset.href = cog_url + "/" + str(Path(asset.href).resolve().relative_to(cog_root.resolve()))
            lines.append(json.dumps(item.to_dict(include_self_link=False)))
        (folder / "items.ndjson").write_text("\n".join(lines) + "\n")
        coll = collection.to_dict(include_self_link=False)
        coll["links"] = []
        (folder / "collection.json").write_text(json.dumps(coll))
        port = free_port()
        proc = subprocess.Popen([str(Path(sys.executable).with_name("rustac")), "serve", "--addr", f"127.0.0.1:{port}",
                                 str(folder / "collection.json"), str(folder / "items.ndjson")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(400):
                try:
                    urllib.request.urlopen(f"{url}/collections", timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.05)
            yield url, cog_log
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


__all__ = ["range_file_server", "counting_proxy", "stac_api_server", "free_port"]


if __name__ == "__main__" and sys.argv[1] == "ranges":
    _serve_ranges(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 0)
