"""X.509 for the security extension: certificate ids, chain checks, CSRs, firmware signatures.

Plain functions over `cryptography` objects, no I/O beyond reading a firmware file.
Certificate ids follow the whitepaper's CertificateHashDataType (as OCSP's CertID):
issuerNameHash is the hash of the DER-encoded issuer name, issuerKeyHash the hash of
the issuer's public key bits (the BIT STRING of its SubjectPublicKeyInfo), serialNumber
the serial in hexadecimal without leading zeroes; hashes are lowercase hex.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import NameOID

HASHES = {"SHA256": hashlib.sha256, "SHA384": hashlib.sha384, "SHA512": hashlib.sha512}
# Leaf, sub-CAs, root: deeper chains are not what a CPO issues to a charge point.
MAX_CHAIN_DEPTH = 5
_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"


class CertificateProblem(ValueError):
    """A certificate, chain or signature we do not accept; the message says why."""


def parse_certificates(text: str) -> list[x509.Certificate]:
    """Every certificate of a PEM text, in order; CertificateProblem if there is none or junk."""
    if _PEM_BEGIN not in text:
        raise CertificateProblem("no PEM certificate")
    try:
        certificates = x509.load_pem_x509_certificates(text.encode("utf-8", "replace"))
    except ValueError as err:
        raise CertificateProblem(f"not a PEM certificate: {err}") from err
    if not certificates:
        raise CertificateProblem("no PEM certificate")
    return certificates


def to_pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


def is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca


def is_self_signed(certificate: x509.Certificate) -> bool:
    return certificate.issuer == certificate.subject and signed_by(certificate, certificate)


def signed_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    """`issuer` signed `certificate` (name and signature both match)."""
    if certificate.issuer != issuer.subject:
        return False
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def valid_at(certificate: x509.Certificate, at: datetime) -> bool:
    return certificate.not_valid_before_utc <= at <= certificate.not_valid_after_utc


def hash_data(
    certificate: x509.Certificate,
    issuer: x509.Certificate | None = None,
    algorithm: str = "SHA256",
) -> dict[str, str]:
    """The certificate's CertificateHashDataType; `issuer` defaults to itself (a root)."""
    digest = HASHES[algorithm]
    issuer_key = (issuer or certificate).public_key()
    key_der = issuer_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "hashAlgorithm": algorithm,
        "issuerNameHash": digest(certificate.issuer.public_bytes()).hexdigest(),
        "issuerKeyHash": digest(_subject_public_key_bits(key_der)).hexdigest(),
        "serialNumber": format(certificate.serial_number, "x"),
    }


def matches(
    certificate: x509.Certificate, issuer: x509.Certificate | None, wanted: Mapping[str, str]
) -> bool:
    """Does `wanted` (a CertificateHashDataType) name this certificate? Case-insensitive."""
    algorithm = wanted.get("hashAlgorithm", "")
    if algorithm not in HASHES:
        return False
    mine = hash_data(certificate, issuer, algorithm)
    serial = wanted.get("serialNumber", "").lower().lstrip("0") or "0"
    return (
        mine["issuerNameHash"] == wanted.get("issuerNameHash", "").lower()
        and mine["issuerKeyHash"] == wanted.get("issuerKeyHash", "").lower()
        and mine["serialNumber"] == serial
    )


def issuer_among(
    certificate: x509.Certificate, candidates: Iterable[x509.Certificate]
) -> x509.Certificate | None:
    return next((c for c in candidates if signed_by(certificate, c)), None)


