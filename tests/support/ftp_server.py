"""A minimal FTP server for transfer tests: one user, passive mode, binary RETR/STOR/SIZE.

Enough of RFC 959 for Python's ftplib as a client (USER, PASS, TYPE, PASV, SIZE, RETR,
STOR, QUIT), on 127.0.0.1 in the test's event loop. Files live in the `files` dict.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class FtpServer:
    """`async with FtpServer(user, password) as ftp:` then use ftp.url(path)."""

    user: str = "edge"
    password: str = "point"
    files: dict[str, bytes] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    async def __aenter__(self) -> FtpServer:
        self._server = await asyncio.start_server(self._control, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def url(self, path: str, user: str | None = None, password: str | None = None) -> str:
        who = f"{user or self.user}:{password or self.password}@"
        return f"ftp://{who}127.0.0.1:{self.port}{path}"

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        passive: asyncio.Server | None = None
        data_conn: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        user = ""
        logged_in = False
        await say("220 test FTP")
        try:
            while line := (await reader.readline()).decode().strip():
                verb, _, arg = line.partition(" ")
                verb = verb.upper()
                self.commands.append(verb)
                if verb == "USER":
                    user = arg
                    await say("331 password please")
                elif verb == "PASS":
                    logged_in = user == self.user and arg == self.password
                    await say("230 logged in" if logged_in else "530 login incorrect")
                elif not logged_in:
                    await say("530 not logged in")
                elif verb == "TYPE":
                    await say("200 type set")
                elif verb == "PASV":

                    async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                        await data_conn.put((r, w))

                    passive = await asyncio.start_server(accept, "127.0.0.1", 0)
                    port = passive.sockets[0].getsockname()[1]
                    await say(f"227 passive (127,0,0,1,{port >> 8},{port & 255})")
                elif verb == "SIZE":
                    if arg in self.files:
                        await say(f"213 {len(self.files[arg])}")
                    else:
                        await say("550 no such file")
                elif verb in ("RETR", "STOR"):
                    if verb == "RETR" and arg not in self.files:
                        await say("550 no such file")
                        continue
                    await say("150 opening data connection")
                    data_reader, data_writer = await data_conn.get()
                    if verb == "RETR":
                        data_writer.write(self.files[arg])
                        await data_writer.drain()
                    else:
                        self.files[arg] = await data_reader.read()
                    data_writer.close()
                    with contextlib.suppress(ConnectionError):
                        await data_writer.wait_closed()
                    if passive is not None:
                        passive.close()
                    await say("226 transfer complete")
                elif verb == "QUIT":
                    await say("221 bye")
                    break
                else:
                    await say("502 not implemented")
        finally:
            if passive is not None:
                passive.close()
            writer.close()
