"""The hub: every open connection, keyed by the peer it talks to, whichever side
opened it; the server that accepts them; and the check of who is on the other end.

A message to a peer goes over a connection already open to it in either direction
before a new one is dialled (telepathy-salut closes a second connection from a
contact at once), and every stanza read on any connection goes through one dispatch.

Environment: XMPPLL_HEADER_TIMEOUT (seconds, default stream.HEADER_TIMEOUT = 10)
bounds how long an accepted connection may stay silent before its stream header;
tests of a silent peer set it short. It is read when the hub is made.

With TLS (xmppll.xmpp.tls) a name that advertises a key is checked by that key, not
by its address: a stream from it is verified once the initiator proved the key in the
handshake, and a connection to or from it is used for our stanzas only then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Protocol

from xmppll.addresses import Address, advertises
from xmppll.errors import IOFailure, SecurityError
from xmppll.xmpp.connection import Connection, Remote
from xmppll.xmpp.dial import Target, connect
from xmppll.xmpp.dispatch import Dispatcher
from xmppll.xmpp.stream import HEADER_TIMEOUT
from xmppll.xmpp.tls import PLAIN_PEERS, Tls

log = logging.getLogger("xmppll")
HEADER_TIMEOUT_ENV = "XMPPLL_HEADER_TIMEOUT"
# Connections served at once. Each can hold up to ~40x the stanza limit while parsing a
# hostile stanza, so the cap is what bounds the agent's memory; past it a connection
# is closed at once, with a logged reason, and the ones already open keep flowing.
MAX_SESSIONS = 1024
# Stanzas parsed but not on disk, across all connections: each holds ~3 KB, so this
# bounds what a flood over many connections can make the agent hold (~25 MB).
MAX_UNSTORED_ALL = 8192
LOOKUP_WAIT = 0.5  # how long `strict` waits to resolve a sender it does not know yet


class Peers(Protocol):
    """What the hub needs from discovery to check a sender (the agent passes its
    Directories; streams never import discovery)."""

    async def resolve(self, name: str, wait: float) -> object | None: ...

    def owners(self, address: Address) -> list[str]: ...

    def advertised_by(self, name: str, address: Address) -> bool: ...

    # The TLS pin `name` advertises (its TXT x-xmppll-tls), or None. Optional: a Peers
    # without it is taken to know of no keys.
    # def pin(self, name: str) -> str | None: ...


def header_timeout() -> float:
    """Seconds a new connection may take to send its stream header: HEADER_TIMEOUT, or
    a positive number from $XMPPLL_HEADER_TIMEOUT (tests use a short one)."""
    raw = os.environ.get(HEADER_TIMEOUT_ENV, "")
    try:
        value = float(raw)
    except ValueError:
        return HEADER_TIMEOUT
    return value if value > 0 else HEADER_TIMEOUT


class Hub:
    """The connections of one name (an agent, or a one-shot `send`)."""

    def __init__(self, *, me: Callable[[], str], peers: Peers | None,
                 dispatcher: Dispatcher, verify: str = "mark", tls: Tls | None = None) -> None:
        self.me = me
        self.peers = peers
        self.dispatcher = dispatcher
        self.verify = verify
        self.tls = tls if tls is not None and tls.on else None
        self.header_timeout = header_timeout()
        self.by_peer: dict[str, list[Connection]] = {}
        self.tasks: set[asyncio.Task] = set()
        self.accepted = 0
        self.dialled = 0
        self._servers: list[asyncio.AbstractServer] = []

    @property
    def strict(self) -> bool:
        return self.verify == "strict"

    # --- the registry ---------------------------------------------------------------

    def register(self, conn: Connection) -> None:
        assert conn.peer is not None
        conns = self.by_peer.setdefault(conn.peer.lower(), [])
        if conn not in conns:
            conns.append(conn)

    def forget(self, conn: Connection) -> None:
        conns = self.by_peer.get((conn.peer or "").lower())
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self.by_peer[(conn.peer or "").lower()]

    def usable(self, name: str) -> Connection | None:
        """The connection to write to `name` on now, if one is open: the most recently
        used, whichever side opened it."""
        conns = [c for c in self.by_peer.get(name.lower(), []) if c.usable]
        return max(conns, key=lambda c: c.last_used) if conns else None

    def peer_moved(self, name: str, addresses: list[str]) -> None:
        """A peer's addresses changed (or it left): a connection we dialled to an
        address it no longer has leads nowhere, and the next message must open a new
        one. Connections it opened to us stay: they are its own to close."""
        for conn in list(self.by_peer.get(name.lower(), [])):
            if conn.initiator and not advertises(addresses, (conn.remote.address,
                                                             conn.remote.scope)):
                log.info("closing the stream %s: no longer its address", conn)
                self.forget(conn)
                asyncio.ensure_future(conn.close_politely())

    def connections(self) -> list[Connection]:
        return [c for conns in self.by_peer.values() for c in conns]

    def backlogged(self) -> bool:
        return self.dispatcher.unstored() > MAX_UNSTORED_ALL

    # --- opening --------------------------------------------------------------------

    async def dial(self, target: Target, *, timeout: float,
                   sources: list[str] | None) -> Connection:
        """A new connection to `target`, its stream open both ways."""
        pin = None
        if self.tls is not None:
            pin = self.tls.expect(target.name, target.pin)
            if pin is None and self.tls.required:
                raise SecurityError(
                    f"{target.name} cannot encrypt (it advertises no TLS key, like "
                    f"{PLAIN_PEERS}) and tls = require: not sent")
        reader, writer = await connect(target, timeout=timeout, sources=sources)
        conn = Connection(self, reader, writer, initiator=True, peer=target.name, pin=pin)
        self.dialled += 1
        self._spawn(conn.run(timeout))
        try:
            await conn.start(self.me(), timeout)
        except BaseException:
            conn.abort()
            raise
        self.register(conn)
        return conn

    async def serve(self, socks: list[socket.socket]) -> None:
        for sock in socks:
            self._servers.append(await asyncio.start_server(
                self._accept, sock=sock, backlog=MAX_SESSIONS))  # else asyncio sets 100

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        _no_delay(writer)
        if len(self.tasks) >= MAX_SESSIONS:
            log.warning("connection from %s refused: %d streams open already",
                        writer.get_extra_info("peername"), len(self.tasks))
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await Connection(self, reader, writer, initiator=False).run(self.header_timeout)
        finally:
            self.tasks.discard(task)

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        """Stop accepting; close every connection politely, then end their readers."""
        for server in self._servers:
            server.close()
        conns = self.connections()
        if conns:
            await asyncio.gather(*(c.close_politely() for c in conns),
                                 return_exceptions=True)
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    # --- who is on the other end ----------------------------------------------------

    # --- TLS ------------------------------------------------------------------------

    def advertised_pin(self, name: str) -> str | None:
        lookup = getattr(self.peers, "pin", None)
        return lookup(name) if lookup is not None else None

    def expected_pin(self, name: str) -> str | None:
        """The key a stream with `name` must prove (its TXT, checked against the known
        peers: SecurityError when it changed); None when it advertises none."""
        if self.tls is None:
            return None
        return self.tls.expect(name, self.advertised_pin(name))

    def secure_enough(self, conn: Connection) -> bool:
        """May our stanzas go out on `conn`? Not in clear, nor before the key is proven,
        to a name that advertises a key; not in clear at all under tls = require."""
        if self.tls is None:
            return True
        if conn.initiator:
            pin = conn.pin
        else:
            try:
                pin = self.expected_pin(conn.peer) if conn.peer else None
            except SecurityError:
                return False
        if pin is not None:
            return conn.secure and conn.proven == pin
        return conn.secure or not self.tls.required

    def _key_check(self, name: str, proven: str | None) -> bool | None:
        """Verified by key (True/False) when `name` advertises one; None when it does
        not, and the address check applies."""
        if self.tls is None:
            return None
        try:
            pin = self.expected_pin(name)
        except SecurityError as exc:
            log.warning("sender %s not verified: %s", name, exc)
            return False
        if pin is None:
            return None
        return proven == pin

    async def identify(self, claimed: str | None, remote: Remote,
                       proven: str | None = None) -> tuple[str | None, bool | None]:
        """The claimed name if it advertises this address (or, when it advertises a TLS
        key, if the stream proved that key), else the only peer that advertises it; the
        second value says whether that held (None: not checked)."""
        address = (remote.address, remote.scope)
        if self.verify == "off" or self.peers is None:
            return claimed, None
        if claimed and claimed.lower() == self.me().lower():
            return claimed, False  # nobody else may speak as us
        if claimed and (by_key := self._key_check(claimed, proven)) is not None:
            return claimed, by_key
        if claimed:
            if not self.peers.advertised_by(claimed, address):
                # Asked, not only looked up: a wide-area sender's records are one DNS
                # query away. Only strict waits for the link to answer: under `mark`
                # that wait would delay every unpublished sender's delivery for nothing.
                await self.peers.resolve(claimed, LOOKUP_WAIT if self.strict else 0)
            return claimed, self.peers.advertised_by(claimed, address)
        owners = self.peers.owners(address)
        if len(owners) == 1:
            return owners[0], True
        return None, False

    def still_verified(self, name: str | None, remote: Remote,
                       proven: str | None = None) -> bool:
        """The check of identify() against what is known now, without waiting."""
        if not name or name.lower() == self.me().lower() or self.peers is None:
            return False
        by_key = self._key_check(name, proven)
        if by_key is not None:
            return by_key
        return self.peers.advertised_by(name, (remote.address, remote.scope))


def _no_delay(writer: asyncio.StreamWriter) -> None:
    """TCP_NODELAY on an accepted socket. asyncio sets it only on sockets whose proto is
    IPPROTO_TCP, and those accepted from our listeners have proto 0: Nagle then held our
    small writes (a stream header, a receipt) behind the peer's delayed ACK, ~40 ms
    each time, which made every STARTTLS restart cost 42 ms."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def bind_port(port: int, given: bool) -> list[socket.socket]:
    """Reserve the TCP port on IPv6 and IPv4 before publishing it: a published port
    nobody listens on makes every sender fail. 5298 is the XEP's default; when it is
    taken and was not asked for explicitly, the kernel picks one (as libpurple does)."""
    try:
        return _bind_pair(port)
    except OSError as exc:
        if given:
            raise IOFailure(f"cannot listen on port {port}: {exc.strerror}") from exc
        return _bind_pair(0)


def _bind_pair(port: int) -> list[socket.socket]:
    socks: list[socket.socket] = []
    try:
        v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        socks.append(v6)
        v6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        v6.bind(("::", port))
        port = v6.getsockname()[1]
        v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        socks.append(v4)
        v4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        v4.bind(("0.0.0.0", port))
    except OSError:
        for s in socks:
            s.close()
        raise
    for s in socks:
        s.listen(MAX_SESSIONS)  # a burst of connects must queue, not be refused
        s.setblocking(False)
    return socks
