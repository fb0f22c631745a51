"""`edgepoint chargers ...` and `edgepoint transactions ...`: the site's chargers from a shell.

Registration (add, list, import, rekey, remove, pending, admit) works on csms.db directly,
like `cards`, whether the daemon runs or not; after a re-key or removal a running daemon
is asked to close the charger's live connection. Operator commands and the views of live
state go through the daemon's control socket. Exit codes: 0 done (the charger accepted),
1 failed (also: the charger refused, e.g. Rejected), 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from edgepoint.config import Config
from edgepoint.control.client import NOT_RUNNING, request
from edgepoint.csms.ids import (
    InvalidIdentifierError,
    check_auth_key,
    parse_charge_point_id,
)
from edgepoint.errors import ControlError

# SiteOperator's default wait for a charger's answer (not imported: the CLI stays light).
DEFAULT_TIMEOUT_S = 30.0

if TYPE_CHECKING:  # csms.db and the OCPP schemas load on use: `edgepoint run` starts faster
    from edgepoint.csms.db import CsmsStore

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
# How long an operator command waits for the charger's answer (SiteOperator's default).
# 20 random bytes as hex: 40 characters, the most a 1.6 AuthorizationKey may have.
PASSWORD_BYTES = 20
# Reply statuses that mean the charger did not do what was asked.
REFUSALS = frozenset(
    {
        "Rejected",
        "Failed",
        "NotSupported",
        "NotImplemented",
        "UnlockFailed",
        "VersionMismatch",
        "Faulted",
        "Occupied",
        "Unavailable",
        "UnknownMessageId",
        "UnknownVendorId",
    }
)
# How long a best-effort question to the daemon may take (list, disconnect).
_BRIEF_S = 3.0

T = TypeVar("T")
Handler = Callable[[Config, argparse.Namespace], int]


def generate_password() -> str:
    """A new charger password: PASSWORD_BYTES random bytes in hex."""
    return secrets.token_hex(PASSWORD_BYTES)


def add_charger_commands(sub: Any) -> None:
    """Add `chargers ...` and `transactions ...` to the `edgepoint` command's subparsers."""
    chargers = sub.add_parser(
        "chargers",
        help="the embedded CSMS's chargers: register, list, send commands",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = chargers.add_subparsers(title="chargers", metavar="ACTION", required=True)

    def action(name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", type=Path, metavar="FILE", help="config file (TOML)")
        p.set_defaults(handler=handler)
        return p

    def json_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="machine-readable output")

    def charger(p: argparse.ArgumentParser) -> None:
        p.add_argument("charger", metavar="ID", help="charge point id")

    def operator(name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
        p = action(name, handler, help_ + " (through the running daemon)")
        charger(p)
        return p

    def waits(p: argparse.ArgumentParser) -> None:
        json_flag(p)
        p.add_argument(
            "--timeout",
            type=_seconds,
            default=DEFAULT_TIMEOUT_S,
            metavar="S",
            help=f"how long to wait for the charger's answer (default {DEFAULT_TIMEOUT_S:g})",
        )

    # -- registration, on csms.db --
    add = action("add", _add, "register a charger; prints its new password once")
    charger(add)
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin instead"
    )
    json_flag(add)
    json_flag(action("list", _list, "registered chargers: online, last seen, connectors, health"))
    imp = action("import", _import, "register chargers from a CSV file of id,password lines")
    imp.add_argument("file", type=Path, metavar="FILE", help="CSV: id,password (a header is ok)")
    imp.add_argument("--update", action="store_true", help="re-key ids already registered")
    rekey = action("rekey", _rekey, "give a charger a new password (printed once)")
    charger(rekey)
    rekey.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin instead"
    )
    json_flag(rekey)
    charger(action("remove", _remove, "remove a charger (its history stays)"))
    json_flag(action("pending", _pending, "unknown charger ids that tried to connect"))
    admit = action("admit", _admit, "register a pending charger; prints its new password once")
    charger(admit)
    json_flag(admit)

    # -- through the daemon --
    show = operator("show", _show, "one charger: connectors, anomalies, limits")
    json_flag(show)
    reset = operator("reset", _reset, "Reset a charger")
    reset.add_argument("--type", choices=("Soft", "Hard"), default="Soft", help="default Soft")
    waits(reset)
    start = operator("remote-start", _remote_start, "RemoteStartTransaction")
    start.add_argument("id_tag", metavar="TAG", help="the card id to start for")
    start.add_argument("--connector", type=_natural, metavar="N", help="connector id")
    waits(start)
    stop = operator("remote-stop", _remote_stop, "RemoteStopTransaction")
    stop.add_argument("transaction", type=_natural, metavar="TX", help="transaction id")
    waits(stop)
    unlock = operator("unlock", _unlock, "UnlockConnector")
    unlock.add_argument("connector", type=_natural, metavar="CONNECTOR")
    waits(unlock)
    avail = operator("availability", _availability, "ChangeAvailability (connector 0: all)")
    avail.add_argument("connector", type=_natural, metavar="CONNECTOR")
    avail.add_argument("state", choices=("operative", "inoperative"))
    waits(avail)
    config = operator("config", _get_config, "GetConfiguration (every key if none given)")
    config.add_argument("keys", nargs="*", metavar="KEY")
    waits(config)
    set_config = operator("set-config", _set_config, "ChangeConfiguration")
    set_config.add_argument("key", metavar="KEY")
    set_config.add_argument("value", metavar="VALUE")
    waits(set_config)
    waits(operator("clear-cache", _clear_cache, "ClearCache"))
    trigger = operator("trigger", _trigger, "TriggerMessage")
    trigger.add_argument("message", metavar="MESSAGE", help="e.g. StatusNotification, Heartbeat")
    trigger.add_argument("--connector", type=_natural, metavar="N", help="connector id")
    waits(trigger)
    send = operator("send-local-list", _send_local_list, "SendLocalList built from the cards")
    send.add_argument("--full", action="store_true", help="Full (default: Differential)")
    waits(send)
    call = operator("call", _call, "any CALL a central system may send")
    call.add_argument("action", metavar="ACTION", help="e.g. GetLocalListVersion")
    call.add_argument("payload", type=_json_object, metavar="JSON", help="camelCase payload")
    waits(call)

    transactions = sub.add_parser("transactions", help="the embedded CSMS's transactions")
    tx_actions = transactions.add_subparsers(title="transactions", metavar="ACTION", required=True)
    tx_list = tx_actions.add_parser("list", help="transactions with energy, newest first")
    tx_list.add_argument("--config", type=Path, metavar="FILE", help="config file (TOML)")
    tx_list.set_defaults(handler=_transactions)
    json_flag(tx_list)
    tx_list.add_argument("--charger", metavar="ID", help="of one charger")
    which = tx_list.add_mutually_exclusive_group()
    which.add_argument("--live", action="store_true", help="open transactions only")
    which.add_argument("--past", action="store_true", help="closed transactions only")
    tx_list.add_argument("--since", metavar="TIME", help="started at or after (ISO-8601)")
    tx_list.add_argument("--limit", type=_natural, default=100, metavar="N", help="default 100")
    tx_show = tx_actions.add_parser("show", help="one transaction with its meter values")
    tx_show.add_argument("--config", type=Path, metavar="FILE", help="config file (TOML)")
    tx_show.set_defaults(handler=_transaction)
    tx_show.add_argument("transaction", type=_natural, metavar="TX")
    json_flag(tx_show)


