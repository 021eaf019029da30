"""Outgoing streams: open one to a peer, send stanzas, close it and know whether they
were delivered.

"Delivered" means the peer closed its side after reading our closing tag (XEP-0174
§end); with receipts requested, that each XEP-0184 receipt came back. A peer that
drops the connection before that, or sends a stream error, did not take the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import termios
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from xmppll.errors import (
    ProtocolFailure,
    TimeoutFailure,
    UnavailableError,
    XmpplError,
)
from xmppll.xmpp import stanza as st
from xmppll.xmpp.stream import (
    CLOSE,
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

READ_SIZE = 65536
_TCP_CLOSE = 7  # tcpi_state of a connection that was reset (linux/tcp_states.h)
CONNECT_AGAIN = 1.0  # s: a fresh connection attempt while the earlier ones get no answer
CONNECT_ATTEMPTS = 4  # at most this many attempts at once to one address


class Rejected(UnavailableError):
    """The peer closed the connection before taking anything: libpurple does this at
    accept when it has not resolved us as a published buddy, so a retry after
    publishing ourselves may succeed."""


class ConnectFailed(XmpplError):
    """No advertised address took the TCP connection: refused (69) or silent (75).
    The address may be stale, so the agent re-resolves and tries again."""


@dataclass
class Target:
    name: str
    addresses: list[str]
    port: int


@dataclass
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    address: str
    parser: StreamParser = field(default_factory=StreamParser)
    peer_header: dict[str, str] | None = None
    closed_by_peer: bool = False
    reset: bool = False  # closed with a RST: data we sent was thrown away unread
    close_tag: bool = False  # the peer sent its </stream:stream>
    receipts: set[str] = field(default_factory=set)
    error: str | None = None


def _order(addresses: list[str]) -> list[str]:
    """IPv4 first: it needs no scope and every peer listens on it; then IPv6."""
    return sorted(addresses, key=lambda a: ":" in a)


def _source_for(address: str, sources: list[str]) -> str | None:
    """One of our advertised addresses in the same family (and for link-local, on the
    same interface), so strict peers that match the source to our record accept us."""
    v6 = ":" in address
    scope = address.partition("%")[2]
    for src in sources:
        if (":" in src) != v6:
            continue
        if v6 and src.lower().startswith("fe80") and scope and src.partition("%")[2] not in (
            "", scope
        ):
            continue
        return src.partition("%")[0] + (f"%{scope}" if v6 and scope and
                                         src.lower().startswith("fe80") else "")
    return None


async def connect(target: Target, *, timeout: float,
                  sources: list[str] | None = None) -> Connection:
    """TCP to each advertised address in turn; the first that answers wins."""
    errors: list[str] = []
    refused = False
    for address in _order(target.addresses):
        local = _source_for(address, sources or [])
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                address, target.port, type=socket.SOCK_STREAM)
            local_addr = None
            if local:
                local_infos = await asyncio.get_running_loop().getaddrinfo(
                    local, 0, type=socket.SOCK_STREAM)
                local_addr = local_infos[0][4]
            family = infos[0][0]
            # `address`, not the resolved sockaddr[0]: that drops the `%scope` of a
            # link-local IPv6 address (the scope is in sockaddr[3]), and connect()
            # then fails with EINVAL.
            reader, writer = await _open(address, target.port, family=family,
                                         local_addr=local_addr or None, timeout=timeout)
            return Connection(reader, writer, address)
        except ConnectionRefusedError:
            refused = True
            errors.append(f"{address}: refused")
        except TimeoutError:
            errors.append(f"{address}: no answer")
        except OSError as exc:
            errors.append(f"{address}: {exc.strerror or exc}")
    detail = "; ".join(errors) or "no address advertised"
    if refused:
        raise ConnectFailed(f"{target.name} refused the connection on port "
                            f"{target.port} ({detail})", UnavailableError.exit_code)
    raise ConnectFailed(f"cannot reach {target.name} on port {target.port} ({detail})",
                        TimeoutFailure.exit_code)


async def _open(address: str, port: int, *, family: int, local_addr: tuple | None,
                timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """open_connection, with a fresh attempt every CONNECT_AGAIN seconds while the
    earlier ones are unanswered; the first to connect wins. The kernel retries a lost
    SYN only after 1, 3, 7, 15 s: at 20 % loss each way about one connection in 60
    took longer than send's 10 s; with attempts side by side the wait stays near the
    round trip. A refusal is final at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    attempts: set[asyncio.Task] = set()
    failure: BaseException | None = None
    try:
        while True:
            if len(attempts) < CONNECT_ATTEMPTS:
                attempts.add(asyncio.ensure_future(asyncio.open_connection(
                    address, port, family=family, local_addr=local_addr,
                    limit=READ_SIZE * 4)))
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            done, attempts = await asyncio.wait(attempts, timeout=min(CONNECT_AGAIN, remaining),
                                                return_when=asyncio.FIRST_COMPLETED)
            won = None
            for task in done:
                exc = task.exception()
                if exc is None and won is None:
                    won = task.result()
                elif exc is None:
                    task.result()[1].close()
                elif isinstance(exc, ConnectionRefusedError):
                    raise exc
                else:
                    failure = exc
            if won is not None:
                return won
            if failure is not None and not attempts:
                raise failure
    finally:
        for task in attempts:
            task.cancel()


