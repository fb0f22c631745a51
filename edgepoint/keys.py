"""The charge point's OCPP auth key: read from, or created in, a file only its owner can read."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from edgepoint.errors import ConfigError


def load_or_create_key(path: Path, create: bool) -> str | None:
    """Return the key in `path`; create a random one (mode 0600) when allowed and missing.

    Without the embedded CSMS the key comes from the operator of the remote CSMS, so a
    missing file then means "no auth" rather than a key nobody else knows.
    """
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = secrets.token_urlsafe(24)
        # O_EXCL + mode at creation: the key is never readable by others, not even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
        return key
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            str(path),
            "chargepoint.auth_key_file",
            f"is readable by others (mode {mode:o}); chmod 600 it",
        )
    key = path.read_text(encoding="utf-8").strip()
    if not key:
        raise ConfigError(str(path), "chargepoint.auth_key_file", "is empty")
    return key
