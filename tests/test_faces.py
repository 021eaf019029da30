"""Faces without a network: the avatar wire format and store, the tap on zeroconf's
readers (with stand-in sockets), `phsh` in the TXT, chat states in-process between two
xmppll sides over 127.0.0.1 (and refused to libpurple and salut), the sent log and a
conversation's merged history. The LAN and real-peer halves are in test_faces_lan.py
and the interop modules.
"""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from test_connections import XMPPLL_CAPS, Names, RawPeer, Side, run, wait_for

from xmppll.agent import conversation, sentlog
from xmppll.discovery.mdns import avatar as av
from xmppll.discovery.presence import Presence, decode_txt, encode_txt, peer_fields
from xmppll.errors import DataError
from xmppll.xmpp import chatstates as cs
from xmppll.xmpp.delivery import UnsupportedError
from xmppll.xmpp.stream import serialize

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
JPEG = b"\xff\xd8\xff\xe0" + b"j" * 500


# --- pictures -------------------------------------------------------------------------

def test_image_check_by_signature_and_size(tmp_path: Path) -> None:
    assert av.check_image(PNG) == PNG and av.check_image(JPEG) == JPEG
    with pytest.raises(DataError, match="neither PNG nor JPEG"):
        av.check_image(b"GIF89a...")
    big = b"\x89PNG\r\n\x1a\n" + b"0" * av.MAX_AVATAR
    with pytest.raises(DataError, match=f"at most {av.MAX_AVATAR} bytes"):
        av.check_image(big)
    (tmp_path / "big.png").write_bytes(big)
    with pytest.raises(DataError, match="big.png"):
        av.read_image(str(tmp_path / "big.png"))
    # The biggest picture with the longest instance label still fits an IPv4 datagram.
    packet = av.null_packet("u" * 30 + "@" + "h" * 32, big[:av.MAX_AVATAR])
    assert len(packet) <= 65507


def test_null_record_wire_keeps_a_dotted_instance_as_one_label() -> None:
    packet = av.null_packet("j.doe@host", PNG)
    ident, flags, questions, records, _ = av.parse(packet)
    assert (ident, flags, questions) == (0, 0x8400, [])
    [(labels, rtype, rclass, ttl, rdata)] = records
    assert labels == [b"j.doe@host", b"_presence", b"_tcp", b"local"]
    assert (rtype, rclass, ttl, rdata) == (10, 0x8001, 120, PNG)
    assert av.instance_of(labels) == "j.doe@host"
    goodbye = av.parse(av.null_packet("j.doe@host", PNG, 0, flush=False))[3][0]
    assert (goodbye[2], goodbye[3]) == (1, 0)
    [(qlabels, qtype, qclass)] = av.parse(av.null_query("juliet@h1"))[2]
    assert (qlabels[0], qtype, qclass) == (b"juliet@h1", 10, 1)  # QM: multicast answer


def test_parse_follows_compression_and_refuses_loops() -> None:
    name = av.instance_wire("romeo@h3")
    # A TXT at the instance, then a NULL whose name is a pointer to it.
    txt = name + b"\x00\x10\x80\x01\x00\x00\x11\x94\x00\x02\x01x"
    null = b"\xc0\x0c" + b"\x00\x0a\x00\x01\x00\x00\x00\x78" + len(JPEG).to_bytes(2, "big") + JPEG
    packet = b"\x00\x00\x84\x00\x00\x00\x00\x02\x00\x00\x00\x00" + txt + null
    records = av.parse(packet)[3]
    assert av.instance_of(records[1][0]) == "romeo@h3" and records[1][4] == JPEG
    loop = b"\x00\x00\x84\x00\x00\x00\x00\x01\x00\x00\x00\x00" + b"\xc0\x0c"
    with pytest.raises(ValueError):
        av.parse(loop)
    with pytest.raises(ValueError):
        av.parse(packet[:-5])


def test_pictures_are_kept_by_content_and_bounded() -> None:
    store = av.Pictures(count=2, size=10_000)
    a, b, c = PNG, JPEG, PNG + b"!"
    sha_a = store.add(a)
    assert store.get(sha_a.upper()) == a
    store.add(b)
    store.get(sha_a)  # recently used: b goes first
    store.add(c)
    assert store.get(av.sha1_hex(b)) is None and store.get(sha_a) == a
    store.add(b"\x89PNG" + b"z" * 20_000)  # over the byte budget: everything older goes
    assert store.bytes <= 20_100 and len(store.data) == 1


# --- the tap on zeroconf's sockets ------------------------------------------------------

