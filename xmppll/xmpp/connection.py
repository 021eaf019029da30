"""One XEP-0174 connection: a TCP connection that carries an XML stream each way.

Whoever opened it, both ends may send stanzas on it (telepathy-salut keeps one
connection per contact and closes a second one at once; a responder-only bot answers
on the stream it was sent). So a Connection is the same object whichever side opened
it: it reads the peer's stream and hands every stanza to the Hub's dispatch, and it
is what we write our own stanzas on.

Responding, our header goes out in a write of its own (libpurple waits for it before
sending anything, and crashes when the header and an element arrive in one read).
Closing, "delivered" means the peer closed its side after reading our closing tag.

STARTTLS (xmppll.xmpp.tls) happens here, driven by the read loop so that nothing reads
the socket while it is wrapped. Initiating to a peer that advertises a pin: its
features must offer <starttls/> (else a downgrade, refused), we send it with our
certificate inside, wait for <proceed/>, wrap, check its certificate against the pin,
and open the stream again; the stream is usable only after the peer's new header.
Responding: <starttls/> is offered only to initiators that sent version='1.0'
(libpurple never does, and crashes on features it did not ask for).

Every byte we write goes through one ordered path (`_write`): what is written in one
turn of the event loop (the sends of many delivery tasks, the receipts of one fsync)
leaves in one transport write at the end of the turn, or sooner at FLUSH_AT bytes.
Over TLS a write is a record, and asyncio's TLS transport costs tens of µs of Python per
record, so one record per stanza cost a third of the throughput. Writes that must be
out before something else happens (our header, STARTTLS, a stream error, the closing
tag) flush the queue first, so nothing is reordered or left behind.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import logging
import socket
import ssl
import struct
import termios
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xmppll.addresses import normalize
from xmppll.errors import (
    IOFailure,
    ProtocolFailure,
    SecurityError,
    TimeoutFailure,
    UnavailableError,
)
from xmppll.xmpp import tls
from xmppll.xmpp.stream import (
    CLOSE,
    FEATURES_EMPTY,
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

if TYPE_CHECKING:
    from xmppll.xmpp.hub import Hub

log = logging.getLogger("xmppll")
READ_SIZE = 65536
# A TLS 1.3 handshake is a few round trips; on a lossy link TCP's retransmissions back
# off to seconds each, so it gets longer than a stream header may take.
TLS_HANDSHAKE_TIMEOUT = 30.0
FLUSH_AT = 16384  # queued bytes written at once rather than at the end of the turn: a TLS record
MAX_UNSTORED = 2048  # stanzas parsed but not yet on disk before this stream stops reading
_TCP_CLOSE = 7  # tcpi_state of a connection that was reset (linux/tcp_states.h)


class Rejected(UnavailableError):
    """The peer closed the connection before its header: libpurple does this at accept
    when it has not resolved us as a published buddy, so a retry after publishing
    ourselves may succeed."""


class Refused(Exception):
    """We end this stream: its sender may not speak here (`--verify strict`)."""


@dataclass
class Remote:
    address: str  # normalised, without scope
    port: int
    scope: str | None

    def __str__(self) -> str:
        return f"{self.address}{'%' + self.scope if self.scope else ''}:{self.port}"


def remote_of(writer: asyncio.StreamWriter) -> Remote:
    peer = writer.get_extra_info("peername")
    addr, scope = normalize(peer[0])
    if scope is None and len(peer) == 4 and peer[3] and ":" in addr:
        try:
            scope = socket.if_indextoname(peer[3])
        except OSError:
            scope = str(peer[3])
    return Remote(addr, peer[1], scope)


def stream_error(condition: str, text: str | None = None) -> bytes:
    ns = "urn:ietf:params:xml:ns:xmpp-streams"
    detail = ""
    if text:
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        detail = f"<text xmlns='{ns}'>{escaped}</text>"
    return (f"<stream:error><{condition} xmlns='{ns}'/>{detail}</stream:error>").encode() + CLOSE


def _starttls_features(required: bool) -> bytes:
    inner = "<required/>" if required else ""
    return (f"<stream:features><starttls xmlns='{tls.TLS_NS}'>{inner}</starttls>"
            "</stream:features>").encode()


def _starttls_request(hub_tls: tls.Tls | None) -> bytes:
    """<starttls/>, with our certificate inside when we have one: it is public (its
    fingerprint is in our TXT), and the responder needs it before the handshake to
    require that we prove its key (tls.py)."""
    if hub_tls is None or hub_tls.creds is None:
        return f"<starttls xmlns='{tls.TLS_NS}'/>".encode()
    cert = base64.b64encode(hub_tls.creds.der).decode()
    return (f"<starttls xmlns='{tls.TLS_NS}'><certificate xmlns='{tls.CERT_NS}'>{cert}"
            "</certificate></starttls>").encode()


def _error_condition(element: ET.Element) -> str:
    for child in element:
        local = split_tag(child.tag)[1]
        if local != "text":
            return local
    return "undefined-condition"


class Connection:
    """One TCP connection to one peer, a stream each way."""

    def __init__(self, hub: Hub, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 *, initiator: bool, peer: str | None = None, pin: str | None = None) -> None:
        self.hub = hub
        self.reader = reader
        self.writer = writer
        self.initiator = initiator
        self.remote = remote_of(writer)
        self.parser = StreamParser()
        # Who is on the other end: the name we dialled (we connected to an address it
        # advertises), or, accepting, the name it claims once checked.
        self.peer = peer
        self.verified: bool | None = True if initiator else None
        self.peer_header: dict[str, str] | None = None
        self.header_seen = asyncio.Event()
        self.done = asyncio.Event()  # the read side has ended, for whatever reason
        self.closing = False  # our closing tag is out: nothing more may be written
        self.close_tag = False  # the peer sent its </stream:stream>
        self.reset = False  # closed with a RST: data we sent was thrown away unread
        self.error: str | None = None  # a <stream:error> condition the peer sent
        self.failure: BaseException | None = None  # why our read side ended, if not a close
        self.unstored: deque[asyncio.Future] = deque()
        self._reads = 0  # reads from the socket so far
        self._checked = 0  # the read whose stanzas last re-checked the sender
        self.store_failed = False
        self.last_used = asyncio.get_running_loop().time()
        self.idle_handle: asyncio.TimerHandle | None = None
        # finish() is judging a delivery by the socket's state: the read side ending
        # (the peer's close) must not close the socket under it.
        self._finishing = False
        # TLS: the fingerprint the peer must show (initiating: from its TXT; None means
        # plain text is allowed), whether the stream is encrypted, and the fingerprint
        # the peer proved it holds the key of (initiating: the responder's; responding:
        # the initiator's, when it sent a certificate matching its advertised pin).
        self.pin = pin
        self.secure = False
        self.proven: str | None = None
        self.peer_der: bytes | None = None  # the certificate behind `proven`
        self.tls_step: str | None = None  # initiating: "features", then "asked"
        self.offered_tls = False  # responding: our features offered <starttls/>
        self.established = False  # initiating: the stream is open (after TLS, if any)
        # The ordered write path: bytes queued this turn, their size, the flush scheduled
        # for the end of the turn; `sealed` once the closing tag or a stream error is
        # queued (nothing may follow it); `wrapping` while the socket is being wrapped.
        self._out: list[bytes] = []
        self._out_size = 0
        self._flush_handle: asyncio.Handle | None = None
        self._sealed = False
        self._wrapping = False

    def __str__(self) -> str:
        """How logs name it: `from 10.0.0.6:51234`, or `to juliet@capulet at ...`."""
        if self.initiator:
            return f"to {self.peer} at {self.remote}"
        return f"from {self.remote}"

    @property
    def usable(self) -> bool:
        """Open both ways, its peer known: a stanza written now will be read."""
        return (self.header_seen.is_set() and not self.done.is_set() and not self.closing
                and self.peer is not None and self.verified is not False
                and self.hub.secure_enough(self))

    # --- reading --------------------------------------------------------------------

    async def run(self, header_timeout: float) -> None:
        """Read the peer's stream until it ends; every stanza goes to the hub."""
        # A stream we opened fails into the send that opened it, which says why; one
        # we accepted has only the log to tell.
        level = logging.INFO if self.initiator else logging.WARNING
        try:
            await self._read_loop(header_timeout)
        except StreamError as exc:
            self.failure = exc
            log.log(level, "stream %s closed: %s", self, exc)
            await self._send_quietly(stream_error("not-well-formed", str(exc)))
        except TimeoutError as exc:
            self.failure = exc
            what = "no stream header" if self.peer_header is None else "idle"
            log.log(level, "stream %s closed: %s timeout", self, what)
            await self._send_quietly(stream_error("connection-timeout"))
        except IOFailure as exc:
            self.failure = exc
            if not self.store_failed:
                log.error("stream %s closed: %s", self, exc)
                await self._send_quietly(stream_error("resource-constraint",
                                                      "the inbox cannot store"))
        except Refused as exc:
            self.failure = exc
            log.warning("stream %s refused: %s", self, exc)
            await self._send_quietly(stream_error("not-authorized", str(exc)))
        except SecurityError as exc:
            # Nothing more is written: the other end is not who we meant to talk to.
            self.failure = exc
            log.log(level, "stream %s refused: %s", self, exc)
        except ConnectionResetError as exc:
            # libpurple refuses an unresolved sender by closing at once; our header,
            # already on its way, then hits a closed socket and its close comes back
            # as a RST. After the header: a peer that threw away what we sent.
            self.reset = True
            self.failure = exc
        except (ConnectionError, OSError) as exc:
            self.failure = exc
            log.info("stream %s dropped: %s", self, exc)
        finally:
            self.done.set()
            self.header_seen.set()  # wake anyone waiting for a header that never came
            self.hub.forget(self)
            if not self._finishing:
                self.abort()
            for fut in self.unstored:
                if fut.done() and not fut.cancelled():
                    fut.exception()

    async def _read_loop(self, header_timeout: float) -> None:
        loop = asyncio.get_running_loop()
        # The header must be complete by a deadline, not merely keep bytes coming: one
        # byte a second (slowloris) would otherwise hold a stream open forever.
        header_by = loop.time() + header_timeout
        while True:
            if self.peer_header is None:
                timeout = header_by - loop.time()
                if timeout <= 0:
                    raise TimeoutError
            else:
                timeout = IDLE_TIMEOUT
            data = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
            if not data:
                await self._settle()  # the peer dropped TCP after (or without) its close
                return
            self.last_used = loop.time()
            self._reads += 1
            parser = self.parser
            try:
                events = parser.feed(data)
            except StreamError as exc:
                for event in exc.events:  # what arrived whole before the fault is kept
                    await self._handle(event)
                    if self.parser is not parser:
                        break
                await self._settle()
                raise
            for event in events:
                if await self._handle(event):
                    return
                if self.parser is not parser:
                    break  # TLS is on: what came in clear behind <proceed/> is dropped
            if len(self.unstored) > MAX_UNSTORED or self.hub.backlogged():
                await self._settle()

    async def _handle(self, event: Any) -> bool:
        """True when the stream is over."""
        if isinstance(event, StreamOpen):
            await self._open(event)
        elif isinstance(event, Stanza):
            await self._stanza(event)
        elif isinstance(event, StreamClose):
            self.close_tag = True
            await self._settle()
            if not self.closing:
                self.closing = True
                await self._send_quietly(CLOSE)
            return True
        return False

    async def _open(self, event: StreamOpen) -> None:
        self.peer_header = event.attrs
        claimed = event.attrs.get("from") or None
        v10 = event.attrs.get("version") == "1.0"
        if self.initiator:
            if self.pin is not None and not self.secure:
                if not v10:
                    raise SecurityError(
                        f"{self.peer} advertises a TLS key but answered without XMPP 1.0, "
                        "so without STARTTLS: refused as a downgrade")
                self.tls_step = "features"
                return  # usable once TLS is on and the stream restarted
            self.established = True
        else:
            await self._send_quietly(header(from_=self.hub.me(), to=claimed,
                                            version="1.0" if v10 else None))
            if v10:
                offer = self.hub.tls is not None and self.hub.tls.offers and not self.secure
                self.offered_tls = offer
                await self._send_quietly(_starttls_features(self.hub.tls.required)
                                         if offer and self.hub.tls else FEATURES_EMPTY)
            if claimed:
                await self._identify(claimed)
        self.header_seen.set()

    async def _identify(self, claimed: str | None) -> None:
        self.peer, self.verified = await self.hub.identify(claimed, self.remote, self.proven)
        if self.peer is not None:
            self.hub.register(self)

    # --- STARTTLS -------------------------------------------------------------------

    async def _tls(self, element: ET.Element) -> None:
        """An element of the STARTTLS namespace (or the features that may offer it)."""
        local = split_tag(element.tag)[1]
        if local == "features":
            # From a responder, or from an initiator (salut sends them): only an
            # initiator waiting for the offer of STARTTLS reads them.
            if not self.initiator or self.tls_step != "features":
                return
            if element.find(f"{{{tls.TLS_NS}}}starttls") is None:
                raise SecurityError(f"{self.peer} advertises a TLS key but does not offer "
                                    "STARTTLS: refused as a downgrade")
            self.tls_step = "asked"
            await self._write_now(_starttls_request(self.hub.tls))
        elif self.initiator and local == "proceed" and self.tls_step == "asked":
            await self._start_tls_initiator()
        elif self.initiator and local == "failure" and self.tls_step == "asked":
            raise SecurityError(f"{self.peer} refused STARTTLS")
        elif not self.initiator and local == "starttls":
            await self._start_tls_responder(element)
        else:
            raise StreamError(f"unexpected <{local}/> of STARTTLS")

    async def _start_tls_initiator(self) -> None:
        assert self.hub.tls is not None and self.pin is not None and self.peer is not None
        await self._wrap(self.hub.tls.client_context())
        ssl_object = self.writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        self.hub.tls.check(self.peer, self.pin, der)
        self.proven, self.peer_der = self.pin, der
        self.hub.tls.proven(self.peer, self.pin)
        self.tls_step = None
        await self._write_now(header(from_=self.hub.me(), to=self.peer, version="1.0"))

    async def _start_tls_responder(self, element: ET.Element) -> None:
        hub_tls = self.hub.tls
        if not self.offered_tls or hub_tls is None or self.secure:
            await self._send_quietly(f"<failure xmlns='{tls.TLS_NS}'/>".encode() + CLOSE)
            raise StreamError("STARTTLS was not offered")
        client_der = self._initiator_certificate(element)
        await self._write_now(f"<proceed xmlns='{tls.TLS_NS}'/>".encode())
        await self._wrap(hub_tls.server_context(client_der))
        if client_der is not None:
            # The handshake required this certificate: the initiator holds its key.
            self.proven, self.peer_der = tls.fingerprint(client_der), client_der
            if self.peer:
                hub_tls.proven(self.peer, self.proven)

    def _initiator_certificate(self, element: ET.Element) -> bytes | None:
        """The certificate the initiator sent, if it matches the pin its claimed name
        advertises; else None (TLS without client proof: the sender stays unverified
        unless its name advertises no key and the address check holds)."""
        cert = element.find(f"{{{tls.CERT_NS}}}certificate")
        claimed = self.peer or (self.peer_header or {}).get("from")
        if cert is None or not claimed or not cert.text or len(cert.text) > 2 * tls.MAX_CERT:
            return None
        try:
            der = base64.b64decode(cert.text, validate=True)
        except ValueError:
            return None
        try:
            pin = self.hub.expected_pin(claimed)
        except SecurityError as exc:
            log.warning("stream %s: %s", self, exc)
            return None
        if pin is None or tls.fingerprint(der) != pin:
            log.warning("stream %s: %s sent a certificate that is not the one it "
                        "advertises: it stays unverified", self, claimed)
            return None
        return der

    async def _wrap(self, context: ssl.SSLContext) -> None:
        """TLS on this socket, then a fresh stream: the parser starts over."""
        self._flush()
        self._wrapping = True  # nothing may reach the socket during the handshake
        try:
            await self.writer.start_tls(context, ssl_handshake_timeout=max(
                self.hub.header_timeout, TLS_HANDSHAKE_TIMEOUT))
        except ssl.SSLError as exc:
            raise SecurityError(f"TLS with {self.peer or self.remote} failed: "
                                f"{exc.reason or exc}") from None
        finally:
            self._wrapping = False
        if self._out:
            # An answer to the plain stream that came due during the handshake (a store
            # finishing): it belongs to a stream that no longer exists, and written now
            # it would precede the new stream's header.
            log.info("stream %s: %d bytes answering the plain stream dropped at STARTTLS",
                     self, self._out_size)
            self._out.clear()
            self._out_size = 0
        self.secure = True
        self.parser = StreamParser()

    async def _write_now(self, data: bytes) -> None:
        self._write(data)
        self._flush()
        await self.writer.drain()

    async def _stanza(self, event: Stanza) -> None:
        element = event.element
        ns, local = split_tag(element.tag)
        if ns == tls.TLS_NS or (ns == STREAM_NS and local == "features"):
            await self._tls(element)
            return
        if ns == STREAM_NS:
            if local == "error":
                self.error = _error_condition(element)
                log.warning("stream %s: peer sent a stream error: %s", self, event.xml)
            return  # stream:features, from a responder or an initiator (Salut): ignored
        if not self.initiator:
            if self.peer is None and self.verified is None:
                await self._identify(element.get("from") or None)
            elif self.verified is not None and self._checked != self._reads:
                # Checked again for every read: if the name stops advertising this
                # address mid-stream, what follows is no longer vouched for. Not for
                # every stanza: those of one read arrived together, and the check (the
                # directory, the known keys' file) was a flood's largest cost.
                self._checked = self._reads
                self.verified = self.hub.still_verified(self.peer, self.remote, self.proven)
            if self.hub.strict and not self.verified:
                raise Refused(f"sender {self.peer or 'unknown'} is not verified")
            if self.hub.tls is not None and self.hub.tls.required and not self.secure:
                raise Refused(f"this agent requires TLS (tls = require) and "
                              f"{self.peer or 'the sender'} sent in plain text "
                              f"({tls.PLAIN_PEERS} cannot encrypt)")
        stored = await self.hub.dispatcher.dispatch(self, element, event.xml)
        if stored is not None:
            self._sweep_stored()
            self.unstored.append(stored)

    def _sweep_stored(self) -> None:
        """Forget what is on disk: kept, each held its record (and XML) for the
        stream's life, up to MAX_UNSTORED of them: ~2 MB per busy stream, the steps in
        the soak's RSS (issue 14). The inbox finishes in submission order, so the
        done ones are at the front. Swept at each stanza rather than by a callback on
        each: a flood's hot path. A failed one ends the stream (see _store_failed)."""
        unstored = self.unstored
        while unstored and unstored[0].done():
            stored = unstored.popleft()
            if not stored.cancelled() and stored.exception() is not None:
                self._store_failed(stored.exception())

    def _store_failed(self, error: BaseException) -> None:
        """A stanza the inbox could not store (disk full) ends the stream at once, with
        the reason: a sender waiting for its receipt would otherwise wait out its whole
        timeout and learn only "no answer", and one still sending would pile up more
        that cannot be stored. Closing our side makes the read loop end and settle."""
        if self.store_failed:
            return
        self.store_failed = True
        log.error("stream %s closed: %s", self, error)
        with contextlib.suppress(Exception):
            self._write(stream_error("resource-constraint", "the inbox cannot store"))
            self._flush()
            self.writer.close()

    async def _settle(self) -> None:
        """Wait until everything received so far is on disk; raises IOFailure if not.
        Our closing tag (which tells a sender "delivered") waits for this."""
        pending, self.unstored = self.unstored, deque()
        for fut in pending:
            await fut

    # --- writing --------------------------------------------------------------------

    async def start(self, me: str, timeout: float) -> None:
        """Initiating: our header, then the peer's. We never require its `from` or
        `version`, nor features (libpurple sends neither; iChat no from)."""
        await self._write_now(header(from_=me, to=self.peer, version="1.0"))
        try:
            await asyncio.wait_for(self.header_seen.wait(), timeout)
        except TimeoutError:
            raise TimeoutFailure(f"{self.peer} did not answer within {timeout:g} s") from None
        if self.peer_header is None:
            self.raise_if_failed(before_header=True)
            raise Rejected(f"{self.peer} closed the connection without answering")
        if not self.established:
            if self.failure is not None and not isinstance(self.failure, ConnectionError):
                self.raise_if_failed()
            raise UnavailableError(f"{self.peer} closed the connection during STARTTLS (it "
                                   "may hold another key for our name)")
        self.raise_if_failed()

    def raise_if_failed(self, *, before_header: bool = False) -> None:
        """The failure that ended this stream, as the error a sender reports."""
        if isinstance(self.failure, SecurityError):
            raise self.failure
        if self.error:
            if self.error in ("not-authorized", "policy-violation"):
                raise Rejected(f"{self.peer} refused our stream ({self.error})")
            raise ProtocolFailure(f"{self.peer} sent a stream error: {self.error}")
        if isinstance(self.failure, StreamError):
            raise ProtocolFailure(f"the peer broke the stream protocol: {self.failure}")
        if not self.done.is_set():
            return
        if before_header:
            raise Rejected(f"{self.peer} closed the connection without answering "
                           "(it accepts only senders it has resolved on the link)")
        if self.reset:
            raise UnavailableError(f"{self.peer} reset the connection: what we sent "
                                   "was not all read (the peer died or gave up)")
        raise UnavailableError(f"{self.peer} closed the stream before our messages "
                               "were acknowledged")

    async def send(self, elements: list[ET.Element], timeout: float = 10.0) -> None:
        """Queue the stanzas behind all we wrote before; wait only when the transport is
        full (the peer reads slower than we write) or every FLUSH_AT bytes."""
        if self.done.is_set() or self.closing or self._sealed:
            self.raise_if_failed()
            raise UnavailableError(f"the stream to {self.peer} is closing")
        data = "".join(serialize(el) for el in elements).encode()
        self.last_used = asyncio.get_running_loop().time()
        if self._write(data) and not self._must_wait():
            return  # queued for this turn's write, and the transport is not full
        self._flush()
        try:
            await asyncio.wait_for(self.writer.drain(), timeout)
        except TimeoutError:
            raise TimeoutFailure(f"{self.peer} stopped reading for {timeout:g} s") from None
        except (ConnectionError, OSError) as exc:
            raise UnavailableError(f"{self.peer} dropped the connection: {exc}") from None

    async def finish(self, timeout: float, *, tag_expected: bool = False) -> None:
        """Our closing tag, then wait for the peer's (or its TCP close): only then did
        it read everything we sent. Raises when that cannot be known.

        `tag_expected`: the peer answers our closing tag with its own once what it
        read is stored (xmppll's agent does, RFC 6120 §4.4), so a bare TCP close from
        it is a crash, not a delivery. libpurple sends no closing tag, and
        telepathy-salut (wocky) drops TCP without one although it speaks XMPP 1.0."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self.done.is_set():
            self.raise_if_failed()
        self._finishing = True
        try:
            if not self.closing:
                self.closing = True
                with contextlib.suppress(ConnectionError, OSError):
                    await self._write_now(CLOSE)
            try:
                await asyncio.wait_for(self.done.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise TimeoutFailure(f"{self.peer} did not close the stream within "
                                     f"{timeout:g} s: delivery unconfirmed") from None
            if self.error or self.reset or isinstance(self.failure, StreamError):
                self.raise_if_failed()
            if tag_expected and not self.close_tag:
                raise UnavailableError(f"{self.peer} closed the connection without "
                                       "closing the stream: delivery unconfirmed")
            await self._all_taken(deadline)
        finally:
            self._finishing = False
            if self.done.is_set():
                self.abort()

    async def _all_taken(self, deadline: float) -> None:
        """A TCP close says the peer read what we sent only if nothing we sent was
        still on its way: a peer that dies or closes with our data in flight sends a
        FIN first and refuses the rest with a RST later, and counting the FIN as a
        delivery was a false success. So wait until the kernel has every byte acked
        (a half-closing peer keeps reading) or the connection is reset (it will not)."""
        loop = asyncio.get_running_loop()
        while True:
            state = self._tcp_state()
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

    def _tcp_state(self) -> tuple[int, int] | None:
        """(TCP state, bytes we sent that the peer has not acknowledged yet), or None."""
        sock = self.writer.get_extra_info("socket")
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
            outq = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4)
        except (OSError, ValueError):
            return None
        return info[0], (struct.unpack("i", outq)[0] + self._out_size
                         + self.writer.transport.get_write_buffer_size())

    async def close_politely(self) -> None:
        """Idle or shutting down: our closing tag, then the socket (XEP-0174 §end).
        Stanzas the peer sends meanwhile are still read and dispatched."""
        if not self.closing and not self.done.is_set():
            self.closing = True
            await self._send_quietly(CLOSE)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), 2.0)
        self.abort()

    async def _send_quietly(self, data: bytes) -> None:
        """Write `data` after everything queued before it, and wait for the transport."""
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            self._write(data)
            self._flush()
            await asyncio.wait_for(self.writer.drain(), 10)

    def write_when(self, stored: asyncio.Future, answer: bytes) -> None:
        """Write `answer` once `stored` has succeeded (XEP-0184: a receipt says "it is
        in the inbox", so only after fsync). The receipts of one fsync go out together."""
        def write(fut: asyncio.Future) -> None:
            if fut.cancelled() or self.done.is_set():
                return
            if fut.exception() is not None:
                self._store_failed(fut.exception())  # its sender is waiting: tell it now
                return
            self._write(answer)
        stored.add_done_callback(write)

    def _write(self, data: bytes) -> bool:
        """Queue `data` behind everything written before it; it leaves at the end of
        this turn of the loop (or now, past FLUSH_AT). False when it was written at once
        or dropped: after our closing tag or a stream error nothing may follow."""
        if self._sealed:
            log.debug("stream %s: %d bytes after the end of our stream dropped", self, len(data))
            return False
        if data.endswith(CLOSE):  # the closing tag, alone or ending a stream error
            self._sealed = True
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size >= FLUSH_AT:
            self._flush()
            return False
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)
        return True

    def _flush(self) -> None:
        """Hand what is queued to the transport in one write (one TLS record, or a few
        of 16 KiB)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._out or self._wrapping:
            return  # _wrap decides about what came due during the handshake
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        with contextlib.suppress(Exception):  # a lost connection shows in the read loop
            self.writer.write(data)

    def _must_wait(self) -> bool:
        """The transport is over its high-water mark (the peer reads slower than we
        write) or closing: a send must flush and wait in drain, which raises if the
        connection is lost."""
        transport = self.writer.transport
        return (transport.is_closing()
                or transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1])

    def abort(self) -> None:
        if not isinstance(self.failure, SecurityError):
            self._flush()  # a receipt that came due with the peer's close still goes out
        with contextlib.suppress(Exception):
            self.writer.close()