def _natural(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a whole number >= 0: {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 300:
        raise argparse.ArgumentTypeError(f"not a number of seconds in (0, 300]: {text!r}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("the payload must be a JSON object")
    return value


def _fail(message: str, code: int = EXIT_ERROR) -> int:
    print(f"edgepoint: {message}", file=sys.stderr)
    return code


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


# -- csms.db ------------------------------------------------------------------------------


def _with_store(config: Config, work: Callable[[CsmsStore], Awaitable[T]]) -> T:
    """Open csms.db (WAL: safe beside the running daemon), do `work`, close."""
    from edgepoint.csms.db import open_csms_database

    async def go() -> T:
        store = await open_csms_database(config.storage.csms_db)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(go())


def _password(args: argparse.Namespace) -> tuple[str, bool]:
    """The password to register and whether it was generated (then it is shown)."""
    if not args.password_stdin:
        return generate_password(), True
    password = sys.stdin.readline().rstrip("\r\n")
    check_auth_key(password)
    return password, False


def _show_password(args: argparse.Namespace, cp_id: str, done: str, password: str | None) -> None:
    if args.json:
        _print_json({"id": cp_id, "password": password})
        return
    print(f"charger {cp_id} {done}")
    if password is not None:
        print("its password (shown only now; set it as the charger's AuthorizationKey):")
        print(password)


def _registration(work: Callable[[], int]) -> int:
    """Run a registration command; a malformed id or password is bad usage."""
    try:
        return work()
    except InvalidIdentifierError as err:
        return _fail(str(err), EXIT_USAGE)


def _add(config: Config, args: argparse.Namespace) -> int:
    def work() -> int:
        cp_id = parse_charge_point_id(args.charger)
        password, generated = _password(args)
        if not _with_store(config, lambda store: store.charge_points.add(cp_id, password)):
            return _fail(f"charger {cp_id} is already registered (`chargers rekey {cp_id}`)")
        _show_password(args, cp_id, "registered", password if generated else None)
        return EXIT_OK

    return _registration(work)


def _rekey(config: Config, args: argparse.Namespace) -> int:
    def work() -> int:
        cp_id = parse_charge_point_id(args.charger)
        password, generated = _password(args)
        if not _with_store(config, lambda store: store.charge_points.rekey(cp_id, password)):
            return _fail(f"no charger {cp_id} is registered")
        _show_password(args, cp_id, "re-keyed", password if generated else None)
        _disconnect_live(config, [cp_id], "re-keyed by the operator")
        return EXIT_OK

    return _registration(work)


def _remove(config: Config, args: argparse.Namespace) -> int:
    cp_id = args.charger
    if not _with_store(config, lambda store: store.charge_points.remove(cp_id)):
        return _fail(f"no charger {cp_id} is registered")
    print(f"charger {cp_id} removed")
    _disconnect_live(config, [cp_id], "removed by the operator")
    return EXIT_OK


def _admit(config: Config, args: argparse.Namespace) -> int:
    def work() -> int:
        cp_id = parse_charge_point_id(args.charger)
        password = generate_password()

        async def admit(store: CsmsStore) -> str | None:
            if await store.pending.get(cp_id) is None:
                return f"{cp_id} is not pending (`chargers pending`; `chargers add` takes any id)"
            if not await store.charge_points.add(cp_id, password):
                await store.pending.discard(cp_id)
                return f"charger {cp_id} is already registered"
            return None  # registering took it off the pending list

        problem = _with_store(config, admit)
        if problem is not None:
            return _fail(problem)
        _show_password(args, cp_id, "admitted", password)
        return EXIT_OK

    return _registration(work)


def _pending(config: Config, args: argparse.Namespace) -> int:
    from edgepoint.csms.reports import jsonable

    found = _with_store(config, lambda store: store.pending.list())
    rows = [
        {
            "id": p.charge_point_id,
            "first_seen": jsonable(p.first_seen),
            "last_seen": jsonable(p.last_seen),
            "attempts": p.attempts,
            "last_address": p.last_address,
        }
        for p in found
    ]
    if args.json:
        _print_json(rows)
        return EXIT_OK
    if not rows:
        print("no pending chargers")
        return EXIT_OK
    print(f"{'ID':<24} {'ATTEMPTS':>8}  {'FIRST SEEN':<24} {'LAST SEEN':<24} FROM")
    for row in rows:
        print(
            f"{row['id']:<24} {row['attempts']:>8}  {row['first_seen']:<24}"
            f" {row['last_seen']:<24} {row['last_address']}"
        )
    return EXIT_OK


def _list(config: Config, args: argparse.Namespace) -> int:
    from edgepoint.clock import SystemClock
    from edgepoint.csms.reports import SiteReports, jsonable

    async def read(store: CsmsStore) -> list[Any]:
        return [jsonable(view) for view in await SiteReports(store, SystemClock()).chargers()]

    rows = _with_store(config, read)
    connected = asyncio.run(_connected(config))
    for row in rows:
        row["online"] = None if connected is None else row["id"] in connected
    if args.json:
        _print_json(rows)
        return EXIT_OK
    if not rows:
        print("no chargers")
        return EXIT_OK
    print(f"{'ID':<24} {'ONLINE':<7} {'LAST SEEN':<25} {'HEALTH':<7} CONNECTORS")
    for row in rows:
        online = {None: "?", True: "yes", False: "no"}[row["online"]]
        health = row["health"] or {}
        score = "-" if health.get("score") is None else str(health["score"])
        print(
            f"{row['id']:<24} {online:<7} {row['last_seen'] or 'never':<25} {score:<7}"
            f" {_connectors(row['connectors'])}"
        )
    if connected is None:
        print("(online state unknown: the daemon's CSMS did not answer)")
    return EXIT_OK


def _connectors(connectors: Sequence[dict[str, Any]]) -> str:
    shown = []
    for c in connectors:
        error = "" if c["error_code"] == "NoError" else f" ({c['error_code']})"
        shown.append(f"{c['connector_id']}:{c['status']}{error}")
    return " ".join(shown) or "-"


async def _connected(config: Config) -> set[str] | None:
    """The ids connected now, if a daemon with a CSMS answers quickly; else None."""
    try:
        status = await request(config.control.socket, "csms.status", answer_within_s=_BRIEF_S)
    except ControlError:
        return None
    return {str(cp) for cp in status.get("connected", [])}


def _disconnect_live(config: Config, ids: Sequence[str], reason: str) -> None:
    """Ask a running daemon to close these chargers' connections (best effort)."""

    async def go() -> None:
        for cp_id in ids:
            try:
                answer = await request(
                    config.control.socket,
                    "chargers.disconnect",
                    answer_within_s=_BRIEF_S,
                    charger=cp_id,
                    reason=reason,
                )
            except ControlError as err:
                if err.code not in (NOT_RUNNING, "unknown_command", "unavailable"):
                    print(
                        f"edgepoint: note: the daemon did not close {cp_id}'s connection ({err});"
                        " the new key applies when it reconnects",
                        file=sys.stderr,
                    )
                return  # no daemon (or no CSMS in it): no connection to close
            if answer.get("disconnected"):
                print(f"closed {cp_id}'s live connection")

    asyncio.run(go())


def _import(config: Config, args: argparse.Namespace) -> int:
    try:
        text = args.file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        return _fail(f"cannot read {args.file}: {err}")
    entries, problems = _parse_import(text)

    async def work(store: CsmsStore) -> tuple[list[str], int]:
        registered = {record.id for record in await store.charge_points.list()}
        taken = [cp_id for _, (cp_id, _) in entries if cp_id in registered]
        if problems or (taken and not args.update):
            return taken, 0
        count = await store.charge_points.register_many(
            [entry for _, entry in entries], replace=args.update, progress=_progress()
        )
        return taken, count

    if not problems and not entries:
        return _fail(f"{args.file}: no chargers in it")
    taken, count = _with_store(config, work)
    if not args.update:
        lines = {cp_id: number for number, (cp_id, _) in entries}
        problems += [(lines[cp_id], f"{cp_id} is already registered") for cp_id in taken]
    if problems:
        for number, problem in sorted(problems):
            print(f"{args.file}:{number}: {problem}", file=sys.stderr)
        return _fail(
            f"{args.file}: {len(problems)} bad line(s); nothing registered"
            + ("" if args.update else " (--update re-keys registered ids)")
        )
    print(f"{count} charger(s) registered from {args.file}")
    if taken:
        _disconnect_live(config, taken, "re-keyed by the operator")
    return EXIT_OK


def _parse_import(text: str) -> tuple[list[tuple[int, tuple[str, str]]], list[tuple[int, str]]]:
    """(line number, (id, password)) of the good rows, (line number, problem) of the bad."""
    entries: list[tuple[int, tuple[str, str]]] = []
    problems: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for index, row in enumerate(csv.reader(text.splitlines())):
        number = index + 1
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        fields = [field.strip() for field in row]
        if not entries and not problems and [f.lower() for f in fields] == ["id", "password"]:
            continue  # the header
        if len(fields) != 2:
            problems.append((number, f"expected 2 fields (id,password), found {len(fields)}"))
            continue
        cp_id, password = fields
        try:
            parse_charge_point_id(cp_id)
            check_auth_key(password)
        except InvalidIdentifierError as err:
            problems.append((number, str(err)))
            continue
        if cp_id in seen:
            problems.append((number, f"{cp_id} is also on line {seen[cp_id]}"))
            continue
        seen[cp_id] = number
        entries.append((number, (cp_id, password)))
    return entries, problems


def _progress() -> Callable[[int, int], None]:
    """Hashing progress on stderr: one updating line on a terminal, else every 10 %."""
    terminal = sys.stderr.isatty()
    shown = [-1]

    def report(done: int, total: int) -> None:
        if terminal:
            end = "\n" if done == total else ""
            print(f"\rhashing keys: {done}/{total}", end=end, file=sys.stderr, flush=True)
            return
        tenth = done * 10 // total
        if tenth != shown[0]:
            shown[0] = tenth
            print(f"hashing keys: {done}/{total}", file=sys.stderr, flush=True)

    return report


# -- through the daemon -------------------------------------------------------------------


def _daemon(config: Config, cmd: str, wait_s: float | None = None, **args: Any) -> Any:
    """One request to the running daemon; ControlError if it fails."""
    within = 10.0 if wait_s is None else wait_s + 5.0
    return asyncio.run(request(config.control.socket, cmd, answer_within_s=within, **args))


def _ask(config: Config, cmd: str, wait_s: float | None, **args: Any) -> tuple[Any, int]:
    """The daemon's answer, or None and the exit code after printing why not."""
    try:
        return _daemon(config, cmd, wait_s, **args), EXIT_OK
    except ControlError as err:
        code = EXIT_USAGE if err.code == "bad_request" else EXIT_ERROR
        return None, _fail(str(err), code)


def _answer(config: Config, args: argparse.Namespace, what: str, cmd: str, **cmd_args: Any) -> int:
    """Send one operator command; print the charger's answer; exit 1 if it refused."""
    reply, code = _ask(
        config, cmd, args.timeout, charger=args.charger, timeout_s=args.timeout, **cmd_args
    )
    if code != EXIT_OK:
        return code
    if args.json:
        _print_json(reply)
    else:
        print(format_answer(args.charger, what, reply))
    status = reply.get("status") if isinstance(reply, dict) else None
    return EXIT_ERROR if status in REFUSALS else EXIT_OK


def format_answer(charger: str, action: str, reply: Any) -> str:
    """A charger's answer as a technician reads it."""
    if not isinstance(reply, dict):
        return f"{charger}: {action}: {json.dumps(reply)}"
    if action == "GetConfiguration":
        lines = [f"{charger}: {action}"]
        for entry in reply.get("configurationKey", []):
            flag = "  (read-only)" if entry.get("readonly") else ""
            lines.append(f"  {entry.get('key')} = {entry.get('value', '')}{flag}")
        if unknown := reply.get("unknownKey"):
            lines.append(f"  unknown keys: {', '.join(map(str, unknown))}")
        return "\n".join(lines)
    head = f"{charger}: {action}" + (f" {reply['status']}" if "status" in reply else "")
    rest = [
        f"  {key}: {value if isinstance(value, str) else json.dumps(value)}"
        for key, value in reply.items()
        if key != "status"
    ]
    return "\n".join([head, *rest])


def _reset(config: Config, args: argparse.Namespace) -> int:
    return _answer(config, args, "Reset", "chargers.reset", type=args.type)


def _remote_start(config: Config, args: argparse.Namespace) -> int:
    extra = {} if args.connector is None else {"connector": args.connector}
    return _answer(
        config, args, "RemoteStartTransaction", "chargers.remote_start", id_tag=args.id_tag, **extra
    )


def _remote_stop(config: Config, args: argparse.Namespace) -> int:
    return _answer(
        config, args, "RemoteStopTransaction", "chargers.remote_stop", transaction=args.transaction
    )


def _unlock(config: Config, args: argparse.Namespace) -> int:
    return _answer(config, args, "UnlockConnector", "chargers.unlock", connector=args.connector)


def _availability(config: Config, args: argparse.Namespace) -> int:
    return _answer(
        config,
        args,
        "ChangeAvailability",
        "chargers.availability",
        connector=args.connector,
        operative=args.state == "operative",
    )


def _get_config(config: Config, args: argparse.Namespace) -> int:
    extra = {"keys": args.keys} if args.keys else {}
    return _answer(config, args, "GetConfiguration", "chargers.get_configuration", **extra)


def _set_config(config: Config, args: argparse.Namespace) -> int:
    return _answer(
        config,
        args,
        "ChangeConfiguration",
        "chargers.change_configuration",
        key=args.key,
        value=args.value,
    )


def _clear_cache(config: Config, args: argparse.Namespace) -> int:
    return _answer(config, args, "ClearCache", "chargers.clear_cache")


def _trigger(config: Config, args: argparse.Namespace) -> int:
    extra = {} if args.connector is None else {"connector": args.connector}
    return _answer(
        config, args, "TriggerMessage", "chargers.trigger", message=args.message, **extra
    )


def _call(config: Config, args: argparse.Namespace) -> int:
    return _answer(
        config, args, args.action, "chargers.call", action=args.action, payload=args.payload
    )


def _send_local_list(config: Config, args: argparse.Namespace) -> int:
    outcome, code = _ask(
        config,
        "chargers.send_local_list",
        args.timeout,
        charger=args.charger,
        full=args.full,
        timeout_s=args.timeout,
    )
    if code != EXIT_OK:
        return code
    if args.json:
        _print_json(outcome)
    elif not outcome["sent"]:
        print(f"{args.charger}: local list up to date (version {outcome['list_version']})")
    else:
        print(
            f"{args.charger}: SendLocalList {outcome['update_type']} version"
            f" {outcome['list_version']} ({outcome['entries']} entries):"
            f" {outcome['reply']['status']}"
        )
    reply = outcome.get("reply") or {}
    return EXIT_ERROR if reply.get("status") in REFUSALS else EXIT_OK


def _show(config: Config, args: argparse.Namespace) -> int:
    view, code = _ask(config, "chargers.show", None, charger=args.charger)
    if code != EXIT_OK:
        return code
    if args.json:
        _print_json(view)
        return EXIT_OK
    print(format_charger(view))
    return EXIT_OK


def format_charger(view: dict[str, Any]) -> str:
    """`chargers show` for a terminal."""
    online = {None: "online ?", True: "online", False: "offline"}[view.get("online")]
    made = " ".join(str(v) for v in (view.get("vendor"), view.get("model")) if v) or "unknown"
    lines = [
        f"{view['id']}  {online}  last seen {view.get('last_seen') or 'never'}",
        f"  {made}, firmware {view.get('firmware') or '?'}, registered {view['registered_at']}",
    ]
    for c in view.get("connectors", []):
        error = "" if c["error_code"] == "NoError" else f" ({c['error_code']})"
        lines.append(f"  connector {c['connector_id']}: {c['status']}{error} since {c['since']}")
    if health := view.get("health"):
        lines.append(
            f"  health: score {health['score'] if health['score'] is not None else '-'},"
            f" {health['sessions']} session(s) in {health['window_s'] // 3600} h"
        )
    if limiter := view.get("limiter"):
        lines.append(
            f"  calls: {limiter['calls']} answered, {limiter['delayed_calls']} slowed down"
        )
    for limit in view.get("load_limits", []):
        lines.append(
            f"  load limit, transaction {limit['transaction_id']}: {limit['limit_w']} W"
            f" ({limit['state']})"
        )
    if anomalies := view.get("anomalies"):
        lines.append("  recent anomalies:")
        for a in anomalies:
            times = f" (x{a['count']})" if a["count"] > 1 else ""
            lines.append(
                f"    {a['last_at']} {a['kind']} {a['reason']} {a['action'] or 'connection'}:"
                f" {a['detail']}{times}"
            )
    return "\n".join(lines)


def _transactions(config: Config, args: argparse.Namespace) -> int:
    query: dict[str, Any] = {"limit": args.limit}
    if args.charger is not None:
        query["charger"] = args.charger
    if args.live or args.past:
        query["live"] = bool(args.live)
    if args.since is not None:
        query["since"] = args.since
    rows, code = _ask(config, "transactions.list", None, **query)
    if code != EXIT_OK:
        return code
    if args.json:
        _print_json(rows)
        return EXIT_OK
    if not rows:
        print("no transactions")
        return EXIT_OK
    print(
        f"{'TX':>6}  {'CHARGER':<20} {'CONN':>4}  {'CARD':<9} {'STARTED':<25}"
        f" {'STOPPED':<25} ENERGY"
    )
    for tx in rows:
        energy = "-" if tx["energy_wh"] is None else f"{tx['energy_wh']:g} Wh"
        print(
            f"{tx['transaction_id']:>6}  {tx['charge_point_id']:<20} {tx['connector_id']:>4}"
            f"  {tx['id_tag']:<9} {tx['started_at']:<25} {tx['stopped_at'] or '(live)':<25}"
            f" {energy}"
        )
    return EXIT_OK


def _transaction(config: Config, args: argparse.Namespace) -> int:
    tx, code = _ask(config, "transactions.show", None, transaction=args.transaction)
    if code != EXIT_OK:
        return code
    if args.json:
        _print_json(tx)
        return EXIT_OK
    energy = "-" if tx["energy_wh"] is None else f"{tx['energy_wh']:g} Wh"
    print(
        f"transaction {tx['transaction_id']} on {tx['charge_point_id']} connector"
        f" {tx['connector_id']}, card {tx['id_tag']} ({tx['id_tag_status']})\n"
        f"  started {tx['started_at']} at {tx['meter_start']} Wh;"
        f" {'stopped ' + tx['stopped_at'] if tx['stopped_at'] else 'live'}; energy {energy}"
    )
    for sample in tx["meter_values"]:
        phase = f" {sample['phase']}" if sample["phase"] else ""
        print(
            f"  {sample['timestamp']}  {sample['measurand']}{phase} = {sample['value']}"
            f" {sample['unit']}  ({sample['context']})"
        )
    return EXIT_OK
