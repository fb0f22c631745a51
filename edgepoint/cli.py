"""The `edgepoint` command: run, status, sim, cards."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from edgepoint import __version__
from edgepoint.config import Config, load_config
from edgepoint.errors import ConfigError, EdgepointError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def default_config_path() -> Path:
    """$EDGEPOINT_CONFIG, else ./config.toml, else the installed /etc/edgepoint/config.toml."""
    if env := os.environ.get("EDGEPOINT_CONFIG"):
        return Path(env)
    local = Path("config.toml")
    return local if local.exists() else Path("/etc/edgepoint/config.toml")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_USAGE
    try:
        config = load_config(args.config or default_config_path())
    except ConfigError as err:
        print(f"edgepoint: invalid configuration: {err}", file=sys.stderr)
        return EXIT_USAGE
    # Like the unit's UMask=0027, also when run by hand (./scripts/run, `cards add` before
    # the first start): folders made for the daemon's state and socket are never
    # world-accessible, whoever creates them first. Only ever tightens the umask.
    os.umask(os.umask(0o027) | 0o027)
    try:
        result: int = args.handler(config, args)
        return result
    except ConfigError as err:
        # Found at run time (a path it cannot write): as invalid as a bad key, and exit
        # status 2 keeps systemd from restarting what a restart cannot fix.
        print(f"edgepoint: invalid configuration: {err}", file=sys.stderr)
        return EXIT_USAGE
    except EdgepointError as err:
        print(f"edgepoint: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgepoint", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edgepoint {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, handler: Callable[[Config, argparse.Namespace], int], **kw: Any) -> Any:
        p = sub.add_parser(name, **kw)
        p.add_argument("--config", type=Path, metavar="FILE", help="config file (TOML)")
        p.set_defaults(handler=handler)
        return p

    command("run", _run, help="run the daemon (until SIGINT/SIGTERM)")
    command(
        "relay-off",
        _relay_off,
        help="drive every relay pin to its open level and exit (the unit's ExecStopPost)",
    )
    command("doctor", _doctor, help="check reader, ESP32, GPIO, groups, clock and storage")
    command("tui", _tui, help="the technician's terminal UI (a client of the running daemon)")
    status = command("status", _status, help="show connector, session, links and outbox")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    sim = sub.add_parser("sim", help="act on simulated hardware of a running daemon")
    sim_sub = sim.add_subparsers(title="simulation", metavar="ACTION", required=True)
    tap = sim_sub.add_parser("tap", help="present an RFID card to the emulated PN532")
    tap.add_argument("uid", help="card UID in hex, e.g. 04A1B2C3")
    tap.add_argument("--config", type=Path, metavar="FILE", help="config file (TOML)")
    tap.set_defaults(handler=_tap)

    cards = sub.add_parser("cards", help="manage the embedded CSMS's RFID cards")
    cards_sub = cards.add_subparsers(title="cards", metavar="ACTION", required=True)

    def card_command(name: str, handler: Callable[..., int], help_: str) -> Any:
        p = cards_sub.add_parser(name, help=help_)
        p.add_argument("--config", type=Path, metavar="FILE", help="config file (TOML)")
        p.set_defaults(handler=handler)
        return p

    add = card_command("add", _cards_add, "add (or update) a card")
    add.add_argument("id_tag", help="card UID / idTag, e.g. 04A1B2C3")
    add.add_argument("--name", default="", help="who holds the card")
    add.add_argument("--expires", type=_expiry, help="expiry, YYYY-MM-DD or ISO-8601 (UTC)")
    add.add_argument(
        "--parent", metavar="ID_TAG", help="parent id tag (a blocked or expired parent blocks it)"
    )
    add.add_argument(
        "--max-concurrent",
        type=_at_least_one,
        default=1,
        metavar="N",
        help="open transactions the card may have at once (default 1; more: ConcurrentTx)",
    )
    lst = card_command("list", _cards_list, "list cards")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    block = card_command("block", _cards_block, "block a card")
    block.add_argument("id_tag")
    unblock = card_command("unblock", _cards_unblock, "accept a blocked card again")
    unblock.add_argument("id_tag")
    remove = card_command("remove", _cards_remove, "remove a card")
    remove.add_argument("id_tag")
    from edgepoint.cloud.cli import add_ledger_commands

    add_ledger_commands(sub)
    # -- chargers and transactions (edgepoint/csms/cli.py) --
    from edgepoint.csms.cli import add_charger_commands

    add_charger_commands(sub)
    # -- outbox dead letters, migrate, backup (edgepoint/storage/cli.py) --
    from edgepoint.storage.cli import add_storage_commands

    add_storage_commands(sub)
    return parser


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a whole number >= 1: {text!r}")
    return value


def _expiry(text: str) -> datetime:
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            # A card valid "until 2027-01-31" works through that whole day (UTC).
            return datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=UTC)
        moment = datetime.fromisoformat(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (use YYYY-MM-DD)") from err
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- run ---------------------------------------------------------------------------


def _run(config: Config, args: argparse.Namespace) -> int:
    import faulthandler

    from edgepoint.journal import setup_logging

    # The journal (levels, station/session/transaction fields) under systemd, else stderr.
    setup_logging(config.log_level, config.station.id)
    # A watchdog abort (SIGABRT) or a crash in C code leaves every thread's stack in the log.
    faulthandler.enable()
    # The ocpp library logs every frame at INFO, ids and all; keep that for DEBUG.
    logging.getLogger("ocpp").setLevel(max(logging.WARNING, logging.getLevelName(config.log_level)))
    logging.getLogger("websockets").setLevel(logging.WARNING)
    from edgepoint import app

    ended = asyncio.run(app.run(config))
    if ended in (app.Exit.SOFT_RESET, app.Exit.HARD_RESET):
        # OCPP Reset: everything is closed and the relays are open; start afresh in the
        # same process slot, so it works the same under systemd (same PID) and without.
        logging.getLogger(__name__).warning("%s: restarting", ended)
        logging.shutdown()
        os.execv(sys.executable, [sys.executable, "-m", "edgepoint.cli", *sys.argv[1:]])
    return EXIT_OK


def _relay_off(config: Config, args: argparse.Namespace) -> int:
    """Open every relay from outside the daemon: systemd runs this after the daemon ended,
    however it ended (kill -9, OOM, watchdog abort), since a GPIO line keeps its level."""
    if config.hardware.simulate:
        print("relay-off: simulated hardware (MockFactory pins): nothing to drive")
        return EXIT_OK
    from edgepoint.drivers.panel import force_relays_open

    # systemd tells ExecStopPost how the daemon ended; worth a line in the journal.
    ended = os.environ.get("SERVICE_RESULT")
    for line in force_relays_open(config.hardware, config.connectors, pinctrl="auto"):
        print(f"relay-off: {line}" + (f" (daemon ended: {ended})" if ended else ""))
    return EXIT_OK


def _doctor(config: Config, args: argparse.Namespace) -> int:
    from edgepoint.doctor import exit_code, format_report, run_doctor

    findings = run_doctor(config)
    print(format_report(config, findings))
    return exit_code(findings)


# -- status and simulation ------------------------------------------------------------


def _status(config: Config, args: argparse.Namespace) -> int:
    from edgepoint.control.client import request

    status = asyncio.run(request(config.control.socket, "status"))
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(format_status(status))
    return EXIT_OK


def format_status(s: dict[str, Any]) -> str:
    """The status as a technician reads it on a terminal."""
    lines = [
        f"{s['station']}  edgepoint {s['version']}"
        f"{' (simulated hardware)' if s['simulated'] else ''}  up {s['uptime_s']:.0f} s",
        *([] if s["clock_synced"] else [_clock_warning(s.get("clock"))]),
        *(f"ALARM: {alarm}" for alarm in s.get("alarms", [])),
        *(f"FAULT (charge point): {fault}" for fault in s.get("faults", [])),
    ]
    for c in s["connectors"]:
        lines.append(
            f"connector {c['id']}: {c['status']}  relay {'CLOSED' if c['relay_closed'] else 'open'}"
            f"{'' if c['operative'] else '  (inoperative)'}"
            f"{'  TELEMETRY LOST' if c['telemetry_lost'] else ''}"
            + (f"  FAULT {', '.join(c['faults'])} ({c['error_code']})" if c.get("faults") else "")
        )
        if (limit := c.get("charging_limit")) and limit.get("limit_a") is not None:
            acked = limit.get("acknowledged_a")
            lines.append(
                f"  smart charging: {limit['limit_a']:g} A (profiles"
                f" {', '.join(map(str, limit['profile_ids']))}), ESP32"
                f" {'not acknowledged' if acked is None else f'{acked:g} A'}"
                f"{'  PAUSED' if limit.get('paused') else ''}"
            )
        if reservation := c.get("reservation"):
            lines.append(
                f"  reserved ({reservation['reservation_id']}) for {reservation['id_tag']}"
                f" until {reservation['expiry']}"
            )
        if session := c["session"]:
            tx = session["transaction_id"]
            lines.append(
                f"  session {session['session_id']}  card {session['id_tag']}"
                f"  transaction {tx if tx is not None else '(not yet confirmed)'}"
                f"  {session['energy_wh']} Wh since start ({session['meter_start_wh']} Wh)"
            )
        else:
            lines.append("  no session")
    if last := s["telemetry"]["last"]:
        frames = s["telemetry"]["reader"]["frames"]
        lines.append(
            f"telemetry: {last['energy_wh']} Wh  {last['power_w']:g} W  {last['current_a']:g} A"
            f"  {last['voltage_v']:g} V  {last['temperature_c']:g} °C"
            f"  (frames {frames['frames_ok']} ok, {frames['bad_checksum']} bad checksum,"
            f" {frames['garbage']} garbage)"
        )
    else:
        lines.append("telemetry: none yet")
    link = s["links"]["csms"]
    lines.append(f"csms link: {link['state']}  {link['url']}")
    if link["last_error"]:
        lines.append(f"  last error: {link['last_error']}")
    if (embedded := s["links"]["embedded_csms"]) is not None:
        lines.append(f"embedded csms: {len(embedded['connected'])} charge point(s) connected")
    box = s["outbox"]
    oldest = f", oldest from {box['oldest_created_at']}" if box["oldest_created_at"] else ""
    lines.append(
        f"outbox: {box['depth']} queued, {box['dead_letters']} dead letter(s)"
        f"{oldest}, {box['parked']} parked, {box['quarantined']} quarantined"
    )
    for service in s.get("services", []):
        if service["restarts"]:
            lines.append(
                f"service {service['name']}: {service['state']}, restarted"
                f" {service['restarts']} time(s); last error: {service['last_error']}"
            )
    return "\n".join(lines)


def _tui(config: Config, args: argparse.Namespace) -> int:
    from edgepoint.tui.app import run

    return run(config.control.socket)


def _clock_warning(clock: dict[str, Any] | None) -> str:
    since = (clock or {}).get("provisional_since")
    running = f" (provisional time, run on from {since})" if since else ""
    return f"WARNING: wall clock not synchronised: no NTP and no CSMS time yet{running}"


def _tap(config: Config, args: argparse.Namespace) -> int:
    from edgepoint.control.client import request

    asyncio.run(request(config.control.socket, "tap", uid=args.uid))
    print(f"presented card {args.uid.upper()}")
    return EXIT_OK


# -- cards ---------------------------------------------------------------------------


def _with_cards(config: Config, work: Callable[[Any], Any]) -> Any:
    """Open the CSMS database (WAL: safe while the daemon runs), do `work`, close."""
    from edgepoint.csms.db import open_csms_database

    async def go() -> Any:
        db = await open_csms_database(config.storage.csms_db)
        try:
            return await work(db.cards)
        finally:
            await db.close()

    return asyncio.run(go())


def _by_daemon(config: Config, cmd: str, **args: Any) -> tuple[bool, Any]:
    """(True, answer) when the running daemon did it (logged there with the user), else
    (False, None): no daemon runs, or it has no embedded CSMS, and the caller uses the file."""
    from edgepoint.control.client import NOT_RUNNING, request
    from edgepoint.errors import ControlError

    try:
        return True, asyncio.run(request(config.control.socket, cmd, **args))
    except ControlError as err:
        if err.code in (NOT_RUNNING, "unavailable"):
            return False, None
        raise


def _cards_add(config: Config, args: argparse.Namespace) -> int:
    done, _ = _by_daemon(
        config,
        "cards.add",
        id_tag=args.id_tag,
        name=args.name,
        expires=None if args.expires is None else args.expires.isoformat(),
        parent_id_tag=args.parent,
        max_concurrent_tx=args.max_concurrent,
    )
    if done:
        print(f"card {args.id_tag} added")
        return EXIT_OK

    async def work(cards: Any) -> None:
        await cards.add(
            args.id_tag,
            name=args.name,
            expires=args.expires,
            parent_id_tag=args.parent,
            max_concurrent_tx=args.max_concurrent,
        )

    _with_cards(config, work)
    print(f"card {args.id_tag} added")
    return EXIT_OK


def _cards_list(config: Config, args: argparse.Namespace) -> int:
    async def work(cards: Any) -> Any:
        return await cards.list()

    rows = _with_cards(config, work)
    if args.json:
        print(json.dumps([_card_dict(r) for r in rows], indent=2))
        return EXIT_OK
    if not rows:
        print("no cards")
    for row in rows:
        d = _card_dict(row)
        expires = d.get("expires") or "never"
        print(f"{d['id_tag']:<20} {d['status']:<9} expires {expires:<26} {d.get('name') or ''}")
    return EXIT_OK


def _card_dict(row: Any) -> dict[str, Any]:
    import dataclasses

    d = dataclasses.asdict(row)
    return {k: (v.isoformat() if isinstance(v, date | datetime) else v) for k, v in d.items()}


def _cards_block(config: Config, args: argparse.Namespace) -> int:
    return _card_change(config, args.id_tag, "block", "blocked")


def _cards_unblock(config: Config, args: argparse.Namespace) -> int:
    return _card_change(config, args.id_tag, "unblock", "accepted again")


def _cards_remove(config: Config, args: argparse.Namespace) -> int:
    return _card_change(config, args.id_tag, "remove", "removed")


def _card_change(config: Config, id_tag: str, method: str, done: str) -> int:
    from edgepoint.errors import ControlError

    async def work(cards: Any) -> Any:
        return await getattr(cards, method)(id_tag)

    try:
        by_daemon, _ = _by_daemon(config, f"cards.{method}", id_tag=id_tag)
    except ControlError as err:
        if err.code != "not_found":
            raise
        by_daemon, changed = True, False
    else:
        changed = True
    if not by_daemon:
        changed = _with_cards(config, work) is not False
    if not changed:
        print(f"edgepoint: no card {id_tag}", file=sys.stderr)
        return EXIT_ERROR
    print(f"card {id_tag} {done}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
