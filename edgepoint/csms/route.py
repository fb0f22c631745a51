"""The one URL shape the embedded CSMS accepts: `<path prefix>/<charge point id>`."""

from __future__ import annotations

import re
from http import HTTPStatus
from urllib.parse import unquote

from edgepoint.csms.ids import ChargePointId, InvalidIdentifierError, parse_charge_point_id

DEFAULT_PATH_PREFIX = "/ocpp"
_PREFIX = re.compile(r"(/[A-Za-z0-9._~-]+)+")


class PathRejected(Exception):
    """The request path names no acceptable charge point (carries the HTTP status)."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def parse_path_prefix(text: str) -> str:
    """Return `text` as a path prefix, or raise ValueError saying why.

    One or more `/segment` parts of unreserved URL characters, no trailing slash:
    `/ocpp`, `/csms/ocpp16`.
    """
    if not _PREFIX.fullmatch(text):
        raise ValueError(
            f"must look like /ocpp: '/' and segments of A-Z a-z 0-9 . _ ~ -, "
            f"no trailing '/', got {text!r}"
        )
    return text


def charge_point_id_from_path(path: str, prefix: str = DEFAULT_PATH_PREFIX) -> ChargePointId:
    """Take the id from `<prefix>/<id>` (the id URL-decoded, a query string ignored).

    Exactly one segment must follow the prefix: `/ocpp/a/b`, `/ocpp/`, `/ocpp/id/` and
    `/other/id` are refused with 404; a malformed id with 400.
    """
    # Not urlsplit: it would read `//host/ocpp/id` as a network location plus a path.
    route = path.partition("?")[0]
    head = prefix + "/"
    if not route.startswith(head):
        raise PathRejected(HTTPStatus.NOT_FOUND, f"not found; connect to {head}<id>")
    segment = route[len(head) :]
    if not segment or "/" in segment:
        raise PathRejected(
            HTTPStatus.NOT_FOUND, f"not found; exactly one charge point id after {head}"
        )
    try:
        return parse_charge_point_id(unquote(segment, errors="strict"))
    except (InvalidIdentifierError, UnicodeDecodeError) as err:
        raise PathRejected(HTTPStatus.BAD_REQUEST, str(err)) from err