class FakeTransport:
    def __init__(self, inner: Any) -> None:
        self.protocol = inner
        self.sent: list[tuple[bytes, Any]] = []

    def get_protocol(self) -> Any:
        return self.protocol

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))


class FakeListener:
    def __init__(self) -> None:
        self.got: list[bytes] = []

    def datagram_received(self, data: bytes, addrs: Any) -> None:
        self.got.append(data)


class FakeWrapped:
    def __init__(self, transport: FakeTransport, ipv6: bool = False) -> None:
        self.transport = transport
        self.is_ipv6 = ipv6
        self.sock_name = ("::", 5353, 0, 2) if ipv6 else ("0.0.0.0", 5353)


class FakeRecords:
    def __init__(self) -> None:
        self.fed: list[Any] = []

    def async_updates_from_response(self, msg: Any) -> None:
        self.fed.append(msg)


class FakeZc:
    def __init__(self) -> None:
        self.listener = FakeListener()
        self.transport = FakeTransport(self.listener)
        reader = FakeWrapped(self.transport)
        self.engine = type("E", (), {"readers": [reader], "senders": [reader]})()
        self.record_manager = FakeRecords()


class FakeAzc:
    def __init__(self) -> None:
        self.zeroconf = FakeZc()


@run
async def test_tap_sees_pictures_answers_questions_and_passes_everything_on() -> None:
    azc = FakeAzc()
    zc = azc.zeroconf
    avatars = av.Avatars(azc)
    avatars.tap()  # twice: still one wrapper
    protocol = zc.transport.get_protocol()
    assert isinstance(protocol, av._Tap) and protocol.inner is zc.listener
    # A goodbye (TTL 0) still teaches the picture: avahi's carries the new data.
    heard = av.null_packet("alice@h6", JPEG, 0, flush=False)
    protocol.datagram_received(heard, ("10.0.0.6", 5353))
    assert avatars.pictures.get(av.sha1_hex(JPEG)) == JPEG
    assert zc.listener.got == [heard], "zeroconf must still get every packet"
    # A response zeroconf would drop for its size is given to its cache by us.
    big = av.null_packet("alice@h6", b"\xff\xd8\xff" + b"b" * 9000)
    protocol.datagram_received(big, ("10.0.0.6", 5353))
    assert len(zc.record_manager.fed) == 1
    # Our own picture: announced at once, answered to a multicast question (after
    # 20-120 ms, not within a second of the last), and to a legacy unicast one.
    avatars.publish("me@h1", PNG)
    await asyncio.sleep(0.01)
    sent = [av.parse(d)[3][0] for d, _ in zc.transport.sent]
    assert [(r[0][0], r[4]) for r in sent] == [(b"me@h1", PNG)]
    zc.transport.sent.clear()
    protocol.datagram_received(av.null_query("ME@h1"), ("10.0.0.9", 5353))
    await asyncio.sleep(0.2)
    assert zc.transport.sent == [], "answered again within a second of the announcement"
    await asyncio.sleep(1.0)  # the 1 s re-announcement
    zc.transport.sent.clear()
    await asyncio.sleep(1.0)
    protocol.datagram_received(av.null_query("me@h1"), ("10.0.0.9", 5353))
    await asyncio.sleep(0.2)
    assert len(zc.transport.sent) == 1 and zc.transport.sent[0][1] == ("224.0.0.251", 5353)
    zc.transport.sent.clear()
    query = b"\x12\x34" + av.null_query("me@h1")[2:]
    protocol.datagram_received(query, ("10.0.0.9", 40000))
    [(reply, addr)] = zc.transport.sent
    ident, _, questions, [record], _ = av.parse(reply)
    assert (ident, addr, len(questions), record[2], record[3]) == (0x1234, ("10.0.0.9", 40000),
                                                                  1, 1, 10)
    # A change: goodbye for the old picture first, then the new one (flush bit).
    zc.transport.sent.clear()
    avatars.publish("me@h1", JPEG)
    await asyncio.sleep(0.01)
    old, new = (av.parse(d)[3][0] for d, _ in zc.transport.sent[:2])
    assert (old[3], old[4], new[2], new[4]) == (0, PNG, 0x8001, JPEG)
    avatars.close()


