"""Firebase Realtime Database through firebase-admin, off the event loop, errors classified.

firebase-admin blocks (requests), so every call runs on the cloud's own small thread
pool, not asyncio's default one that the card reader uses, under a deadline: a hung
Firebase can tie up those threads, never a card tap. Only get, set, update and delete
are used — what every Realtime Database, and the firebase-server test double, serves.

The app acts with `databaseAuthVariableOverride = {"uid": "station:<key>"}`, so even
with service-account credentials the fleet's rules (database.rules.json) apply to what
this station writes.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, TypeVar

from edgepoint.cloud.errors import CloudFault, CloudUnavailable

T = TypeVar("T")
EMULATOR_ENV = "FIREBASE_DATABASE_EMULATOR_HOST"
_app_names = itertools.count(1)


def uses_emulator(database_url: str) -> bool:
    """True when firebase-admin will talk to an emulator (no credentials needed)."""
    return bool(os.environ.get(EMULATOR_ENV)) or database_url.startswith("http://")


class Rtdb:
    """One station's handle on the Realtime Database."""

    def __init__(
        self,
        database_url: str,
        credentials_file: Path | None,
        station_key: str,
        timeout_s: float,
        executor: Executor,
    ) -> None:
        self._url = database_url
        self._credentials_file = credentials_file
        self.uid = f"station:{station_key}"
        self._timeout = timeout_s
        self._executor = executor
        self._app: Any = None
        self._app_lock = threading.Lock()  # services call from several pool threads

    async def get(self, path: str) -> Any:
        return await self._call(path, "read", lambda ref: ref.get())

    async def set(self, path: str, value: Any) -> None:
        await self._call(path, "write", lambda ref: ref.set(value))

    async def update(self, path: str, values: dict[str, Any]) -> None:
        await self._call(path, "write", lambda ref: ref.update(values))

    async def delete(self, path: str) -> None:
        await self._call(path, "write", lambda ref: ref.delete())

    def close(self) -> None:
        with self._app_lock:
            if self._app is not None:
                import firebase_admin

                firebase_admin.delete_app(self._app)
                self._app = None

    async def _call(self, path: str, verb: str, work: Callable[[Any], T]) -> T:
        loop = asyncio.get_running_loop()
        job = functools.partial(self._blocking, path, work)
        try:
            # firebase-admin retries a failed connection once itself: allow for two tries.
            async with asyncio.timeout(2 * self._timeout + 1):
                return await loop.run_in_executor(self._executor, job)
        except TimeoutError as err:
            raise CloudUnavailable(f"Firebase {verb} of {path} timed out") from err
        except (CloudFault, CloudUnavailable):
            raise
        except Exception as err:
            raise classify(err, f"Firebase {verb} of {path}") from err

    def _blocking(self, path: str, work: Callable[[Any], T]) -> T:
        from firebase_admin import db

        return work(db.reference(path, app=self._ensure_app()))

    def _ensure_app(self) -> Any:
        """The firebase-admin app, made on first use (in a worker thread: it may read files)."""
        with self._app_lock:
            return self._app or self._make_app()

    def _make_app(self) -> Any:
        if self._app is None:
            import firebase_admin
            from firebase_admin import credentials

            cred = (
                credentials.Certificate(str(self._credentials_file))
                if self._credentials_file is not None
                else None
            )
            options = {
                "databaseURL": self._url,
                "httpTimeout": self._timeout,
                "databaseAuthVariableOverride": {"uid": self.uid},
            }
            try:
                self._app = firebase_admin.initialize_app(
                    cred, options, name=f"edgepoint-{next(_app_names)}"
                )
            except (ValueError, OSError) as err:
                raise CloudFault(f"cannot set up Firebase: {err}") from err
        return self._app


def classify(err: Exception, what: str) -> CloudFault | CloudUnavailable:
    """Map a firebase-admin or google-auth error to fault (a human must act) or transient."""
    from firebase_admin import exceptions as fx
    from google.auth import exceptions as gx

    detail = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
    if isinstance(err, fx.UnauthenticatedError | gx.RefreshError | gx.DefaultCredentialsError):
        return CloudFault(f"{what}: the credentials were refused ({detail})")
    if isinstance(err, fx.PermissionDeniedError):
        return CloudFault(f"{what}: permission denied by the database rules ({detail})")
    if isinstance(err, fx.NotFoundError):
        return CloudFault(f"{what}: no such database (check firebase.database_url) ({detail})")
    if isinstance(err, fx.InvalidArgumentError | fx.FailedPreconditionError | ValueError):
        return CloudFault(f"{what}: refused as invalid ({detail})")
    # Unavailable, DeadlineExceeded, Internal, Unknown, ResourceExhausted, a transport
    # error on the way to the token endpoint, a socket error: the network or the server.
    return CloudUnavailable(f"{what}: {detail}")
