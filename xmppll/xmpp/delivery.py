"""Delivering messages: one path, one retry policy, with or without an agent.

Every peer gets an outbox. Messages to one peer queue behind each other on that peer's
one connection instead of racing on parallel ones: libpurple keeps one conversation
per buddy and drops the previous connection when a new one arrives, and
telepathy-salut closes a second connection from a contact at once. Peers are served
in parallel.

How delivery is known depends on the peer:
- it sends XEP-0184 receipts (xmppll; any peer whose disco says so): many messages
  share one stream, each delivered when its receipt comes back; a stream that breaks
  before the receipt is retried once on a fresh connection with the same id, and the
  receiver stores a repeat only once, so the retry cannot double the message;
- it answers IQs (real XEP-0115 caps, with a `hash`: telepathy-salut): what is
  queued goes out on its stream followed by a disco#info query, and it is delivered
  when the answer comes, since a peer reads its stream in order. The stream stays
  open: salut keeps one connection per contact, and does not close one it opened
  when we send our closing tag;
- neither (libpurple): what is queued goes out on one stream that we then close,
  and it is delivered when the peer closes after reading our closing tag.

Retries: a connect that fails re-resolves the peer and tries once more (RFC 6762
§10.4: the address may be stale); a peer that refuses us before its header (libpurple
has not resolved us yet) is tried again until the deadline, after `before_dial` has
had the chance to publish us.
"""

from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from xmppll.errors import NoPeerError, TimeoutFailure, UnavailableError, XmpplError
from xmppll.xmpp import chatstates
from xmppll.xmpp import stanza as st
from xmppll.xmpp.caps import CAPS_NODE
from xmppll.xmpp.connection import Connection, Rejected
from xmppll.xmpp.dial import ConnectFailed, Target
from xmppll.xmpp.disco import QUERY_TIMEOUT, Disco
from xmppll.xmpp.hub import Hub
from xmppll.xmpp.receipts import Receipts

log = logging.getLogger("xmppll")
IDLE = 10.0  # s an idle connection we dialled stays open for the next message
REJECTED_AGAIN = 0.1  # s before dialling a peer that refused an unresolved sender
RESOLVE_AGAIN = 1.0  # s to re-resolve a peer whose address did not answer


@dataclass
class PeerInfo:
    """What delivery needs to know of a peer: where it listens, and its caps."""

    name: str
    addresses: list[str]
    port: int
    caps: dict[str, Any] | None = None
    domain: str | None = None  # a wide-area peer's DNS-SD domain; None: on the link
    pin: str | None = None  # the TLS key it advertises (xmppll.xmpp.tls)

    @property
    def target(self) -> Target:
        return Target(self.name, self.addresses, self.port, self.pin)


Resolve = Callable[[str, float], Awaitable["PeerInfo | None"]]


RECEIPT, QUERY, CLOSE = "receipt", "query", "close"  # how a delivery is known
NOTICE = "notice"  # a typing notice: written on the stream, nothing to wait for


@dataclass
class _Item:
    element: ET.Element
    mode: str
    deadline: float
    done: asyncio.Future
    retried: bool = False

    @property
    def id(self) -> str:
        return self.element.get("id") or ""


@dataclass
class Hooks:
    """What differs between the agent and a one-shot `send`."""

    resolve: Resolve
    stale: Callable[[str], None]  # the address of this name did not answer
    # Addresses we advertise, to connect to this peer from (None: the route picks).
    sources: Callable[[PeerInfo], list[str] | None]
    # Before dialling a peer (the one-shot `send` publishes a transient presence for
    # peers that only accept published senders); `refused` after a refusal.
    before_dial: Callable[[PeerInfo, bool], Awaitable[None]] | None = None
    idle: float = IDLE


@dataclass
class Sent:
    id: str
    to: str


class UnsupportedError(UnavailableError):
    """The peer does not take what was asked (a typing notice to libpurple, salut)."""


