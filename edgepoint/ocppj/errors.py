"""OCPP-J error codes (1.6 spellings) and the exceptions that carry them."""

from __future__ import annotations

from enum import StrEnum

from edgepoint.errors import ProtocolError
from edgepoint.redact import printable


class ErrorCode(StrEnum):
    """The CALLERROR codes of OCPP-J 1.6, spelled as 1.6 spells them."""

    NOT_IMPLEMENTED = "NotImplemented"
    NOT_SUPPORTED = "NotSupported"
    INTERNAL_ERROR = "InternalError"
    PROTOCOL_ERROR = "ProtocolError"
    SECURITY_ERROR = "SecurityError"
    FORMATION_VIOLATION = "FormationViolation"
    PROPERTY_CONSTRAINT_VIOLATION = "PropertyConstraintViolation"
    OCCURENCE_CONSTRAINT_VIOLATION = "OccurenceConstraintViolation"
    TYPE_CONSTRAINT_VIOLATION = "TypeConstraintViolation"
    GENERIC_ERROR = "GenericError"


# The descriptions of OCPP-J 1.6 §4.2.3, used when nothing more specific is known.
DESCRIPTIONS: dict[ErrorCode, str] = {
    ErrorCode.NOT_IMPLEMENTED: "Requested Action is not known by receiver",
    ErrorCode.NOT_SUPPORTED: "Requested Action is recognized but not supported by the receiver",
    ErrorCode.INTERNAL_ERROR: "An internal error occurred and the receiver was not able to"
    " process the requested Action successfully",
    ErrorCode.PROTOCOL_ERROR: "Payload for Action is incomplete",
    ErrorCode.SECURITY_ERROR: "During the processing of Action a security issue occurred"
    " preventing receiver from completing the Action successfully",
    ErrorCode.FORMATION_VIOLATION: "Payload for Action is syntactically incorrect or not"
    " conform the PDU structure for Action",
    ErrorCode.PROPERTY_CONSTRAINT_VIOLATION: "Payload is syntactically correct but at least"
    " one field contains an invalid value",
    ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION: "Payload for Action is syntactically correct"
    " but at least one of the fields violates occurence constraints",
    ErrorCode.TYPE_CONSTRAINT_VIOLATION: "Payload for Action is syntactically correct but at"
    " least one of the fields violates data type constraints",
    ErrorCode.GENERIC_ERROR: "Any other error not covered by the previous ones",
}

# errorDescription is free text, but peers store it; keep it short.
MAX_TEXT = 255


class OcppError(ProtocolError):
    """Root of the OCPP-J layer's errors."""


class Refusal(OcppError):
    """We answer a CALL with a CALLERROR: raised by validation and by handlers."""

    def __init__(self, code: ErrorCode, cause: str = "", description: str | None = None) -> None:
        self.code = code
        self.description = (description or DESCRIPTIONS[code])[:MAX_TEXT]
        self.cause = cause[:MAX_TEXT]
        super().__init__(f"{code}: {self.cause or self.description}")

    @property
    def details(self) -> dict[str, str]:
        return {"cause": self.cause} if self.cause else {}


class CallErrorReceived(OcppError):
    """The peer answered our CALL with a CALLERROR (its code may be one OCPP does not define)."""

    def __init__(self, action: str, code: str, description: str) -> None:
        self.action = action
        # The peer's text ends up in logs and in the outbox's last_error: no control
        # characters (a newline would forge a log line).
        self.code = printable(code, 64)
        self.description = printable(description, MAX_TEXT)
        super().__init__(f"{action} refused: {self.code}: {self.description}")


class InvalidReply(OcppError):
    """The peer answered our CALL with a CALLRESULT that breaks the OCPP 1.6 schema."""

    def __init__(self, action: str, reason: str) -> None:
        self.action = action
        self.reason = reason[:MAX_TEXT]
        super().__init__(f"invalid {action} reply: {self.reason}")


class InvalidMessage(OcppError):
    """A message we were about to send breaks the schema: our bug, never put on the wire."""


class ConnectionLost(OcppError):
    """The connection closed while a CALL waited for its reply (or before it was sent)."""
