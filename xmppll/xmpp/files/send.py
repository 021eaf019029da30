"""Sending a file: offer it the way the peer takes files, then move the bytes.

The method follows the peer (the two real families share none):
- another xmppll: SI + SOCKS5 bytestreams (both methods use sendfile here; S5B has
  no HTTP framing to parse, and bench/ measured it the faster by a little);
- a peer whose disco#info lists jabber:iq:oob (telepathy-salut): OOB over HTTP;
- one that lists SI file transfer and bytestreams: SI + S5B;
- one that does not answer disco (libpurple never does): by its family, from the
  caps node in its TXT record: Apple's iChat/Messages take OOB, everything else
  (libpurple) SI + S5B.

Between two xmppll peers whose stream proved both pinned keys (sockets.pinned), the
bytes go inside TLS: the SI offer carries <tls/> and the bytestream is wrapped after
the SOCKS5 handshake; the OOB URL is https://. Other peers never see either.

Success means the receiver has every byte: over S5B it read `size` bytes and closed
its end with nothing of ours unread; over OOB its iq result came after the GET.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xmppll.addresses import normalize
from xmppll.errors import (
    ProtocolFailure,
    SecurityError,
    TimeoutFailure,
    UnavailableError,
    XmpplError,
)
from xmppll.xmpp import stanza as st
from xmppll.xmpp.caps import CAPS_NODE
from xmppll.xmpp.connection import Connection
from xmppll.xmpp.delivery import Delivery, PeerInfo
from xmppll.xmpp.files import oob, si, sockets, socks5
from xmppll.xmpp.files.transfer import Progress, Source, run_blocking, send_file, stall_timeout

log = logging.getLogger("xmppll")
METHODS = ("auto", "si", "oob")
CONNECT_WAIT = 30.0  # s for the receiver to reach our streamhost after accepting


@dataclass
class FileSent:
    to: str
    name: str
    size: int
    method: str

    def to_json(self) -> dict[str, Any]:
        return {"to": self.to, "name": self.name, "size": self.size, "method": self.method}


def family_method(peer: PeerInfo, features: frozenset[str]) -> str:
    """SI or OOB for this peer (see the module's docstring)."""
    caps = peer.caps or {}
    if caps.get("node") == CAPS_NODE:
        return "si"
    if oob.OOB_NS in features:
        return "oob"
    if si.FT_NS in features and socks5.BYTESTREAMS_NS in features:
        return "si"
    node = (caps.get("node") or "").lower()
    if "apple" in node or "ichat" in node:
        return "oob"
    return "si"


class FileSender:
    def __init__(self, delivery: Delivery, sources: Callable[[], list[str] | None]) -> None:
        self.delivery = delivery
        self.dispatcher = delivery.hub.dispatcher
        self.sources = sources

    @property
    def me(self) -> str:
        return self.delivery.hub.me()

    async def send(self, to: str, source: Source, *, timeout: float, wait: float = 0.0,
                   method: str = "auto", progress: Progress | None = None) -> FileSent:
        """Offer `source` to `to`; `timeout` bounds the wait for an answer (a person
        may have to accept), a stall of the bytes fails the transfer."""
        progress = progress or Progress(source.size)
        peer = await self.delivery.peer(to, max(wait, 1.5))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = await self.delivery.connection(peer, deadline)
        if conn.idle_handle is not None:
            conn.idle_handle.cancel()  # a dialled stream stays open while the file moves
        try:
            if method == "auto":
                features = await self.delivery.disco.features(conn, peer.caps)
                method = family_method(peer, features)
            log.info("sending %s (%d bytes) to %s by %s", source.name, source.size,
                     peer.name, method)
            if method == "oob":
                await self._oob(conn, peer, source, deadline, progress)
            else:
                await self._si(conn, peer, source, deadline, progress)
        finally:
            self.delivery.keep(conn)
        return FileSent(peer.name, source.name, source.size, method)

    def _streamhost_addresses(self, conn: Connection) -> list[str]:
        """Where the receiver can reach us: the address it already reached us on
        first, then the others we advertise."""
        own = normalize(conn.writer.get_extra_info("sockname")[0])[0]
        out = [own]
        for address in self.sources() or []:
            plain = normalize(address)[0]
            if plain not in out:
                out.append(plain)
        return out

    # --- SI + SOCKS5 ----------------------------------------------------------------

    async def _si(self, conn: Connection, peer: PeerInfo, source: Source, deadline: float,
                  progress: Progress) -> None:
        sid = "s" + st.new_id()
        tls = sockets.pinned(self.delivery.hub.tls, conn, server_side=True)
        offer = si.offer(to=peer.name, from_=self.me, sid=sid, name=source.name,
                         size=source.size, mime=source.mime, desc=source.desc,
                         tls=tls is not None)
        reply = await self._answer(conn, offer, deadline, source.name, peer.name)
        if si.chosen_method(reply) != socks5.BYTESTREAMS_NS:
            raise ProtocolFailure(f"{peer.name} accepted {source.name} but not over SOCKS5 "
                                  "bytestreams, the only method we offer")
        listener = sockets.listener()
        port = listener.getsockname()[1]
        hosts = [socks5.Streamhost(self.me, host, port)
                 for host in self._streamhost_addresses(conn)]
        expected = socks5.dst_addr(sid, self.me, peer.name)
        stall = stall_timeout()
        accepting = asyncio.ensure_future(run_blocking(
            socks5.serve, listener, expected, time.monotonic() + CONNECT_WAIT, tls))
        try:
            query = socks5.query(to=peer.name, from_=self.me, sid=sid, hosts=hosts)
            try:
                used = await self.dispatcher.request(conn, query, CONNECT_WAIT)
            except TimeoutFailure:
                raise TimeoutFailure(f"{peer.name} accepted {source.name} but never "
                                     "connected to our streamhost") from None
            if used.get("type") != "result":
                condition, _, text = si.error_of(used)
                raise UnavailableError(f"{peer.name} could not connect to us for "
                                       f"{source.name}: {text or condition}")
            try:
                sock = await accepting
            except TimeoutError:
                raise TimeoutFailure(f"{peer.name} said it connected, but no connection "
                                     "with the right hash came") from None
        finally:
            listener.close()
            if not accepting.done():
                accepting.cancel()
        try:
            await run_blocking(send_file, sock, source, progress, stall)
        finally:
            sock.close()

    async def _answer(self, conn: Connection, offer: Any, deadline: float, name: str,
                      to: str) -> Any:
        """The answer to an offer: a result, or the reason we cannot go on."""
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            reply = await self.dispatcher.request(conn, offer, max(0.1, remaining))
        except TimeoutFailure:
            raise TimeoutFailure(f"{to} did not accept {name} within the timeout") from None
        if reply.get("type") == "error":
            condition, code, text = si.error_of(reply)
            why = f" ({text})" if text else f" ({condition})"
            if si.declined(reply):
                raise UnavailableError(f"{to} declined {name}{why}")
            raise UnavailableError(f"{to} refused {name}{why}")
        return reply

    # --- OOB over HTTP --------------------------------------------------------------

    async def _oob(self, conn: Connection, peer: PeerInfo, source: Source, deadline: float,
                   progress: Progress) -> None:

        listener = sockets.listener()
        port = listener.getsockname()[1]
        token = st.new_id()
        path = f"/{token}/{urllib.parse.quote(source.name)}"
        host = oob.url_host(self._streamhost_addresses(conn)[0])
        tls = sockets.pinned(self.delivery.hub.tls, conn, server_side=True)
        url = f"{'https' if tls else 'http'}://{host}:{port}{path}"
        stall = stall_timeout()
        server = oob.Server(listener, path, source, progress, stall, tls)
        # The server lives until the receiver's answer (or our giving up).
        serving = asyncio.ensure_future(run_blocking(server.run))
        offer = oob.offer(to=peer.name, from_=self.me, id_="o" + token, url=url,
                          size=source.size, mime=source.mime, desc=source.desc)
        answer = asyncio.ensure_future(
            self.dispatcher.request(conn, offer, 24 * 3600.0))
        try:
            reply = await self._oob_answer(answer, server, deadline, source, peer, stall)
        finally:
            server.stopped = True
            if not answer.done():
                answer.cancel()
            with contextlib.suppress(Exception):
                await serving
            listener.close()
        if reply.get("type") == "error":
            if isinstance(server.failure, SecurityError):
                raise server.failure  # our side of the TLS handshake says it best
            condition, _, text = si.error_of(reply)
            why = f" ({text})" if text else f" ({condition})"
            if si.declined(reply):
                raise UnavailableError(f"{peer.name} declined {source.name}{why}")
            raise UnavailableError(f"{peer.name} could not fetch {source.name}{why}")
        if not server.served.is_set():
            raise ProtocolFailure(f"{peer.name} confirmed {source.name} without fetching "
                                  "all of it")

    async def _oob_answer(self, answer: asyncio.Future, server: oob.Server,
                          deadline: float, source: Source,
                          peer: PeerInfo, stall: float) -> Any:
        """Wait for the iq answer: the accept must start (a GET) before the deadline,
        and the bytes must keep moving after it."""
        loop = asyncio.get_running_loop()
        last, last_at = -1, loop.time()
        while True:
            done, _ = await asyncio.wait({answer}, timeout=0.1)
            if done:
                return answer.result()
            now = loop.time()
            if server.failure is not None:
                failure = server.failure
                if isinstance(failure, XmpplError):
                    raise failure
                raise UnavailableError(f"serving {source.name} to {peer.name} failed: "
                                       f"{failure}")
            if not server.requested.is_set():
                if now >= deadline:
                    raise TimeoutFailure(f"{peer.name} did not accept {source.name} within "
                                         "the timeout")
                continue
            if server.progress.done != last:
                last, last_at = server.progress.done, now
            if server.served.is_set():
                if now - last_at > stall:
                    raise TimeoutFailure(f"{peer.name} fetched {source.name} but did not "
                                         f"confirm it within {stall:g} s")
            elif now - last_at > stall + 1:
                raise TimeoutFailure(f"the transfer of {source.name} stalled")


Report = Callable[[dict[str, Any]], None]
REPORT_EVERY = 0.2  # s between two progress reports


async def send_files(sender: FileSender, names: list[str], sources: list[Source], *,
                     timeout: float, wait: float = 0.0, method: str = "auto",
                     report: Report | None = None) -> list[dict[str, Any]]:
    """Each file to each peer (peers in parallel, files one after the other); one
    result per (file, peer): `to`, `name`, `size`, `method`, or `error` and `code`.
    `report` gets {"progress": bytes, "total": bytes, "name": file} every
    REPORT_EVERY seconds while bytes move."""
    results: list[dict[str, Any]] = []
    for source in sources:
        progresses = [Progress(source.size) for _ in names]

        async def one(name: str, progress: Progress, source: Source = source
                      ) -> dict[str, Any]:
            try:
                sent = await sender.send(name, source, timeout=timeout, wait=wait,
                                         method=method, progress=progress)
                return sent.to_json()
            except XmpplError as exc:
                return {"to": name, "name": source.name, "error": str(exc),
                        "code": exc.exit_code}

        work = asyncio.ensure_future(asyncio.gather(
            *(one(n, p) for n, p in zip(names, progresses, strict=True))))
        total = source.size * len(names)
        while report is not None and not work.done():
            await asyncio.wait({work}, timeout=REPORT_EVERY)
            report({"progress": sum(p.done for p in progresses), "total": total,
                    "name": source.name})
        results.extend(await work)
    return results
