"""The control socket: how one-shot commands talk to the agent.

Protocol (version 1), one JSON object per line over a Unix stream socket at
`$XDG_RUNTIME_DIR/xmppll/<name>.sock` (fallback `/tmp/xmppll-<uid>/`), directory 0700,
socket 0600, and the agent also checks the peer's uid (SO_PEERCRED):

    request:  {"v": 1, "op": "<op>", ...arguments}
    reply:    {"v": 1, "ok": true, ...result}  or  {"v": 1, "ok": false, "error": "...", "code": N}

Streaming ops (`follow`, `inbox`) send the reply line, then one line per event until
the client disconnects. This module is the client side and must stay cheap to import:
no zeroconf, no XML, no asyncio (one-shot commands pay only for a socket round trip).
"""

from __future__ import annotations

import _socket  # socket's C core: the socket module adds enum and selectors (~3 ms)
import os
import time

from xmppll import identity, quickjson
from xmppll.errors import IOFailure, UnavailableError, UsageError, XmpplError

TYPE_CHECKING = False  # typing costs ~2.5 ms to import: commands through the agent skip it
if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from typing import Any

VERSION = 1
CONNECT_TIMEOUT = 2.0
READ_SIZE = 65536


def _connect(path: str, timeout: float | None = CONNECT_TIMEOUT) -> _socket.socket:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def is_alive(path: str) -> bool:
    """A socket file whose agent still accepts connections (a killed agent leaves
    the file behind; connecting is the only reliable test)."""
    try:
        _connect(path, 0.5).close()
        return True
    except OSError:
        return False


def running_agents() -> list[str]:
    """Names of this user's running agents."""
    directory = identity.runtime_dir()
    try:
        files = sorted(f for f in os.listdir(directory) if f.endswith(".sock"))
    except OSError:
        return []
    return [identity.name_from_socket(f) for f in files
            if is_alive(os.path.join(directory, f))]


def find_agent(name: str | None) -> str:
    """The agent a command should talk to: the named one, else the only one running,
    else the default name's. Raises UnavailableError when none runs."""
    if name is not None:
        if "@" not in name:
            name = f"{name}@{identity.host_label()}"
        if not is_alive(identity.socket_path(name)):
            raise UnavailableError(f"no agent is running for {name} (start one: xmppll announce)")
        return name
    agents = running_agents()
    if not agents:
        raise UnavailableError("no agent is running (start one: xmppll announce)")
    if len(agents) == 1:
        return agents[0]
    default = identity.default_name()
    if default in agents:
        return default
    raise UsageError(f"several agents are running ({', '.join(agents)}): pick one with --name")


def _send(sock: _socket.socket, op: str, args: dict[str, Any]) -> None:
    line = quickjson.dumps({"v": VERSION, "op": op, **args}) + "\n"
    try:
        sock.sendall(line.encode())
    except (BrokenPipeError, ConnectionResetError):
        # The agent may have answered and hung up before reading (it refuses another
        # uid at once): that answer, read next, says why; no answer is reported there.
        return


def _check(reply: dict[str, Any]) -> dict[str, Any]:
    if not reply.get("ok"):
        raise XmpplError(reply.get("error", "the agent refused the request"),
                         int(reply.get("code", 70)))
    return reply


def _lines(sock: _socket.socket) -> Iterator[dict[str, Any]]:
    """The agent's JSON lines, as they arrive (a streaming op never ends its last)."""
    pending = b""
    while True:
        data = sock.recv(READ_SIZE)
        if not data:
            return
        *complete, pending = (pending + data).split(b"\n")
        for raw in complete:
            yield quickjson.loads(raw)


def request(name: str, op: str, *, timeout: float | None = 30.0, **args: Any) -> dict[str, Any]:
    """One request, one reply."""
    try:
        sock = _connect(identity.socket_path(name))
        try:
            sock.settimeout(timeout)
            _send(sock, op, args)
            for reply in _lines(sock):
                return _check(reply)
        finally:
            sock.close()
    except TimeoutError as exc:
        raise IOFailure(f"the agent for {name} did not answer {op!r} in time") from exc
    except OSError as exc:
        raise UnavailableError(f"cannot reach the agent for {name}: {exc}") from exc
    raise IOFailure(f"the agent for {name} closed the connection without answering")


def stream(name: str, op: str, *, duration: float | None = None,
           **args: Any) -> Iterator[dict[str, Any]]:
    """A streaming request: yields every event line after the reply, until the agent
    goes away or `duration` seconds have passed."""
    try:
        sock = _connect(identity.socket_path(name))
        sock.settimeout(None)
        _send(sock, op, args)
    except OSError as exc:
        raise UnavailableError(f"cannot reach the agent for {name}: {exc}") from exc
    end = time.monotonic() + duration if duration else None
    lines = _lines(sock)
    try:
        first = next(lines, None)
        if first is None:
            raise UnavailableError(f"the agent for {name} closed the connection without "
                                   "answering")
        _check(first)
        while True:
            if end is not None:
                sock.settimeout(max(0.001, end - time.monotonic()))
            try:
                line = next(lines, None)
            except TimeoutError:
                return
            if line is None:
                return
            yield line
    finally:
        sock.close()


def prepare_runtime_dir() -> Path:
    """Create the socket directory private to this user (0700) or refuse to use one
    that someone else could write to."""
    from pathlib import Path

    directory = Path(identity.runtime_dir())
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = directory.stat()
    if info.st_uid != os.getuid():
        raise IOFailure(f"{directory} belongs to another user; refusing to use it")
    if info.st_mode & 0o077:
        os.chmod(directory, 0o700)
    return directory
