"""`edgepoint outbox list|show|retry|drop`, `edgepoint migrate` and `edgepoint backup`.

They open edgepoint.db beside a running daemon (WAL, busy timeout), like `cards`. A
retried message goes to the end of the queue with its first message id; the daemon's
sender picks it up with the next message it queues, at its next connection, or within
15 minutes. `drop` needs `--yes`, and StartTransaction/StopTransaction (billing) also
`--force`: the CSMS never learns of a dropped transaction.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from edgepoint.config import Config
from edgepoint.errors import EdgepointError
from edgepoint.storage.dead_letters import DeadLetter, DeadLetterStore, RetryRefused

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
T = TypeVar("T")


def add_storage_commands(sub: Any) -> None:
    """Add `outbox ...`, `migrate` and `backup` to the `edgepoint` command's subparsers."""
    outbox = sub.add_parser("outbox", help="dead letters and quarantined outbox rows")
    actions = outbox.add_subparsers(title="outbox", metavar="ACTION", required=True)

    def action(name: str, handler: Callable[[Config, argparse.Namespace], int], help_: str) -> Any:
        p = actions.add_parser(name, help=help_)
        p.add_argument("--config", type=Path, metavar="FILE", help="config file (TOML)")
        p.set_defaults(handler=handler)
        return p

    listing = action("list", _list, "list dead letters and quarantined rows")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    show = action("show", _show, "show one, payload included")
    show.add_argument("id", type=int, metavar="ID")
    retry = action("retry", _retry, "queue it again (same message id, tries from zero)")
    retry.add_argument("id", type=int, metavar="ID")
    drop = action("drop", _drop, "delete it for good")
    drop.add_argument("id", type=int, metavar="ID")
    drop.add_argument("--yes", action="store_true", help="really delete it")
    drop.add_argument(
        "--force", action="store_true", help="allow a StartTransaction/StopTransaction"
    )

    for name, handler, help_ in (
        ("migrate", _migrate, "bring both databases to this version's schema and check them"),
        ("backup", _backup, "back up both databases into <storage.dir>/backups now"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", type=Path, metavar="FILE", help="config file (TOML)")
        p.set_defaults(handler=handler)


def _with_store(config: Config, work: Callable[[DeadLetterStore], Awaitable[T]]) -> T:
    from edgepoint.storage.chargepoint import ChargePointStore

    if not config.storage.chargepoint_db.exists():
        raise EdgepointError(f"no database at {config.storage.chargepoint_db}")

    async def go() -> T:
        store = await ChargePointStore.open(config.storage.chargepoint_db)
        try:
            return await work(DeadLetterStore(store.db))
        finally:
            await store.close()

    return asyncio.run(go())


def _list(config: Config, args: argparse.Namespace) -> int:
    rows = _with_store(config, lambda s: s.all())
    if args.json:
        print(json.dumps([_as_dict(r) for r in rows], indent=2))
        return EXIT_OK
    if not rows:
        print("no dead letters")
        return EXIT_OK
    print(f"{'ID':>6}  {'KIND':<11} {'ACTION':<18} {'FAILED AT':<24}  REASON")
    for r in rows:
        print(f"{r.seq:>6}  {r.kind:<11} {r.action:<18} {r.failed_at:<24}  {_line(r.reason)}")
    return EXIT_OK


def _show(config: Config, args: argparse.Namespace) -> int:
    row = _with_store(config, lambda s: s.get(args.id))
    if row is None:
        print(f"edgepoint: no dead letter {args.id}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(_as_dict(row), indent=2))
    return EXIT_OK


def _retry(config: Config, args: argparse.Namespace) -> int:
    try:
        seq = _with_store(config, lambda s: s.retry(args.id))
    except RetryRefused as err:
        print(f"edgepoint: cannot retry {args.id}: {err}", file=sys.stderr)
        return EXIT_ERROR
    print(f"dead letter {args.id} queued again as outbox #{seq}")
    return EXIT_OK


def _drop(config: Config, args: argparse.Namespace) -> int:
    row = _with_store(config, lambda s: s.get(args.id))
    if row is None:
        print(f"edgepoint: no dead letter {args.id}", file=sys.stderr)
        return EXIT_ERROR
    if row.billing and not args.force:
        print(
            f"edgepoint: {args.id} is a {row.action}: billing. The CSMS would never learn of"
            " it; retry it instead, or drop it with --yes --force",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not args.yes:
        print(
            f"edgepoint: drop deletes {row.kind} {row.action} {args.id} for good;"
            " add --yes to do it",
            file=sys.stderr,
        )
        return EXIT_USAGE
    _with_store(config, lambda s: s.drop(args.id))
    print(f"dead letter {args.id} ({row.action}) dropped")
    return EXIT_OK


def _as_dict(row: DeadLetter) -> dict[str, Any]:
    return {
        "id": row.seq,
        "kind": row.kind,
        "action": row.action,
        "session_id": row.session_id,
        "message_id": row.message_id,
        "created_at": row.created_at,
        "failed_at": row.failed_at,
        "reason": row.reason,
        "payload": row.payload_json(),
    }


def _line(text: str, width: int = 70) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


# -- migrate and backup --------------------------------------------------------------------


def _migrate(config: Config, args: argparse.Namespace) -> int:
    """Open (and so migrate) both databases, then check them: the upgrade's middle step."""
    from edgepoint.csms.db import open_csms_database
    from edgepoint.storage.care import quick_check
    from edgepoint.storage.chargepoint import ChargePointStore

    async def go() -> None:
        store = await ChargePointStore.open(config.storage.chargepoint_db)
        await store.close()
        csms = await open_csms_database(config.storage.csms_db)
        await csms.close()

    asyncio.run(go())
    failed = False
    for path in (config.storage.chargepoint_db, config.storage.csms_db):
        problem = quick_check(path)
        print(f"{path}: schema version {_user_version(path)}, {problem or 'ok'}")
        failed = failed or problem is not None
    return EXIT_ERROR if failed else EXIT_OK


def _user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _backup(config: Config, args: argparse.Namespace) -> int:
    from edgepoint.storage.care import backup_database

    for path in (config.storage.chargepoint_db, config.storage.csms_db):
        if path.exists():
            print(f"{path} -> {backup_database(path)}")
    return EXIT_OK
