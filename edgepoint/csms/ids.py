"""Identifiers the embedded CSMS accepts (charge point identities, id tags, auth keys)."""

from __future__ import annotations

import re
from typing import NewType

from edgepoint.charging.events import IdTag
from edgepoint.errors import EdgepointError

ChargePointId = NewType("ChargePointId", str)

# OCPP 2.0.1 caps the identity at 48 characters and 1.6 security profile 1 puts it
# in the Basic-auth username, where ':' cannot appear; stay within URL-safe ASCII.
MAX_CHARGE_POINT_ID = 48
_CHARGE_POINT_ID = re.compile(r"[A-Za-z0-9._~*+=|@-]{1,48}")

# OCPP 1.6 idToken is CiString20Type.
MAX_ID_TAG = 20

# Security whitepaper (1.6): AuthorizationKey is at least 16 and at most 40 characters
# (20 bytes written as hex); chargers store it in a field of that size.
MIN_AUTH_KEY = 16
MAX_AUTH_KEY = 40


class CsmsError(EdgepointError):
    """Base of the errors raised by the embedded CSMS."""


class InvalidIdentifierError(CsmsError, ValueError):
    """A charge point id, id tag or auth key is malformed."""


def parse_charge_point_id(text: str) -> ChargePointId:
    """Return `text` as a charge point id, or raise InvalidIdentifierError saying why."""
    if not _CHARGE_POINT_ID.fullmatch(text):
        raise InvalidIdentifierError(
            f"charge point id must be 1-{MAX_CHARGE_POINT_ID} characters of "
            "A-Z a-z 0-9 . _ ~ * + = | @ -"
        )
    return ChargePointId(text)


def parse_id_tag(text: str) -> IdTag:
    """Return `text` (trimmed) as an id tag, or raise InvalidIdentifierError saying why."""
    tag = text.strip()
    if not tag or len(tag) > MAX_ID_TAG or not tag.isprintable():
        raise InvalidIdentifierError(f"id tag must be 1-{MAX_ID_TAG} printable characters")
    return IdTag(tag)


def check_auth_key(key: str) -> None:
    """Raise InvalidIdentifierError unless `key` is a usable Basic-auth key (never shown)."""
    if not MIN_AUTH_KEY <= len(key) <= MAX_AUTH_KEY:
        raise InvalidIdentifierError(
            f"auth key must be {MIN_AUTH_KEY}-{MAX_AUTH_KEY} characters long"
        )
    if not (key.isascii() and key.isprintable()):
        raise InvalidIdentifierError("auth key must be printable ASCII")
