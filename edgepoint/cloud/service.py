"""Build the cloud outputs from the configuration: the services to supervise and their status."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from edgepoint.clock import Clock
from edgepoint.cloud.cards import FleetCardSync
from edgepoint.cloud.endpoint import HttpLedgerSink
from edgepoint.cloud.firebase import StatePublisher, StatusSource, Watch
from edgepoint.cloud.health import Health
from edgepoint.cloud.ledger import LedgerRecorder
from edgepoint.cloud.rtdb import Rtdb
from edgepoint.cloud.signing import LedgerKey, load_or_create_key
from edgepoint.cloud.state import ChargerView, SessionFacts
from edgepoint.cloud.stationkey import station_key
from edgepoint.cloud.upload import LedgerUploader, RtdbLedgerSink
from edgepoint.config import Config
from edgepoint.csms.db import CardRepository
from edgepoint.storage.chargepoint import ChargePointStore
from edgepoint.storage.fleet_cards import FleetCardStore
from edgepoint.storage.ledger import LedgerStore

log = logging.getLogger(__name__)

Service = tuple[str, Callable[[], Awaitable[None]]]
# Cloud calls block in threads of their own, so that a hung Firebase never takes the
# threads asyncio's default executor lends the card reader.
CLOUD_THREADS = 4


@dataclass
class Cloud:
    """The cloud outputs of one daemon: run `services` under the supervisor, show `status`."""

    station_key: str
    services: list[Service] = field(default_factory=list)
    publisher: StatePublisher | None = None
    cards: FleetCardSync | None = None
    recorder: LedgerRecorder | None = None
    uploaders: list[LedgerUploader] = field(default_factory=list)
    ledger_store: LedgerStore | None = None
    ledger_key: LedgerKey | None = None
    rtdb: Rtdb | None = None
    executor: ThreadPoolExecutor | None = None

    async def status(self) -> dict[str, Any]:
        faults: list[str] = []
        section: dict[str, Any] = {"station_key": self.station_key}
        if self.publisher is not None:
            health = self.publisher.health
            section["firebase"] = {
                **dataclasses.asdict(health.snapshot()),
                **dataclasses.asdict(self.publisher.stats()),
            }
            if health.fault:
                faults.append(f"firebase state: {health.fault}")
            if self.publisher.pubkey_fault:
                faults.append(self.publisher.pubkey_fault)
        if self.cards is not None:
            health = self.cards.health
            section["cards"] = {
                **dataclasses.asdict(health.snapshot()),
                **dataclasses.asdict(self.cards.stats()),
            }
            if health.fault:
                faults.append(f"fleet cards: {health.fault}")
        if self.ledger_store is not None and self.recorder is not None:
            summary = await self.ledger_store.summary()
            sinks = {}
            for uploader in self.uploaders:
                stats = uploader.stats()
                sinks[uploader.sink.name] = {
                    **dataclasses.asdict(uploader.health.snapshot()),
                    **dataclasses.asdict(stats),
                    "backlog": max(0, summary.last_seq - stats.acked_seq),
                }
                if uploader.health.fault:
                    faults.append(f"ledger upload to {uploader.sink.name}: {uploader.health.fault}")
            section["ledger"] = {
                **dataclasses.asdict(summary),
                "waiting_for_clock": self.recorder.waiting_for_clock,
                "public_key": self.ledger_key.public_b64 if self.ledger_key else None,
                "sinks": sinks,
            }
            if summary.refused:
                first = (await self.ledger_store.refusals(1))[0]
                faults.append(
                    f"{summary.refused} billing event(s) refused into the ledger;"
                    f" first: {first[1]} of session {first[0]}: {first[2]}"
                )
        section["faults"] = faults
        return section

    def close(self) -> None:
        if self.rtdb is not None:
            self.rtdb.close()
        if self.executor is not None:
            # A call hung in a thread is abandoned, not waited for: shutdown stays prompt.
            self.executor.shutdown(wait=False, cancel_futures=True)


def build_cloud(
    config: Config,
    clock: Clock,
    store: ChargePointStore,
    station_status: StatusSource,
    watch: Watch,
    csms_cards: Callable[[], CardRepository | None] = lambda: None,
) -> Cloud:
    """The cloud outputs `config` asks for. Raises ConfigError for an unusable key file."""
    fb, lc = config.firebase, config.ledger
    key = station_key(config.station.id)
    cloud = Cloud(key)
    if not fb.enabled and not lc.enabled:
        return cloud
    cloud.executor = executor = ThreadPoolExecutor(CLOUD_THREADS, thread_name_prefix="cloud")
    if lc.enabled:
        cloud.ledger_key = load_or_create_key(lc.key_file)
    if fb.enabled:
        cloud.rtdb = Rtdb(fb.database_url, fb.credentials_file, key, fb.request_timeout_s, executor)
        cloud.publisher = StatePublisher(
            cloud.rtdb,
            key,
            station_status,
            watch,
            lambda sid: _facts(store, sid),
            ChargerView(config.station.id, fb.finished_hold_s, fb.uid_salt),
            clock,
            Health(clock),
            fb.publish_interval_s,
            pubkey=cloud.ledger_key.public_b64 if cloud.ledger_key else None,
        )
        cloud.services.append(("cloud state", cloud.publisher.run))
        if fb.cards:
            cloud.cards = FleetCardSync(
                cloud.rtdb,
                key,
                FleetCardStore(store.db),
                csms_cards,
                fb.cards_poll_interval_s,
                clock,
                Health(clock),
            )
            cloud.services.append(("fleet cards", cloud.cards.run))
    if cloud.ledger_key is not None:
        ledger_store = cloud.ledger_store = LedgerStore(store.db)
        if cloud.rtdb is not None and lc.rtdb:
            cloud.uploaders.append(
                LedgerUploader(
                    RtdbLedgerSink(cloud.rtdb, key), ledger_store, Health(clock), lc.upload_batch
                )
            )
        if lc.endpoint_url is not None and lc.endpoint_token_file is not None:
            sink = HttpLedgerSink(
                lc.endpoint_url,
                lc.endpoint_token_file,
                config.station.id,
                fb.request_timeout_s,
                executor,
                lc.endpoint_ca_file,
            )
            cloud.uploaders.append(
                LedgerUploader(sink, ledger_store, Health(clock), lc.upload_batch)
            )
        uploaders = list(cloud.uploaders)

        def appended() -> None:
            for uploader in uploaders:
                uploader.wake.set()

        cloud.recorder = LedgerRecorder(
            ledger_store, cloud.ledger_key, config.station.id, clock, appended
        )
        cloud.services.append(("ledger", cloud.recorder.run))
        cloud.services += [(f"ledger upload {u.sink.name}", u.run) for u in cloud.uploaders]
    return cloud


async def _facts(store: ChargePointStore, session_id: str) -> SessionFacts | None:
    row = await store.session(session_id)  # type: ignore[arg-type]
    if row is None:
        return None
    return SessionFacts(
        session_id,
        row.id_tag,
        _time(row.started_at),
        _time(row.stopped_at),
        row.meter_start_wh,
        row.meter_stop_wh,
    )


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None
