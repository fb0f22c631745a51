"""The test PKI works for real wss:// links: profile 2 (server auth) and profile 3 (mutual)."""

from __future__ import annotations

import asyncio
import ssl
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidMessage

from support.fault_proxy import FaultProxy
from support.tls import TlsFiles, client_ssl_context, server_ssl_context, write_tls_files

# A hang in a broken test or tool fails the test instead of the run.
pytestmark = pytest.mark.timeout(5)

PROMPTLY = 1.0


class TlsServer:
    """A wss:// server that greets each client with the CN of its certificate."""

    def __init__(self) -> None:
        self.port = 0
        self.peers: list[str | None] = []

    async def handle(self, ws: ServerConnection) -> None:
        peer = ws.transport.get_extra_info("peercert")
        common_name = None
        if peer:
            for rdn in peer["subject"]:
                for key, value in rdn:
                    if key == "commonName":
                        common_name = value
        self.peers.append(common_name)
        try:
            await ws.send(f"hello {common_name}")
            await ws.wait_closed()
        except ConnectionClosed:
            pass


@asynccontextmanager
async def tls_server(files: TlsFiles, *, require_client_cert: bool) -> AsyncIterator[TlsServer]:
    server = TlsServer()
    context = server_ssl_context(files, require_client_cert=require_client_cert)
    async with serve(server.handle, "127.0.0.1", 0, ssl=context) as ws_server:
        server.port = ws_server.sockets[0].getsockname()[1]
        yield server


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_files_form_a_pki_with_private_keys_0600(tls_files: TlsFiles, tmp_path: Path) -> None:
    assert tls_files.directory == tmp_path / "tls"
    for key in (tls_files.ca_key, tls_files.server_key, tls_files.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600

    ca, server, client = (
        load(tls_files.ca_cert),
        load(tls_files.server_cert),
        load(tls_files.client_cert),
    )
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]

    common_names = client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [cn.value for cn in common_names] == [tls_files.charge_point_id]


def test_rewriting_a_key_resets_it_to_0600(tmp_path: Path) -> None:
    first = write_tls_files(tmp_path)
    first.client_key.chmod(0o644)
    second = write_tls_files(tmp_path, charge_point_id="CP-2")
    assert stat.S_IMODE(second.client_key.stat().st_mode) == 0o600
    assert second.client_key.read_bytes() != b""


@pytest.mark.parametrize("server_hostname", [None, "localhost"])
async def test_client_trusting_the_ca_connects(
    tls_files: TlsFiles, server_hostname: str | None
) -> None:
    async with (
        tls_server(tls_files, require_client_cert=False) as server,
        connect(
            f"wss://127.0.0.1:{server.port}/{tls_files.charge_point_id}",
            ssl=client_ssl_context(trust=tls_files),
            server_hostname=server_hostname,
            open_timeout=PROMPTLY,
        ) as ws,
    ):
        async with asyncio.timeout(PROMPTLY):
            assert await ws.recv() == "hello None"


@pytest.mark.parametrize(
    "trust",
    [lambda files, tmp: None, lambda files, tmp: write_tls_files(tmp / "foreign")],
    ids=["system-store-only", "foreign-ca"],
)
async def test_client_without_the_ca_fails_verification(
    tls_files: TlsFiles, tmp_path: Path, trust: Callable[[TlsFiles, Path], TlsFiles | None]
) -> None:
    async with tls_server(tls_files, require_client_cert=False) as server:
        with pytest.raises(ssl.SSLCertVerificationError):
            await connect(
                f"wss://127.0.0.1:{server.port}/",
                ssl=client_ssl_context(trust=trust(tls_files, tmp_path)),
                open_timeout=PROMPTLY,
            )
        assert server.peers == []


@pytest.mark.parametrize("max_version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
async def test_server_requiring_a_client_cert_refuses_a_client_without_one(
    tls_files: TlsFiles, max_version: ssl.TLSVersion
) -> None:
    context = client_ssl_context(trust=tls_files)
    context.maximum_version = max_version
    async with tls_server(tls_files, require_client_cert=True) as server:
        # TLS 1.3 finishes the client's side of the handshake before the server
        # checks; the refusal then arrives as a closed connection instead.
        with pytest.raises((InvalidMessage, OSError)):
            await connect(f"wss://127.0.0.1:{server.port}/", ssl=context, open_timeout=PROMPTLY)
        assert server.peers == []


async def test_server_requiring_a_client_cert_refuses_one_from_another_ca(
    tls_files: TlsFiles, tmp_path: Path
) -> None:
    foreign = write_tls_files(tmp_path / "foreign")
    async with tls_server(tls_files, require_client_cert=True) as server:
        with pytest.raises((InvalidMessage, OSError)):
            await connect(
                f"wss://127.0.0.1:{server.port}/",
                ssl=client_ssl_context(trust=tls_files, identity=foreign),
                open_timeout=PROMPTLY,
            )
        assert server.peers == []


async def test_server_requiring_a_client_cert_accepts_and_identifies_one_with_it(
    tls_files: TlsFiles,
) -> None:
    async with (
        tls_server(tls_files, require_client_cert=True) as server,
        connect(
            f"wss://127.0.0.1:{server.port}/{tls_files.charge_point_id}",
            ssl=client_ssl_context(trust=tls_files, identity=tls_files),
            open_timeout=PROMPTLY,
        ) as ws,
    ):
        async with asyncio.timeout(PROMPTLY):
            assert await ws.recv() == f"hello {tls_files.charge_point_id}"
    assert server.peers == [tls_files.charge_point_id]


async def test_mutual_tls_passes_through_the_fault_proxy_and_can_be_cut(
    tls_files: TlsFiles,
) -> None:
    async with (
        tls_server(tls_files, require_client_cert=True) as server,
        FaultProxy("127.0.0.1", server.port) as proxy,
        connect(
            proxy.url("/CP-1", scheme="wss"),
            ssl=client_ssl_context(trust=tls_files, identity=tls_files),
            open_timeout=PROMPTLY,
        ) as ws,
    ):
        async with asyncio.timeout(PROMPTLY):
            assert await ws.recv() == f"hello {tls_files.charge_point_id}"
        await proxy.cut()
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(PROMPTLY):
                await ws.recv()
