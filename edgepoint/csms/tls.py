"""TLS for the embedded CSMS (security profiles 2 and 3) and the rule on where it may listen."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepoint.csms.ids import CsmsError


class TlsSetupError(CsmsError):
    """A TLS file is missing, unreadable, unusable or not kept private (names the file)."""


class ListenPolicyError(CsmsError):
    """The listening address is not allowed with this security setup (names the key)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Server certificate and key (profile 2); with a client CA, client certificates (3)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    @property
    def client_certificates(self) -> bool:
        """True for security profile 3."""
        return self.client_ca_file is not None


def private_key_problem(path: Path) -> str | None:
    """Why `path` may not hold a private key (missing, or readable by group/others), or None."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as err:
        return f"{path} cannot be read: {err.strerror or err}"
    if mode & 0o077:
        return f"{path} is open to group or others (mode {mode:03o}); chmod 600 it"
    return None


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """A TLS 1.2+ server context; with a client CA it asks for client certificates.

    Client certificates are requested (CERT_OPTIONAL), not demanded during the TLS
    handshake: a charger without one then gets a clear HTTP 403 at the upgrade, counted
    by the failure limiter, instead of an anonymous handshake error. A certificate that
    is presented must chain to the client CA, or the handshake fails.
    """
    problem = private_key_problem(settings.key_file)
    if problem is not None:
        raise TlsSetupError(f"TLS key file: {problem}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.cert_file, settings.key_file)
    except (OSError, ssl.SSLError) as err:
        raise TlsSetupError(
            f"TLS certificate {settings.cert_file} with key {settings.key_file} "
            f"cannot be loaded: {err}"
        ) from err
    if settings.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=settings.client_ca_file)
        except (OSError, ssl.SSLError) as err:
            raise TlsSetupError(
                f"TLS client CA file {settings.client_ca_file} cannot be loaded: {err}"
            ) from err
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def peer_common_name(peercert: Mapping[str, Any] | None) -> str | None:
    """The subject CN of a verified peer certificate (`getpeercert()`), or None."""
    if not peercert:
        return None
    names = [
        value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"
    ]
    # A subject with several CNs is ambiguous: treat it as naming nobody.
    return names[0] if len(names) == 1 and isinstance(names[0], str) else None


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen_policy(
    host: str, *, tls: bool, require_auth: bool, allow_plaintext_on_network: bool
) -> None:
    """Refuse to listen beyond loopback without authentication, or without TLS unless allowed.

    Raises ListenPolicyError naming the [csms] key to change.
    """
    if is_loopback(host):
        return
    if not require_auth:
        raise ListenPolicyError(
            "csms.require_auth",
            f"false is only allowed when csms.host is loopback (127.0.0.1, ::1, localhost); "
            f"host {host!r} is reachable from the network",
        )
    if not tls and not allow_plaintext_on_network:
        raise ListenPolicyError(
            "csms.host",
            f"{host!r} is reachable from the network but TLS is off, so chargers' "
            "passwords would cross it in clear: set csms.tls_cert_file and "
            "csms.tls_key_file, or allow_plaintext_on_network = true to accept that",
        )
