"""The control socket, server side: accept this user's one-shot commands and hand each
request line to the agent's `op_<name>` handler (the protocol is in control.py).

Every client is its own task: one that sends garbage gets an error reply, one that
sends nothing just waits, one that stops reading is cut off; none can stall the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

from xmppll import identity
from xmppll.agent import control
from xmppll.errors import UnavailableError, XmpplError

# One request line: a `send` carries a whole message, and a body the peer's 1 MiB stanza
# limit admits can grow up to ~6x as JSON with \u escapes (the asyncio default is 64 KiB).
CONTROL_LINE_LIMIT = 8 * 1024 * 1024


class ControlServer:
    """Serves `handlers.op_<op>(request, writer)` on the socket of one agent name."""

    def __init__(self, handlers: Any) -> None:
        self.handlers = handlers
        self._server: asyncio.AbstractServer | None = None
        self._path: Path | None = None

    async def start(self, name: str) -> None:
        """Listen at the socket for `name` (replacing one a killed agent left behind;
        refusing if a live agent has it): directory 0700, socket 0600."""
        await self.stop()
        control.prepare_runtime_dir()
        path = Path(identity.socket_path(name))
        if path.exists():
            if control.is_alive(str(path)):
                raise UnavailableError(f"an agent for {name} is already running")
            path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._client, path=str(path),
                                                           limit=CONTROL_LINE_LIMIT)
        finally:
            os.umask(old)
        self._path = path

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if not _same_user(writer):
                denied = UnavailableError("permission denied: not your agent")
                await reply(writer, error_reply(denied))
                return
            while line := await reader.readline():
                await self._dispatch(line, writer)
        except ValueError:  # a line longer than CONTROL_LINE_LIMIT: no request is that big
            with contextlib.suppress(ConnectionError, TimeoutError):
                await reply(writer, error_reply(XmpplError("bad request: line too long", 64)))
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # gone, or not reading its replies: either way, done with it
        finally:
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # close() would wait for a reader that never reads
            else:
                writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _dispatch(self, line: bytes, writer: asyncio.StreamWriter) -> None:
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or req.get("v") != control.VERSION:
                raise XmpplError("bad request: expected a JSON object with \"v\": 1", 64)
            op = req.get("op")
            handler = getattr(self.handlers, f"op_{op}", None) if isinstance(op, str) else None
            if handler is None:
                raise XmpplError(f"unknown op {op!r}", 64)
            await handler(req, writer)
        except ValueError:  # JSONDecodeError, or bytes that are not UTF-8 at all
            await reply(writer, error_reply(XmpplError("bad request: not JSON", 64)))
        except XmpplError as exc:
            await reply(writer, error_reply(exc))


def _same_user(writer: asyncio.StreamWriter) -> bool:
    """File modes can be loosened by mistake; the kernel's word on the peer cannot."""
    sock = writer.get_extra_info("socket")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == os.getuid()


def error_reply(exc: XmpplError) -> dict[str, Any]:
    return {"ok": False, "error": str(exc), "code": exc.exit_code}


async def reply(writer: asyncio.StreamWriter, data: dict[str, Any]) -> None:
    writer.write((json.dumps({"v": control.VERSION, **data}) + "\n").encode())
    await asyncio.wait_for(writer.drain(), 10)
