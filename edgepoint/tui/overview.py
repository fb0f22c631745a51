"""Overview: connectors and their sessions, links with last-seen times, outbox, faults, alarms."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll

from edgepoint.tui.dialogs import Field, FormDialog
from edgepoint.tui.formats import age, clock, cut, kw, kwh, parse_time, seconds_between, span
from edgepoint.tui.model import Model, link_states
from edgepoint.tui.pane import Failed, Pane, TextView

STATUS_STYLE = {
    "Available": "green",
    "Preparing": "cyan",
    "Charging": "bold green",
    "SuspendedEV": "yellow",
    "SuspendedEVSE": "yellow",
    "Finishing": "cyan",
    "Reserved": "cyan",
    "Unavailable": "yellow",
    "Faulted": "bold red",
}
NAME_W, STATE_W, DETAIL_W = 10, 11, 40


def _heading(text: Text, title: str) -> None:
    text.append(f"{title}\n", style="bold underline")


def render_overview(model: Model) -> Text:
    """The overview as styled text; everything from the model, so a test can fix it."""
    status = model.status or {}
    now = model.now()
    text = Text(no_wrap=True, overflow="ellipsis")
    _heading(text, "Connectors")
    for c in status.get("connectors", []):
        state = str(c.get("status", "?"))
        text.append(f" {c.get('id')} ")
        text.append(f"{state:<14}", style=STATUS_STYLE.get(state, ""))
        text.append(
            "relay closed" if c.get("relay_closed") else "relay open  ",
            style="bold" if c.get("relay_closed") else "",
        )
        if not c.get("operative", True):
            text.append("  inoperative", style="yellow")
        if c.get("telemetry_lost"):
            text.append("  TELEMETRY LOST", style="bold red")
        session = c.get("session")
        if session:
            tx = session.get("transaction_id")
            text.append(f"  card {session.get('id_tag')}")
            text.append(f"  tx {tx if tx is not None else 'pending'}")
            text.append("\n")
            sample = c.get("last_sample") or {}
            started = model.session_started(str(session.get("session_id")))
            power = sample.get("power_w") if c.get("relay_closed") else 0.0
            text.append(
                f"   energy {kwh(session.get('energy_wh'))}   power {kw(power)}"
                f"   duration {span(seconds_between(started, now))}"
                + (f"   since {clock(started, now)}" if started else "")
                + "\n"
            )
        else:
            text.append("  no session\n")
        if c.get("faults"):
            text.append(
                f"   fault {', '.join(map(str, c['faults']))} ({c.get('error_code')})\n",
                style="bold red",
            )
    if not status.get("clock_synced", True):
        text.append(" wall clock not set (no NTP/RTC yet): times may be wrong\n", style="yellow")
    _heading(text, "Links")
    for name, label, state, detail, seen in _links(status, model):
        text.append(f" {label:<{NAME_W}} ")
        up = link_states(status).get(name)
        style = "green" if up else ("" if up is None else "bold red")
        text.append(f"{cut(state, STATE_W):<{STATE_W}} ", style=style)
        text.append(f"{cut(detail, DETAIL_W):<{DETAIL_W}} ")
        text.append(f"{seen}\n", style="dim" if seen == "—" else "")
    box = status.get("outbox") or {}
    oldest = seconds_between(parse_time(box.get("oldest_created_at")), now)
    text.append("Outbox", style="bold underline")
    text.append(
        f"  {box.get('depth', 0)} queued · oldest {age(oldest) if oldest is not None else '—'}"
        f" · parked {box.get('parked', 0)} · dead {box.get('dead_letters', 0)}"
        f" · quarantined {box.get('quarantined', 0)}\n",
        style="bold yellow" if box.get("parked") or box.get("dead_letters") else "",
    )
    faults = _faults(status)
    text.append("Faults", style="bold underline")
    text.append(f"  {'none' if not faults else len(faults)}\n")
    for fault in faults:
        text.append(f"  {fault}\n", style="bold red")
    alarms = [str(a) for a in status.get("alarms", [])]
    text.append("Alarms", style="bold underline")
    text.append(f"  {'none' if not alarms else len(alarms)}")
    for alarm in alarms:
        text.append(f"\n  {alarm}", style="bold yellow")
    return text


def _links(status: dict[str, Any], model: Model) -> list[tuple[str, str, str, str, str]]:
    """(key, label, state, detail, last seen) per link."""
    now = model.now()

    def seen(key: str) -> str:
        return age(seconds_between(model.seen.get(key), now))

    links = status.get("links") or {}
    csms = links.get("csms") or {}
    rows = [
        (
            "csms",
            "CSMS",
            str(csms.get("state", "?")),
            str(csms.get("last_error") or csms.get("url") or ""),
            seen("csms"),
        )
    ]
    embedded = links.get("embedded_csms")
    if embedded is not None:
        connected = embedded.get("connected") or []
        rows.append(
            (
                "site",
                "Site CSMS",
                ("listening" if embedded.get("listening") else "down")
                + ("" if embedded.get("answering", True) else " (busy)"),
                f":{embedded.get('port')}, {len(connected)} charger(s) connected"
                if embedded.get("listening")
                else str(embedded.get("error") or ""),
                seen("site"),
            )
        )
    cloud = status.get("cloud") or {}
    firebase = cloud.get("firebase")
    if firebase:
        ok_at = parse_time(firebase.get("last_ok_at"))
        rows.append(
            (
                "firebase",
                "Firebase",
                str(firebase.get("state")),
                str(firebase.get("detail") or f"{firebase.get('writes', 0)} writes"),
                age(seconds_between(ok_at, now)),
            )
        )
    else:
        rows.append(("firebase", "Firebase", "off", "not configured", "—"))
    ledger = cloud.get("ledger")
    if ledger:
        sinks = ledger.get("sinks") or {}
        if sinks:
            states = sorted({str(s.get("state")) for s in sinks.values()})
            backlog = sum(int(s.get("backlog", 0)) for s in sinks.values())
            oks = [t for s in sinks.values() if (t := parse_time(s.get("last_ok_at")))]
            rows.append(
                (
                    "ledger",
                    "Ledger",
                    "/".join(states),
                    f"{ledger.get('entries', 0)} entries, {backlog} to upload",
                    age(seconds_between(min(oks), now)) if oks else "—",
                )
            )
        else:
            rows.append(
                ("ledger", "Ledger", "local", f"{ledger.get('entries', 0)} entries, no sink", "—")
            )
    else:
        rows.append(("ledger", "Ledger", "off", "not configured", "—"))
    reader = (status.get("telemetry") or {}).get("reader") or {}
    frames = reader.get("frames") or {}
    rows.append(
        (
            "esp32",
            "ESP32",
            "connected" if reader.get("connected") else "lost",
            str(reader.get("last_error") or "")
            or f"{frames.get('frames_ok', 0)} frames, {frames.get('bad_checksum', 0)} bad",
            seen("esp32"),
        )
    )
    rfid = status.get("rfid") or {}
    rows.append(
        (
            "pn532",
            "PN532",
            "fault" if rfid.get("fault") else ("connected" if rfid.get("connected") else "lost"),
            str(rfid.get("fault") or rfid.get("last_error") or "")
            or f"{rfid.get('interface', '?')}, firmware {rfid.get('firmware') or '?'}",
            seen("pn532"),
        )
    )
    return rows


def _faults(status: dict[str, Any]) -> list[str]:
    faults = [f"charge point: {f}" for f in status.get("faults", [])]
    for c in status.get("connectors", []):
        faults += [f"connector {c.get('id')}: {f}" for f in c.get("faults", [])]
    faults += [str(f) for f in (status.get("cloud") or {}).get("faults", [])]
    for service in status.get("services", []):
        if service.get("state") not in ("running", None):
            faults.append(
                f"service {service.get('name')}: {service.get('state')}"
                f" ({service.get('last_error') or 'no error text'})"
            )
    return faults


class OverviewPane(Pane):
    """The first screen: everything at a glance, redrawn from each status.

    `t` presents a card to a simulated reader (the daemon refuses it on real hardware).
    """

    BINDINGS = [Binding("t", "tap", "Tap card (sim)")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="overview-scroll"):
            yield TextView(id="overview-body")

    def focus_main(self) -> None:
        self.query_one(VerticalScroll).focus()

    def show(self, model: Model) -> None:
        self.query_one("#overview-body", TextView).show_text(render_overview(model))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "tap":
            return bool((self.host.model.status or {}).get("simulated"))
        return True

    @work(group="command", exit_on_error=False)
    async def action_tap(self) -> None:
        grant = self.host.model.grant
        refusal = "not connected" if grant is None else grant.refusal("tap")
        if refusal:
            self.host.say(refusal, error=True)
            return
        values = await self.app.push_screen_wait(
            FormDialog("Present a card to the simulated reader", [Field("uid", "Card UID (hex)")])
        )
        if values:
            result = await self.host.call("tap", uid=values["uid"])
            if not isinstance(result, Failed):
                self.host.say("card presented to the simulated reader")
