"""The connection registry, dispatch and delivery, in-process over loopback sockets.

No root and no mDNS: two hubs (or a hub and a hand-written peer) on 127.0.0.1, each
with a table of names standing in for discovery. The end-to-end behaviour over real
mDNS and real peers is in test_messaging.py and the interop tests.
"""

from __future__ import annotations

import asyncio
import functools
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from xmppll.addresses import Address, advertises
from xmppll.agent.inbox import Inbox, read_after
from xmppll.agent.store import InboxStore
from xmppll.errors import TimeoutFailure
from xmppll.xmpp import stanza as st
from xmppll.xmpp.caps import CAPS_NODE, caps_ver
from xmppll.xmpp.delivery import Delivery, Hooks, PeerInfo
from xmppll.xmpp.disco import Disco
from xmppll.xmpp.dispatch import Dispatcher
from xmppll.xmpp.hub import Hub, bind_port
from xmppll.xmpp.receipts import Receipts
from xmppll.xmpp.stream import CLOSE, Stanza, StreamClose, StreamOpen, StreamParser, header

LOOP = "127.0.0.1"


class Names:
    """Discovery for the test: name -> (addresses, port, caps)."""

    def __init__(self) -> None:
        self.table: dict[str, PeerInfo] = {}

    def add(self, name: str, port: int, caps: dict[str, Any] | None = None) -> None:
        self.table[name.lower()] = PeerInfo(name, [LOOP], port, caps)

    async def resolve(self, name: str, wait: float) -> PeerInfo | None:
        return self.table.get(name.lower())

    def owners(self, address: Address) -> list[str]:
        return [p.name for p in self.table.values() if advertises(p.addresses, address)]

    def advertised_by(self, name: str, address: Address) -> bool:
        peer = self.table.get(name.lower())
        return peer is not None and advertises(peer.addresses, address)


XMPPLL_CAPS = {"node": CAPS_NODE, "hash": "sha-1", "ver": caps_ver()}


class Side:
    """One xmppll name: hub, dispatch, handlers, delivery, a real inbox on disk."""

    def __init__(self, name: str, names: Names, state: Path) -> None:
        self.name = name
        self.inbox = Inbox(state)
        self.store = InboxStore(self.inbox)
        self.dispatcher = Dispatcher(self.store, lambda: name)
        self.receipts = Receipts(self.dispatcher)
        self.disco = Disco(self.dispatcher)
        self.hub = Hub(me=lambda: name, peers=names, dispatcher=self.dispatcher)
        self.delivery = Delivery(self.hub, self.receipts, self.disco, Hooks(
            resolve=names.resolve, stale=lambda name: None, sources=lambda peer: None,
            idle=5.0))
        self.socks = bind_port(0, given=False)
        self.port = self.socks[0].getsockname()[1]
        names.add(name, self.port, XMPPLL_CAPS)

    async def start(self) -> Side:
        await self.hub.serve(self.socks)
        return self

    async def close(self) -> None:
        await self.hub.close()
        for sock in self.socks:
            sock.close()
        self.inbox.close()

    def stored(self) -> list[dict[str, Any]]:
        return list(read_after(self.inbox.path.parent, 0))

    async def send(self, to: str, body: str, **kw: Any) -> Any:
        return await self.delivery.send({"to": to, "body": body, **kw}, timeout=5)


async def wait_for(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := check()):
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)
    return value


