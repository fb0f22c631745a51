"""Log: the daemon's recent log lines (masked by the daemon), filtered by level."""

from __future__ import annotations

import logging
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import RichLog, Static

from edgepoint.tui.model import Model
from edgepoint.tui.pane import Pane

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
SHORT = {"WARNING": "WARN", "CRITICAL": "CRIT"}
LEVEL_STYLE = {"DEBUG": "dim", "WARNING": "yellow", "ERROR": "bold red", "CRITICAL": "bold red"}


def log_line(record: dict[str, Any]) -> Text:
    """`10:40:01 INFO  edgepoint.kiosk: message`, coloured by level."""
    level = str(record.get("level", "?"))
    stamp = str(record.get("time", ""))[11:19]
    text = Text(no_wrap=False)
    text.append(f"{stamp} ", style="dim")
    text.append(f"{SHORT.get(level, level):<5} ", style=LEVEL_STYLE.get(level, ""))
    name = str(record.get("logger", "")).removeprefix("edgepoint.")
    text.append(f"{name}: ", style="cyan")
    text.append(str(record.get("message", "")), style=LEVEL_STYLE.get(level, ""))
    return text


def at_least(record: dict[str, Any], level: str) -> bool:
    number = logging.getLevelName(str(record.get("level", "INFO")))
    return isinstance(number, int) and number >= logging.getLevelName(level)


class LogPane(Pane):
    """New lines come with the `log` stream; `l` changes the lowest level shown."""

    BINDINGS = [Binding("l", "level", "Level")]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.level = "INFO"
        self._last_seq = 0  # the newest record written to the view
        self._width = 0
        self._epoch = -1  # the model's log_epoch the view was written from

    def compose(self) -> ComposeResult:
        yield Static(id="log-title")
        yield RichLog(id="log-lines", max_lines=2000, wrap=True, auto_scroll=True)

    def focus_main(self) -> None:
        self.query_one(RichLog).focus()

    def show(self, model: Model) -> None:
        view = self.query_one(RichLog)
        # Lines merged in before the newest (log.recent's answer), a restarted daemon or
        # a new width (lines are wrapped when written): write everything again.
        if model.log_epoch != self._epoch or self.size.width != self._width:
            self._epoch, self._width = model.log_epoch, self.size.width
            view.clear()
            self._last_seq = 0
        for record in model.log:
            if record["seq"] > self._last_seq and at_least(record, self.level):
                view.write(log_line(record))
        self._last_seq = model.log[-1]["seq"] if model.log else 0
        self.title_line(model)

    def rewrite(self, model: Model) -> None:
        self._epoch = -1
        self.show(model)

    def title_line(self, model: Model) -> None:
        shown = sum(1 for r in model.log if at_least(r, self.level))
        lost = f" · {model.log_lost} lost (the TUI fell behind)" if model.log_lost else ""
        self.query_one("#log-title", Static).update(
            f"level ≥ {self.level} (l: change) · {shown} of {len(model.log)} lines{lost}"
        )

    def action_level(self) -> None:
        self.level = LEVELS[(LEVELS.index(self.level) + 1) % len(LEVELS)]
        self.rewrite(self.host.model)
