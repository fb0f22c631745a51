"""The technician's TUI: six screens over the control socket's event stream and commands."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import os
import pwd
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Center, Middle
from textual.css.query import NoMatches
from textual.widgets import ContentSwitcher, Footer, Static, TabbedContent, TabPane

from edgepoint.control import client
from edgepoint.errors import ControlError
from edgepoint.tui.cards import CardsPane
from edgepoint.tui.chargers import ChargersPane
from edgepoint.tui.connection import RETRY_FIRST_S, RETRY_MAX_S, DaemonConnection, Grant
from edgepoint.tui.dialogs import DIALOG_CSS
from edgepoint.tui.formats import span
from edgepoint.tui.logview import LogPane
from edgepoint.tui.model import Model
from edgepoint.tui.overview import OverviewPane
from edgepoint.tui.pane import Failed, Pane, TextView
from edgepoint.tui.sessions import SessionsPane
from edgepoint.tui.telemetry import TelemetryPane

# The screen is redrawn at most this often however fast statuses come (10 a second from
# the simulator): a Pi's CPU is for charging.
REDRAW_S = 0.25
# Lists that other processes change (the site CSMS's chargers) are fetched again at most
# this often, and only while their screen is shown.
RELOAD_S = 2.0
TABS = ("overview", "telemetry", "sessions", "cards", "chargers", "log")

CSS = (
    """
