"""File transfer for Firmware Management: download a firmware, upload diagnostics and logs.

HTTP and HTTPS with urllib, FTP and FTPS with ftplib: blocking calls with a socket
timeout, so callers run them in a thread (`asyncio.to_thread`). Every failure becomes a
TransferError whose `kind` the caller maps onto OCPP's statuses (PermissionDenied,
NotSupportedOperation, UploadFailure, ...). Uploads go to the URL the CSMS gave: an
HTTP URL ending in "/" (or an FTP URL naming a folder) gets the file name appended; HTTP
tries PUT first and falls back to a multipart/form-data POST when the server does not
allow PUT. Credentials come from the URL (ftp://user:password@host/dir/).
"""

from __future__ import annotations

import ftplib
import hashlib
import http.client
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

SCHEMES = ("http", "https", "ftp", "ftps")
# Reported in SupportedFileTransferProtocols.
PROTOCOLS = ("FTP", "FTPS", "HTTP", "HTTPS")
_CHUNK = 64 * 1024
# What a server that hangs up or talks nonsense raises besides OSError (a short HTTP body,
# an FTP server that closes the control connection, a URL urllib cannot parse).
_PROTOCOL_ERRORS = (EOFError, http.client.HTTPException, ValueError)


class Failure(StrEnum):
    """Why a transfer failed, in OCPP's terms."""

    DENIED = "denied"  # 401/403, FTP 530: PermissionDenied
    UNSUPPORTED = "unsupported"  # scheme or method the server or we do not support
    BAD_URL = "bad url"  # BadMessage
    NO_SPACE = "no space"  # our disk is full: MemoryExhaustion
    FAILED = "failed"  # network, server error, short file


