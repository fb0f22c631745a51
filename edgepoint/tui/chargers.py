"""Chargers: the site CSMS's chargers, their connectors and health, and operator commands."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from edgepoint.tui.connection import CHARGER_TIMEOUT_S
from edgepoint.tui.dialogs import ConfirmDialog, Field, FormDialog
from edgepoint.tui.formats import age, parse_time, seconds_between
from edgepoint.tui.model import Model
from edgepoint.tui.overview import STATUS_STYLE
from edgepoint.tui.pane import Failed, Pane

# The client waits a little longer than the CSMS waits for the charger.
ANSWER_WITHIN_S = CHARGER_TIMEOUT_S + 5


def connectors_text(charger: dict[str, Any]) -> str:
    """`1:Charging 2:Available` (connector 0, the charger itself, left out)."""
    return " ".join(
        f"{c['connector_id']}:{c['status']}"
        for c in charger.get("connectors", [])
        if c.get("connector_id")
    )


def _percent(share: object) -> str:
    return f"{100 * share:.0f}%" if isinstance(share, int | float) else "—"


class ChargersPane(Pane):
    """Operator commands go to the selected charger; disruptive ones ask first."""

    BINDINGS = [
        Binding("s", "start", "Start"),
        Binding("x", "stop", "Stop"),
        Binding("u", "unlock", "Unlock"),
        Binding("r", "reset", "Reset"),
        Binding("v", "availability", "Avail."),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.chargers: list[dict[str, Any]] = []
        self.error = ""

    def compose(self) -> ComposeResult:
        table: DataTable[str] = DataTable(id="chargers-table", cursor_type="row")
        table.add_columns("Charger", "Online", "Seen", "Connectors", "Health")
        yield table
        yield Static(id="charger-detail")

    def focus_main(self) -> None:
        self.query_one(DataTable).focus()

    async def reload(self) -> None:
        result = await self.host.call("chargers.list", quiet=True)
        if isinstance(result, Failed):
            self.chargers, self.error = [], result.message
        else:
            self.chargers, self.error = list(result), ""
        self.redraw()

    def redraw(self) -> None:
        model = self.host.model
        now = model.now()
        table: DataTable[str] = self.query_one(DataTable)
        cursor = table.cursor_row
        table.clear()
        for charger in self.chargers:
            health = charger.get("health") or {}
            table.add_row(
                str(charger["id"]),
                "yes" if charger.get("online") else "no",
                age(seconds_between(parse_time(charger.get("last_seen")), now)),
                connectors_text(charger),
                "—" if health.get("score") is None else str(health["score"]),
            )
        if self.chargers:
            table.move_cursor(row=min(max(cursor, 0), len(self.chargers) - 1))
        self.show_detail()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_detail()

    def show_detail(self) -> None:
        detail = self.query_one("#charger-detail", Static)
        charger = self.selected()
        if self.error:
            detail.update(Text(f"Site CSMS: {self.error}", style="yellow"))
            return
        if charger is None:
            detail.update("no chargers registered (edgepoint chargers add ID)")
            return
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f"{charger['id']}", style="bold")
        text.append(
            f"  {charger.get('vendor') or '?'} {charger.get('model') or ''}"
            f"  firmware {charger.get('firmware') or '?'}\n"
        )
        now = self.host.model.now()
        for c in charger.get("connectors", []):
            status = str(c.get("status"))
            text.append(f" connector {c.get('connector_id')}  ")
            text.append(f"{status:<14}", style=STATUS_STYLE.get(status, ""))
            error = c.get("error_code")
            if error and error != "NoError":
                text.append(f" {error}", style="bold red")
            since = seconds_between(parse_time(c.get("since")), now)
            text.append(f"  since {age(since).removesuffix(' ago')}\n")
        health = charger.get("health") or {}
        if health.get("score") is not None:
            text.append(
                f" health {health.get('score')}: in service"
                f" {_percent(health.get('in_service_share'))}, errors"
                f" {_percent(health.get('error_share'))},"
                f" {health.get('sessions') or 0} session(s) in"
                f" {int(health.get('window_s') or 0) // 3600} h"
            )
        detail.update(text)

    def show(self, model: Model) -> None:
        pass  # redrawn on reload (after commands and when the site CSMS writes)

    def selected(self) -> dict[str, Any] | None:
        table: DataTable[str] = self.query_one(DataTable)
        if not self.chargers or table.cursor_row < 0:
            return None
        return self.chargers[min(table.cursor_row, len(self.chargers) - 1)]

    def _target(self, cmd: str) -> dict[str, Any] | None:
        """The selected charger, if this user may run `cmd` at all (else say why)."""
        grant = self.host.model.grant
        refusal = "not connected" if grant is None else grant.refusal(cmd)
        if refusal:
            self.host.say(refusal, error=True)
            return None
        charger = self.selected()
        if charger is None:
            self.host.say("no charger selected", error=True)
        return charger

    async def _send(self, cmd: str, charger: dict[str, Any], what: str, **args: Any) -> None:
        self.host.say(f"{what}: waiting for {charger['id']} …")
        result = await self.host.call(
            cmd, answer_within_s=ANSWER_WITHIN_S, charger=charger["id"], **args
        )
        if isinstance(result, Failed):
            return
        answer = result.get("status", result) if isinstance(result, dict) else result
        self.host.say(f"{what} {charger['id']}: {answer}", error=answer != "Accepted")
        await self.reload()

    def _connector_default(self, charger: dict[str, Any]) -> str:
        ids = [c["connector_id"] for c in charger.get("connectors", []) if c.get("connector_id")]
        return str(ids[0]) if ids else "1"

    @work(group="command", exit_on_error=False)
    async def action_start(self) -> None:
        charger = self._target("chargers.remote_start")
        if charger is None:
            return
        values = await self.app.push_screen_wait(
            FormDialog(
                f"Remote start on {charger['id']}",
                [
                    Field("id_tag", "Card id (idTag) to charge for"),
                    Field("connector", "Connector", self._connector_default(charger), int, False),
                ],
            )
        )
        if values:
            args: dict[str, Any] = {k: v for k, v in values.items() if v is not None}
            await self._send("chargers.remote_start", charger, "remote start", **args)

    @work(group="command", exit_on_error=False)
    async def action_stop(self) -> None:
        charger = self._target("chargers.remote_stop")
        if charger is None:
            return
        live = await self.host.call(
            "transactions.list", quiet=True, charger=charger["id"], live=True, limit=10
        )
        default = "" if isinstance(live, Failed) or not live else str(live[0]["transaction_id"])
        values = await self.app.push_screen_wait(
            FormDialog(
                f"Remote stop on {charger['id']}",
                [Field("transaction", "Transaction id", default, int)],
            )
        )
        if not values:
            return
        if not await self.app.push_screen_wait(
            ConfirmDialog(
                f"Stop transaction {values['transaction']} on {charger['id']}?",
                "Charging stops and the relay opens.",
            )
        ):
            return
        await self._send(
            "chargers.remote_stop", charger, "remote stop", transaction=values["transaction"]
        )

    @work(group="command", exit_on_error=False)
    async def action_unlock(self) -> None:
        charger = self._target("chargers.unlock")
        if charger is None:
            return
        values = await self.app.push_screen_wait(
            FormDialog(
                f"Unlock a connector of {charger['id']}",
                [Field("connector", "Connector", self._connector_default(charger), int)],
            )
        )
        if not values:
            return
        if not await self.app.push_screen_wait(
            ConfirmDialog(
                f"Unlock connector {values['connector']} of {charger['id']}?",
                "A session on it is stopped first.",
            )
        ):
            return
        await self._send("chargers.unlock", charger, "unlock", connector=values["connector"])

    @work(group="command", exit_on_error=False)
    async def action_reset(self) -> None:
        charger = self._target("chargers.reset")
        if charger is None:
            return
        values = await self.app.push_screen_wait(
            FormDialog(
                f"Reset {charger['id']}",
                [Field("type", "Reset type", "Soft", choices=("Soft", "Hard"))],
            )
        )
        if not values:
            return
        if not await self.app.push_screen_wait(
            ConfirmDialog(
                f"{values['type']} reset of {charger['id']}?",
                "Running sessions are stopped and the charger restarts.",
            )
        ):
            return
        await self._send("chargers.reset", charger, "reset", type=values["type"])

    @work(group="command", exit_on_error=False)
    async def action_availability(self) -> None:
        charger = self._target("chargers.availability")
        if charger is None:
            return
        values = await self.app.push_screen_wait(
            FormDialog(
                f"Availability of a connector of {charger['id']}",
                [
                    Field("connector", "Connector (0: all)", self._connector_default(charger), int),
                    Field("state", "Make it", "Inoperative", choices=("Operative", "Inoperative")),
                ],
            )
        )
        if not values:
            return
        operative = values["state"] == "Operative"
        if not operative and not await self.app.push_screen_wait(
            ConfirmDialog(
                f"Take connector {values['connector']} of {charger['id']} out of service?",
                "No new sessions start on it until it is made Operative again.",
            )
        ):
            return
        await self._send(
            "chargers.availability",
            charger,
            f"make {'operative' if operative else 'inoperative'}",
            connector=values["connector"],
            operative=operative,
        )
