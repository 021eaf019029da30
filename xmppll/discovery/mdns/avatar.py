"""Pictures (XEP-0174 "Icons"): a DNS NULL record at the instance name,
`<name>._presence._tcp.local`, holding the raw PNG or JPEG, and its SHA-1 in the TXT
key `phsh`.

python-zeroconf cannot carry them (measured with 0.154):
- it has no NULL record class, so it can neither publish nor cache one: a received
  NULL record is skipped while parsing;
- it discards every packet larger than 8966 bytes before parsing it, and a picture is
  usually larger: libpurple sends its new TXT (the new `phsh`) and the new NULL record
  in one packet on a change, so zeroconf would miss that TXT too.

So this module taps zeroconf's own reader sockets (each transport's protocol is wrapped,
no second socket on 5353 that would steal unicast answers from zeroconf): every packet
is first looked at here for NULL records and questions about our picture, then handed
to zeroconf unchanged; a response too big for zeroconf is parsed by zeroconf's own
DNSIncoming and fed to its record manager, so the TXT riding with a picture is not
lost. NULL records and our answers are written by hand and sent on zeroconf's sender
sockets.

Pictures are kept by content (SHA-1 -> bytes), not by record: a peer's picture is the
one whose hash is its current `phsh`. avahi 0.8 sends the goodbye for a changed picture
carrying the NEW data (faces-facts.md), so a cache that honours goodbyes by content
keeps the old picture; looking pictures up by `phsh` is immune to that, and to any
order in which TXT and NULL arrive.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import random
import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from xmppll.errors import DataError

log = logging.getLogger("xmppll")

TYPE_NULL = 10
TYPE_ANY = 255
CLASS_IN, CLASS_FLUSH = 1, 0x8000
TTL = 120  # libpurple and salut both use 120 s
DOMAIN = (b"_presence", b"_tcp", b"local")
# The whole record must fit one UDP datagram over IPv4 (65507 bytes of payload): the
# 12-byte header, the name (a 63-byte instance label takes 86), type/class/TTL/length.
MAX_AVATAR = 65507 - 12 - (1 + 63 + 23) - 10  # 65398 bytes
ZEROCONF_MAX_PACKET = 8966  # python-zeroconf drops larger packets unparsed
ANNOUNCE_AT = (0.0, 1.0, 3.0)  # RFC 6762 §8.3: at least twice, a second apart
ASK_AT = (0.0, 1.0, 3.0, 7.0)  # questions for a picture nobody announced yet
STORE_COUNT = 256
STORE_BYTES = 16 << 20
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"


# --- the picture itself ------------------------------------------------------------

def image_type(data: bytes) -> str | None:
    """"png" or "jpeg" by the file's signature, else None."""
    if data.startswith(_PNG):
        return "png"
    if data.startswith(_JPEG):
        return "jpeg"
    return None


def check_image(data: bytes, what: str = "the avatar") -> bytes:
    """The picture as peers accept it: PNG or JPEG, not empty, within MAX_AVATAR."""
    if image_type(data) is None:
        raise DataError(f"{what} is neither PNG nor JPEG")
    if len(data) > MAX_AVATAR:
        raise DataError(f"{what} is {len(data)} bytes; a picture travels in one mDNS "
                        f"packet, at most {MAX_AVATAR} bytes")
    return data


def read_image(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_AVATAR + 1)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    return check_image(data, path)


def sha1_hex(data: bytes) -> str:
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise DataError("avatar data is not base64") from None


# --- the wire --------------------------------------------------------------------------

def instance_wire(instance: str) -> bytes:
    """`<instance>._presence._tcp.local.` with the instance as ONE label (it may hold
    dots; python-zeroconf would split it)."""
    labels = [instance.encode(), *DOMAIN]
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\0"


