"""Receiving files: the offers (SI and OOB) as they arrive, and what accepting one
does on the wire. Whether to accept is not decided here (agent/downloads.py is the
policy); this module answers the peer and moves the bytes into a Sink.

Every address a peer asks us to connect to (an OOB URL's host, a SOCKS5 streamhost)
must be the peer's own: the address its stream comes from or one it advertises.
Anything else is refused, so a peer cannot make us fetch from a third host.

Between two xmppll peers whose stream proved both pinned keys, the bytes must come
inside TLS (the SI offer's <tls/>, an https:// URL), with the key the sender proved
on the stream; an offer that does not match what the stream allows is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmppll.addresses import normalize
from xmppll.errors import DataError, SecurityError, TimeoutFailure, UnavailableError, XmpplError
from xmppll.xmpp.connection import Connection
from xmppll.xmpp.dispatch import Dispatcher
from xmppll.xmpp.files import oob, si, sockets, socks5
from xmppll.xmpp.files.names import safe_name
from xmppll.xmpp.files.transfer import Progress, Reader, Sink, receive, run_blocking, stall_timeout
from xmppll.xmpp.hub import Hub

log = logging.getLogger("xmppll")
STREAMHOSTS_WAIT = 30.0  # s for the sender to offer streamhosts after our accept
_ids = itertools.count(1)


@dataclass
class Incoming:
    """One offer: `id` is ours (what `xmppll accept ID` names), not the peer's sid."""

    id: str
    method: str  # "si" or "oob"
    conn: Connection
    request: ET.Element
    sender: str
    offered_name: str
    name: str  # safe to create
    size: int | None
    mime: str
    desc: str | None
    verified: bool | None
    sid: str | None = None
    url: oob.Offered | None = None
    tls: sockets.Tls | None = None
    progress: Progress = field(default_factory=Progress)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "from": self.sender, "name": self.name,
                               "size": self.size, "mime": self.mime,
                               "verified": self.verified, "method": self.method}
        if self.offered_name != self.name:
            out["offered_name"] = self.offered_name
        if self.desc:
            out["desc"] = self.desc
        if self.tls is not None:
            out["tls"] = True  # the bytes come inside TLS, with the pinned keys
        return out


class Refused(XmpplError):
    exit_code = 76


