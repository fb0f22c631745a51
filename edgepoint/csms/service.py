"""The embedded CSMS as a process of its own: `python -m edgepoint.csms.service --config FILE`.

The daemon starts it as a child and restarts it if it dies. Running it apart keeps the
site's chargers off the kiosk's event loop (a thousand chargers cannot delay a tap) and
keeps a failing CSMS from taking the charge point with it (DESIGN invariant 9). The two
still share nothing but OCPP and csms.db's file: the charge point connects to it over
WebSocket like any other charger, and the daemon forwards operator commands to this
process's control socket.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from edgepoint.clock import SystemClock
from edgepoint.config import Config, load_config
from edgepoint.control.api import Access, ControlApi
from edgepoint.control.server import ControlServer
from edgepoint.csms.api import register_csms_commands
from edgepoint.csms.listsync import LocalListSync
from edgepoint.csms.load import LoadBalancer
from edgepoint.csms.operator import SiteOperator
from edgepoint.csms.reports import Retention, RetentionPolicy, SiteReports
from edgepoint.csms.server import SiteCsms
from edgepoint.errors import EdgepointError
from edgepoint.supervisor import Supervisor

log = logging.getLogger(__name__)

PARENT_PID_ENV = "EDGEPOINT_PARENT_PID"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# The site's chargers wait happily for a few ms more; a driver at the kiosk should not:
# when both want the CPU the scheduler gives the kiosk's process the larger share.
CSMS_NICENESS = 10


def services_status(supervisor: Supervisor) -> Callable[[], Awaitable[dict[str, Any]]]:
    """Extra `csms.status` fields: this process's supervised services."""

    async def extra() -> dict[str, Any]:
        return {"services": [dataclasses.asdict(s) for s in supervisor.snapshot()]}

    return extra


async def serve(config: Config) -> None:
    """Run the CSMS and its services until SIGTERM/SIGINT."""
    clock = SystemClock()
    csms = SiteCsms.from_config(config.csms, config.storage.csms_db, clock)
    operator = SiteOperator(csms, clock)
    reports = SiteReports(csms, clock)
    supervisor = Supervisor(clock)
    balancer = (
        None
        if config.csms.site_limit_w is None
        else LoadBalancer(
            csms,
            clock,
            site_limit_w=config.csms.site_limit_w,
            min_per_connector_w=config.csms.min_connector_w,
        )
    )
    retention = Retention(
        csms,
        clock,
        RetentionPolicy(
            meter_values_days=config.csms.retention_meter_values_days,
            transactions_days=config.csms.retention_transactions_days,
            status_history_days=config.csms.retention_status_days,
        ),
    )
    api = ControlApi()
    register_csms_commands(
        api, csms, operator, reports, balancer, status_extra=services_status(supervisor)
    )
    # Only the daemon (same user) or root reach this socket (0600); the daemon checks
    # its own clients' rights before it forwards anything.
    server = ControlServer(config.csms.control_socket, api, Access.for_group(None), mode=0o600)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with asyncio.TaskGroup() as tg:
        tasks = [
            tg.create_task(supervisor.keep("csms server", csms.run)),
            tg.create_task(supervisor.keep("csms api", server.run)),
            tg.create_task(supervisor.keep("retention", retention.run)),
            tg.create_task(supervisor.keep("local lists", LocalListSync(csms, operator).run)),
        ]
        if balancer is not None:
            tasks.append(tg.create_task(supervisor.keep("load balancer", balancer.run)))
        await stop.wait()
        log.info("CSMS stopping")
        for task in tasks:
            task.cancel()


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM us when the daemon dies, even by kill -9: an orphaned CSMS
    would hold the port and the database, and the restarted daemon could not serve."""
    parent = os.environ.get(PARENT_PID_ENV)
    if parent is None:
        return  # started by hand
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if str(os.getppid()) != parent:  # the daemon died before prctl took effect
        sys.exit(0)


def _yield_to_the_kiosk() -> None:
    """Lower this process's CPU priority below the daemon's (only ever raised niceness,
    which needs no privilege, so it works under the unit's NoNewPrivileges)."""
    if os.environ.get(PARENT_PID_ENV) is None:
        return  # started by hand: no kiosk to yield to
    with contextlib.suppress(OSError):
        os.nice(CSMS_NICENESS)


def main(argv: list[str] | None = None) -> int:
    _die_with_parent()
    _yield_to_the_kiosk()
    parser = argparse.ArgumentParser(prog="edgepoint-csms", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except EdgepointError as err:
        print(f"edgepoint csms: invalid configuration: {err}", file=sys.stderr)
        return 2
    from edgepoint.journal import setup_logging

    # The daemon's journal stream is ours too: native entries, our own identifier.
    setup_logging(config.log_level, config.station.id, identifier="edgepoint-csms")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    # What is loaded by now (modules, schemas) lives as long as the process: keep it out
    # of the full collections, each of which would walk all of it again (~13 ms).
    gc.freeze()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