class Delivery:
    def __init__(self, hub: Hub, receipts: Receipts, disco: Disco, hooks: Hooks) -> None:
        self.hub = hub
        self.receipts = receipts
        self.disco = disco
        self.hooks = hooks
        self.outboxes: dict[str, _Outbox] = {}
        self.refused_by: set[str] = set()  # peers that refused us as unresolved
        self.chatstates: Any = None  # ChatStates, when received x:event requests count

    async def peer(self, name: str, wait: float) -> PeerInfo:
        peer = await self.hooks.resolve(name, wait)
        if peer is None:
            raise NoPeerError(f"no peer named {name} on the link")
        return peer

    def speaks_receipts(self, peer: PeerInfo) -> bool:
        known = self.disco.cached(peer.caps)
        return known is not None and st.RECEIPTS_NS in known

    @staticmethod
    def answers_queries(peer: PeerInfo) -> bool:
        caps = peer.caps or {}
        return bool(caps.get("hash") and caps.get("ver"))

    async def send(self, message: dict[str, Any], *, timeout: float, wait: float = 0.0,
                   receipt: bool = False) -> Sent:
        """Deliver one message (the Stanza JSON shape: `to` and `body` at least) as
        our name; returns when the peer has it, raises an XmpplError when that cannot
        be known within `timeout`."""
        peer = await self.peer(message["to"], max(wait, 1.5))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        state = message.get("chatstate")
        if state is not None and message.get("body") is None:
            element = await self._notice(peer, state, deadline)
            mode = NOTICE
        else:
            receipts = receipt or self.speaks_receipts(peer)
            element = st.message_from_json({**message, "to": peer.name},
                                           from_=self.hub.me(), receipt=receipts)
            if state is not None and await self.reads_chatstates(peer, deadline,
                                                                 ask=False):
                chatstates.add_state(element, chatstates.check_state(state))
            mode = RECEIPT if receipts else QUERY if self.answers_queries(peer) else CLOSE
        item = _Item(element, mode, deadline, loop.create_future())
        outbox = self.outboxes.get(peer.name.lower())
        if outbox is None:
            outbox = self.outboxes[peer.name.lower()] = _Outbox(self, peer)
        outbox.peer = peer
        outbox.put(item)
        await item.done
        return Sent(item.id, peer.name)

    async def reads_chatstates(self, peer: PeerInfo, deadline: float, *,
                               ask: bool = True) -> bool:
        """Whether `peer` advertises XEP-0085. A peer with real caps we do not know
        yet is asked (disco#info) when `ask`; one without (libpurple) never is."""
        known = self.disco.cached(peer.caps)
        if known is not None and chatstates.CHATSTATES_NS in known:
            return True
        if not ask or not self.answers_queries(peer) or \
                (peer.caps or {}).get("ver") in self.disco.known:
            return False
        conn = await self.connection(peer, deadline)
        try:
            features = await self.disco.ask(conn, peer.caps, max(0.1, min(
                QUERY_TIMEOUT, deadline - asyncio.get_running_loop().time())))
        except XmpplError:
            return False
        return chatstates.CHATSTATES_NS in features

    async def _notice(self, peer: PeerInfo, state: str, deadline: float) -> ET.Element:
        """A typing notice for a peer that reads them, in the form it reads; refused
        for any other (libpurple drops them, salut drops a message holding only one)."""
        state = chatstates.check_state(state)
        if await self.reads_chatstates(peer, deadline):
            return chatstates.notice(peer.name, self.hub.me(), state)
        ref = self.chatstates.wants_events(peer.name, peer.caps) if self.chatstates else None
        if ref is not None and state in ("composing", "paused"):
            return chatstates.notice(peer.name, self.hub.me(), state, form="x-event", ref=ref)
        raise UnsupportedError(f"{peer.name} does not advertise chat states (XEP-0085): "
                               "no typing notice sent")

    async def send_to_all(self, message: dict[str, Any], names: list[str], *,
                          timeout: float) -> list[Sent | XmpplError]:
        """The same message to each peer, in parallel across peers."""
        async def one(name: str) -> Sent | XmpplError:
            try:
                return await self.send({**message, "to": name}, timeout=timeout)
            except XmpplError as exc:
                return exc
        return list(await asyncio.gather(*(one(n) for n in names)))

    async def connection(self, peer: PeerInfo, deadline: float) -> Connection:
        """An open connection to `peer`: one already open in either direction, else a
        new one, under the retry policy."""
        loop = asyncio.get_running_loop()
        reresolved = False
        while True:
            conn = self.hub.usable(peer.name)
            if conn is not None:
                return conn
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutFailure(f"{peer.name} did not answer in time")
            if self.hooks.before_dial is not None:
                await self.hooks.before_dial(peer, peer.name.lower() in self.refused_by)
            try:
                return await self.hub.dial(peer.target, timeout=remaining,
                                           sources=self.hooks.sources(peer))
            except ConnectFailed:
                if reresolved:
                    raise
                reresolved = True
                log.info("%s did not answer at %s: asking the link again", peer.name,
                         ", ".join(peer.addresses))
                self.hooks.stale(peer.name)
                peer = await self.hooks.resolve(peer.name, RESOLVE_AGAIN) or peer
            except Rejected:
                if loop.time() + REJECTED_AGAIN >= deadline:
                    raise
                log.info("%s refused an unresolved sender", peer.name)
                self.refused_by.add(peer.name.lower())
                await asyncio.sleep(REJECTED_AGAIN)

    def keep(self, conn: Connection) -> None:
        """A connection we dialled stays open `idle` seconds after its last use."""
        if not conn.initiator:
            return
        if conn.idle_handle is not None:
            conn.idle_handle.cancel()
        conn.idle_handle = asyncio.get_running_loop().call_later(
            self.hooks.idle, lambda: asyncio.ensure_future(conn.close_politely()))