class FileReceiver:
    def __init__(self, dispatcher: Dispatcher, hub: Hub,
                 on_offer: Callable[[Incoming], None],
                 on_refused: Callable[[Incoming, str], None]) -> None:
        self.dispatcher = dispatcher
        self.hub = hub
        self.on_offer = on_offer
        self.on_refused = on_refused
        self._streamhosts: dict[tuple[str, str], asyncio.Future] = {}
        dispatcher.on_iq("set", si.SI_NS, self._si_offer)
        dispatcher.on_iq("set", oob.OOB_NS, self._oob_offer)
        dispatcher.on_iq("set", socks5.BYTESTREAMS_NS, self._bytestreams)

    @property
    def me(self) -> str:
        return self.dispatcher.me()

    def _incoming(self, conn: Connection, iq: ET.Element, method: str, name: str,
                  size: int | None, mime: str, desc: str | None) -> Incoming:
        sender = conn.peer or iq.get("from") or "unknown"
        return Incoming(f"f{next(_ids)}", method, conn, iq, sender, name, safe_name(name),
                        size, mime, desc, conn.verified, progress=Progress(size))

    async def _si_offer(self, conn: Connection, iq: ET.Element) -> ET.Element | None:
        try:
            offered = si.parse_offer(iq)
        except DataError as exc:
            return si.error(iq, from_=self.me, condition="bad-request", type_="modify",
                            code="400", text=str(exc))
        # libpurple offers only bytestreams and reads any answer as that; we check.
        if offered.methods and socks5.BYTESTREAMS_NS not in offered.methods:
            return si.error(iq, from_=self.me, condition="bad-request", type_="cancel",
                            code="400", text="no valid streams: we take SOCKS5 bytestreams")
        inc = self._incoming(conn, iq, "si", offered.name, offered.size, offered.mime,
                             offered.desc)
        inc.sid = offered.sid
        reason = self._tls_mismatch(inc, offered.tls)
        if reason:
            self.on_refused(inc, reason)
            return si.error(iq, from_=self.me, condition="not-acceptable", type_="cancel",
                            code="406", text=reason)
        self.on_offer(inc)
        return None

    def _tls_mismatch(self, inc: Incoming, offered_tls: bool) -> str | None:
        """Sets inc.tls; the reason to refuse when the offer's TLS is not what the
        stream allows (both ends decide alike from the keys the stream proved)."""
        inc.tls = sockets.pinned(self.hub.tls, inc.conn, server_side=False)
        if offered_tls and inc.tls is None:
            return (f"{inc.sender} offered a file over TLS, but its stream did not prove "
                    "the keys of both ends: refused")
        if not offered_tls and inc.tls is not None:
            return (f"{inc.sender} offered a file in plain text on an encrypted stream: "
                    "refused")
        return None

    async def _oob_offer(self, conn: Connection, iq: ET.Element) -> ET.Element | None:
        try:
            offered = oob.parse_offer(iq)
        except DataError as exc:
            return oob.failed(iq, from_=self.me, reason=str(exc))
        inc = self._incoming(conn, iq, "oob", offered.name, offered.size, offered.mime,
                             offered.desc)
        inc.url = offered
        mismatch = self._tls_mismatch(inc, offered.tls)
        if mismatch:
            self.on_refused(inc, mismatch)
            return oob.failed(iq, from_=self.me, reason=mismatch)
        if not self.from_peer(inc, offered.host):
            reason = (f"the URL's host {offered.host} is not an address of "
                      f"{inc.sender}: refused")
            self.on_refused(inc, reason)
            return oob.failed(iq, from_=self.me, reason=reason)
        self.on_offer(inc)
        return None

    async def _bytestreams(self, conn: Connection, iq: ET.Element) -> ET.Element | None:
        try:
            sid, _ = socks5.parse_query(iq)
        except DataError as exc:
            return si.error(iq, from_=self.me, condition="bad-request", type_="modify",
                            code="400", text=str(exc))
        sender = (conn.peer or iq.get("from") or "").lower()
        waiter = self._streamhosts.get((sender, sid))
        if waiter is None or waiter.done():
            return si.error(iq, from_=self.me, condition="item-not-found", type_="cancel",
                            code="404", text="no accepted transfer with this sid")
        waiter.set_result(iq)
        return None

    def from_peer(self, inc: Incoming, host: str) -> bool:
        """Whether `host` is the offering peer's own address."""
        try:
            address, scope = normalize(host.strip("[]"))
        except ValueError:
            return False  # a host name: we connect to the peer's addresses only
        if address == inc.conn.remote.address:
            return True
        peers = self.hub.peers
        return peers is not None and peers.advertised_by(
            inc.sender, (address, scope or inc.conn.remote.scope))

    # --- answering ------------------------------------------------------------------

    async def decline(self, inc: Incoming, reason: str) -> None:
        answer = (si.decline(inc.request, from_=self.me, reason=reason) if inc.method == "si"
                  else oob.decline(inc.request, from_=self.me, reason=reason))
        try:
            await inc.conn.send([answer])
        except XmpplError as exc:
            log.info("declining %s from %s: %s", inc.name, inc.sender, exc)

    async def accept(self, inc: Incoming, folder: Path, limit: int) -> dict[str, Any]:
        """Take the file into `folder`; the result (path, size, sha256) once it is
        complete on disk. Raises with the reason, after telling the peer, when not."""
        if inc.conn.done.is_set():
            raise UnavailableError(f"{inc.sender} went away before the offer was accepted")
        sink = await run_blocking(Sink, folder, inc.name, inc.size, limit)
        try:
            if inc.method == "si":
                await self._si(inc, sink)
            else:
                await self._oob(inc, sink)
        except BaseException:
            await run_blocking(sink.discard)
            raise
        await run_blocking(sink.hash)  # stored and the sender answered: off its clock
        return sink.result()

    async def _si(self, inc: Incoming, sink: Sink) -> None:
        assert inc.sid is not None
        key = (inc.sender.lower(), inc.sid)
        waiter = asyncio.get_running_loop().create_future()
        self._streamhosts[key] = waiter
        try:
            await inc.conn.send([si.accept(inc.request, from_=self.me)])
            try:
                query = await asyncio.wait_for(waiter, STREAMHOSTS_WAIT)
            except TimeoutError:
                raise TimeoutFailure(f"{inc.sender} offered no streamhost within "
                                     f"{STREAMHOSTS_WAIT:g} s") from None
        finally:
            self._streamhosts.pop(key, None)
        sid, hosts = socks5.parse_query(query)
        ours = [h for h in hosts if self.from_peer(inc, h.host)]
        if not ours:
            reason = ("no streamhost is an address of the sender: refused "
                      f"({', '.join(h.host for h in hosts) or 'none given'})")
            await self._send_quietly(inc, si.error(query, from_=self.me,
                                                   condition="item-not-found",
                                                   type_="cancel", code="404", text=reason))
            raise Refused(reason)
        initiator = inc.request.get("from") or inc.sender
        target = query.get("to") or inc.request.get("to") or self.me
        dst = socks5.dst_addr(sid, initiator, target)
        sock, used = None, None
        for host in ours:
            try:
                sock = await run_blocking(socks5.connect, host, inc.conn.remote.scope, dst,
                                          socks5.HANDSHAKE_TIMEOUT, inc.tls)
                used = host
                break
            except SecurityError as exc:
                await self._send_quietly(inc, si.error(query, from_=self.me,
                                                       condition="not-acceptable",
                                                       type_="cancel", code="406",
                                                       text=str(exc)))
                raise
            except (OSError, XmpplError) as exc:
                log.info("streamhost %s:%d of %s: %s", host.host, host.port, inc.sender, exc)
        if sock is None or used is None:
            await self._send_quietly(inc, si.error(query, from_=self.me,
                                                   condition="item-not-found",
                                                   type_="cancel", code="404"))
            raise UnavailableError(f"could not connect to any streamhost of {inc.sender}")
        try:
            await inc.conn.send([socks5.used(query, from_=self.me, jid=used.jid)])
            await run_blocking(functools.partial(
                receive, Reader(sock), sink, inc.progress, stall_timeout(), inc.size,
                until_close=True))
            await run_blocking(sink.finish)
        finally:
            sock.close()

    async def _oob(self, inc: Incoming, sink: Sink) -> None:
        assert inc.url is not None
        try:
            await run_blocking(oob.fetch, inc.url, inc.conn.remote.scope, sink,
                               inc.progress, stall_timeout(), inc.tls)
            await run_blocking(sink.finish)
        except (XmpplError, OSError) as exc:
            reason = str(exc) if isinstance(exc, XmpplError) else f"fetch failed: {exc}"
            await self._send_quietly(inc, oob.failed(inc.request, from_=self.me,
                                                     reason=reason))
            if isinstance(exc, XmpplError):
                raise
            raise UnavailableError(reason) from None
        result = ET.Element("{jabber:client}iq", {"type": "result",
                                                  "id": inc.request.get("id") or "",
                                                  "from": self.me})
        if inc.request.get("from"):
            result.set("to", inc.request.get("from") or "")
        await inc.conn.send([result])

    async def _send_quietly(self, inc: Incoming, element: ET.Element) -> None:
        with contextlib.suppress(XmpplError):
            await inc.conn.send([element])
