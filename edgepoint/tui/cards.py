"""Cards: the embedded CSMS's cards and the charge point's local list (add, block, remove)."""

from __future__ import annotations

from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from edgepoint.tui.dialogs import ConfirmDialog, Field, FormDialog
from edgepoint.tui.model import Model
from edgepoint.tui.pane import Failed, Pane


class CardsPane(Pane):
    """Two lists: the site CSMS's cards and the charge point's local list. `a`, `b` and
    `d` act on the list that has the focus (Tab switches). Cards are shown masked
    (****B2C3); the daemon finds a card by that form."""

    BINDINGS = [
        Binding("a", "add", "Add"),
        Binding("b", "block", "Block"),
        Binding("d,delete", "remove", "Remove"),
        Binding("tab", "switch", "Lists", key_display="Tab"),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.cards: list[dict[str, Any]] = []
        self.local_list: dict[str, Any] | None = None
        self.cards_error = ""
        self.local_error = ""

    def compose(self) -> ComposeResult:
        yield Static("Site CSMS cards", id="cards-title", classes="title")
        cards: DataTable[str] = DataTable(id="cards-table", cursor_type="row")
        cards.add_columns("Card", "Status", "Name", "Expires", "Parent")
        yield cards
        yield Static("Local list", id="local-title", classes="title")
        local: DataTable[str] = DataTable(id="local-table", cursor_type="row", classes="short")
        local.add_columns("Card", "Status", "Expiry", "Parent")
        yield local

    def focus_main(self) -> None:
        self.query_one("#cards-table", DataTable).focus()

    def on_local_list(self) -> bool:
        """Whether the keys act on the local list (it has the focus)."""
        return self.query_one("#local-table", DataTable).has_focus

    def action_switch(self) -> None:
        other = "#cards-table" if self.on_local_list() else "#local-table"
        self.query_one(other, DataTable).focus()

    async def reload(self) -> None:
        cards = await self.host.call("cards.list", quiet=True)
        if isinstance(cards, Failed):
            self.cards, self.cards_error = [], cards.message
        else:
            self.cards, self.cards_error = list(cards), ""
        local = await self.host.call("local_list.show", quiet=True)
        if isinstance(local, Failed):
            self.local_list, self.local_error = None, local.message
        else:
            self.local_list, self.local_error = local, ""
        self.redraw()

    def redraw(self) -> None:
        table: DataTable[str] = self.query_one("#cards-table", DataTable)
        cursor = table.cursor_row
        table.clear()
        for card in self.cards:
            table.add_row(
                str(card["id_tag"]),
                str(card["status"]),
                str(card.get("name") or ""),
                (card.get("expires") or "never")[:10],
                str(card.get("parent_id_tag") or ""),
            )
        if self.cards:
            table.move_cursor(row=min(cursor, len(self.cards) - 1))
        title = f"Site CSMS cards: {len(self.cards)}   (a add, b block/unblock, d remove)"
        self.query_one("#cards-title", Static).update(
            title if not self.cards_error else f"Site CSMS cards: {self.cards_error}"
        )
        local: DataTable[str] = self.query_one("#local-table", DataTable)
        cursor = local.cursor_row
        local.clear()
        entries = self.entries()
        for entry in entries:
            local.add_row(
                str(entry["id_tag"]),
                str(entry["status"]),
                (entry.get("expiry") or "never")[:10],
                str(entry.get("parent_id_tag") or ""),
            )
        if entries:
            local.move_cursor(row=min(cursor, len(entries) - 1))
        version = (self.local_list or {}).get("version", "?")
        self.query_one("#local-title", Static).update(
            f"Local list: {self.local_error}"
            if self.local_error
            else f"Local list (CSMS version {version}): {len(entries)} card(s)"
            "   (Tab: edit it on site)"
        )

    def entries(self) -> list[dict[str, Any]]:
        return list((self.local_list or {}).get("entries", []))

    def show(self, model: Model) -> None:
        pass  # cards change only by commands; reload() redraws

    def selected(self) -> dict[str, Any] | None:
        """The highlighted card of the list that has the focus."""
        local = self.on_local_list()
        rows = self.entries() if local else self.cards
        table: DataTable[str] = self.query_one(
            "#local-table" if local else "#cards-table", DataTable
        )
        if not rows or table.cursor_row < 0:
            return None
        return rows[min(table.cursor_row, len(rows) - 1)]

    async def _done(self, result: Any, text: str) -> None:
        if not isinstance(result, Failed):
            self.host.say(text)
            await self.reload()

    @work(group="command", exit_on_error=False)
    async def action_add(self) -> None:
        if self.on_local_list():
            values = await self.app.push_screen_wait(
                FormDialog(
                    "Add a card to the local list (Accepted)",
                    [
                        Field("id_tag", "Card id (UID), e.g. 04A1B2C3"),
                        Field("expiry", "Expires, e.g. 2027-01-31T23:59:59Z", required=False),
                    ],
                )
            )
            if values:
                args: dict[str, Any] = {k: v for k, v in values.items() if v is not None}
                result = await self.host.call("local_list.put", status="Accepted", **args)
                await self._done(result, f"card {result_tag(result)} in the local list")
            return
        values = await self.app.push_screen_wait(
            FormDialog(
                "Add a card (Accepted)",
                [
                    Field("id_tag", "Card id (UID), e.g. 04A1B2C3"),
                    Field("name", "Holder", required=False),
                    Field("expires", "Expires, e.g. 2027-01-31T23:59:59Z", required=False),
                ],
            )
        )
        if not values:
            return
        fields: dict[str, Any] = {k: v for k, v in values.items() if v is not None}
        result = await self.host.call("cards.add", **fields)
        await self._done(result, f"card {result_tag(result)} added")

    @work(group="command", exit_on_error=False)
    async def action_block(self) -> None:
        local = self.on_local_list()
        card = self.selected()
        if card is None:
            self.host.say("no card selected", error=True)
            return
        verb = "unblock" if card["status"] == "Blocked" else "block"
        where = "in the local list" if local else "at the site CSMS"
        if verb == "block" and not await self.app.push_screen_wait(
            ConfirmDialog(
                f"Block card {card['id_tag']} {where}?",
                "The charge point refuses it offline."
                if local
                else "The CSMS will answer Blocked for this card.",
            )
        ):
            return
        if local:
            status = "Accepted" if verb == "unblock" else "Blocked"
            result = await self.host.call("local_list.put", id_tag=card["id_tag"], status=status)
        else:
            result = await self.host.call(f"cards.{verb}", id_tag=card["id_tag"])
        await self._done(result, f"card {card['id_tag']}: {verb}ed {where}")

    @work(group="command", exit_on_error=False)
    async def action_remove(self) -> None:
        local = self.on_local_list()
        card = self.selected()
        if card is None:
            self.host.say("no card selected", error=True)
            return
        question = f"Remove card {card['id_tag']}{' from the local list' if local else ''}?"
        detail = (
            "Offline, the charge point no longer knows it."
            if local
            else "It will be Invalid from now on."
        )
        if not await self.app.push_screen_wait(ConfirmDialog(question, detail)):
            return
        cmd = "local_list.remove" if local else "cards.remove"
        result = await self.host.call(cmd, id_tag=card["id_tag"])
        where = " from the local list" if local else ""
        await self._done(result, f"card {card['id_tag']} removed{where}")


def result_tag(result: Any) -> str:
    return str(result.get("id_tag")) if isinstance(result, dict) else "?"
