"""Card ids stay out of the CSMS log at INFO and above: only a masked tail is shown."""

from __future__ import annotations

import json
import logging

import pytest
from csms_fixtures import clock_fixture, running_fixture  # noqa: F401  (fixtures)
from csms_support import RunningCsms, exchange, open_ws

from edgepoint.redact import mask_id_tag

TAG = "04A1B2C3D4E5F6"


@pytest.mark.parametrize(
    ("tag", "masked"),
    [
        ("04A1B2C3", "****B2C3"),
        (TAG, "****E5F6"),
        ("ABCDE", "****DE"),  # a short tag shows at most half of itself
        ("AB", "****B"),
        ("A", "****"),
        ("", "****"),
        ("ABCD\nEF\r\x1b", "****EF??"),  # no forged log lines or terminal escapes
    ],
)
def test_mask_id_tag(tag: str, masked: str) -> None:
    assert mask_id_tag(tag) == masked


async def test_csms_logs_only_masked_tags(
    running: RunningCsms, caplog: pytest.LogCaptureFixture
) -> None:
    store = running.csms.store
    assert store is not None
    await store.cards.add(TAG, "Alice")
    caplog.set_level(logging.DEBUG)
    start = {"connectorId": 1, "idTag": TAG, "meterStart": 0, "timestamp": "2025-06-01T12:00:00Z"}
    async with open_ws(running.port) as ws:
        frames = [
            ["Authorize", {"idTag": TAG}],
            ["Authorize", {"idTag": "UNKNOWN-CARD-0001"}],
            ["StartTransaction", start],
            ["StartTransaction", {**start, "connectorId": 0}],  # refused
            ["Authorize", {"idTag": TAG + "-TOO-LONG-FOR-CISTRING20"}],  # refused
            [
                "StopTransaction",
                {"meterStop": 5, "timestamp": start["timestamp"], "transactionId": 1, "idTag": TAG},
            ],
        ]
        replies = [
            json.loads(await exchange(ws, json.dumps([2, str(n), action, payload])))[0]
            for n, (action, payload) in enumerate(frames)
        ]
    assert replies == [3, 3, 3, 4, 4, 3]
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert any("****E5F6" in line for line in loud)  # the masked form is what shows
    assert any("****0001" in line for line in loud)
    assert not [line for line in loud if TAG in line or "UNKNOWN-CARD" in line]
