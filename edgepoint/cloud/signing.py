"""The station's Ed25519 ledger key: made once (file mode 0600), then signs every entry."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgepoint.errors import ConfigError

CONFIG_KEY = "ledger.key_file"


class LedgerKey:
    """A private Ed25519 key and its public half (raw 32 bytes, base64 in the outside world)."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public_raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls) -> LedgerKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_b64(self) -> str:
        """The public key as published (`/stations/<key>/pubkey`, `edgepoint ledger pubkey`)."""
        return base64.b64encode(self.public_raw).decode("ascii")

    def private_pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self._private.sign(data)).decode("ascii")


def load_or_create_key(path: Path, create: bool = True) -> LedgerKey:
    """The key in `path` (PEM, PKCS#8); a new one, written 0600, if missing and `create`.

    A key file that group or others can read is refused, naming the file: whoever reads
    it can sign entries in this station's name.
    """
    if not path.exists():
        if not create:
            raise ConfigError(str(path), CONFIG_KEY, "does not exist (the daemon makes it)")
        key = LedgerKey.generate()
        pem = key.private_pem()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # O_EXCL + the mode at creation: never readable by others, not even for a moment;
        # two processes racing to create it cannot both win.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_or_create_key(path, create=False)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        return key
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            str(path), CONFIG_KEY, f"is readable by others (mode {mode:03o}); chmod 600 it"
        )
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as err:
        raise ConfigError(str(path), CONFIG_KEY, f"is not a PEM private key: {err}") from err
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigError(str(path), CONFIG_KEY, "is not an Ed25519 key")
    return LedgerKey(private)


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    """Parse a published public key; ValueError when it is not 32 bytes of base64."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as err:
        raise ValueError(f"public key is not base64: {err}") from err
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, this one {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def signature_valid(public: Ed25519PublicKey, data: bytes, signature_b64: str) -> bool:
    try:
        public.verify(base64.b64decode(signature_b64, validate=True), data)
    except (InvalidSignature, ValueError):
        return False
    return True