@run
async def test_fetch_asks_until_answered_and_stops() -> None:
    azc = FakeAzc()
    zc = azc.zeroconf
    avatars = av.Avatars(azc)
    sha = av.sha1_hex(PNG)
    fetching = asyncio.ensure_future(avatars.fetch("bob@h2", sha, 5))
    await asyncio.sleep(0.05)
    asked = [av.parse(d)[2] for d, _ in zc.transport.sent]
    assert len(asked) == 1 and asked[0][0][0][0] == b"bob@h2"
    # Someone else's picture arriving does not end the wait; the right one does.
    zc.transport.get_protocol().datagram_received(av.null_packet("x@h", JPEG), ("1.2.3.4", 5353))
    await asyncio.sleep(0.05)
    assert not fetching.done()
    zc.transport.get_protocol().datagram_received(av.null_packet("bob@h2", PNG), ("1.2.3.4", 5353))
    assert await fetching == PNG
    avatars.want("bob@h2", sha)  # held already: no question
    await asyncio.sleep(1.2)
    assert len(zc.transport.sent) == 1
    avatars.close()


def test_phsh_in_txt_and_peer_json() -> None:
    sha = av.sha1_hex(PNG)
    txt = decode_txt(encode_txt(Presence(port=5298, avatar=sha)))
    assert txt["phsh"] == sha and list(txt)[:3] == ["txtvers", "status", "port.p2pj"]
    assert "phsh" not in decode_txt(encode_txt(Presence(port=5298)))
    assert peer_fields({"phsh": sha.upper()})["avatar"] == sha
    assert peer_fields({"phsh": "not-a-hash"})["avatar"] is None
    assert peer_fields({})["avatar"] is None


@pytest.fixture
def names() -> Names:
    return Names()


# --- chat states ----------------------------------------------------------------------------

def _parse(xml: str) -> ET.Element:
    return ET.fromstring(xml)


def test_state_of_both_forms() -> None:
    ns = "xmlns='jabber:client'"
    assert cs.state_of(_parse(f"<message {ns}><composing xmlns='{cs.CHATSTATES_NS}'/>"
                              "</message>")) == "composing"
    ichat = _parse(f"<message {ns}><body/><x xmlns='jabber:x:event'><composing/><id/></x>"
                   "</message>")
    assert cs.state_of(ichat) == "composing" and not cs.has_text(ichat)
    stopped = _parse(f"<message {ns}><x xmlns='jabber:x:event'><id>a1</id></x></message>")
    assert cs.state_of(stopped) == "paused"
    request = _parse(f"<message {ns} id='m1'><body>hi</body>"
                     "<x xmlns='jabber:x:event'><composing/></x></message>")
    assert cs.state_of(request) is None and cs.asks_for_events(request)
    notice = cs.notice("a@h", "b@h", "paused", form="x-event", ref="m1")
    assert cs.state_of(notice) == "paused" and "<id>m1</id>" in serialize(notice)
    assert cs.state_of(cs.notice("a@h", "b@h", "gone")) == "gone"


@run
async def test_chat_states_between_two_xmppll_sides_are_not_stored(names: Names,
                                                                   tmp_path: Path) -> None:
    a = await Side("a@h", names, tmp_path / "a").start()
    b = await Side("b@h", names, tmp_path / "b").start()
    seen: list[dict[str, Any]] = []
    b.delivery.chatstates = cs.ChatStates(b.dispatcher, seen.append)
    cs.ChatStates(a.dispatcher, lambda record: None)
    try:
        await a.delivery.send({"to": "b@h", "chatstate": "composing"}, timeout=5)
        await wait_for(lambda: seen)
        assert seen[0]["kind"] == "chatstate" and seen[0]["state"] == "composing"
        assert seen[0]["from"] == "a@h" and seen[0]["peer"]["name"] == "a@h"
        await a.send("b@h", "hello", chatstate="active")
        await wait_for(lambda: b.stored())
        [stored] = b.stored()
        assert stored["body"] == "hello" and f"<active xmlns=\"{cs.CHATSTATES_NS}\"" in \
            stored["xml"].replace("'", '"')
        await a.delivery.send({"to": "b@h", "chatstate": "paused"}, timeout=5)
        await wait_for(lambda: len(seen) == 2)
        assert [r["state"] for r in seen] == ["composing", "paused"]
        assert len(b.stored()) == 1, "a notice must never be stored as a message"
    finally:
        await a.close()
        await b.close()


