"""File transfer over HTTP and FTP: downloads checked against the announced size, uploads."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.file_server import FileServer
from support.ftp_server import FtpServer

from edgepoint.chargepoint.transfer import (
    Failure,
    TransferError,
    check_url,
    download,
    redacted,
    upload,
)

DATA = b"0123456789abcdef" * 5000


async def test_ftp_download_and_upload_with_the_url_credentials(tmp_path: Path) -> None:
    async with FtpServer(files={"/fw/image.bin": DATA}) as ftp:
        got = await asyncio.to_thread(
            download,
            ftp.url("/fw/image.bin"),
            tmp_path / "image.bin",
            timeout_s=5,
            max_bytes=1 << 20,
        )
        assert got.size == len(DATA) and (tmp_path / "image.bin").read_bytes() == DATA
        source = tmp_path / "diag.tar.gz"
        source.write_bytes(b"archive")
        where = await asyncio.to_thread(upload, ftp.url("/in/"), source, timeout_s=5)
        assert where == "STOR /in/diag.tar.gz" and ftp.files["/in/diag.tar.gz"] == b"archive"
        with pytest.raises(TransferError) as denied:
            await asyncio.to_thread(upload, ftp.url("/in/", password="wrong"), source, timeout_s=5)
        assert denied.value.kind is Failure.DENIED
        with pytest.raises(TransferError) as missing:
            await asyncio.to_thread(
                download, ftp.url("/nope"), tmp_path / "x", timeout_s=5, max_bytes=1 << 20
            )
        assert missing.value.kind is Failure.FAILED
        assert not (tmp_path / "x.part").exists()


def test_http_download_limits_and_errors(tmp_path: Path) -> None:
    with FileServer() as server:
        server.files["/a.bin"] = DATA
        server.fail["/secret.bin"] = 403
        got = download(server.url("/a.bin"), tmp_path / "a.bin", timeout_s=5, max_bytes=1 << 20)
        assert got.size == len(DATA)
        with pytest.raises(TransferError, match="larger than"):
            download(server.url("/a.bin"), tmp_path / "b.bin", timeout_s=5, max_bytes=1000)
        assert not (tmp_path / "b.bin").exists() and not (tmp_path / "b.bin.part").exists()
        with pytest.raises(TransferError) as denied:
            download(server.url("/secret.bin"), tmp_path / "c", timeout_s=5, max_bytes=1 << 20)
        assert denied.value.kind is Failure.DENIED


def test_http_upload_falls_back_to_post_when_put_is_not_allowed(tmp_path: Path) -> None:
    source = tmp_path / "log.tar.gz"
    source.write_bytes(b"\x1f\x8b packed")
    with FileServer() as server:
        assert (
            upload(server.url("/up/"), source, timeout_s=5) == f"PUT {server.url('/up/log.tar.gz')}"
        )
        server.allow_put = False
        assert upload(server.url("/up/"), source, timeout_s=5).startswith("POST")
        assert server.uploads["/up/log.tar.gz"] == b"\x1f\x8b packed"
        assert server.count("POST", "/up/") == 1


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("gopher://h/x", Failure.UNSUPPORTED),
        ("file:///etc/passwd", Failure.UNSUPPORTED),
        ("http:///x", Failure.BAD_URL),
    ],
)
def test_only_network_transfers_with_a_host(url: str, kind: Failure) -> None:
    with pytest.raises(TransferError) as refused:
        check_url(url)
    assert refused.value.kind is kind


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("ftp://edge:pa55@10.0.0.1:2121/in/", "ftp://edge:****@10.0.0.1:2121/in/"),
        ("ftp://anonymous@h/in/", "ftp://anonymous@h/in/"),
        ("https://h/up?X-Amz-Signature=abc#frag", "https://h/up?..."),
        ("http://h/fw.bin#sha256=00", "http://h/fw.bin"),
        ("http://u:p:q@h/x", "http://u:****@h/x"),
    ],
)
def test_urls_are_logged_without_their_secrets(url: str, shown: str) -> None:
    assert redacted(url) == shown
