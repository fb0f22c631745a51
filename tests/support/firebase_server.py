"""A real Realtime Database server for tests: firebase-server 1.1.0 (npm) with its REST API.

`scripts/bootstrap --test` installs it (and the Firebase JS SDK 8 it needs, and targaryen
for the rules tests) under tests/.npm. It serves firebase-admin's get, set, update and
delete over REST, and the JS SDK's listeners over its WebSocket; it does not evaluate
rules on REST calls, nor serve push, transactions, ETags or SSE listen. Tests that need
it skip only when node is not installed at all; an install that is missing is an error.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

NPM_DIR = Path(__file__).resolve().parents[1] / ".npm"
NODE_MODULES = NPM_DIR / "node_modules"
SERVER_JS = NODE_MODULES / "firebase-server" / "bin" / "firebase-server.js"
NAMESPACE = "edgepoint-test"


def require_node() -> str:
    """The node binary; skip (no node at all) or fail (tests/.npm not installed)."""
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed: no Realtime Database server to test against")
    if not SERVER_JS.exists():
        pytest.fail(f"{SERVER_JS} is missing: run scripts/bootstrap --test (it installs it)")
    return node


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FirebaseServer:
    """firebase-server on 127.0.0.1, plus a REST client for the test's own reads and writes."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """What FIREBASE_DATABASE_EMULATOR_HOST must hold."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> FirebaseServer:
        node = require_node()
        self.proc = subprocess.Popen(
            [node, str(SERVER_JS), "-e", "-p", str(self.port), "-a", "127.0.0.1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, "firebase-server exited at start"
                try:
                    self.get("/")
                    return self
                except OSError:
                    time.sleep(0.05)
            raise AssertionError("firebase-server did not start")
        except BaseException:
            self.stop()  # never leave a server behind
            raise

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    # REST, as the Firebase console or a fleet backend would use it.

    def _request(self, method: str, path: str, value: Any = None) -> Any:
        body = None if value is None else json.dumps(value).encode()
        url = f"http://{self.host}/{path.strip('/')}.json?ns={NAMESPACE}"
        request = urllib.request.Request(url, data=body, method=method)
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read() or b"null")

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def put(self, path: str, value: Any) -> None:
        self._request("PUT", path, value)

    def delete(self, path: str) -> None:
        self._request("DELETE", path)

    async def wait_for(self, what: str, check: Any, path: str, within_s: float = 10) -> Any:
        """Poll `path` until `check(value)` holds; return the value."""
        deadline = time.monotonic() + within_s
        value = None
        while time.monotonic() < deadline:
            value = await asyncio.to_thread(self.get, path)
            if check(value):
                return value
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what} at {path}; last value: {value!r}")


@pytest.fixture
def firebase_server() -> Iterator[FirebaseServer]:
    server = FirebaseServer().start()
    try:
        yield server
    finally:
        server.stop()


class JsListener:
    """The driver page's view: a Firebase JS SDK `on('value')` listener on one path."""

    def __init__(self, server: FirebaseServer, path: str) -> None:
        self._server = server
        self._path = path
        self.values: list[Any] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(self) -> JsListener:
        node = require_node()
        script = Path(__file__).with_name("listen.js")
        self._proc = await asyncio.create_subprocess_exec(
            node,
            str(script),
            str(self._server.port),
            NAMESPACE,
            self._path,
            stdout=asyncio.subprocess.PIPE,
            env={"NODE_PATH": str(NODE_MODULES)},
        )
        self._reader = asyncio.create_task(self._read())
        await self.wait_for("the first snapshot", lambda values: len(values) >= 1)
        return self

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for line in self._proc.stdout:
            self.values.append(json.loads(line))
            self._changed.set()

    async def wait_for(self, what: str, check: Any, within_s: float = 10) -> list[Any]:
        deadline = time.monotonic() + within_s
        while not check(self.values):
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"listener: timed out waiting for {what}: {self.values[-3:]}")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                continue
        return self.values

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
        if self._reader is not None:
            self._reader.cancel()


@asynccontextmanager
async def js_listener(server: FirebaseServer, path: str) -> AsyncIterator[JsListener]:
    listener = await JsListener(server, path).start()
    try:
        yield listener
    finally:
        await listener.stop()