def run(coro_fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """A coroutine test run in its own event loop, with a bound on its time."""
    @functools.wraps(coro_fn)
    def wrapper(*args: Any, **kw: Any) -> None:
        asyncio.run(asyncio.wait_for(coro_fn(*args, **kw), 30))
    return wrapper


@pytest.fixture
def names() -> Names:
    return Names()


class RawPeer:
    """A hand-written peer on loopback: `script(reader, writer, events)` plays it."""

    def __init__(self, names: Names, name: str,
                 script: Callable[..., Awaitable[None]], caps: dict | None = None) -> None:
        self.name, self.script, self.names, self.caps = name, script, names, caps
        self.open_now = 0
        self.most_at_once = 0
        self.connections = 0

    async def start(self) -> RawPeer:
        self.server = await asyncio.start_server(self._serve, LOOP, 0)
        self.names.add(self.name, self.server.sockets[0].getsockname()[1], self.caps)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_at_once = max(self.most_at_once, self.open_now)
        try:
            await self.script(reader, writer, Events(reader))
        finally:
            self.open_now -= 1
            writer.close()

    def close(self) -> None:
        self.server.close()


class Events:
    """The other side's stream, parsed."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.parser = StreamParser()
        self.queue: list[Any] = []

    async def next(self, kind: type) -> Any:
        while True:
            while self.queue:
                event = self.queue.pop(0)
                if isinstance(event, kind):
                    return event
            data = await self.reader.read(65536)
            if not data:
                return None
            self.queue.extend(self.parser.feed(data))


def message(to: str, from_: str, body: str, id_: str = "m1") -> bytes:
    return (f"<message to='{to}' from='{from_}' type='chat' id='{id_}'>"
            f"<body>{body}</body></message>").encode()


@run
async def test_a_reply_on_the_stream_we_opened_is_stored_once(names: Names,
                                                             tmp_path: Path) -> None:
    """A responder-only bot answers on the stream it was sent; its answer was dropped
    when a connection was one-way."""
    async def bot(reader: Any, writer: Any, events: Events) -> None:
        opened = await events.next(StreamOpen)
        writer.write(header(from_="dave@h3", to=opened.attrs.get("from"), version=None))
        got = await events.next(Stanza)
        writer.write(message("juliet@h2", "dave@h3", "echo " + got.element.findtext(
            "{jabber:client}body")))
        await events.next(StreamClose)
        writer.write(CLOSE)

    peer = await RawPeer(names, "dave@h3", bot).start()
    me = await Side("juliet@h2", names, tmp_path / "j").start()
    try:
        await me.send("dave@h3", "hi")
        stored = await wait_for(me.stored)
        assert [(r["from"], r["body"], r["verified"]) for r in stored] == [
            ("dave@h3", "echo hi", True)]
    finally:
        peer.close()
        await me.close()


@run
async def test_we_answer_over_the_connection_the_peer_opened(names: Names,
                                                             tmp_path: Path) -> None:
    """salut keeps one connection per contact and closes a second one at once: a reply
    must go over the connection it opened."""
    alice = await Side("alice@h1", names, tmp_path / "a").start()
    juliet = await Side("juliet@h2", names, tmp_path / "j").start()
    try:
        await alice.send("juliet@h2", "hello")
        await wait_for(juliet.stored)
        assert juliet.hub.usable("alice@h1") is not None
        await juliet.send("alice@h1", "hello back")
        assert juliet.hub.dialled == 0, "juliet dialled instead of answering on alice's"
        assert [r["body"] for r in await wait_for(alice.stored)] == ["hello back"]
        assert alice.hub.accepted == 0
    finally:
        await alice.close()
        await juliet.close()


@run
async def test_both_sides_opening_at_once_lose_and_double_nothing(names: Names,
                                                                  tmp_path: Path) -> None:
    a = await Side("a@h1", names, tmp_path / "a").start()
    b = await Side("b@h2", names, tmp_path / "b").start()
    try:
        await asyncio.gather(*(a.send("b@h2", f"a{i}") for i in range(10)),
                             *(b.send("a@h1", f"b{i}") for i in range(10)))
        assert sorted(r["body"] for r in a.stored()) == sorted(f"b{i}" for i in range(10))
        assert sorted(r["body"] for r in b.stored()) == sorted(f"a{i}" for i in range(10))
    finally:
        await a.close()
        await b.close()


@run
async def test_a_stream_cut_before_the_receipt_is_retried_and_stored_once(
        names: Names, tmp_path: Path) -> None:
    """The connection breaks after our stanza was written and stored, before its
    receipt: the sender retries once with the same id, the receiver stores it once."""
    sender = await Side("s@h1", names, tmp_path / "s").start()
    receiver = await Side("r@h2", names, tmp_path / "r").start()
    cuts = []

    def cut_first(conn: Any, element: ET.Element) -> bool:
        if not cuts:
            cuts.append(conn)
            conn.writer.transport.abort()  # after reading it, before the receipt
        return False

    receiver.dispatcher.on_message("jabber:client", cut_first)
    try:
        sent = await sender.send("r@h2", "once only")
        assert cuts, "the cut never happened"
        assert sender.hub.dialled == 2
        stored = receiver.stored()
        assert [r["body"] for r in stored] == ["once only"] and stored[0]["id"] == sent.id
        assert receiver.store.repeats == 1
        # A script's own retry with the same id: answered, not stored again.
        await sender.send("r@h2", "once only", id=sent.id)
        assert len(receiver.stored()) == 1 and receiver.store.repeats == 2
    finally:
        await sender.close()
        await receiver.close()


@run
async def test_the_repeat_window_survives_a_restart(names: Names, tmp_path: Path) -> None:
    first = await Side("r@h2", names, tmp_path / "r").start()
    sender = await Side("s@h1", names, tmp_path / "s").start()
    await sender.send("r@h2", "before restart", id="fixed")
    await first.close()
    again = await Side("r@h2", names, tmp_path / "r").start()
    try:
        await sender.hub.close()
        sender.hub._servers.clear()
        await sender.send("r@h2", "before restart", id="fixed")
        assert [r["body"] for r in again.stored()] == ["before restart"]
        assert again.store.repeats == 1
    finally:
        await sender.close()
        await again.close()


@run
async def test_messages_to_a_peer_without_receipts_share_one_stream_at_a_time(
        names: Names, tmp_path: Path) -> None:
    """libpurple keeps one conversation per buddy and drops the older connection when
    a new one comes: parallel sends must queue on one connection."""
    bodies: list[str] = []

    async def purple(reader: Any, writer: Any, events: Events) -> None:
        await events.next(StreamOpen)
        writer.write(header(from_=None, to=None, version=None))
        while True:
            event = await events.next((Stanza, StreamClose))
            if not isinstance(event, Stanza):
                return  # our closing tag: libpurple just closes
            bodies.append(event.element.findtext("{jabber:client}body"))

    peer = await RawPeer(names, "romeo@h1", purple, caps={"node": "libpurple",
                                                           "ver": "2.14.12"}).start()
    me = await Side("juliet@h2", names, tmp_path / "j").start()
    try:
        await asyncio.gather(*(me.send("romeo@h1", f"par {i}") for i in range(20)))
        assert sorted(bodies) == sorted(f"par {i}" for i in range(20))
        assert peer.most_at_once == 1
        assert peer.connections < 20, "queued messages should share a stream"
    finally:
        peer.close()
        await me.close()


@run
async def test_iq_requests_are_answered(names: Names, tmp_path: Path) -> None:
    got: list[ET.Element] = []

    async def asker(reader: Any, writer: Any, events: Events) -> None:
        writer.write(header(from_="q@h3", to="me@h1", version="1.0"))
        await events.next(StreamOpen)
        writer.write(b"<iq type='get' id='d1' from='q@h3'>"
                     b"<query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
                     b"<iq type='set' id='x1' from='q@h3'><odd xmlns='urn:x'/></iq>")
        while len(got) < 2:
            element = (await events.next(Stanza)).element
            if element.tag == "{jabber:client}iq":  # not <stream:features/>
                got.append(element)
        writer.write(CLOSE)

    me = await Side("me@h1", names, tmp_path / "m").start()
    reader, writer = await asyncio.open_connection(LOOP, me.port)
    try:
        await asker(reader, writer, Events(reader))
        disco, unknown = sorted(got, key=lambda e: e.get("id"))
        features = {f.get("var") for f in disco.iter(f"{{{st.DISCO_INFO_NS}}}feature")}
        assert disco.get("type") == "result" and st.RECEIPTS_NS in features
        assert unknown.get("type") == "error"
        assert unknown.find(f".//{{{st.STANZAS_NS}}}service-unavailable") is not None
        # The unknown request is kept (nothing received is dropped); disco is protocol.
        assert [r["query"] for r in await wait_for(me.stored)] == ["urn:x"]
    finally:
        writer.close()
        await me.close()


@run
async def test_an_iq_we_send_to_a_silent_peer_times_out(names: Names,
                                                        tmp_path: Path) -> None:
    async def mute(reader: Any, writer: Any, events: Events) -> None:
        await events.next(StreamOpen)
        writer.write(header(from_=None, to=None, version=None))
        await events.next(StreamClose)

    peer = await RawPeer(names, "mute@h1", mute).start()
    me = await Side("me@h2", names, tmp_path / "m").start()
    try:
        conn = await me.hub.dial(names.table["mute@h1"].target, timeout=2, sources=None)
        iq = ET.Element("{jabber:client}iq", {"type": "get", "to": "mute@h1"})
        ET.SubElement(iq, f"{{{st.DISCO_INFO_NS}}}query")
        with pytest.raises(TimeoutFailure):
            await me.dispatcher.request(conn, iq, 0.3)
        # A peer whose caps carry no hash is not asked at all (libpurple).
        assert await me.disco.features(conn, {"node": "x", "ver": "2.14"}) == frozenset()
    finally:
        peer.close()
        await me.close()


@run
async def test_a_long_stream_keeps_no_stored_stanza(names: Names, tmp_path: Path) -> None:
    """Issue 14: a stream kept every stored stanza's future (its record and XML) until
    MAX_UNSTORED of them: ~2 MB per busy stream, the steps in the soak's RSS."""
    sender = await Side("s@h1", names, tmp_path / "s").start()
    receiver = await Side("r@h2", names, tmp_path / "r").start()
    try:
        for i in range(200):
            await sender.send("r@h2", f"message {i}")
        assert sender.hub.dialled == 1 and len(receiver.stored()) == 200
        # Each send waited for its receipt, so all but the newest are on disk and were
        # let go when the next one came.
        assert receiver.hub.connections()
        assert all(len(c.unstored) <= 1 for c in receiver.hub.connections())
    finally:
        await sender.close()
        await receiver.close()


@run
async def test_a_sender_that_stops_advertising_its_address_is_no_longer_verified(
        names: Names, tmp_path: Path) -> None:
    """The sender is checked again at each read: what it sends once its name no longer
    advertises the address it speaks from is stored as unverified."""
    receiver = await Side("r@h2", names, tmp_path / "r").start()
    names.add("s@h1", 1)  # advertises 127.0.0.1, the address it connects from
    reader, writer = await asyncio.open_connection(LOOP, receiver.port)
    try:
        writer.write(header(from_="s@h1", to="r@h2", version=None))
        for i, step in enumerate(("advertised", "gone")):
            writer.write(f"<message from='s@h1' to='r@h2' type='chat' id='v{i}'>"
                         f"<body>{step}</body></message>".encode())
            await writer.drain()
            await wait_for(lambda i=i: len(receiver.stored()) == i + 1)
            names.table.pop("s@h1", None)
        assert [(r["body"], r["verified"]) for r in receiver.stored()] == [
            ("advertised", True), ("gone", False)]
    finally:
        writer.close()
        await receiver.close()