async def _read_events(conn: Connection, timeout: float) -> list:
    try:
        data = await asyncio.wait_for(conn.reader.read(READ_SIZE), timeout)
    except ConnectionResetError:
        # libpurple refuses an unresolved sender by closing at once; our header, already
        # on its way, then hits a closed socket, and its close reaches us as a RST.
        # Before the peer's header that is a refusal (Session.open); after it, a peer
        # that threw away what we sent (it died mid-stream): never a delivery.
        conn.reset = True
        data = b""
    if not data:
        conn.closed_by_peer = True
        return []
    try:
        events = conn.parser.feed(data)
    except StreamError as exc:
        raise ProtocolFailure(f"the peer broke the stream protocol: {exc}") from None
    for event in events:
        if isinstance(event, StreamOpen):
            conn.peer_header = event.attrs
        elif isinstance(event, StreamClose):
            conn.closed_by_peer = True
            conn.close_tag = True
        elif isinstance(event, Stanza):
            _note(conn, event)
    return events


def _note(conn: Connection, event: Stanza) -> None:
    ns, local = split_tag(event.element.tag)
    if ns == STREAM_NS and local == "error":
        conn.error = _error_condition(event.element)
        return
    ack = st.receipt_ack_id(event.element)
    if ack:
        conn.receipts.add(ack)


def _error_condition(element: ET.Element) -> str:
    for child in element:
        local = split_tag(child.tag)[1]
        if local != "text":
            return local
    return "undefined-condition"


def _tcp_state(conn: Connection) -> tuple[int, int] | None:
    """(TCP state, bytes we sent that the peer has not acknowledged yet), or None."""
    sock = conn.writer.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        outq = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4)
    except (OSError, ValueError):
        return None
    return info[0], struct.unpack("i", outq)[0] + conn.writer.transport.get_write_buffer_size()


