"""The control API's vocabulary: v1 messages, the command registry and who may act on hardware."""

from __future__ import annotations

import grp
import json
import logging
import os
import pwd
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from edgepoint.errors import ControlError, EdgepointError

log = logging.getLogger(__name__)

VERSION = 1
# Commands the server itself answers (they need the connection); nobody may register them.
BUILTINS = frozenset({"hello", "watch"})


class Code(StrEnum):
    """Machine-readable error codes; the `message` next to one is for humans."""

    BAD_REQUEST = "bad_request"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_COMMAND = "unknown_command"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    FAILED = "failed"
    TOO_LARGE = "too_large"
    BUSY = "busy"


class RequestError(ControlError):
    """A request refused before or by its command; carries the request's id when readable."""

    def __init__(self, message: str, code: str, request_id: Any = None) -> None:
        super().__init__(message, code)
        self.request_id = request_id


# -- who is calling ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Peer:
    """The process at the other end of a connection, as the kernel reported it (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int
    user: str
    groups: frozenset[int]

    @classmethod
    def lookup(cls, pid: int, uid: int, gid: int) -> Peer:
        """Name the user and collect its groups; NSS may block, so call this in a thread."""
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:  # a uid without a passwd entry (a container, a deleted user)
            return cls(pid, uid, gid, str(uid), frozenset({gid}))
        return cls(pid, uid, gid, user, frozenset({gid, *os.getgrouplist(user, gid)}))

    def __str__(self) -> str:
        return f"{self.user} (uid {self.uid}, pid {self.pid})"


@dataclass(frozen=True, slots=True)
class Access:
    """Who may run hardware commands: root, the daemon's own user and members of one group."""

    daemon_uid: int
    group_id: int
    group_name: str

    @classmethod
    def for_group(cls, name: str | None) -> Access:
        """Members of `control.group`, or of the group the daemon runs as when it is unset."""
        if name is None:
            gid = os.getegid()
            try:
                name = grp.getgrgid(gid).gr_name
            except KeyError:
                name = str(gid)
        else:
            try:
                gid = grp.getgrnam(name).gr_gid
            except KeyError as err:
                raise ControlError(f"control.group: there is no group {name!r}") from err
        return cls(os.geteuid(), gid, name)

    def allows_hardware(self, peer: Peer) -> bool:
        return peer.uid in (0, self.daemon_uid) or self.group_id in peer.groups


# -- commands and events ----------------------------------------------------------------

# A handler is awaited with the checked args as keyword arguments (and `peer=` if asked).
Handler = Callable[..., Awaitable[Any]]
ArgType = type | tuple[type, ...]
_JSON_TYPES: dict[type, str] = {
    str: "str",
    int: "int",
    float: "float",
    bool: "bool",
    list: "list",
    dict: "dict",
    type(None): "null",
}
_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")


def _kinds(name: str, spec: ArgType) -> tuple[type, ...]:
    kinds = spec if isinstance(spec, tuple) else (spec,)
    for kind in kinds:
        if kind not in _JSON_TYPES:
            raise TypeError(f"argument {name!r}: {kind!r} is not a JSON type")
    return kinds


def _fits(value: Any, kinds: tuple[type, ...]) -> bool:
    # JSON has one number type: an int is a fine float, but true is not a number.
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int) and float in kinds:
        return True
    return isinstance(value, kinds)


def _type_names(kinds: tuple[type, ...]) -> str:
    return " or ".join(_JSON_TYPES[kind] for kind in kinds)