def verify_chain(
    chain: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate], at: datetime
) -> None:
    """Check that chain[0] chains, through CA certificates of `chain`, to one of `anchors`.

    Every certificate on the way must be valid at `at`; every issuer must be a CA.
    Raises CertificateProblem saying what is wrong.
    """
    if not chain:
        raise CertificateProblem("empty chain")
    if not anchors:
        raise CertificateProblem("no root certificate installed to check it against")
    current = chain[0]
    pool = list(chain[1:])
    for _ in range(MAX_CHAIN_DEPTH):
        if not valid_at(current, at):
            raise CertificateProblem(
                f"{_name(current)} is not valid now (valid {current.not_valid_before_utc:%Y-%m-%d}"
                f" to {current.not_valid_after_utc:%Y-%m-%d})"
            )
        if any(fingerprint(current) == fingerprint(anchor) for anchor in anchors):
            return
        anchor = issuer_among(current, anchors)
        if anchor is not None:
            if not valid_at(anchor, at):
                raise CertificateProblem(f"root {_name(anchor)} is not valid now")
            return
        parent = issuer_among(current, pool)
        if parent is None or not is_ca(parent):
            raise CertificateProblem(
                f"{_name(current)} does not chain to an installed root certificate"
            )
        pool.remove(parent)
        current = parent
    raise CertificateProblem(f"chain longer than {MAX_CHAIN_DEPTH} certificates")


def common_name(certificate: x509.Certificate | x509.CertificateSigningRequest) -> str | None:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def organization(certificate: x509.Certificate | x509.CertificateSigningRequest) -> str | None:
    names = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(names[0].value) if names else None


def new_key_and_csr(common: str, org: str | None) -> tuple[bytes, str]:
    """A new ECDSA P-256 key (PKCS#8 PEM) and a CSR for it: CN = `common`, O = `org`."""
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common)]
    if org:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(attributes))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def same_public_key(certificate: x509.Certificate, key_pem: bytes) -> bool:
    key = serialization.load_pem_private_key(key_pem, password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ) == key.public_key().public_bytes(serialization.Encoding.DER, spki)


def file_sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.digest()


def verify_file_signature(certificate: x509.Certificate, signature_b64: str, path: Path) -> None:
    """Check SignedUpdateFirmware's signature (base64) of the file with the certificate's key.

    SHA-256 with RSA (PKCS#1 v1.5 or PSS) or ECDSA; raises CertificateProblem if it fails.
    Blocking (reads the whole file): run it in a thread.
    """
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError) as err:
        raise CertificateProblem("the signature is not base64") from err
    digest = file_sha256(path)
    prehashed = Prehashed(hashes.SHA256())
    key = certificate.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, digest, ec.ECDSA(prehashed))
            return
        if isinstance(key, rsa.RSAPublicKey):
            try:
                key.verify(signature, digest, padding.PKCS1v15(), prehashed)
            except InvalidSignature:
                pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.AUTO)
                key.verify(signature, digest, pss, prehashed)
            return
    except InvalidSignature as err:
        raise CertificateProblem("the firmware signature does not match the file") from err
    raise CertificateProblem(f"unsupported signing key type {type(key).__name__}")


def expires_in_days(certificate: x509.Certificate, at: datetime | None = None) -> float:
    now = at or datetime.now(UTC)
    return (certificate.not_valid_after_utc - now).total_seconds() / 86_400


def _name(certificate: x509.Certificate) -> str:
    return common_name(certificate) or certificate.subject.rfc4514_string()[:80] or "certificate"


def _subject_public_key_bits(spki_der: bytes) -> bytes:
    """The subjectPublicKey BIT STRING's content of a DER SubjectPublicKeyInfo."""
    body, _ = _der_item(spki_der, 0, 0x30)  # SEQUENCE
    _, after_algorithm = _der_item(spki_der, body, 0x30)  # AlgorithmIdentifier
    start, end = _der_item(spki_der, after_algorithm, 0x03)  # BIT STRING
    return spki_der[start + 1 : end]  # skip the unused-bits octet


def _der_item(data: bytes, at: int, tag: int) -> tuple[int, int]:
    """(content start, content end) of the DER element with `tag` at `at`."""
    if data[at] != tag:
        raise CertificateProblem("unexpected DER in a public key")
    length = data[at + 1]
    start = at + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    return start, start + length