class _Outbox:
    """One peer's queue, and the worker that empties it while it has items."""

    def __init__(self, delivery: Delivery, peer: PeerInfo) -> None:
        self.delivery = delivery
        self.peer = peer
        self.items: deque[_Item] = deque()
        self.worker: asyncio.Task | None = None
        self.confirming: set[asyncio.Task] = set()

    def put(self, item: _Item, *, first: bool = False) -> None:
        if first:
            self.items.appendleft(item)
        else:
            self.items.append(item)
        if self.worker is None or self.worker.done():
            self.worker = asyncio.ensure_future(self._work())

    async def _work(self) -> None:
        while self.items:
            mode = self.items[0].mode
            if mode == NOTICE:
                await self._notice(self.items.popleft())
                continue
            if mode == RECEIPT:
                await self._with_receipt(self.items.popleft())
                continue
            batch: list[_Item] = []
            while self.items and self.items[0].mode == mode:
                batch.append(self.items.popleft())
            await self._batch(batch, mode)

    async def _write(self, item: _Item,
                     dropped: Callable[[_Item, XmpplError], None]) -> Connection | None:
        """`item` on the peer's open stream (or a new one); None when that failed, and
        the item has been failed (or handed to `dropped`, when the connection broke)."""
        try:
            conn = await self.delivery.connection(self.peer, item.deadline)
            await conn.send([item.element])
        except XmpplError as exc:
            self._fail([item], exc)
            return None
        except (ConnectionError, OSError) as exc:
            dropped(item, UnavailableError(f"{self.peer.name} dropped the connection: {exc}"))
            return None
        return conn

    async def _notice(self, item: _Item) -> None:
        """A typing notice: written on the peer's stream, in order with its messages;
        nothing acknowledges one (it is not stored, so no receipt comes)."""
        conn = await self._write(item, lambda it, error: self._fail([it], error))
        if conn is None:
            return
        self.delivery.keep(conn)
        _settle(item.done, None)

    async def _with_receipt(self, item: _Item) -> None:
        """Write it on the peer's open stream and move on; its receipt is awaited on
        the side, so messages to one peer are pipelined on one stream."""
        expected = self.delivery.receipts.expect(item.id)
        conn = await self._write(item, self._retry_or_fail)
        if conn is None:
            return
        self.delivery.keep(conn)
        task = asyncio.ensure_future(self._confirm(item, expected, conn))
        self.confirming.add(task)
        task.add_done_callback(self.confirming.discard)

    async def _confirm(self, item: _Item, expected: asyncio.Future, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        ended = asyncio.ensure_future(conn.done.wait())
        try:
            await asyncio.wait({expected, ended}, timeout=max(0.0, item.deadline - loop.time()),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
        if expected.done():
            self.delivery.receipts.forget(item.id)
            _settle(item.done, None)
            return
        if conn.done.is_set():
            try:
                conn.raise_if_failed()
                error: XmpplError = UnavailableError(
                    f"{self.peer.name} closed the stream before our messages were "
                    "acknowledged")
            except XmpplError as exc:
                error = exc
            self._retry_or_fail(item, error)
            return
        self._fail([item], TimeoutFailure(
            f"no receipt from {self.peer.name} within the timeout"))

    def _retry_or_fail(self, item: _Item, error: XmpplError) -> None:
        """The stream broke between our write and the receipt: once more on a fresh
        connection, with the same id (the receiver stores a repeat only once)."""
        if isinstance(error, Rejected):
            self.delivery.refused_by.add(self.peer.name.lower())
        if item.retried or asyncio.get_running_loop().time() >= item.deadline:
            self._fail([item], error)
            return
        log.warning("%s: %s; sending %s again", self.peer.name, error, item.id)
        item.retried = True
        self.put(item, first=True)

    async def _batch(self, batch: list[_Item], mode: str) -> None:
        """Peers without receipts: what is queued goes out on one stream, then a query
        whose answer says all was read, or our closing tag and the peer's close."""
        deadline = min(item.deadline for item in batch)
        loop = asyncio.get_running_loop()
        try:
            conn = await self.delivery.connection(self.peer, deadline)
            await conn.send([item.element for item in batch])
            if mode == QUERY:
                await self.delivery.disco.ask(conn, self.peer.caps,
                                              max(0.1, deadline - loop.time()))
                self.delivery.keep(conn)
            else:
                await conn.finish(max(0.1, deadline - loop.time()),
                                  tag_expected=(self.peer.caps or {}).get("node") == CAPS_NODE)
        except XmpplError as exc:
            self._fail(batch, exc)
            return
        except TimeoutError:  # a subclass of OSError: must come first, or it reads as 69
            self._fail(batch, TimeoutFailure(f"{self.peer.name} did not answer in time"))
            return
        except (ConnectionError, OSError) as exc:
            self._fail(batch, UnavailableError(f"{self.peer.name} dropped the connection: "
                                               f"{exc}"))
            return
        for item in batch:
            _settle(item.done, None)

    def _fail(self, items: list[_Item], error: XmpplError) -> None:
        for item in items:
            self.delivery.receipts.forget(item.id)
            if not item.done.done():
                item.done.set_exception(error)


def _settle(future: asyncio.Future, value: object) -> None:
    if not future.done():
        future.set_result(value)
