"""What every screen of the TUI has: the model to show and a way to send commands."""

from __future__ import annotations

from typing import Any, Protocol, cast

from rich.text import Text
from textual.containers import Vertical
from textual.widgets import Static
from textual.worker import Worker, WorkerState

from edgepoint.tui.model import Model


class Failed:
    """A command that did not succeed; the message bar already says why."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message


class TextView(Static):
    """Styled text redrawn from each status: an unchanged text costs nothing, and a new
    one costs a layout of the screen only when its number of lines changed (most of a
    TUI's CPU, at 4 redraws a second, went into layouts)."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._shown: Text | None = None

    def show_text(self, text: Text) -> None:
        if text == self._shown:
            return
        lines = None if self._shown is None else self._shown.plain.count("\n")
        self._shown = text
        self.update(text, layout=lines != text.plain.count("\n"))


class Host(Protocol):
    """The app as its panes use it."""

    model: Model

    async def call(
        self, cmd: str, *, answer_within_s: float | None = None, quiet: bool = False, **args: Any
    ) -> Any: ...

    def say(self, text: str, *, error: bool = False) -> None: ...

    async def reload_sessions(self) -> None: ...


class Pane(Vertical):
    """One tab. `show` redraws from the model; `reload` fetches what the model lacks."""

    @property
    def host(self) -> Host:
        return cast(Host, self.app)

    def show(self, model: Model) -> None:
        """Redraw from the model (called a few times a second while visible)."""

    async def reload(self) -> None:
        """Fetch this screen's lists (called when shown, on ^R and after a change)."""

    def focus_main(self) -> None:
        """Put the keyboard focus where this screen's bindings work."""
        self.focus()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        # A command's worker that fails says so; the TUI goes on.
        if event.state is WorkerState.ERROR:
            error = event.worker.error
            self.host.say(f"command failed: {type(error).__name__}: {error}", error=True)