class TransferError(Exception):
    """A failed transfer; `kind` says how, the message says what for the log."""

    def __init__(self, kind: Failure, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Downloaded:
    """A finished download: its size and SHA-256."""

    path: Path
    size: int
    sha256: str


def redacted(url: str) -> str:
    """`url` fit for logs and security events: no password, query or fragment.

    The CSMS may put credentials in the user part (ftp://user:password@host/) or in the
    query (a pre-signed upload URL); the log is uploaded with diagnostics, so neither
    goes there.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        name, colon, _ = user.partition(":")
        netloc = f"{name}{':****' if colon else ''}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, "..." if parts.query else "", ""))


def check_url(url: str) -> str:
    """The URL's scheme if we can transfer over it; TransferError otherwise."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise TransferError(Failure.UNSUPPORTED, f"unsupported scheme {scheme or '(none)'!r}")
    if not parts.hostname:
        raise TransferError(Failure.BAD_URL, "the URL has no host")
    return scheme


def download(
    url: str,
    destination: Path,
    *,
    timeout_s: float,
    max_bytes: int,
    tls: ssl.SSLContext | None = None,
) -> Downloaded:
    """Fetch `url` into `destination` (replaced), checking the size the server announced."""
    scheme = check_url(url)
    partial = destination.with_name(destination.name + ".part")
    digest = hashlib.sha256()
    size = 0
    try:
        with partial.open("wb") as out:

            def write(chunk: bytes) -> None:
                nonlocal size
                size += len(chunk)
                if size > max_bytes:
                    raise TransferError(Failure.FAILED, f"larger than {max_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)

            if scheme in ("http", "https"):
                expected = _http_get(url, write, timeout_s, tls)
            else:
                expected = _ftp_get(url, write, timeout_s, tls)
        if expected is not None and expected != size:
            raise TransferError(
                Failure.FAILED, f"got {size} bytes where the server announced {expected}"
            )
        partial.replace(destination)
    except OSError as err:
        partial.unlink(missing_ok=True)
        if err.errno == 28:  # ENOSPC
            raise TransferError(Failure.NO_SPACE, "no space left for the download") from err
        raise _translate(err) from err
    except _PROTOCOL_ERRORS as err:
        partial.unlink(missing_ok=True)
        raise TransferError(Failure.FAILED, f"{type(err).__name__}: {err}"[:200]) from err
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return Downloaded(destination, size, digest.hexdigest())


def upload(
    url: str,
    source: Path,
    *,
    timeout_s: float,
    tls: ssl.SSLContext | None = None,
) -> str:
    """Send `source` to `url`; return where it went (for the log)."""
    scheme = check_url(url)
    try:
        if scheme in ("http", "https"):
            return _http_put_or_post(url, source, timeout_s, tls)
        return _ftp_put(url, source, timeout_s, tls)
    except TransferError:
        raise
    except OSError as err:
        raise _translate(err) from err
    except ftplib.Error as err:
        raise _ftp_error(err) from err
    except _PROTOCOL_ERRORS as err:
        raise TransferError(Failure.FAILED, f"{type(err).__name__}: {err}"[:200]) from err


# -- HTTP ---------------------------------------------------------------------------------


def _opener(tls: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    # No proxies from the environment: a kiosk talks to the URL the CSMS gave.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if tls is not None:
        handlers.append(urllib.request.HTTPSHandler(context=tls))
    return urllib.request.build_opener(*handlers)


def _http_get(
    url: str, write: Callable[[bytes], None], timeout_s: float, tls: ssl.SSLContext | None
) -> int | None:
    try:
        with _opener(tls).open(urllib.request.Request(url), timeout=timeout_s) as response:
            length = response.headers.get("Content-Length")
            while chunk := response.read(_CHUNK):
                write(chunk)
    except urllib.error.HTTPError as err:
        raise _http_error(err) from err
    return int(length) if length and length.isdigit() else None


def _http_put_or_post(url: str, source: Path, timeout_s: float, tls: ssl.SSLContext | None) -> str:
    target = url + source.name if url.endswith("/") else url
    data = source.read_bytes()
    put = urllib.request.Request(
        target,
        data=data,
        method="PUT",
        headers={"Content-Type": "application/octet-stream"},
    )
    try:
        with _opener(tls).open(put, timeout=timeout_s):
            return f"PUT {redacted(target)}"
    except urllib.error.HTTPError as err:
        if err.code not in (405, 501):
            raise _http_error(err) from err
    # The server does not take PUT: a form upload, as a browser would send it.
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{source.name}"'
            "\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    post = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    try:
        with _opener(tls).open(post, timeout=timeout_s):
            return f"POST {redacted(url)}"
    except urllib.error.HTTPError as err:
        raise _http_error(err) from err


def _http_error(err: urllib.error.HTTPError) -> TransferError:
    if err.code in (401, 403):
        return TransferError(Failure.DENIED, f"HTTP {err.code}")
    if err.code in (405, 501):
        return TransferError(Failure.UNSUPPORTED, f"HTTP {err.code}")
    return TransferError(Failure.FAILED, f"HTTP {err.code}")


# -- FTP ----------------------------------------------------------------------------------


def _ftp_session(url: str, timeout_s: float, tls: ssl.SSLContext | None) -> tuple[ftplib.FTP, str]:
    parts = urlsplit(url)
    secure = parts.scheme.lower() == "ftps"
    ftp: ftplib.FTP = (
        ftplib.FTP_TLS(context=tls or ssl.create_default_context(), timeout=timeout_s)
        if secure
        else ftplib.FTP(timeout=timeout_s)
    )
    try:
        ftp.connect(parts.hostname or "", parts.port or 21)
        ftp.login(unquote(parts.username or "anonymous"), unquote(parts.password or ""))
        if isinstance(ftp, ftplib.FTP_TLS):
            ftp.prot_p()
    except BaseException:
        ftp.close()
        raise
    return ftp, unquote(parts.path) or "/"


def _ftp_get(
    url: str, write: Callable[[bytes], None], timeout_s: float, tls: ssl.SSLContext | None
) -> int | None:
    try:
        ftp, path = _ftp_session(url, timeout_s, tls)
        with ftp:
            try:
                size = ftp.size(path)
            except ftplib.Error:
                size = None
            ftp.retrbinary(f"RETR {path}", write, blocksize=_CHUNK)
    except ftplib.Error as err:
        raise _ftp_error(err) from err
    return size


def _ftp_put(url: str, source: Path, timeout_s: float, tls: ssl.SSLContext | None) -> str:
    ftp, path = _ftp_session(url, timeout_s, tls)
    target = path + source.name if path.endswith("/") else path
    with ftp, source.open("rb") as handle:
        ftp.storbinary(f"STOR {target}", handle, blocksize=_CHUNK)
    return f"STOR {target}"


def _ftp_error(err: ftplib.Error) -> TransferError:
    text = str(err)[:120]
    if text.startswith("530"):
        return TransferError(Failure.DENIED, f"FTP {text}")
    if text.startswith(("500", "502", "504")):
        return TransferError(Failure.UNSUPPORTED, f"FTP {text}")
    return TransferError(Failure.FAILED, f"FTP {text}")


def _translate(err: OSError) -> TransferError:
    if isinstance(err, urllib.error.URLError):
        return TransferError(Failure.FAILED, f"cannot reach the server: {err.reason}")
    return TransferError(Failure.FAILED, f"{type(err).__name__}: {err}")
