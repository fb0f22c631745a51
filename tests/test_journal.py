"""Logs reach journald natively (a real datagram socket standing in for its), with fields."""

from __future__ import annotations

import array
import logging
import os
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from chargepoint.scenario_support import running, scenario_config
from support.scripted_csms import ScriptedCsms

from edgepoint import journal


def parse(data: bytes) -> dict[str, str]:
    """journald's side of the native protocol."""
    fields: dict[str, str] = {}
    rest = data
    while rest:
        line, _, after = rest.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            rest = after
        else:
            (size,) = struct.unpack("<Q", after[:8])
            fields[line.decode()] = after[8 : 8 + size].decode()
            assert after[8 + size : 9 + size] == b"\n"
            rest = after[9 + size :]
    return fields


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "journal.socket"))
    sock.settimeout(5)
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def logger(tmp_path: Path, journald: socket.socket) -> Iterator[logging.Logger]:
    handler = journal.JournalHandler("EP-7", socket_path=tmp_path / "journal.socket")
    log = logging.getLogger(f"edgepoint.test.{tmp_path.name}")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        yield log
    finally:
        log.removeHandler(handler)
        handler.close()


def receive(sock: socket.socket, memfd: bool = False) -> dict[str, str]:
    data, ancillary, _, _ = sock.recvmsg(1 << 20, socket.CMSG_SPACE(4))
    assert bool(ancillary) == memfd
    for level, kind, payload in ancillary:
        # A big entry arrives as a sealed memfd, as from sd_journal_send.
        assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
        fd = array.array("i", payload)[0]
        try:
            data = os.pread(fd, 1 << 22, 0)
        finally:
            os.close(fd)
    return parse(data)


def test_levels_and_structured_fields(logger: logging.Logger, journald: socket.socket) -> None:
    logger.info(
        "session started",
        extra=journal.fields(session_id="c0ffee", transaction_id=1001, connector_id=1),
    )
    entry = receive(journald)
    assert entry["MESSAGE"] == "session started"
    assert entry["PRIORITY"] == "6"  # info
    assert entry["SYSLOG_IDENTIFIER"] == "edgepoint"
    assert entry["EDGEPOINT_STATION"] == "EP-7"
    assert entry["EDGEPOINT_SESSION"] == "c0ffee"
    assert entry["EDGEPOINT_TRANSACTION"] == "1001"
    assert entry["EDGEPOINT_CONNECTOR"] == "1"
    assert entry["CODE_FUNC"] == "test_levels_and_structured_fields"
    logger.warning("careful")
    assert receive(journald)["PRIORITY"] == "4"
    logger.error("bad")
    assert receive(journald)["PRIORITY"] == "3"
    logger.debug("detail")
    assert receive(journald)["PRIORITY"] == "7"


def test_fields_bound_to_a_context_and_multiline_messages(
    logger: logging.Logger, journald: socket.socket
) -> None:
    with journal.bound(session_id="s-1"):
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("stopping\nfailed")
    entry = receive(journald)
    assert entry["EDGEPOINT_SESSION"] == "s-1" and entry["PRIORITY"] == "3"
    assert entry["MESSAGE"].startswith("stopping\nfailed\nTraceback")
    assert "ValueError: boom" in entry["MESSAGE"]
    logger.info("outside")
    assert "EDGEPOINT_SESSION" not in receive(journald)


def test_an_entry_too_big_for_a_datagram_goes_in_a_memfd(
    logger: logging.Logger, journald: socket.socket
) -> None:
    journald.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    big = "x" * 400_000
    logger.info(big)
    assert receive(journald, memfd=True)["MESSAGE"] == big


def test_without_journald_a_record_is_not_lost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    handler = journal.JournalHandler("EP-7", socket_path=tmp_path / "no-journald")
    handler.handle(
        logging.LogRecord("edgepoint.x", logging.ERROR, __file__, 1, "still here", None, None)
    )
    handler.close()
    assert "still here" in capsys.readouterr().err


def test_plain_lines_carry_the_fields_too() -> None:
    record = logging.LogRecord("edgepoint.kiosk", logging.INFO, __file__, 1, "stopped", None, None)
    record.session_id = "abc"
    record.transaction_id = 7
    text = journal.PlainFormatter().format(record)
    assert text.endswith("INFO edgepoint.kiosk: stopped [session=abc transaction=7]")


def test_journal_stream_is_recognised_by_device_and_inode(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setattr(sys, "stderr", stream)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert journal.journal_stream_connected()
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not journal.journal_stream_connected()  # stderr redirected elsewhere
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not journal.journal_stream_connected()


def test_unknown_field_names_are_refused() -> None:
    with pytest.raises(ValueError):
        journal.fields(id_tag="04A1B2C3")  # never a card id in the journal


async def test_a_sessions_log_lines_carry_its_session_and_transaction(tmp_path: Path) -> None:
    """A real daemon: what `journalctl EDGEPOINT_SESSION=<id>` would find (the plain lines
    on stderr carry the same fields as the journal entries)."""
    card = "04A1B2C3"
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await kiosk.wait_for("online", lambda s: s["links"]["csms"]["state"] == "online")
        await kiosk.wait_for("telemetry", lambda s: s["connector"]["last_sample"] is not None)
        await kiosk.present(card)
        status = await kiosk.wait_for(
            "the transaction id",
            lambda s: (s["connector"]["session"] or {}).get("transaction_id") is not None,
        )
        await kiosk.present(card)
        await csms.wait_calls("StopTransaction")
        await kiosk.wait_for("available", lambda s: s["connector"]["session"] is None)
        text = kiosk.daemon.log.read_text()
    session = status["connector"]["session"]
    sid, tx = session["session_id"], session["transaction_id"]
    mine = [line for line in text.splitlines() if f"session={sid}" in line]

    def one(words: str) -> str:
        found = [line for line in mine if words in line]
        assert len(found) == 1, (words, mine)
        return found[0]

    assert "connector=1" in one("session started by card ****B2C3")
    assert f"transaction={tx}" in one(f"StartTransaction confirmed: transaction {tx}")
    assert f"transaction={tx}" in one("session ended (Local)")
    assert card not in text  # cards are masked in the log