def null_packet(instance: str, data: bytes, ttl: int = TTL, *, flush: bool = True,
                query: tuple[int, bytes] | None = None) -> bytes:
    """A response holding our NULL record. `query` (id, question section) makes it the
    answer to a legacy unicast query (RFC 6762 §6.7: id and question echoed, no
    cache-flush bit, TTL at most 10 s)."""
    ident, question = query or (0, b"")
    if query is not None:
        flush, ttl = False, min(ttl, 10)
    header = struct.pack("!6H", ident, 0x8400, 1 if question else 0, 1, 0, 0)
    rclass = CLASS_IN | (CLASS_FLUSH if flush else 0)
    record = instance_wire(instance) + struct.pack("!HHIH", TYPE_NULL, rclass, ttl, len(data))
    return header + question + record + data


def null_query(instance: str) -> bytes:
    """A multicast (QM) question for the instance's NULL record: avahi never answers a
    legacy unicast one with a picture (too big for it), and a QU answer sent to port
    5353 may go to another process sharing the port."""
    return struct.pack("!6H", 0, 0, 1, 0, 0, 0) + instance_wire(instance) + struct.pack(
        "!HH", TYPE_NULL, CLASS_IN)


class _Malformed(ValueError):
    pass


def _name(packet: bytes, offset: int) -> tuple[list[bytes], int]:
    """The labels at `offset` (compression followed, loops refused) and the offset
    after the name in place."""
    labels: list[bytes] = []
    end = None
    jumps = 0
    while True:
        if offset >= len(packet):
            raise _Malformed("name runs off the packet")
        length = packet[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(packet) or jumps > 32:
                raise _Malformed("bad compression pointer")
            if end is None:
                end = offset + 2
            offset = (length & 0x3F) << 8 | packet[offset + 1]
            jumps += 1
            continue
        if length & 0xC0:
            raise _Malformed("unknown label type")
        offset += 1
        if length == 0:
            return labels, end if end is not None else offset
        labels.append(packet[offset:offset + length])
        offset += length


def parse(packet: bytes) -> tuple[int, int, list[tuple[list[bytes], int, int]],
                                  list[tuple[list[bytes], int, int, int, bytes]], int]:
    """(id, flags, questions, records, end of the question section); records are
    (labels, type, class, ttl, rdata) of every section."""
    if len(packet) < 12:
        raise _Malformed("short header")
    ident, flags, qd, an, ns, ar = struct.unpack_from("!6H", packet)
    offset = 12
    questions = []
    for _ in range(qd):
        labels, offset = _name(packet, offset)
        if offset + 4 > len(packet):
            raise _Malformed("short question")
        qtype, qclass = struct.unpack_from("!HH", packet, offset)
        offset += 4
        questions.append((labels, qtype, qclass))
    question_end = offset
    records = []
    for _ in range(an + ns + ar):
        labels, offset = _name(packet, offset)
        if offset + 10 > len(packet):
            raise _Malformed("short record")
        rtype, rclass, ttl, length = struct.unpack_from("!HHIH", packet, offset)
        offset += 10
        if offset + length > len(packet):
            raise _Malformed("record runs off the packet")
        records.append((labels, rtype, rclass, ttl, packet[offset:offset + length]))
        offset += length
    return ident, flags, questions, records, question_end


def instance_of(labels: list[bytes]) -> str | None:
    """The instance name when `labels` is `<instance>._presence._tcp.local`."""
    if len(labels) != 4 or [label.lower() for label in labels[1:]] != list(DOMAIN):
        return None
    return labels[0].decode("utf-8", "replace")


# --- pictures by content ------------------------------------------------------------------

class Pictures:
    """SHA-1 -> picture, least recently used dropped past STORE_COUNT / STORE_BYTES
    (a flood of NULL records cannot grow it)."""

    def __init__(self, count: int = STORE_COUNT, size: int = STORE_BYTES) -> None:
        self.count, self.size = count, size
        self.data: OrderedDict[str, bytes] = OrderedDict()
        self.bytes = 0

    def add(self, data: bytes) -> str:
        sha = sha1_hex(data)
        if sha in self.data:
            self.data.move_to_end(sha)
            return sha
        self.data[sha] = data
        self.bytes += len(data)
        while len(self.data) > 1 and (len(self.data) > self.count or self.bytes > self.size):
            _, old = self.data.popitem(last=False)
            self.bytes -= len(old)
        return sha

    def get(self, sha: str | None) -> bytes | None:
        if not sha:
            return None
        data = self.data.get(sha.lower())
        if data is not None:
            self.data.move_to_end(sha.lower())
        return data


# --- on the link --------------------------------------------------------------------------

class _Tap:
    """Stands in for a zeroconf reader's protocol: sees each datagram first."""

    def __init__(self, inner: Any, reader: Any, seen: Callable[[bytes, Any, Any], None]
                 ) -> None:
        self.inner, self.reader, self.seen = inner, reader, seen

    def datagram_received(self, data: bytes, addrs: Any) -> None:
        try:
            self.seen(data, addrs, self.reader)
        except Exception:  # never let a picture break discovery
            log.exception("avatar: packet from %s not handled", addrs[0])
        self.inner.datagram_received(data, addrs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Avatars:
    """Our picture on the link (announced, answered, withdrawn) and peers' pictures
    (heard in any packet, asked for when a peer's `phsh` is one we lack)."""

    def __init__(self, azc: Any) -> None:
        self.azc = azc
        self.zc = azc.zeroconf
        self.pictures = Pictures()
        self.mine: bytes | None = None
        self.name: str | None = None
        self._arrived = asyncio.Event()
        self._asking: dict[str, asyncio.Task] = {}  # instance (lower) -> fetch task
        self._announcing: asyncio.Task | None = None
        self._last_multicast = 0.0
        self._answer_timer: asyncio.TimerHandle | None = None
        self.tap()

    # -- the sockets
    def tap(self) -> None:
        """Wrap every reader not wrapped yet (netfollow adds sockets as links come)."""
        for reader in self.zc.engine.readers:
            transport = reader.transport
            protocol = transport.get_protocol()
            if not isinstance(protocol, _Tap):
                transport.set_protocol(_Tap(protocol, reader, self._seen))

    def _multicast(self, packet: bytes) -> None:
        for sender in self.zc.engine.senders:
            try:
                if sender.is_ipv6:
                    _, _, flow, scope = sender.sock_name
                    sender.transport.sendto(packet, ("ff02::fb", 5353, flow, scope))
                else:
                    sender.transport.sendto(packet, ("224.0.0.251", 5353))
            except OSError as exc:  # one link gone must not stop the others
                log.info("avatar: cannot send on %s: %s", sender.sock_name, exc)

    def _seen(self, data: bytes, addrs: Any, reader: Any) -> None:
        try:
            ident, flags, questions, records, qend = parse(data)
        except _Malformed:
            return
        if flags & 0x8000:
            for labels, rtype, _rclass, _ttl, rdata in records:
                if rtype == TYPE_NULL and rdata and instance_of(labels) is not None:
                    # Kept even from a goodbye: avahi's carries the current picture.
                    self.pictures.add(bytes(rdata))
                    self._arrived.set()
            if len(data) > ZEROCONF_MAX_PACKET:
                self._feed_zeroconf(data, addrs)
            return
        if self.mine is not None and self.name is not None:
            for labels, qtype, _qclass in questions:
                name = instance_of(labels)
                if name is not None and name.lower() == self.name.lower() and \
                        qtype in (TYPE_NULL, TYPE_ANY):
                    self._answer(addrs, reader, ident, data[12:qend])
                    return

    def _feed_zeroconf(self, data: bytes, addrs: Any) -> None:
        """What zeroconf dropped for its size: parsed by zeroconf itself (it skips the
        NULL record) and given to its cache, so a TXT riding with a picture counts."""
        from zeroconf import DNSIncoming, current_time_millis

        scope = addrs[3] if len(addrs) > 3 else None
        msg = DNSIncoming(data, (addrs[0], addrs[1]), scope, current_time_millis())
        if msg.valid and not msg.is_query():
            self.zc.record_manager.async_updates_from_response(msg)

    def _answer(self, addrs: Any, reader: Any, ident: int, question: bytes) -> None:
        assert self.mine is not None and self.name is not None
        if addrs[1] != 5353:  # legacy unicast: answered directly, id and question echoed
            packet = null_packet(self.name, self.mine, query=(ident, question))
            with contextlib.suppress(OSError):
                reader.transport.sendto(packet, addrs)
            return
        loop = asyncio.get_running_loop()
        # RFC 6762 §6: 20-120 ms, and never the same record again within a second.
        if self._answer_timer is not None or loop.time() - self._last_multicast < 1.0:
            return
        self._answer_timer = loop.call_later(random.uniform(0.02, 0.12), self._send_mine)

    def _send_mine(self) -> None:
        self._answer_timer = None
        if self.mine is not None and self.name is not None:
            self._last_multicast = asyncio.get_running_loop().time()
            self._multicast(null_packet(self.name, self.mine))

    # -- ours
    def publish(self, name: str, data: bytes | None) -> None:
        """Announce `data` as `name`'s picture now (and twice more), or withdraw it with
        None. Call before the TXT with the new `phsh` goes out: a peer that reads the
        new hash then finds the picture already there."""
        old, old_name = self.mine, self.name
        if old is not None and old_name is not None and (old != data or old_name != name):
            self._multicast(null_packet(old_name, old, 0, flush=False))  # goodbye
        self.mine, self.name = data, name
        if self._announcing is not None:
            self._announcing.cancel()
            self._announcing = None
        if data is not None:
            self._announcing = asyncio.ensure_future(self._announce())

    async def _announce(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for at in ANNOUNCE_AT:
            await asyncio.sleep(max(0.0, start + at - loop.time()))
            self._send_mine()

    def withdraw(self) -> None:
        if self.name is not None:
            self.publish(self.name, None)

    # -- theirs
    def want(self, name: str, sha: str | None) -> None:
        """A peer's `phsh` is `sha`: ask for the picture unless we hold it or are asking
        already; the questions stop as soon as it is here."""
        if not sha or self.pictures.get(sha) is not None:
            return
        key = name.lower()
        task = self._asking.get(key)
        if task is not None and not task.done():
            return
        self._asking[key] = asyncio.ensure_future(self.fetch(name, sha, sum(ASK_AT) + 2))

    async def fetch(self, name: str, sha: str, timeout: float) -> bytes | None:
        """The picture whose SHA-1 is `sha`, asked of `name` (QM questions at ASK_AT,
        stopping once it is here); None when it did not come within `timeout`."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeout
        schedule = list(ASK_AT)
        while True:
            found = self.pictures.get(sha)
            if found is not None:
                return found
            now = loop.time()
            if now >= deadline:
                return None
            if schedule and now >= start + schedule[0]:
                schedule.pop(0)
                self.tap()
                self._multicast(null_query(name))
                log.info("avatar: asked %s for its picture %s", name, sha[:8])
            wake = start + schedule[0] if schedule else deadline
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), max(0.01, min(wake, deadline)
                                                                 - now))

    def close(self) -> None:
        for task in self._asking.values():
            task.cancel()
        if self._announcing is not None:
            self._announcing.cancel()
        if self._answer_timer is not None:
            self._answer_timer.cancel()


async def fetch_once(name: str, interfaces: list[str] | None, timeout: float
                     ) -> tuple[str, str | None, bytes | None]:
    """Without an agent: resolve `name`, then its picture. (name, phsh, picture);
    phsh None when the peer publishes none."""
    from xmppll.discovery.mdns.link import LinkScopes, open_link
    from xmppll.discovery.mdns.peers import PeerView, wait_for_peer
    from xmppll.errors import NoPeerError

    azc = await open_link(interfaces)
    try:
        avatars = Avatars(azc)
        view = PeerView(azc.zeroconf, scopes=LinkScopes(interfaces))
        await view.start(browse=False)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            peer = await wait_for_peer(view, name, min(timeout, 3.0))
            if peer is None:
                raise NoPeerError(f"no peer named {name} on the link")
            sha = peer.get("avatar")
            if not sha:
                return peer["name"], None, None
            return peer["name"], sha, await avatars.fetch(peer["name"], sha,
                                                          max(0.5, deadline - loop.time()))
        finally:
            avatars.close()
            await view.stop()
    finally:
        await azc.async_close()
