"""A reference HTTPS ledger endpoint (docs/cloud.md, "The ledger endpoint") for the tests.

POST / with `Authorization: Bearer <token>` and `{"station", "entries"}`; stores each
entry by (station, seq), ignores one it already holds with the same hash (counted in
`duplicates`), refuses one with another hash (409), and answers `{"acked_seq": N}`,
the highest seq it holds without a gap. Faults on command: `fail(status, times)`,
`forget_from(seq)` (a server that lost data).
"""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class LedgerEndpoint:
    """The server and what it holds; start() returns it listening on 127.0.0.1."""

    def __init__(self, context: ssl.SSLContext, token: str) -> None:
        self.token = token
        self.entries: dict[str, dict[int, dict[str, Any]]] = {}
        self.duplicates = 0
        self.requests = 0
        self._failures: list[int] = []
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                status, answer = endpoint._handle(self)
                body = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}/v1/ledger"

    def start(self) -> LedgerEndpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(self, status: int, times: int = 1) -> None:
        with self._lock:
            self._failures += [status] * times

    def recover(self) -> None:
        """Stop failing on command."""
        with self._lock:
            self._failures.clear()

    def forget_from(self, station: str, seq: int) -> None:
        with self._lock:
            held = self.entries.get(station, {})
            for n in [n for n in held if n >= seq]:
                del held[n]

    def acked(self, station: str) -> int:
        held = self.entries.get(station, {})
        n = 0
        while n + 1 in held:
            n += 1
        return n

    def _handle(self, request: BaseHTTPRequestHandler) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests += 1
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                return 401, {"error": "bad token"}
            if self._failures:
                return self._failures.pop(0), {"error": "injected failure"}
            length = int(request.headers.get("Content-Length", "0"))
            try:
                batch = json.loads(request.rfile.read(length))
                station, entries = batch["station"], batch["entries"]
            except (ValueError, KeyError, TypeError):
                return 400, {"error": "bad batch"}
            held = self.entries.setdefault(station, {})
            for entry in entries:
                seq = entry["seq"]
                if seq in held:
                    if held[seq]["hash"] != entry["hash"]:
                        return 409, {
                            "error": f"seq {seq} differs",
                            "acked_seq": self.acked(station),
                        }
                    self.duplicates += 1
                    continue
                held[seq] = entry
            return 200, {"acked_seq": self.acked(station)}