@dataclass(frozen=True, slots=True)
class Command:
    """One registered command: its handler, its arguments and what it may touch."""

    name: str
    handler: Handler
    summary: str
    required: Mapping[str, tuple[type, ...]]
    optional: Mapping[str, tuple[type, ...]]
    mutates: bool
    hardware: bool
    with_peer: bool
    private: frozenset[str]
    # A forwarded command's args are checked where it is carried out (the CSMS process).
    forwarded: bool = False

    def check_args(self, args: Mapping[str, Any], request_id: Any) -> dict[str, Any]:
        """The args if they match the schema, else a bad_request naming the argument."""

        def refuse(message: str) -> RequestError:
            return RequestError(f"{self.name}: {message}", Code.BAD_REQUEST, request_id)

        if self.forwarded:
            return dict(args)
        for key in args:
            if key not in self.required and key not in self.optional:
                known = ", ".join(sorted([*self.required, *self.optional])) or "none"
                raise refuse(f"unknown argument {key!r} (arguments: {known})")
        for key in self.required:
            if key not in args:
                raise refuse(f"missing argument {key!r}")
        for key, value in args.items():
            kinds = self.required.get(key) or self.optional[key]
            if not _fits(value, kinds):
                got = _JSON_TYPES.get(type(value), type(value).__name__)
                raise refuse(f"argument {key!r} must be {_type_names(kinds)}, got {got}")
        return dict(args)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "summary": self.summary,
            "args": {
                **{k: {"type": _type_names(v), "required": True} for k, v in self.required.items()},
                **{
                    k: {"type": _type_names(v), "required": False} for k, v in self.optional.items()
                },
            },
            "mutates": self.mutates,
            "hardware": self.hardware,
        }

    def audit_args(self, args: Mapping[str, Any]) -> str:
        """The args for the log: private ones (card UIDs) masked like the status masks them."""
        shown = {k: _mask(v) if k in self.private else v for k, v in args.items()}
        text = json.dumps(shown, separators=(",", ":"), default=str)
        return text if len(text) <= 200 else text[:197] + "..."


def _mask(value: Any) -> str:
    text = str(value)
    return "****" + text[-4:] if len(text) > 4 else "****"


@dataclass(frozen=True, slots=True)
class StateEvent:
    """An event kind carrying a state: sent now, then after every change, bursts coalesced."""

    read: Callable[[], Awaitable[Any]]
    # Registers a change callback (called on the loop) and returns the call that removes it.
    watch: Callable[[Callable[[], None]], Callable[[], None]]


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """An event kind carrying a sequence (log lines): every item in order, `backlog` per client."""

    # Registers an item callback (called on the loop) and returns the call that removes it.
    subscribe: Callable[[Callable[[Any], None]], Callable[[], None]]
    backlog: int


class ControlApi:
    """The commands and event kinds the daemon serves; the server adds `hello` and `watch`."""

    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}
        self.events: dict[str, StateEvent | StreamEvent] = {}

    def add_command(
        self,
        name: str,
        handler: Handler,
        *,
        summary: str = "",
        required: Mapping[str, ArgType] | None = None,
        optional: Mapping[str, ArgType] | None = None,
        mutates: bool = False,
        hardware: bool = False,
        with_peer: bool = False,
        private: Iterable[str] = (),
        forwarded: bool = False,
    ) -> Command:
        """Register `name` (lower case, dotted: "chargers.reset"); hardware implies mutates.

        `forwarded`: the handler hands the args on to another process that checks them.
        """
        if not _NAME.fullmatch(name):
            raise ValueError(f"command name {name!r}: use lower-case words joined by '.'")
        if name in BUILTINS or name in self._commands:
            raise ValueError(f"command {name!r} is already registered")
        req = {k: _kinds(k, v) for k, v in (required or {}).items()}
        opt = {k: _kinds(k, v) for k, v in (optional or {}).items()}
        if with_peer and ("peer" in req or "peer" in opt):
            raise ValueError(f"{name}: an argument named 'peer' would hide the caller")
        if both := req.keys() & opt.keys():
            raise ValueError(f"{name}: {sorted(both)} both required and optional")
        command = Command(
            name=name,
            handler=handler,
            summary=summary,
            required=MappingProxyType(req),
            optional=MappingProxyType(opt),
            mutates=mutates or hardware,
            hardware=hardware,
            with_peer=with_peer,
            private=frozenset(private),
            forwarded=forwarded,
        )
        self._commands[name] = command
        return command

    def add_state_event(
        self,
        kind: str,
        read: Callable[[], Awaitable[Any]],
        watch: Callable[[Callable[[], None]], Callable[[], None]],
    ) -> None:
        """An event kind whose messages are the latest state (`status`)."""
        self._add_event(kind, StateEvent(read, watch))

    def add_stream_event(
        self,
        kind: str,
        subscribe: Callable[[Callable[[Any], None]], Callable[[], None]],
        backlog: int = 256,
    ) -> None:
        """An event kind whose messages are a sequence (`log`): a client falling more than
        `backlog` items behind loses the oldest and is told how many (`lost`)."""
        if backlog < 1:
            raise ValueError("backlog must be at least 1")
        self._add_event(kind, StreamEvent(subscribe, backlog))

    def _add_event(self, kind: str, event: StateEvent | StreamEvent) -> None:
        if not _NAME.fullmatch(kind):
            raise ValueError(f"event kind {kind!r}: use lower-case words joined by '.'")
        if kind in self.events:
            raise ValueError(f"event kind {kind!r} is already registered")
        self.events[kind] = event

    def command(self, name: str) -> Command | None:
        return self._commands.get(name)

    def describe(self, may_act: bool) -> list[dict[str, Any]]:
        """Every command with its arguments, and whether this caller may run it."""
        return [
            {**c.describe(), "allowed": may_act or not c.hardware}
            for c in sorted(self._commands.values(), key=lambda c: c.name)
        ]

    async def execute(self, request: Request, peer: Peer, access: Access) -> Any:
        """Run a registered command for `peer`; RequestError/ControlError say why not."""
        command = self._commands.get(request.cmd)
        if command is None:
            raise RequestError(f"unknown command {request.cmd!r}", Code.UNKNOWN_COMMAND, request.id)
        args = command.check_args(request.args, request.id)
        if command.hardware and not access.allows_hardware(peer):
            log.warning(
                "control: refused %s to %s: not in group %s", command.name, peer, access.group_name
            )
            raise RequestError(
                f"{command.name} acts on hardware: only root, the daemon's user and members of"
                f" group {access.group_name!r} may use it, and {peer.user} is none of these",
                Code.FORBIDDEN,
                request.id,
            )
        if command.with_peer:
            args["peer"] = peer
        try:
            result = await command.handler(**args)
        except EdgepointError as err:
            if command.mutates:
                code = err.code if isinstance(err, ControlError) else Code.FAILED
                log.info(
                    "control: %s %s by %s failed (%s): %s",
                    command.name,
                    command.audit_args(request.args),
                    peer,
                    code,
                    err,
                )
            raise
        if command.mutates:
            log.info("control: %s %s by %s", command.name, command.audit_args(request.args), peer)
        return result


