"""Sessions: this charge point's live and past sessions, or the site CSMS's transactions."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Input, Static

from edgepoint.tui.formats import clock, kwh, parse_time, seconds_between, span
from edgepoint.tui.model import Model
from edgepoint.tui.pane import Failed, Pane

SITE_LIMIT = 100
Row = tuple[str, str, str, str, str, str]


def session_rows(model: Model) -> list[Row]:
    """The charge point's sessions; live ones with the energy the status has now."""
    now = model.now()
    live = {
        str(c["session"]["session_id"]): c["session"]
        for c in (model.status or {}).get("connectors", [])
        if c.get("session")
    }
    rows = []
    for s in model.sessions:
        started = parse_time(s.get("started_at"))
        stopped = parse_time(s.get("stopped_at"))
        energy = s.get("energy_wh")
        if (current := live.get(str(s.get("session_id")))) is not None:
            energy = current.get("energy_wh")
            state = "live"
        else:
            state = str(s.get("stop_reason") or s.get("state") or "")
            if s.get("state") == "active":
                state = "open"  # active in storage, not in the kiosk (being closed)
        rows.append(
            (
                clock(started, now),
                str(s.get("connector_id")),
                str(s.get("id_tag")),
                kwh(energy),
                span(seconds_between(started, stopped or now)),
                state,
            )
        )
    return rows


def transaction_rows(transactions: list[dict[str, Any]], model: Model) -> list[Row]:
    now = model.now()
    rows = []
    for t in transactions:
        started = parse_time(t.get("started_at"))
        stopped = parse_time(t.get("stopped_at"))
        rows.append(
            (
                clock(started, now),
                f"{t.get('charge_point_id')}/{t.get('connector_id')}",
                str(t.get("id_tag")),
                kwh(t.get("energy_wh")),
                span(seconds_between(started, stopped or now)),
                "live" if t.get("live") else str(t.get("stop_reason") or "stopped"),
            )
        )
    return rows


class SessionsPane(Pane):
    """A table filtered by any text in a row; `s` switches source, `l` live only."""

    BINDINGS = [
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("s", "source", "Site/this"),
        Binding("l", "live", "Live only"),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.site = False
        self.live_only = False
        self.transactions: list[dict[str, Any]] = []
        self._shown: list[Row] = []

    def compose(self) -> ComposeResult:
        yield Input(placeholder="/ filter: card, connector, state, reason…", id="sessions-filter")
        yield Static(id="sessions-mode")
        table: DataTable[str] = DataTable(
            id="sessions-table", cursor_type="row", zebra_stripes=True
        )
        table.add_columns("Started", "Conn", "Card", "Energy", "Duration", "State")
        yield table

    def focus_main(self) -> None:
        self.query_one(DataTable).focus()

    def show(self, model: Model) -> None:
        rows = transaction_rows(self.transactions, model) if self.site else session_rows(model)
        if self.live_only:
            rows = [r for r in rows if r[5] == "live"]
        wanted = self.query_one(Input).value.strip().casefold()
        if wanted:
            rows = [r for r in rows if wanted in " ".join(r).casefold()]
        source = "site CSMS transactions" if self.site else "this charge point"
        self.query_one("#sessions-mode", Static).update(
            f"{source} · {'live only' if self.live_only else 'live and past'} · {len(rows)} shown"
            "   (s: source, l: live only)"
        )
        if rows == self._shown:
            return
        self._shown = rows
        table: DataTable[str] = self.query_one(DataTable)
        cursor = table.cursor_row
        table.clear()
        for row in rows:
            table.add_row(*row)
        if rows:
            table.move_cursor(row=min(cursor, len(rows) - 1))

    async def reload(self) -> None:
        if self.site:
            result = await self.host.call("transactions.list", quiet=True, limit=SITE_LIMIT)
            self.transactions = [] if isinstance(result, Failed) else list(result)
        else:
            await self.host.reload_sessions()
        self.show(self.host.model)

    def on_input_changed(self, event: Input.Changed) -> None:
        self.show(self.host.model)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.focus_main()

    def action_filter(self) -> None:
        self.query_one(Input).focus()

    async def action_source(self) -> None:
        self.site = not self.site
        await self.reload()

    def action_live(self) -> None:
        self.live_only = not self.live_only
        self.show(self.host.model)
