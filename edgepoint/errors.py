"""The one exception root of edgepoint; adapters translate third-party errors into these."""


class EdgepointError(Exception):
    """Base of every error edgepoint raises on purpose."""


class ConfigError(EdgepointError):
    """A configuration file is missing, unreadable or invalid; names file, key and reason."""

    def __init__(self, path: str, key: str, reason: str) -> None:
        self.path = path
        self.key = key
        self.reason = reason
        super().__init__(f"{path}: {key}: {reason}")


class StorageError(EdgepointError):
    """A database could not be opened, migrated or written."""


class DeviceError(EdgepointError):
    """A device (PN532, ESP32 link, GPIO) failed in a way the caller must see."""


class ProtocolError(EdgepointError):
    """A peer broke a protocol: a malformed frame or an unexpected answer."""


class ControlError(EdgepointError):
    """The local control socket could not be reached or answered with an error.

    `code` is machine-readable (docs/control-api.md): the daemon's error code
    (`bad_request`, `forbidden`, `unavailable`...) or a client-side one (`not_running`).
    """

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code
