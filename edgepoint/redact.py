"""Masks for secrets and personal data in log lines (card id tags)."""

from __future__ import annotations

VISIBLE = 4


def mask_id_tag(tag: str) -> str:
    """Show only the end of an id tag (`****B2C3`), enough to tell cards apart in a log.

    The prefix has a fixed length so the tag's length stays hidden, a short tag shows at
    most half of itself, and a control character (a newline forging a log line) shows as ?.
    """
    shown = min(VISIBLE, len(tag) // 2)
    tail = tag[len(tag) - shown :] if shown else ""
    return "****" + "".join(c if c.isprintable() else "?" for c in tail)


def printable(text: str, limit: int = 64) -> str:
    """A peer's text fit for a log line: cut to `limit`, control characters shown as ?.

    A newline in it would forge a log line, an escape sequence would drive the terminal
    of whoever reads the log.
    """
    return "".join(c if c.isprintable() else "?" for c in text[:limit])
