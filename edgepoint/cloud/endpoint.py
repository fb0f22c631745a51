"""The HTTPS ledger endpoint client: POST a batch, learn the highest contiguous seq held.

The API (docs/cloud.md): `POST <endpoint_url>` with `Authorization: Bearer <token>` and
`{"station": "<id>", "entries": [<entry>, ...]}` (consecutive seqs, ascending). 200
answers `{"acked_seq": N}`: the server holds this station's entries 1..N. Entries it
already holds with the same hash are ignored; one with another hash is a conflict (409).
401/403 (token), 409 (conflict) and other 4xx are faults; 408, 429, 5xx, timeouts and
network errors are retried with back-off.
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from edgepoint.cloud.errors import CloudFault, CloudUnavailable

MAX_ANSWER_BYTES = 64 * 1024


class HttpLedgerSink:
    """One station's ledger endpoint."""

    name = "endpoint"

    def __init__(
        self,
        url: str,
        token_file: Path,
        station_id: str,
        timeout_s: float,
        executor: Executor,
        ca_file: Path | None = None,
    ) -> None:
        self._url = url
        self._token_file = token_file
        self._station = station_id
        self._timeout = timeout_s
        self._executor = executor
        self._context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)

    async def send(self, entries: Sequence[dict[str, Any]], acked: int, in_doubt: bool) -> int:
        body = json.dumps({"station": self._station, "entries": list(entries)}).encode()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout + 1):
                status, answer = await loop.run_in_executor(
                    self._executor, functools.partial(self._post, body)
                )
        except TimeoutError as err:
            raise CloudUnavailable("ledger endpoint timed out") from err
        return self._acked(status, answer)

    def _post(self, body: bytes) -> tuple[int, bytes]:
        # Read on every try: a rotated token works without a restart.
        try:
            token = self._token_file.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise CloudFault(f"cannot read ledger.endpoint_token_file: {err}") from err
        request = urllib.request.Request(
            self._url,
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "User-Agent": "edgepoint-ledger",
            },
        )
        try:
            with urllib.request.urlopen(
                request, timeout=self._timeout, context=self._context
            ) as reply:
                return int(reply.status), reply.read(MAX_ANSWER_BYTES)
        except urllib.error.HTTPError as err:
            with err:
                return int(err.code), err.read(MAX_ANSWER_BYTES)
        except (urllib.error.URLError, OSError, ssl.SSLError) as err:
            reason = getattr(err, "reason", err)
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise CloudFault(f"ledger endpoint's certificate refused: {reason}") from err
            raise CloudUnavailable(f"ledger endpoint unreachable: {reason}") from err

    def _acked(self, status: int, answer: bytes) -> int:
        try:
            data = json.loads(answer) if answer else {}
        except ValueError:
            data = {}
        detail = data.get("error", "") if isinstance(data, dict) else ""
        if status == 200:
            acked = data.get("acked_seq") if isinstance(data, dict) else None
            if not isinstance(acked, int) or isinstance(acked, bool) or acked < 0:
                raise CloudUnavailable("ledger endpoint answered without an acked_seq")
            return acked
        if status in (401, 403):
            raise CloudFault(f"ledger endpoint refused the token (HTTP {status}) {detail}".strip())
        if status == 409:
            raise CloudFault(f"ledger endpoint holds a different entry (HTTP 409) {detail}".strip())
        if status in (408, 429) or status >= 500:
            raise CloudUnavailable(f"ledger endpoint answered HTTP {status} {detail}".strip())
        raise CloudFault(f"ledger endpoint refused the batch (HTTP {status}) {detail}".strip())
