"""A local HTTP file server for Firmware Management tests: serves downloads, keeps uploads.

GET serves `files[path]`; PUT stores the body in `uploads[path]`; POST takes a
multipart/form-data upload and stores its file part under `path + filename`. `fail[path]`
answers that path with an error status instead, `allow_put = False` answers PUT with
405 (so a client must fall back to POST). Every request is recorded in `requests`.
With a server-side `tls` context it serves HTTPS instead.
It runs on 127.0.0.1 in a thread of its own, so the daemon under test reaches it
over real sockets.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FileServer:
    """`with FileServer() as server:` then hand out `server.url("/path")`."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.files: dict[str, bytes] = {}
        self.uploads: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail: dict[str, int] = {}
        self.allow_put = True
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FileServer:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def count(self, method: str, path: str) -> int:
        with self._lock:
            return sum(1 for m, p in self.requests if m == method and p == path)

    async def wait_for(self, what: str, check: Callable[[], Any], within_s: float = 15) -> Any:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            with self._lock:
                result = check()
            if result:
                return result
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; requests: {self.requests}")

    def _record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))


def _handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet test output

        def _refused(self) -> bool:
            status = server.fail.get(self.path)
            if status is None:
                return False
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _ok(self, status: int = 200, body: bytes = b"") -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            server._record("GET", self.path)
            if self._refused():
                return
            data = server.files.get(self.path)
            if data is None:
                self._ok(404)
                return
            self._ok(200, data)

        def do_PUT(self) -> None:
            server._record("PUT", self.path)
            body = self._body()
            if self._refused():
                return
            if not server.allow_put:
                self._ok(405)
                return
            with server._lock:
                server.uploads[self.path] = body
            self._ok(201)

        def do_POST(self) -> None:
            server._record("POST", self.path)
            body = self._body()
            if self._refused():
                return
            head = f"Content-Type: {self.headers.get('Content-Type')}\r\n\r\n".encode()
            message = BytesParser(policy=HTTP).parsebytes(head + body)
            for part in message.iter_parts():
                name = part.get_filename()
                payload = part.get_payload(decode=True)
                if name and isinstance(payload, bytes):
                    with server._lock:
                        server.uploads[self.path.rstrip("/") + "/" + name] = payload
            self._ok(201)

    return Handler
