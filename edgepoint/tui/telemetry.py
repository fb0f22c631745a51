"""Telemetry: voltage, current, power and temperature of one connector over the last minutes."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding

from edgepoint.tui.formats import age, seconds_between
from edgepoint.tui.model import Model
from edgepoint.tui.pane import Pane, TextView
from edgepoint.tui.plot import WINDOW_S, render

SERIES = (
    ("voltage_v", "Voltage", "V", "{:.1f}", "cyan"),
    ("current_a", "Current", "A", "{:.2f}", "yellow"),
    ("power_w", "Power", "W", "{:.0f}", "green"),
    ("temperature_c", "Temperature", "°C", "{:.1f}", "magenta"),
)
PLOT_ROWS = 2


def render_telemetry(model: Model, connector_id: int | None, width: int) -> Text:
    """Header, four plotted series and a time axis, `width` columns wide."""
    text = Text(no_wrap=True, overflow="ellipsis")
    status = model.status or {}
    ids = [int(c["id"]) for c in status.get("connectors", [])]
    if connector_id is None or connector_id not in ids:
        connector_id = ids[0] if ids else None
    if connector_id is None:
        return Text("no connectors")
    connector = next(c for c in status["connectors"] if int(c["id"]) == connector_id)
    sample = connector.get("last_sample")
    others = "" if len(ids) < 2 else "  (c: next connector)"
    text.append(f"Connector {connector_id}", style="bold")
    text.append(f"{others}  last {WINDOW_S / 60:.0f} min")
    if sample:
        seen = age(seconds_between(model.seen.get("esp32"), model.now()))
        text.append(f"  sample #{sample.get('seq')}, {seen}")
    else:
        text.append("  no sample yet", style="yellow")
    if connector.get("telemetry_lost"):
        text.append("  TELEMETRY LOST", style="bold red")
    text.append("\n")
    track = model.telemetry.get(connector_id)
    mono = model.monotonic()
    for key, label, unit, number, colour in SERIES:
        history = track.series[key] if track else None
        span = history.range() if history else None
        value = (sample or {}).get(key)
        text.append(f"{label:<12}", style="bold")
        text.append(f"{number.format(value) if value is not None else '—':>8} {unit:<3}")
        if span is not None:
            text.append(
                f"  min {number.format(span.low)}  max {number.format(span.high)}", style="dim"
            )
        text.append("\n")
        columns: list[float | None] = history.columns(mono, width) if history else [None] * width
        for line in render(columns, PLOT_ROWS):
            text.append(line + "\n", style=colour)
    axis = f"-{WINDOW_S / 60:.0f} min"
    text.append(axis + "now".rjust(width - len(axis)), style="dim")
    return text


class TelemetryPane(Pane, can_focus=True):
    """Plots from the samples each status carries; `c` picks the next connector."""

    BINDINGS = [Binding("c", "next_connector", "Next connector")]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.connector_id: int | None = None
        self.model: Model | None = None

    def compose(self) -> ComposeResult:
        yield TextView(id="telemetry-body")

    def show(self, model: Model) -> None:
        self.model = model
        width = max(self.size.width - 2, 20)
        self.query_one("#telemetry-body", TextView).show_text(
            render_telemetry(model, self.connector_id, width)
        )

    def action_next_connector(self) -> None:
        if self.model is None or self.model.status is None:
            return
        ids = [int(c["id"]) for c in self.model.status.get("connectors", [])]
        if not ids:
            return
        current = self.connector_id if self.connector_id in ids else ids[0]
        self.connector_id = ids[(ids.index(current) + 1) % len(ids)]
        self.show(self.model)
