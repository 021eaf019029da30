"""Incoming streams: the agent's TCP server on the advertised port (IPv4 and IPv6).

Each connection gets our header at once, in a write of its own (libpurple waits for it
before sending anything, and crashes when the header and an element arrive in one
read); every stanza goes to the inbox before it is acknowledged (receipt, or our
closing tag that tells a one-shot sender "delivered"); the sender's identity is
checked against the addresses it advertises over mDNS.

Environment: XMPPLL_HEADER_TIMEOUT (seconds, default stream.HEADER_TIMEOUT = 10)
bounds how long a connection may stay silent before its stream header; tests of a
silent peer set it short. It is read when the server starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from xmppll.agent.inbox import Inbox
from xmppll.errors import IOFailure
from xmppll.xmpp import stanza as st
from xmppll.xmpp.stream import (
    CLOSE,
    FEATURES_EMPTY,
    HEADER_TIMEOUT,
    IDLE_TIMEOUT,
    STREAM_NS,
    Stanza,
    StreamClose,
    StreamError,
    StreamOpen,
    StreamParser,
    header,
    serialize,
    split_tag,
)

log = logging.getLogger("xmppll")
HEADER_TIMEOUT_ENV = "XMPPLL_HEADER_TIMEOUT"
READ_SIZE = 65536
MAX_UNSTORED = 2048  # stanzas parsed but not yet on disk before we stop reading
# The same across all streams: each waiting stanza holds ~3 KB, so this bounds what a
# flood over many streams can make the agent hold (~25 MB) instead of 1024 x 2048.
MAX_UNSTORED_ALL = 8192
VERIFY_POLICIES = ("strict", "mark", "off")
# Streams served at once. Each can hold up to ~40x the stanza limit while parsing a
# hostile stanza, so the cap is what bounds the agent's memory; past it a connection
# is closed at once, with a logged reason, and the streams already open keep flowing.
MAX_SESSIONS = 1024

# (name, wait) -> advertised addresses; with wait, resolving a peer not known yet
Lookup = Callable[[str, bool], Awaitable[list[str] | None]]
# (address, scope) -> names of peers advertising it
Owners = Callable[[str, str | None], list[str]]


def normalize(address: str) -> tuple[str, str | None]:
    """(address, scope) with IPv4-mapped IPv6 turned back into IPv4, so one peer is
    one address however the socket family presented it."""
    text, _, scope = address.partition("%")
    addr = ipaddress.ip_address(text)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped), None
    return str(addr), (scope or None) if addr.version == 6 and addr.is_link_local else None


def same_address(a: tuple[str, str | None], b: tuple[str, str | None]) -> bool:
    """Equal addresses; a link-local one must also be on the same interface."""
    if a[0] != b[0]:
        return False
    return a[1] is None or b[1] is None or a[1] == b[1]


def _peer_address(writer: asyncio.StreamWriter) -> tuple[str, int, str | None]:
    peer = writer.get_extra_info("peername")
    host, port = peer[0], peer[1]
    addr, scope = normalize(host)
    if scope is None and len(peer) == 4 and peer[3] and ":" in addr:
        try:
            scope = socket.if_indextoname(peer[3])
        except OSError:
            scope = str(peer[3])
    return addr, port, scope


def _stream_error(condition: str, text: str | None = None) -> bytes:
    ns = "urn:ietf:params:xml:ns:xmpp-streams"
    detail = ""
    if text:
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        detail = f"<text xmlns='{ns}'>{escaped}</text>"
    return (f"<stream:error><{condition} xmlns='{ns}'/>{detail}</stream:error>").encode() + CLOSE


@dataclass
class Identity:
    name: str | None
    verified: bool | None


class Session:
    """One incoming stream, from accept to close."""

    def __init__(self, server: IncomingServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.address, self.port, self.scope = _peer_address(writer)
        self.parser = StreamParser()
        self.opened: StreamOpen | None = None
        self.identity: Identity | None = None
        self.unstored: list[asyncio.Future] = []
        self.store_failed = False
        self.where = f"{self.address}{'%' + self.scope if self.scope else ''}:{self.port}"

    async def run(self) -> None:
        try:
            await self._loop()
        except StreamError as exc:
            log.warning("stream from %s closed: %s", self.where, exc)
            await self._send(_stream_error("not-well-formed", str(exc)))
        except TimeoutError:
            what = "no stream header" if self.opened is None else "idle"
            log.warning("stream from %s closed: %s timeout", self.where, what)
            await self._send(_stream_error("connection-timeout"))
        except IOFailure as exc:
            if not self.store_failed:  # else _check_stored has said so already
                log.error("stream from %s closed: %s", self.where, exc)
                await self._send(_stream_error("resource-constraint",
                                               "the inbox cannot store"))
        except _Refused as exc:
            log.warning("stream from %s refused: %s", self.where, exc)
            await self._send(_stream_error("not-authorized", str(exc)))
        except (ConnectionError, OSError) as exc:
            log.info("stream from %s dropped: %s", self.where, exc)
        finally:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
            for fut in self.unstored:
                if fut.done() and not fut.cancelled():
                    fut.exception()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        # The header must be complete by a deadline, not merely keep bytes coming: one
        # byte a second (slowloris) would otherwise hold a stream open forever.
        header_by = loop.time() + self.server.header_timeout
        while True:
            if self.opened is None:
                timeout = header_by - loop.time()
                if timeout <= 0:
                    raise TimeoutError
            else:
                timeout = IDLE_TIMEOUT
            data = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
            if not data:
                await self._settle()  # the peer dropped TCP after (or without) its close
                return
            try:
                events = self.parser.feed(data)
            except StreamError as exc:
                for event in exc.events:  # what arrived whole before the fault is kept
                    await self._handle(event)
                await self._settle()
                raise
            for event in events:
                if await self._handle(event):
                    return
            if (len(self.unstored) > MAX_UNSTORED
                    or self.server.inbox.unstored > MAX_UNSTORED_ALL):
                await self._settle()

    async def _handle(self, event: Any) -> bool:
        """True when the stream is over."""
        if isinstance(event, StreamOpen):
            await self._open(event)
        elif isinstance(event, Stanza):
            await self._stanza(event)
        elif isinstance(event, StreamClose):
            await self._settle()
            await self._send(CLOSE)
            return True
        return False

    async def _open(self, event: StreamOpen) -> None:
        self.opened = event
        claimed = event.attrs.get("from") or None
        v10 = event.attrs.get("version") == "1.0"
        await self._send(header(from_=self.server.name(), to=claimed,
                                version="1.0" if v10 else None))
        if v10:
            await self._send(FEATURES_EMPTY)
        if claimed:
            self.identity = await self.server.identify(claimed, self.address, self.scope)

    async def _stanza(self, event: Stanza) -> None:
        element = event.element
        ns, local = split_tag(element.tag)
        if ns == STREAM_NS:
            if local == "error":
                log.warning("stream from %s: peer sent a stream error: %s", self.where, event.xml)
            return  # stream:features from an initiator (Salut) are accepted and ignored
        if self.identity is None:
            self.identity = await self.server.identify(
                element.get("from") or None, self.address, self.scope
            )
        elif self.identity.verified is not None:
            # Checked again for every stanza: if the name stops advertising this
            # address mid-stream, what follows is no longer vouched for.
            self.identity.verified = self.server.still_verified(
                self.identity.name, self.address, self.scope)
        if self.server.verify == "strict" and not self.identity.verified:
            raise _Refused(f"sender {self.identity.name or 'unknown'} is not verified")
        ack = st.receipt_ack_id(element)
        if ack and self.server.on_receipt and st.to_json(element, "")["body"] is None:
            # A bare receipt for a message our agent sent: consumed here (it completes
            # that send), not stored as if someone had written to us.
            log.info("receipt %s from %s", ack, self.where)
            self.server.on_receipt(ack)
            return
        record = st.to_json(element, event.xml)
        record["peer"] = {"address": self.address, "port": self.port, "name": self.identity.name}
        if self.scope:
            record["peer"]["scope"] = self.scope
        record["verified"] = self.identity.verified
        record["received"] = _now()
        stored = self.server.inbox.submit(record)
        self.unstored.append(stored)
        stored.add_done_callback(self._check_stored)
        answer = self._answer(element)
        if answer is not None:
            stored.add_done_callback(lambda fut: self._reply_when_stored(fut, answer))

    def _answer(self, element: Any) -> bytes | None:
        me = self.server.name()
        if split_tag(element.tag)[1] == "iq":
            reply = st.iq_response(element, from_=me)
            return serialize(reply).encode() if reply is not None else None
        receipt_id = st.receipt_request_id(element)
        if receipt_id and element.get("from"):
            return serialize(st.build_receipt(element.get("from"), me, receipt_id)).encode()
        return None

    def _check_stored(self, stored: asyncio.Future) -> None:
        """A stanza the inbox could not store (disk full) ends the stream at once, with
        the reason: a sender waiting for its receipt would otherwise wait out its whole
        timeout and learn only "no answer", and one still sending would pile up more
        that cannot be stored. Closing our side makes the read loop end and settle."""
        if stored.cancelled() or stored.exception() is None or self.store_failed:
            return
        self.store_failed = True
        log.error("stream from %s closed: %s", self.where, stored.exception())
        with contextlib.suppress(Exception):
            self.writer.write(_stream_error("resource-constraint", "the inbox cannot store"))
            self.writer.close()

    def _reply_when_stored(self, stored: asyncio.Future, answer: bytes) -> None:
        """XEP-0184: the receipt says "it is in the inbox", so only after fsync."""
        if stored.cancelled() or stored.exception() is not None:
            return
        with contextlib.suppress(Exception):
            self.writer.write(answer)

    async def _settle(self) -> None:
        """Wait until everything received so far is on disk; raises IOFailure if not."""
        pending, self.unstored = self.unstored, []
        for fut in pending:
            await fut

    async def _send(self, data: bytes) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), 10)


class _Refused(Exception):
    pass


def header_timeout() -> float:
    """Seconds a new connection may take to send its stream header: HEADER_TIMEOUT, or
    a positive number from $XMPPLL_HEADER_TIMEOUT (tests use a short one)."""
    raw = os.environ.get(HEADER_TIMEOUT_ENV, "")
    try:
        value = float(raw)
    except ValueError:
        return HEADER_TIMEOUT
    return value if value > 0 else HEADER_TIMEOUT


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class IncomingServer:
    """Accepts streams on already-bound listening sockets."""

    def __init__(self, *, name: Callable[[], str], inbox: Inbox, lookup: Lookup,
                 owners: Owners, owned_by: Callable[[str], list[str]],
                 verify: str = "mark",
                 on_receipt: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.on_receipt = on_receipt
        self.inbox = inbox
        self.lookup = lookup
        self.owners = owners
        self.owned_by = owned_by
        self.verify = verify
        self.header_timeout = header_timeout()
        self.sessions: set[asyncio.Task] = set()
        self.accepted = 0
        self._servers: list[asyncio.AbstractServer] = []

    async def start(self, socks: list[socket.socket]) -> None:
        for sock in socks:
            self._servers.append(await asyncio.start_server(
                self._accept, sock=sock, backlog=MAX_SESSIONS))  # else asyncio sets 100

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if len(self.sessions) >= MAX_SESSIONS:
            log.warning("connection from %s refused: %d streams open already",
                        writer.get_extra_info("peername"), len(self.sessions))
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self.sessions.add(task)
        try:
            await Session(self, reader, writer).run()
        finally:
            self.sessions.discard(task)

    async def identify(self, claimed: str | None, address: str,
                       scope: str | None) -> Identity:
        """Who is on the other end: the claimed name if it advertises this address,
        else the only peer that advertises it; `verified` says whether that held."""
        if self.verify == "off":
            return Identity(claimed, None)
        if claimed and claimed.lower() == self.name().lower():
            return Identity(claimed, False)  # nobody else may speak as us
        if claimed:
            # Only strict mode waits to resolve an unknown sender: under `mark` that
            # wait would delay every unpublished sender's delivery for nothing.
            advertised = await self.lookup(claimed, self.verify == "strict")
            if advertised and any(same_address(normalize(a), (address, scope))
                                  for a in advertised):
                return Identity(claimed, True)
            return Identity(claimed, False)
        owners = self.owners(address, scope)
        if len(owners) == 1:
            return Identity(owners[0], True)
        return Identity(None, False)

    def still_verified(self, name: str | None, address: str, scope: str | None) -> bool:
        """The check of identify() against what is cached now, without waiting."""
        if not name or name.lower() == self.name().lower():
            return False
        return any(same_address(normalize(a), (address, scope))
                   for a in self.owned_by(name))

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self.sessions):
            task.cancel()
        if self.sessions:
            await asyncio.gather(*self.sessions, return_exceptions=True)


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