class Session:
    """One outgoing stream to one peer."""

    def __init__(self, conn: Connection, *, me: str, peer: str, timeout: float) -> None:
        self.conn = conn
        self.me = me
        self.peer = peer
        self.timeout = timeout

    async def open(self) -> None:
        """Our header, then the peer's: we never require its `from` or `version`, nor
        features (libpurple sends neither; iChat no from)."""
        self.conn.writer.write(header(from_=self.me, to=self.peer, version="1.0"))
        await self.conn.writer.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while self.conn.peer_header is None:
            self._raise_if_failed(before_header=True)
            await _read_events(self.conn, max(0.01, deadline - loop.time()))
        self._raise_if_failed()

    def _raise_if_failed(self, *, before_header: bool = False) -> None:
        if self.conn.error:
            if self.conn.error in ("not-authorized", "policy-violation"):
                raise Rejected(f"{self.peer} refused our stream ({self.conn.error})")
            raise ProtocolFailure(f"{self.peer} sent a stream error: {self.conn.error}")
        if self.conn.closed_by_peer:
            if before_header:
                raise Rejected(f"{self.peer} closed the connection without answering "
                               "(it accepts only senders it has resolved on the link)")
            if self.conn.reset:
                raise UnavailableError(f"{self.peer} reset the connection: what we sent "
                                       "was not all read (the peer died or gave up)")
            raise UnavailableError(f"{self.peer} closed the stream before our messages "
                                   "were acknowledged")

    async def send(self, elements: list[ET.Element]) -> None:
        data = "".join(serialize(el) for el in elements).encode()
        self.conn.writer.write(data)
        await self.conn.writer.drain()

    async def wait_receipts(self, ids: set[str]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while not ids <= self.conn.receipts:
            self._raise_if_failed()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutFailure(f"no receipt from {self.peer} within {self.timeout:g} s")
            await _read_events(self.conn, remaining)

    async def close(self) -> None:
        """Our closing tag, then wait for the peer's (or its TCP close): only then did
        it read everything we sent."""
        if self.conn.closed_by_peer or self.conn.error:
            self._raise_if_failed()
        self.conn.writer.write(CLOSE)
        await self.conn.writer.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while not self.conn.closed_by_peer:
            if self.conn.error:
                self._raise_if_failed()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutFailure(f"{self.peer} did not close the stream within "
                                     f"{self.timeout:g} s: delivery unconfirmed")
            await _read_events(self.conn, remaining)
        if self.conn.error or self.conn.reset:
            self._raise_if_failed()
        if not self.conn.close_tag and (self.conn.peer_header or {}).get("version") == "1.0":
            # An XMPP 1.0 peer answers our closing tag with its own (RFC 6120 §4.4);
            # xmppll's agent sends it only once what it read is on disk. A bare TCP
            # close from such a peer is a crash (an agent killed after reading our
            # message, before storing it), not a delivery. Peers that send no version
            # (libpurple) may still just close.
            raise UnavailableError(f"{self.peer} closed the connection without closing "
                                   "the stream: delivery unconfirmed")
        await self._all_taken(deadline)
        self.abort()

    async def _all_taken(self, deadline: float) -> None:
        """A TCP close says the peer read what we sent only if nothing we sent was
        still on its way: a peer that dies or closes with our data in flight sends a
        FIN first and refuses the rest with a RST later, and counting the FIN as a
        delivery was a false success. So wait until the kernel has every byte acked
        (a half-closing peer keeps reading) or the connection is reset (it will not)."""
        loop = asyncio.get_running_loop()
        while True:
            state = _tcp_state(self.conn)
            if state is None:
                return  # no socket to ask (not TCP): the close is all we know
            tcp, unacked = state
            if tcp == _TCP_CLOSE:
                raise UnavailableError(f"{self.peer} reset the connection: what we sent "
                                       "was not all read (the peer died or gave up)")
            if unacked == 0:
                return
            if loop.time() >= deadline:
                raise UnavailableError(f"{self.peer} closed the connection with {unacked} "
                                       "bytes of ours still unread: delivery failed")
            await asyncio.sleep(0.01)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.writer.close()


async def deliver(target: Target, elements: list[ET.Element], *, me: str, timeout: float,
                  sources: list[str] | None = None, receipt_ids: set[str] | None = None
                  ) -> None:
    """One stream: connect, send, (receipts,) close. Raises an XmpplError with the
    exit code that says what went wrong."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    conn = await connect(target, timeout=timeout, sources=sources)
    session = Session(conn, me=me, peer=target.name, timeout=timeout)
    try:
        await session.open()
        await session.send(elements)
        if receipt_ids:
            session.timeout = max(0.1, deadline - loop.time())
            await session.wait_receipts(receipt_ids)
        session.timeout = max(0.1, deadline - loop.time())
        await session.close()
    except TimeoutError:  # a subclass of OSError: must come first, or it reads as 69
        raise TimeoutFailure(f"{target.name} did not answer within {timeout:g} s") from None
    except (ConnectionError, OSError) as exc:
        raise UnavailableError(f"{target.name} dropped the connection: {exc}") from None
    finally:
        session.abort()


class _Pooled:
    """An open stream to one peer, kept for reuse, with a reader that collects the
    peer's receipts and notices when it goes away."""

    def __init__(self, session: Session, pool: StreamPool, key: str) -> None:
        self.session = session
        self.pool = pool
        self.key = key
        self.sent = 0
        self.idle: asyncio.TimerHandle | None = None
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        conn = self.session.conn
        try:
            while not conn.closed_by_peer and not conn.error:
                await _read_events(conn, 3600)
                for ack in conn.receipts:
                    self.pool.acknowledge(ack)
                conn.receipts.clear()
        except (XmpplError, ConnectionError, OSError, TimeoutError):
            pass
        finally:
            self.pool.forget(self)

    def touch(self, idle: float) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(
            idle, lambda: asyncio.ensure_future(self.close()))

    async def close(self) -> None:
        """Idle: close politely with our tag (XEP-0174 §end), then the socket."""
        self.pool.forget(self)
        if self.idle is not None:
            self.idle.cancel()
        with contextlib.suppress(Exception):
            self.session.conn.writer.write(CLOSE)
            await asyncio.wait_for(self.session.conn.writer.drain(), 2)
        self.reader.cancel()
        self.session.abort()


class StreamPool:
    """The agent's outgoing streams. To peers that send receipts (XEP-0184) a stream
    stays open for `idle` seconds and is reused, and a message counts as delivered when
    its receipt comes back, on this stream or on one the peer opens to us. To peers
    without receipts (libpurple) each message gets its own stream, delivered when the
    peer closes after our closing tag."""

    def __init__(self, *, idle: float = 10.0) -> None:
        self.idle = idle
        self.streams: dict[str, _Pooled] = {}
        self.waiting: dict[str, asyncio.Future] = {}
        self.opened = 0

    def acknowledge(self, msg_id: str) -> None:
        future = self.waiting.get(msg_id)
        if future is not None and not future.done():
            future.set_result(None)

    def forget(self, pooled: _Pooled) -> None:
        if self.streams.get(pooled.key) is pooled:
            del self.streams[pooled.key]

    async def send(self, target: Target, element: ET.Element, *, me: str, timeout: float,
                   sources: list[str] | None, receipts: bool) -> None:
        if not receipts:
            await deliver(target, [element], me=me, timeout=timeout, sources=sources)
            return
        msg_id = element.get("id") or ""
        future = asyncio.get_running_loop().create_future()
        self.waiting[msg_id] = future
        try:
            pooled = await self._stream(target, me=me, timeout=timeout, sources=sources)
            await pooled.session.send([element])
            pooled.sent += 1
            try:
                await asyncio.wait_for(asyncio.shield(future), timeout)
            except TimeoutError:
                raise TimeoutFailure(f"no receipt from {target.name} within {timeout:g} s"
                                     ) from None
            pooled.touch(self.idle)
        except TimeoutError:  # the stream header never came (a subclass of OSError)
            raise TimeoutFailure(f"{target.name} did not answer within {timeout:g} s"
                                 ) from None
        except (ConnectionError, OSError) as exc:
            raise UnavailableError(f"{target.name} dropped the connection: {exc}") from None
        finally:
            self.waiting.pop(msg_id, None)

    async def _stream(self, target: Target, *, me: str, timeout: float,
                      sources: list[str] | None) -> _Pooled:
        key = target.name.lower()
        pooled = self.streams.get(key)
        if pooled is not None and not pooled.session.conn.closed_by_peer:
            return pooled
        conn = await connect(target, timeout=timeout, sources=sources)
        session = Session(conn, me=me, peer=target.name, timeout=timeout)
        try:
            await session.open()
        except BaseException:
            session.abort()
            raise
        self.opened += 1
        pooled = _Pooled(session, self, key)
        self.streams[key] = pooled
        return pooled

    async def close(self) -> None:
        for pooled in list(self.streams.values()):
            await pooled.close()