#top {
    height: 1;
    background: $primary;
    color: $text;
    padding: 0 1;
}
#message {
    height: auto;
    max-height: 3;
    padding: 0 1;
}
#message.error {
    color: $error;
    text-style: bold;
}
#switcher {
    height: 1fr;
}
#offline {
    height: 1fr;
}
#offline-text {
    width: 72;
    height: auto;
    border: heavy $error;
    padding: 1 2;
}
TabbedContent {
    height: 1fr;
}
TabPane {
    padding: 0 1;
}
Pane {
    height: 1fr;
}
DataTable {
    height: 1fr;
}
DataTable.short {
    height: 6;
}
.title {
    text-style: bold;
}
#charger-detail {
    height: auto;
    max-height: 8;
}
#log-lines {
    height: 1fr;
    scrollbar-gutter: stable;  /* lines are wrapped to the width left by the scrollbar */
}
#sessions-filter {
    height: 1;
    border: none;
    padding: 0;
}
"""
    + DIALOG_CSS
)


def offline_text(code: str, message: str, socket: Path, user: str) -> Text:
    """What the screen says while there is no daemon to show."""
    text = Text()
    if code == client.NOT_RUNNING:
        text.append("edgepoint is not running\n\n", style="bold")
        text.append(f"Nothing answers on {socket}.\n")
        text.append("Start it with `sudo systemctl start edgepoint`;\n")
        text.append("`journalctl -u edgepoint` tells why it stopped.\n")
    elif code == client.NO_ACCESS:
        text.append("No access to the control socket\n\n", style="bold")
        text.append(f"{socket} refuses user {user}.\n")
        text.append(f"Join the daemon's group (sudo adduser {user} edgepoint),\n")
        text.append("then log in again.\n")
    else:
        text.append("Cannot talk to edgepoint\n\n", style="bold")
        text.append(f"{message}\n")
    text.append("\nThis screen reconnects by itself.  q quits.", style="dim")
    return text


class TechnicianApp(App[None]):
    """`edgepoint tui`: a view of the daemon; commands go to it, never to hardware or SQL."""

    TITLE = "edgepoint"
    CSS = CSS
    ENABLE_COMMAND_PALETTE = False  # its key and its footer entry cost room in 80 columns
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("1", "tab('overview')", "Screens", key_display="1-6"),
        *(Binding(str(n + 1), f"tab('{name}')", name, show=False) for n, name in enumerate(TABS)),
        Binding("ctrl+r", "reload", "Reload"),
        # Ctrl-Z as in any terminal program (the shell's `fg` brings it back); while it
        # is stopped the daemon drops its connection and it connects again after.
        Binding("ctrl+z", "suspend_process", show=False),
    ]

    def __init__(
        self,
        socket: Path,
        *,
        now: Callable[[], datetime] | None = None,
        monotonic: Callable[[], float] | None = None,
        user: str = "",
    ) -> None:
        super().__init__(ansi_color=True)
        self.connection = DaemonConnection(socket)
        self.model = Model(
            now or (lambda: datetime.now().astimezone()), monotonic or time.monotonic
        )
        self.user = user
        self._dirty = True
        self._ticks = 0
        self.last_message = ""
        self.said: collections.deque[str] = collections.deque(maxlen=50)  # newest last
        self._last_reload: dict[str, float] = {}
        self._site_writes: object = None

    # -- layout ------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield TextView(id="top")
        with ContentSwitcher(initial="offline", id="switcher"):
            with Middle(id="offline"), Center():
                yield Static(
                    offline_text("connecting", "connecting …", self.connection.socket, self.user),
                    id="offline-text",
                )
            with TabbedContent(id="main"):
                with TabPane("Overview", id="overview"):
                    yield OverviewPane(id="overview-pane")
                with TabPane("Telemetry", id="telemetry"):
                    yield TelemetryPane(id="telemetry-pane")
                with TabPane("Sessions", id="sessions"):
                    yield SessionsPane(id="sessions-pane")
                with TabPane("Cards", id="cards"):
                    yield CardsPane(id="cards-pane")
                with TabPane("Chargers", id="chargers"):
                    yield ChargersPane(id="chargers-pane")
                with TabPane("Log", id="log"):
                    yield LogPane(id="log-pane")
        yield Static("", id="message")
        yield Footer()

    def on_mount(self) -> None:
        self.theme = "ansi-dark"  # the terminal's own 16 colours, whatever it is
        self.update_top()
        self.follow_daemon()
        self.set_interval(REDRAW_S, self.redraw)

    # -- the daemon --------------------------------------------------------------------

    @work(exclusive=True, group="daemon", exit_on_error=False)
    async def follow_daemon(self) -> None:
        """Stay connected: hello, then the status (and log) stream; again after each loss."""
        delay = RETRY_FIRST_S
        while True:
            try:
                grant = await self.connection.hello()
                kinds = ["status", *(["log"] if "log" in grant.events else [])]
                async with self.connection.events(kinds) as events:
                    async for event in events:
                        if event.kind == "status" and isinstance(event.data, dict):
                            if not self.model.connected:
                                self.model.status = event.data  # the first view's data
                                await self.connected(grant)
                                delay = RETRY_FIRST_S
                            self.take_status(event.data)
                        elif event.kind == "log" and isinstance(event.data, dict):
                            self.model.add_log([event.data], event.lost)
                            self._dirty = True
            except ControlError as err:
                self.disconnected(err.code, str(err))
            except Exception as err:  # a status this TUI cannot read: say so, try again
                self.disconnected("failed", f"{type(err).__name__}: {err}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def connected(self, grant: Grant) -> None:
        self.model.connect(grant)
        self.query_one("#switcher", ContentSwitcher).current = "main"
        self.update_top()
        if not grant.may_act:
            self.say(
                f"read-only: {grant.user} is not in group {grant.hardware_group!r};"
                " hardware commands are refused",
                error=True,
            )
        else:
            self.say(f"connected to {grant.daemon} as {grant.user}")
        self.active_pane().focus_main()
        # Beside the stream, which must keep being read (the daemon drops slow readers).
        self.background(functools.partial(self.fill_in, grant), "connect")

    async def fill_in(self, grant: Grant) -> None:
        """What the stream does not repeat: older log lines, sessions, the visible lists."""
        if "log.recent" in grant.commands:
            records = await self.call("log.recent", quiet=True, level="DEBUG", limit=1000)
            if not isinstance(records, Failed):
                self.model.add_log(list(records))
                self._dirty = True
        await self.reload_sessions()
        await self.reload_visible()

    def disconnected(self, code: str, message: str) -> None:
        self.model.disconnect(code, message)
        self.query_one("#offline-text", Static).update(
            offline_text(code, message, self.connection.socket, self.user)
        )
        self.query_one("#switcher", ContentSwitcher).current = "offline"
        self.update_top()

    def take_status(self, status: dict[str, Any]) -> None:
        if self.model.apply_status(status):
            self.background(self.reload_sessions, "sessions")
        # The site CSMS writes to its database: its lists may have changed.
        site = (status.get("links") or {}).get("embedded_csms") or {}
        writes = (site.get("worker") or {}).get("writes"), tuple(site.get("connected") or [])
        if writes != self._site_writes:
            self._site_writes = writes
            self._last_reload.pop("chargers", None)
            self._last_reload.pop("sessions", None)
        self._dirty = True

    async def call(
        self, cmd: str, *, answer_within_s: float | None = None, quiet: bool = False, **args: Any
    ) -> Any:
        """Run a command; its result, or Failed (said in the message bar unless `quiet`)."""
        grant = self.model.grant
        refusal = "not connected to edgepoint" if grant is None else grant.refusal(cmd)
        if refusal:
            if not quiet:
                self.say(refusal, error=True)
            return Failed("forbidden" if grant else client.NOT_RUNNING, refusal)
        try:
            result = await self.connection.request(cmd, answer_within_s=answer_within_s, **args)
        except ControlError as err:
            if not quiet or err.code == "forbidden":
                self.say(f"{cmd}: {err.code}: {err}", error=True)
            return Failed(err.code, str(err))
        if cmd == "sessions.list":
            self.model.sessions = list(result)
        return result

    async def reload_sessions(self) -> None:
        await self.call("sessions.list", quiet=True, limit=100)
        self._dirty = True

    def say(self, text: str, *, error: bool = False) -> None:
        """Show the outcome of the last command (errors in full: up to three lines)."""
        self.last_message = text
        self.said.append(text)
        try:
            message = self.query_one("#message", Static)
        except NoMatches:  # closing: a worker's last word has nowhere to go
            return
        message.update(Text(text, overflow="ellipsis"))
        message.set_class(error, "error")

    # -- drawing -----------------------------------------------------------------------

    def active_pane(self) -> Pane:
        tabs = self.query_one(TabbedContent)
        return self.query_one(f"#{tabs.active or 'overview'}-pane", Pane)

    def background(self, work: Callable[[], Awaitable[None]], group: str) -> None:
        """Run `work()` beside the UI (a newer one in `group` replaces it); a failure is
        shown, never fatal."""

        async def guarded() -> None:
            try:
                await work()
            except Exception as err:
                self.say(f"display error ({group}): {type(err).__name__}: {err}", error=True)

        # The function, not a coroutine: a worker replaced before it started leaves none
        # behind un-awaited.
        self.run_worker(guarded, group=group, exclusive=True)  # type: ignore[arg-type]

    def redraw(self) -> None:
        """Redraw the visible screen (timers: durations and ages move without events)."""
        self._ticks += 1
        # Between events only ages and durations move: once a second is enough then.
        if not self._dirty and self._ticks % round(1 / REDRAW_S):
            return
        try:
            self.update_top()
            if not self.model.connected or self.model.status is None:
                return
            self.active_pane().show(self.model)
        except NoMatches:
            return  # the app is closing: its widgets are gone, the timer not yet
        except Exception as err:  # one odd value in a status must not end the TUI
            self.say(f"display error: {type(err).__name__}: {err}", error=True)
        self._dirty = False
        with contextlib.suppress(NoMatches):
            tabs = self.query_one(TabbedContent)
            if tabs.active in ("chargers", "sessions") and self._due(tabs.active):
                self.background(self.active_pane().reload, "reload")

    def _due(self, name: str) -> bool:
        now = self.model.monotonic()
        if now - self._last_reload.get(name, -RELOAD_S) < RELOAD_S:
            return False
        self._last_reload[name] = now
        return True

    def update_top(self) -> None:
        status, grant = self.model.status or {}, self.model.grant
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append("edgepoint", style="bold")
        if self.model.connected and status:
            text.append(f"  {status.get('station')}  {status.get('version')}")
            if status.get("simulated"):
                text.append("  simulated")
            text.append(f"  up {span(status.get('uptime_s'))}")
            if grant is not None:
                text.append(f"  {grant.user}")
                text.append(" may act" if grant.may_act else " read-only")
        else:
            text.append("  not connected")
        self.query_one("#top", TextView).show_text(text)

    async def reload_visible(self) -> None:
        pane = self.active_pane()
        await pane.reload()
        pane.show(self.model)

    async def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        pane = self.active_pane()
        pane.focus_main()
        if self.model.connected:
            self._last_reload[str(event.pane.id)] = self.model.monotonic()
            self.background(self.reload_visible, "reload")

    def action_tab(self, name: str) -> None:
        if self.model.connected:
            self.query_one(TabbedContent).active = name

    async def action_reload(self) -> None:
        if self.model.connected:
            await self.reload_sessions()
            await self.reload_visible()
            self.say("reloaded")


def run(socket: Path) -> int:
    """Run the TUI until the technician quits; 0 always (a lost daemon is shown, not fatal)."""
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = str(os.geteuid())
    with contextlib.suppress(KeyboardInterrupt):
        TechnicianApp(socket, user=user).run()
    return 0
