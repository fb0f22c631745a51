"""X.509 helpers of the security extension: certificate ids, chains, CSRs, firmware signatures."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from support.tls import TlsFiles, write_tls_files

from edgepoint.chargepoint import pki


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def rsa_root(days: int = 30) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "maker root")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0x00FF)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def test_hash_data_follows_the_whitepaper_for_ec_and_rsa(tls_files: TlsFiles) -> None:
    root = load(tls_files.ca_cert)
    leaf = load(tls_files.client_cert)
    ec_key = root.public_key()
    assert isinstance(ec_key, ec.EllipticCurvePublicKey)
    point = ec_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert pki.hash_data(leaf, root) == {
        "hashAlgorithm": "SHA256",
        "issuerNameHash": hashlib.sha256(leaf.issuer.public_bytes()).hexdigest(),
        "issuerKeyHash": hashlib.sha256(point).hexdigest(),
        "serialNumber": format(leaf.serial_number, "x"),
    }
    maker, _ = rsa_root()
    rsa_key = maker.public_key()
    assert isinstance(rsa_key, rsa.RSAPublicKey)
    pkcs1 = rsa_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    data = pki.hash_data(maker, None, "SHA512")
    assert data["issuerKeyHash"] == hashlib.sha512(pkcs1).hexdigest()
    assert data["serialNumber"] == "ff"  # no leading zeroes
    # Matching ignores case and leading zeroes, and needs the algorithm it names.
    asked = dict(data, serialNumber="00FF", issuerNameHash=data["issuerNameHash"].upper())
    assert pki.matches(maker, None, asked)
    assert not pki.matches(maker, None, dict(asked, hashAlgorithm="MD5"))
    assert not pki.matches(maker, None, dict(asked, serialNumber="fe"))


def test_verify_chain_accepts_the_pki_and_says_why_it_refuses(tmp_path: Path) -> None:
    files = write_tls_files(tmp_path / "a")
    root, leaf = load(files.ca_cert), load(files.client_cert)
    now = datetime.now(UTC)
    pki.verify_chain([leaf], [root], now)
    pki.verify_chain([root], [root], now)  # a root trusts itself
    stranger = load(write_tls_files(tmp_path / "b").ca_cert)
    with pytest.raises(pki.CertificateProblem, match="does not chain"):
        pki.verify_chain([leaf], [stranger], now)
    with pytest.raises(pki.CertificateProblem, match="not valid now"):
        pki.verify_chain([leaf], [root], now + timedelta(days=365))
    with pytest.raises(pki.CertificateProblem, match="no root certificate"):
        pki.verify_chain([leaf], [], now)
    # A leaf is no CA: a certificate "signed" by it does not chain through it.
    with pytest.raises(pki.CertificateProblem):
        pki.verify_chain([load(files.server_cert), leaf], [stranger], now)


def test_a_csr_names_the_station_and_the_cpo_and_fits_its_key() -> None:
    key_pem, csr_pem = pki.new_key_and_csr("CP-7", "Some CPO")
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert csr.is_signature_valid
    assert pki.common_name(csr) == "CP-7" and pki.organization(csr) == "Some CPO"
    assert b"PRIVATE KEY" in key_pem
    _, anonymous = pki.new_key_and_csr("CP-7", None)
    assert pki.organization(x509.load_pem_x509_csr(anonymous.encode())) is None


def test_firmware_signatures_ecdsa_and_rsa(tmp_path: Path, tls_files: TlsFiles) -> None:
    firmware = tmp_path / "fw.bin"
    firmware.write_bytes(b"\x7fELF" + bytes(range(256)) * 100)
    data = firmware.read_bytes()
    ec_key = serialization.load_pem_private_key(tls_files.client_key.read_bytes(), None)
    assert isinstance(ec_key, ec.EllipticCurvePrivateKey)
    good = base64.b64encode(ec_key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()
    pki.verify_file_signature(load(tls_files.client_cert), good, firmware)
    maker, rsa_key = rsa_root()
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.MAX_LENGTH)
    for scheme in (padding.PKCS1v15(), pss):
        signature = base64.b64encode(rsa_key.sign(data, scheme, hashes.SHA256())).decode()
        pki.verify_file_signature(maker, signature, firmware)
    with pytest.raises(pki.CertificateProblem, match="does not match"):
        pki.verify_file_signature(maker, good, firmware)
    with pytest.raises(pki.CertificateProblem, match="not base64"):
        pki.verify_file_signature(maker, "not base64!", firmware)
    firmware.write_bytes(data + b"!")
    with pytest.raises(pki.CertificateProblem):
        pki.verify_file_signature(load(tls_files.client_cert), good, firmware)


def test_parse_certificates_refuses_what_is_not_pem() -> None:
    for text in ("", "hello", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"):
        with pytest.raises(pki.CertificateProblem):
            pki.parse_certificates(text)
