"""Certificates for OCPP security profiles 2 and 3, generated at test time with `cryptography`.

`write_tls_files` makes a throw-away PKI: a CA, a server certificate for
127.0.0.1 and localhost, and a charge point's client certificate (CN = its id),
all ECDSA P-256 signed by that CA. `server_ssl_context` and `client_ssl_context`
turn them into contexts for websockets' ``serve(ssl=...)`` and ``connect(ssl=...)``.
The `tls_files` fixture (registered in tests/conftest.py) writes them into the
test's tmp_path. Calling `write_tls_files` a second time, in another folder,
gives a foreign PKI whose certificates the first one must reject.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CHARGE_POINT_ID = "CP-1"
ORGANIZATION = "edgepoint test CPO"
# Backdated so that a test host whose clock lags a little still accepts them.
_BACKDATE = datetime.timedelta(days=1)
_LIFETIME = datetime.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of one test PKI; every private key is mode 0600."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    charge_point_id: str


def write_tls_files(directory: Path, *, charge_point_id: str = CHARGE_POINT_ID) -> TlsFiles:
    """Generate a CA, a server and a client certificate and write them into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"{ORGANIZATION} test root CA")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        _builder(_name("localhost"), ca_name, server_key.public_key(), ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    # OCPP 1.6 security: the charge point certificate names the CPO (O) and the charge point (CN).
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = (
        _builder(_name(charge_point_id), ca_name, client_key.public_key(), ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles(
        directory=directory,
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        charge_point_id=charge_point_id,
    )
    for path, cert in (
        (files.ca_cert, ca_cert),
        (files.server_cert, server_cert),
        (files.client_cert, client_cert),
    ):
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for path, key in (
        (files.ca_key, ca_key),
        (files.server_key, server_key),
        (files.client_key, client_key),
    ):
        _write_private(
            path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
    return files


def server_ssl_context(files: TlsFiles, *, require_client_cert: bool = False) -> ssl.SSLContext:
    """Build a server context: profile 2 by default, profile 3 with ``require_client_cert``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.server_cert, files.server_key)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=files.ca_cert)
    return context


def client_ssl_context(
    *, trust: TlsFiles | None, identity: TlsFiles | None = None
) -> ssl.SSLContext:
    """Build a verifying client context.

    ``trust``: whose CA the client trusts besides the system's (None: only the
    system's, so a test server is rejected). ``identity``: whose client
    certificate it presents (None: none, as in profile 2).
    """
    context = ssl.create_default_context(cafile=None if trust is None else trust.ca_cert)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if identity is not None:
        context.load_cert_chain(identity.client_cert, identity.client_key)
    return context


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    """Give a fresh test PKI under ``tmp_path/tls``."""
    return write_tls_files(tmp_path / "tls")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
) -> x509.CertificateBuilder:
    # Both key identifiers: OpenSSL's strict mode (default in Python 3.13) demands them.
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _LIFETIME)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), critical=False
        )
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        # O_CREAT's mode does not apply to a file that already existed.
        os.fchmod(file.fileno(), 0o600)
        file.write(data)
