"""Canonical JSON for hashing and signing: one byte string per value, whoever encodes it.

The form (a subset of RFC 8785 that needs no float rules, because ledger entries hold
no floats): UTF-8, object keys sorted by code point, no insignificant whitespace,
non-ASCII characters kept as they are, integers in plain decimal. Floats, NaN, and
non-string keys are refused rather than encoded in some way a verifier might not
reproduce.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> bytes:
    """`value` (dicts, lists, str, int, bool, None) in canonical form; ValueError otherwise."""
    _check(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check(value: Any) -> None:
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        raise ValueError("canonical JSON here holds no floats (use integer Wh, not kWh)")
    if isinstance(value, list):
        for item in value:
            _check(item)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"object keys must be strings, got {type(key).__name__}")
            _check(item)
        return
    raise ValueError(f"{type(value).__name__} has no canonical JSON form")
