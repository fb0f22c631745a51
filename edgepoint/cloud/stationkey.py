"""Station id <-> Realtime Database key: a reversible escape of the characters RTDB forbids.

A Realtime Database key may not contain `.`, `#`, `$`, `[`, `]`, `/` or ASCII control
characters (0x00-0x1F, 0x7F). Each of those is written as `,` plus two upper-case hex
digits; so are `,` itself (so that the mapping stays one-to-one) and `%` (firebase-admin
puts paths into URLs unquoted, and an HTTP library turns `%2E` back into `.`):

    EP-1          -> EP-1
    EP.TEST-1     -> EP,2ETEST-1
    site.a/bay#2  -> site,2Ea,2Fbay,232
    a,b%          -> a,2Cb,25

Every other character is kept, so the usual station ids ("EP-1", "KIOSK_07") are their
own keys and read naturally in the Firebase console (the comma follows Firebase's own
habit of writing `.` as `,` in keys). `station_id_from_key` inverts it.
"""

from __future__ import annotations

import re

ESCAPE = ","
FORBIDDEN = frozenset(".#$[]/") | frozenset(chr(c) for c in (*range(0x20), 0x7F))
ESCAPED = FORBIDDEN | {ESCAPE, "%"}
# RTDB keys are at most 768 bytes of UTF-8.
MAX_KEY_BYTES = 768

_ESCAPED_CHAR = re.compile(r",([0-9A-F]{2})")


def station_key(station_id: str) -> str:
    """The RTDB key of `station_id` (see the module docstring); ValueError if none fits."""
    if not station_id:
        raise ValueError("a station id must not be empty")
    key = "".join(f"{ESCAPE}{ord(c):02X}" if c in ESCAPED else c for c in station_id)
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ValueError(f"station id too long for a Realtime Database key ({len(key)} chars)")
    return key


def station_id_from_key(key: str) -> str:
    """The station id that `station_key` turned into `key`; ValueError for a foreign key."""
    station_id = _ESCAPED_CHAR.sub(lambda m: chr(int(m.group(1), 16)), key)
    if station_key(station_id) != key:
        raise ValueError(f"{key!r} is not a key station_key makes")
    return station_id
