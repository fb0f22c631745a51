"""How the TUI writes times, ages, durations and energy in a narrow terminal."""

from __future__ import annotations

from datetime import datetime, timedelta


def parse_time(text: str | None) -> datetime | None:
    """An ISO-8601 time from the daemon (with offset or Z), or None."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def age(seconds: float | None) -> str:
    """How long ago, in one short word: `now`, `12 s ago`, `5 min ago`, `3 h ago`."""
    if seconds is None:
        return "—"
    if seconds < 2:
        return "now"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} d ago"


def span(seconds: float | None) -> str:
    """A duration as H:MM:SS (or M:SS under an hour)."""
    if seconds is None or seconds < 0:
        return "—"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def kwh(wh: float | None) -> str:
    return "—" if wh is None else f"{wh / 1000:.3f} kWh"


def kw(watts: float | None) -> str:
    return "—" if watts is None else f"{watts / 1000:.1f} kW"


def clock(moment: datetime | None, now: datetime) -> str:
    """A time in the viewer's zone: HH:MM:SS today, else MM-DD HH:MM."""
    if moment is None:
        return "—"
    local = moment.astimezone(now.tzinfo)
    if local.date() == now.date():
        return local.strftime("%H:%M:%S")
    return local.strftime("%m-%d %H:%M")


def seconds_between(earlier: datetime | None, later: datetime) -> float | None:
    return None if earlier is None else max((later - earlier) / timedelta(seconds=1), 0.0)


def cut(text: str, width: int) -> str:
    """`text` in at most `width` columns, an ellipsis marking a cut."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"
