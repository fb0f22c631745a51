"""Migration 6's repositories: the firmware update and its notices, certificates, named state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edgepoint.storage.chargepoint import ChargePointStore, OutboxEntry
from edgepoint.storage.firmware import FirmwareStore, Notice
from edgepoint.storage.security import SecurityStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ChargePointStore]:
    opened = await ChargePointStore.open(tmp_path / "edgepoint.db")
    yield opened
    await opened.close()


async def queued(store: ChargePointStore) -> list[tuple[str, str]]:
    rows = await store.outbox_batch(50)
    return [(r.action, r.payload["status"]) for r in rows if isinstance(r, OutboxEntry)]


async def test_each_firmware_stage_commits_with_its_status_notification(
    store: ChargePointStore,
) -> None:
    firmware = FirmwareStore(store.db)
    assert await firmware.job() is None
    request = {"location": "http://h/fw.bin", "retrieveDate": "2026-03-01T12:00:00Z"}
    await firmware.start("UpdateFirmware", request, "scheduled", T0)
    downloading = Notice("FirmwareStatusNotification", {"status": "Downloading"}, "m1")
    await firmware.advance("downloading", T0, downloading)
    await firmware.advance("downloaded", T0, None, file="/x/firmware-1.bin")
    job = await firmware.job()
    assert job is not None and job.request == request
    assert (job.stage, job.file, job.status) == ("downloaded", "/x/firmware-1.bin", "Downloading")
    await firmware.finish(T0, Notice("FirmwareStatusNotification", {"status": "Installed"}, "m2"))
    assert await firmware.job() is None
    assert await queued(store) == [
        ("FirmwareStatusNotification", "Downloading"),
        ("FirmwareStatusNotification", "Installed"),
    ]
    # A new request replaces the stored one whatever it was.
    await firmware.start("UpdateFirmware", request, "scheduled", T0)
    await firmware.start("SignedUpdateFirmware", {"requestId": 1}, "scheduled", T0)
    replaced = await firmware.job()
    assert replaced is not None and replaced.action == "SignedUpdateFirmware"


async def test_certificates_and_named_state(store: ChargePointStore) -> None:
    security = SecurityStore(store.db)
    use = "CentralSystemRootCertificate"
    assert await security.add_certificate(use, "PEM-A", "aa", T0)
    assert not await security.add_certificate(use, "PEM-A", "aa", T0)  # once
    (first,) = await security.certificates(use)
    assert await security.add_certificate(use, "PEM-B", "bb", T0, replace=(first.id,))
    assert [c.pem for c in await security.certificates()] == ["PEM-B"]
    assert await security.certificate_count() == 1
    (second,) = await security.certificates(use)
    assert await security.delete_certificate(second.id)
    assert not await security.delete_certificate(second.id)
    assert await security.state("trial") is None
    await security.set_state("trial", {"SecurityProfile": "1"})
    assert await security.state("trial") == {"SecurityProfile": "1"}
    await security.set_state("trial", None)
    assert await security.state("trial") is None
