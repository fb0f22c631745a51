"""`edgepoint ledger pubkey | verify | export`: the station's ledger key and its entries."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from edgepoint.cloud.signing import load_or_create_key, public_key_from_b64
from edgepoint.cloud.verify import verify_entries
from edgepoint.config import Config
from edgepoint.errors import EdgepointError

EXIT_OK, EXIT_BAD = 0, 1
PAGE = 1000


def add_ledger_commands(sub: Any) -> None:
    """Add `ledger ...` to the `edgepoint` command's subparsers."""
    ledger = sub.add_parser("ledger", help="the signed session ledger: key, verify, export")
    actions = ledger.add_subparsers(title="ledger", metavar="ACTION", required=True)

    def action(name: str, handler: Callable[[Config, argparse.Namespace], int], help_: str) -> Any:
        p = actions.add_parser(name, help=help_)
        p.add_argument("--config", type=Path, metavar="FILE", help="config file (TOML)")
        p.set_defaults(handler=handler)
        return p

    action("pubkey", _pubkey, "print the station's public key (made with the key if missing)")
    verify = action("verify", _verify, "check sequence, hash chain, signatures and meters")
    verify.add_argument("--export", type=Path, metavar="FILE", help="check this export instead")
    verify.add_argument("--pubkey", metavar="BASE64", help="the key to check against")
    export = action("export", _export, "write every entry as JSON lines")
    export.add_argument("--output", type=Path, metavar="FILE", help="file (default: stdout)")


def _pubkey(config: Config, args: argparse.Namespace) -> int:
    print(load_or_create_key(config.ledger.key_file).public_b64)
    return EXIT_OK


def _verify(config: Config, args: argparse.Namespace) -> int:
    if args.pubkey:
        try:
            public = public_key_from_b64(args.pubkey)
        except ValueError as err:
            raise EdgepointError(f"--pubkey: {err}") from err
    else:
        public = public_key_from_b64(
            load_or_create_key(config.ledger.key_file, create=False).public_b64
        )
    if args.export is not None:
        entries = _read_export(args.export)
        source = str(args.export)
    else:
        entries = asyncio.run(_all(config))
        source = str(config.storage.chargepoint_db)
    problems = verify_entries(entries, public)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{source}: {len(problems)} problem(s) in {len(entries)} entries", file=sys.stderr)
        return EXIT_BAD
    last = entries[-1]["seq"] if entries else 0
    print(f"{source}: {len(entries)} entries, seq 1..{last}: chain, signatures and meters OK")
    return EXIT_OK


def _export(config: Config, args: argparse.Namespace) -> int:
    entries = asyncio.run(_all(config))
    lines = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)
    if args.output is None:
        sys.stdout.write(lines)
    else:
        args.output.write_text(lines, encoding="utf-8")
        print(f"{len(entries)} entries written to {args.output}", file=sys.stderr)
    return EXIT_OK


def _read_export(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise EdgepointError(f"cannot read {path}: {err}") from err
    entries: list[Any] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except ValueError as err:
            raise EdgepointError(f"{path}:{number}: not JSON: {err}") from err
    return entries


async def _all(config: Config) -> list[dict[str, Any]]:
    return [entry async for entry in _entries(config)]


async def _entries(config: Config) -> AsyncIterator[dict[str, Any]]:
    from edgepoint.storage.chargepoint import MIGRATIONS
    from edgepoint.storage.ledger import LedgerStore
    from edgepoint.storage.sqlite import Database

    db = await Database.open(config.storage.chargepoint_db, MIGRATIONS)
    try:
        store, seq = LedgerStore(db), 0
        while page := await store.entries_after(seq, PAGE):
            for entry in page:
                yield entry
            seq = page[-1]["seq"]
    finally:
        await db.close()
