"""The TUI's pure parts: plots, time formats, what `hello` grants, the model's log merge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from edgepoint.tui.connection import Grant
from edgepoint.tui.formats import age, clock, cut, kwh, parse_time, span
from edgepoint.tui.model import Model, link_states
from edgepoint.tui.plot import History, render

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def test_a_plot_scales_between_min_and_max_and_leaves_gaps_empty() -> None:
    assert render([0.0, None, 10.0], rows=2) == ["  █", "▁ █"]
    assert render([5.0, 5.0], rows=1) == ["▄▄"]  # flat: in the middle
    assert render([None, None], rows=2) == ["  ", "  "]


def test_history_keeps_the_window_and_averages_per_column() -> None:
    history = History(window_s=10)
    for t in range(30):
        history.add(float(t), float(t))
    columns = history.columns(now=29.0, width=5)  # columns of 2 s: 19-20, ..., 27-28 (+29)
    assert columns[0] == 19.5 and columns[-1] == 28.0
    span_ = history.range()
    assert span_ is not None and (span_.low, span_.high, span_.last) == (19.0, 29.0, 29.0)


def test_times_and_amounts_fit_a_narrow_column() -> None:
    assert [age(x) for x in (None, 1, 75, 600, 10_000, 400_000)] == [
        "—",
        "now",
        "75 s ago",
        "10 min ago",
        "3 h ago",
        "5 d ago",
    ]
    assert [span(x) for x in (None, 59, 3600 + 61)] == ["—", "0:59", "1:01:01"]
    assert kwh(1250) == "1.250 kWh"
    assert parse_time("2026-01-15T11:00:00.000Z") == NOW - timedelta(hours=1)
    assert parse_time("2026-01-15T11:00:00") is None  # no offset: not a time we trust
    assert clock(NOW - timedelta(hours=1), NOW) == "11:00:00"
    assert clock(NOW - timedelta(days=1), NOW) == "01-14 12:00"
    assert cut("abcdef", 4) == "abc…"


def _hello(may_act: bool) -> dict[str, Any]:
    return {
        "daemon": "edgepoint 0.1.0",
        "peer": {"user": "alice", "may_act": may_act},
        "hardware_group": "edgepoint-act",
        "events": ["status", "log"],
        "commands": [
            {"name": "status", "allowed": True},
            {"name": "chargers.reset", "allowed": may_act},
        ],
    }


def test_the_grant_says_why_a_command_is_refused() -> None:
    assert Grant.from_hello(_hello(True)).refusal("chargers.reset") is None
    refusal = Grant.from_hello(_hello(False)).refusal("chargers.reset")
    assert refusal is not None and "alice is not in group 'edgepoint-act'" in refusal
    assert "no cards.list" in str(Grant.from_hello(_hello(True)).refusal("cards.list"))


def test_the_log_merges_recent_lines_with_the_stream_by_seq() -> None:
    model = Model(lambda: NOW, lambda: 0.0)
    model.add_log([{"seq": 5}, {"seq": 6}])  # the stream came first
    epoch = model.log_epoch
    model.add_log([{"seq": 3}, {"seq": 4}, {"seq": 5}])  # then log.recent's answer
    assert [r["seq"] for r in model.log] == [3, 4, 5, 6] and model.log_epoch == epoch + 1
    model.add_log([{"seq": 7}], lost=2)
    assert [r["seq"] for r in model.log][-1] == 7 and model.log_lost == 2


def test_links_are_up_or_down_from_the_status() -> None:
    status = {
        "links": {"csms": {"state": "offline"}, "embedded_csms": {"listening": True}},
        "telemetry": {"reader": {"connected": True}},
        "rfid": {"connected": True, "fault": "no answer"},
        "cloud": {"firebase": {"state": "ok"}},
    }
    assert link_states(status) == {
        "csms": False,
        "site": True,
        "esp32": True,
        "pn532": False,
        "firebase": True,
    }
