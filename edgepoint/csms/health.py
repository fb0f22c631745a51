"""Pure health arithmetic of a site charger: time in service from its status history, errors now."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

# OCPP 1.6 ChargePointStatus values. A connector can serve a driver in these...
IN_SERVICE = frozenset(
    {"Available", "Preparing", "Charging", "SuspendedEVSE", "SuspendedEV", "Finishing", "Reserved"}
)
# ...and cannot in these. A status outside both (a charger's invention) counts as unknown.
OUT_OF_SERVICE = frozenset({"Faulted", "Unavailable"})


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A connector entered `status` (with `error_code`) at `at` (the charger's timestamp)."""

    connector_id: int
    status: str
    error_code: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Health:
    """How well a charger served over a window ending now.

    `in_service_share`: of the connector-time whose status is known, the share spent in
    a serving status (None: no status known in the window). `error_share`: connectors in
    error now (Faulted or an errorCode other than NoError). `sessions`: transactions
    started in the window. `score`: 0-100, in_service_share x (1 - error_share), None
    when the in-service share is unknown. Time the charger was offline is not judged: a
    connector keeps its last reported status until it reports another.
    """

    window_s: int
    in_service_share: float | None
    error_share: float | None
    sessions: int
    score: int | None


def service_share(
    history: Mapping[int, Sequence[StatusChange]], start: datetime, end: datetime
) -> float | None:
    """Share of known connector-time in [start, end) spent in service.

    `history` maps connector id to its changes in time order, including the last change
    before `start` (the status the window opens with). Connector 0 stands for the whole
    charger: while it is Faulted or Unavailable every connector counts as out of service.
    A charger that reports only connector 0 is judged on connector 0.
    """
    whole = history.get(0, ())
    outlets = {cid: changes for cid, changes in history.items() if cid != 0}
    if not outlets:
        outlets = {0: whole}
        whole = ()
    served = 0.0
    known = 0.0
    for changes in outlets.values():
        in_s, all_s = _connector_time(changes, whole, start, end)
        served += in_s
        known += all_s
    return None if known <= 0 else served / known


def _connector_time(
    own: Sequence[StatusChange],
    whole: Sequence[StatusChange],
    start: datetime,
    end: datetime,
) -> tuple[float, float]:
    """(seconds in service, seconds with a known state) of one connector in [start, end)."""
    # Merge both timelines; at equal times the connector's own change comes last, which
    # does not matter since each segment reads both current states.
    events = sorted(
        [(change.at, 0, change) for change in whole] + [(change.at, 1, change) for change in own],
        key=lambda item: (item[0], item[1]),
    )
    mine: str | None = None
    charger: str | None = None
    served = 0.0
    known = 0.0
    cursor = start
    for at, source, change in [*events, (end, 2, None)]:
        moment = min(max(at, start), end)
        if moment > cursor:
            span = (moment - cursor).total_seconds()
            state = _state(mine, charger)
            if state is not None:
                known += span
                if state:
                    served += span
            cursor = moment
        if change is None:
            break
        if source == 0:
            charger = change.status
        else:
            mine = change.status
    return served, known


def _state(mine: str | None, charger: str | None) -> bool | None:
    """True in service, False out of service, None unknown."""
    if charger in OUT_OF_SERVICE or mine in OUT_OF_SERVICE:
        return False
    if mine in IN_SERVICE:
        return True
    return None


def in_error(status: str, error_code: str) -> bool:
    """Tell whether a connector's current status shows an error."""
    return status == "Faulted" or error_code != "NoError"


def error_share(current: Iterable[tuple[int, str, str]]) -> float | None:
    """Share of connectors (id, status, errorCode) in error now; connector 0 only if alone."""
    rows = list(current)
    outlets = [row for row in rows if row[0] != 0] or rows
    if not outlets:
        return None
    return sum(1 for _, status, code in outlets if in_error(status, code)) / len(outlets)


def score_health(
    history: Mapping[int, Sequence[StatusChange]],
    current: Iterable[tuple[int, str, str]],
    sessions: int,
    start: datetime,
    end: datetime,
) -> Health:
    """Combine the service share, the error share and the session count (see Health)."""
    share = service_share(history, start, end)
    errors = error_share(current)
    score = None if share is None else round(100 * share * (1 - (errors or 0.0)))
    return Health(
        window_s=int((end - start).total_seconds()),
        in_service_share=share,
        error_share=errors,
        sessions=sessions,
        score=score,
    )