# -- messages on the wire ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One request, whichever form it came in."""

    id: Any
    cmd: str
    args: dict[str, Any]


def parse_request(line: bytes) -> Request:
    """A request line in the v1 form or the older unversioned one ({"cmd": ..., **args})."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError) as err:  # RecursionError: [[[[…]]]]
        raise RequestError(f"not JSON: {err}", Code.BAD_REQUEST) from err
    if not isinstance(message, dict):
        raise RequestError("a request is a JSON object", Code.BAD_REQUEST)
    request_id = message.get("id")
    cmd = message.get("cmd")
    if not isinstance(cmd, str):
        raise RequestError('a request needs a string "cmd"', Code.BAD_REQUEST, request_id)
    if "v" not in message:
        # The unversioned form, from before v1: the args sit next to "cmd".
        args = {k: v for k, v in message.items() if k not in ("cmd", "id")}
        return Request(request_id, cmd, args)
    version = message["v"]
    if version != VERSION or isinstance(version, bool):
        raise RequestError(
            f"protocol version {version!r} is not supported; this daemon speaks {VERSION}",
            Code.UNSUPPORTED_VERSION,
            request_id,
        )
    args = message.get("args", {})
    if not isinstance(args, dict):
        raise RequestError('"args" must be an object', Code.BAD_REQUEST, request_id)
    return Request(request_id, cmd, args)


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def encode_result(request_id: Any, result: Any) -> bytes:
    """A success answer; TypeError/ValueError if the result is not JSON."""
    return _line({"v": VERSION, "id": request_id, "ok": True, "result": result})


def encode_error(request_id: Any, code: str, message: str) -> bytes:
    return _line(
        {
            "v": VERSION,
            "id": request_id,
            "ok": False,
            "error": {"code": str(code), "message": message},
        }
    )


def encode_event(kind: str, data: Any, lost: int = 0) -> bytes:
    """An event message; `lost` counts the items of a stream dropped just before this one."""
    message: dict[str, Any] = {"v": VERSION, "event": kind, "data": data}
    if lost:
        message["lost"] = lost
    return _line(message)
