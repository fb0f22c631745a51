"""BootNotification rules (OCPP 1.6 §4.2) as plain code: what a reply means for the link."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from edgepoint.ocppj.validation import parse_datetime

# A CSMS that answers Pending/Rejected with interval 0 leaves the wait to us.
DEFAULT_RETRY_S = 60
# A heartbeat or retry interval below this is a CSMS bug, not a wish: a negative or zero
# interval once meant thousands of Heartbeats per second.
MIN_INTERVAL_S = 1
MAX_INTERVAL_S = 86_400


class Registration(StrEnum):
    """RegistrationStatus of BootNotification.conf."""

    ACCEPTED = "Accepted"
    PENDING = "Pending"
    REJECTED = "Rejected"


@dataclass(frozen=True, slots=True)
class BootOutcome:
    """What to do after a BootNotification.conf."""

    registration: Registration
    # Accepted: the heartbeat interval; Pending/Rejected: wait this long, then boot again.
    interval_s: int
    csms_time: datetime | None


def on_boot_reply(reply: dict[str, Any], own_heartbeat_s: int) -> BootOutcome:
    """Read a (schema-valid) BootNotification.conf.

    Accepted with interval 0 (or nonsense) keeps our own HeartbeatInterval; Pending and
    Rejected retry after the interval given, or DEFAULT_RETRY_S.
    """
    registration = Registration(reply["status"])
    given = int(reply["interval"])
    fallback = own_heartbeat_s if registration is Registration.ACCEPTED else DEFAULT_RETRY_S
    interval = given if given >= MIN_INTERVAL_S else fallback
    interval = max(MIN_INTERVAL_S, min(MAX_INTERVAL_S, interval))
    try:
        csms_time: datetime | None = parse_datetime(str(reply["currentTime"]))
    except ValueError:
        csms_time = None
    return BootOutcome(registration, interval, csms_time)