@run
async def test_no_notice_alone_to_libpurple_or_salut(names: Names, tmp_path: Path) -> None:
    """libpurple (no XEP-0115 hash) is refused without a connection; salut (real caps,
    no chat states in its disco#info) is asked once, then refused; a message with text
    to either carries no state."""
    a = await Side("a@h", names, tmp_path / "a").start()
    got: list[str] = []

    async def purple(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     events: Any) -> None:
        got.append((await reader.read(65536)).decode())

    peer = await RawPeer(names, "romeo@h3", purple, {"node": "libpurple", "ver": "2.14.12",
                                                     "hash": None}).start()
    try:
        with pytest.raises(UnsupportedError):
            await a.delivery.send({"to": "romeo@h3", "chatstate": "composing"}, timeout=2)
        assert peer.connections == 0
        # libpurple asks for x:event in every message; it still gets no notice.
        a.delivery.chatstates = cs.ChatStates(a.dispatcher, lambda r: None)
        a.delivery.chatstates.asked["romeo@h3"] = "m1"
        with pytest.raises(UnsupportedError):
            await a.delivery.send({"to": "romeo@h3", "chatstate": "composing"}, timeout=2)
        a.delivery.disco.known["salutver"] = frozenset({"urn:xmpp:receipts"})
        names.add("alice@h6", 1, {"node": "http://telepathy.freedesktop.org/caps",
                                  "hash": "sha-1", "ver": "salutver"})
        with pytest.raises(UnsupportedError):
            await a.delivery.send({"to": "alice@h6", "chatstate": "gone"}, timeout=2)
        element = cs.notice("x@h", "y@h", "composing")
        assert cs.state_of(element) == "composing"
        # An x:event peer that asked (the iChat family) gets iChat's shape.
        names.add("ichat@h7", 1, {"node": None, "ver": None, "hash": None})
        a.delivery.chatstates.asked["ichat@h7"] = "m9"
        built = await a.delivery._notice(await names.resolve("ichat@h7", 0), "composing", 1e9)
        assert "jabber:x:event" in serialize(built) and "<id>m9</id>" in serialize(built)
    finally:
        await a.close()


@run
async def test_reads_chatstates_of_another_xmppll_version_is_asked(
        names: Names, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An xmppll whose caps `ver` differs from ours (another version) is asked."""
    from xmppll.xmpp import stanza

    monkeypatch.setattr(stanza, "caps_ver", lambda: "other-version")  # b answers as such
    a = await Side("a@h", names, tmp_path / "a").start()
    b = await Side("b@h", names, tmp_path / "b").start()
    names.add("b@h", b.port, {**XMPPLL_CAPS, "ver": "other-version"})
    try:
        peer = await names.resolve("b@h", 0)
        assert not await a.delivery.reads_chatstates(peer, 1e9, ask=False)
        loop = asyncio.get_running_loop()
        assert await a.delivery.reads_chatstates(peer, loop.time() + 5)
    finally:
        await a.close()
        await b.close()


# --- history of a conversation ------------------------------------------------------------

def test_sent_log_and_merged_history(tmp_path: Path) -> None:
    log = sentlog.SentLog(tmp_path, max_bytes=2000)
    for i in range(3):
        log.append({"body": f"out {i}"}, id_=f"o{i}", to="Juliet@h2")
    log.append({"body": "elsewhere"}, id_="x", to="nurse@h2")
    assert [r["body"] for r in sentlog.last_to(tmp_path, "juliet@h2", 2)] == ["out 1", "out 2"]
    inbox = tmp_path / "inbox.jsonl"
    recs = [{"seq": 1, "kind": "message", "from": "juliet@h2", "body": "in 0",
             "peer": {"name": "juliet@h2"}, "received": "2000-01-01T00:00:00.000Z"},
            {"seq": 2, "kind": "message", "from": "juliet@h2", "body": "in 1",
             "peer": {"name": "juliet@h2"}, "received": "2999-01-01T00:00:00.000Z"}]
    inbox.write_text("".join(json.dumps(r) + "\n" for r in recs))
    merged = conversation.past(tmp_path, "juliet@h2", 10)
    assert [(e["direction"], e["body"]) for e in merged] == [
        ("in", "in 0"), ("out", "out 0"), ("out", "out 1"), ("out", "out 2"), ("in", "in 1")]
    for i in range(40):  # past max_bytes the older half goes
        log.append({"body": "x" * 50}, id_=str(i), to="juliet@h2")
    assert (tmp_path / "sent.jsonl").stat().st_size <= 2000


def test_what_concerns_a_conversation() -> None:
    peer = "juliet@h2"
    assert conversation.concerns({"direction": "out", "to": "Juliet@h2"}, peer)
    assert conversation.concerns({"event": "updated", "name": "juliet@h2"}, peer)
    assert not conversation.concerns({"event": "updated", "name": "nurse@h2"}, peer)
    assert conversation.concerns({"kind": "chatstate", "from": "juliet@h2"}, peer)
    assert conversation.concerns({"kind": "message", "peer": {"name": "juliet@h2"}}, peer)
    assert not conversation.concerns({"kind": "message", "from": "x@y"}, peer)
    assert conversation.event_of({"kind": "chatstate", "state": "composing"}) == {
        "kind": "chatstate", "state": "composing"}
    assert conversation.event_of({"event": "removed", "name": peer})["online"] is False
