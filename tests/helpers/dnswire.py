"""mDNS on the wire, by hand, for the responders in this folder (`raw_responder.py`,
`hostile_responder.py`): name and record encoding, question parsing, the two multicast
sockets and the announce/answer/goodbye loop. Imported by those scripts (their folder is
on sys.path when they run); run them inside a host of the virtual LAN only.

Labels are bytes here, so a name can hold any byte; a `str` label is encoded as UTF-8.
"""

from __future__ import annotations

import ipaddress
import selectors
import signal
import socket
import struct
import time
from collections.abc import Sequence

GROUP4, GROUP6, PORT = "224.0.0.251", "ff02::fb", 5353
IFNAME = "eth0"


class T:
    """Record types."""

    A, PTR, TXT, AAAA, SRV, ANY = 1, 12, 16, 28, 33, 255


CLASS_IN, FLUSH = 1, 0x8000
HOST_TTL, OTHER_TTL = 120, 4500

Labels = tuple[bytes, ...]


def encode_name(labels: Sequence[bytes | str]) -> bytes:
    out = b""
    for label in labels:
        raw = label.encode() if isinstance(label, str) else label
        if not 0 < len(raw) < 64:
            raise ValueError(f"label of {len(raw)} bytes: {label!r}")
        out += bytes((len(raw),)) + raw
    return out + b"\0"


def decode_name(data: bytes, pos: int) -> tuple[Labels, int]:
    """Labels at `pos` (following compression pointers) and the offset after the name."""
    labels: list[bytes] = []
    end = None
    for _ in range(128):  # a loop of pointers must not hang us
        length = data[pos]
        if length & 0xC0 == 0xC0:
            if end is None:
                end = pos + 2
            pos = struct.unpack_from("!H", data, pos)[0] & 0x3FFF
            continue
        pos += 1
        if length == 0:
            return tuple(labels), end if end is not None else pos
        labels.append(data[pos : pos + length])
        pos += length
    raise ValueError("name too long or looping")


def questions(data: bytes) -> list[tuple[Labels, int]]:
    """(labels, qtype) of each question in a query; none for a response."""
    _id, flags, qd = struct.unpack_from("!HHH", data)
    if flags & 0x8000:  # a response, not a query
        return []
    pos, found = 12, []
    for _ in range(qd):
        labels, pos = decode_name(data, pos)
        qtype, _qclass = struct.unpack_from("!HH", data, pos)
        pos += 4
        found.append((labels, qtype))
    return found


def rr(name: Sequence[bytes | str], rtype: int, ttl: int, rdata: bytes, *,
       unique: bool) -> bytes:
    rclass = CLASS_IN | (FLUSH if unique else 0)
    return encode_name(name) + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def message(answers: list[bytes], additionals: Sequence[bytes] = (), qid: int = 0,
            question: bytes = b"") -> bytes:
    """An authoritative response carrying these records (and `question`, if any)."""
    header = struct.pack("!HHHHHH", qid, 0x8400, 1 if question else 0, len(answers),
                         0, len(additionals))
    return header + question + b"".join(answers) + b"".join(additionals)


def srv_rr(name: Sequence[bytes | str], ttl: int, port: int,
           target: Sequence[bytes | str]) -> bytes:
    rdata = struct.pack("!HHH", 0, 0, port) + encode_name(target)
    return rr(name, T.SRV, ttl, rdata, unique=True)


def local_addresses() -> tuple[list[str], list[str]]:
    """This host's IPv4 and IPv6 addresses, loopback left out."""
    import ifaddr

    v4: list[str] = []
    v6: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            addr = ipaddress.ip_address(text)
            if not addr.is_loopback:
                (v6 if addr.version == 6 else v4).append(text)
    return v4, v6


def socket4(local_ip: str) -> socket.socket:
    """Bound to 5353, in the IPv4 group on the interface of `local_ip`, no loopback."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("", PORT))
    local = socket.inet_aton(local_ip)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                 socket.inet_aton(GROUP4) + local)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, local)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    return s


def socket6(index: int) -> socket.socket:
    """Bound to 5353, in the IPv6 group on interface `index`, no loopback."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("::", PORT))
    ifindex = struct.pack("@I", index)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                 socket.inet_pton(socket.AF_INET6, GROUP6) + ifindex)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
    return s


class Responder:
    """The sockets and the loop of a responder; a subclass says what to send.

    `announcements(scale)`: the packets announcing everything, TTLs times `scale` (0: the
    goodbyes); `answer(data, source, sock)`: reply to one datagram; `ready_line()`: what
    to print once the first announcement is out. `RECV_SIZE`: the largest datagram read.
    """

    RECV_SIZE = 9000

    def __init__(self, *, ipv4_fallback: bool = False) -> None:
        self.v4, self.v6 = local_addresses()
        self.index = socket.if_nametoindex(IFNAME)
        local = self.v4[0] if self.v4 or not ipv4_fallback else "0.0.0.0"
        self.sock4 = socket4(local)
        self.sock6 = socket6(self.index)

    def address_rrs(self, host: Sequence[bytes | str], ttl: int, v4: bool = True,
                    v6: bool = True) -> list[bytes]:
        """A records for this host's IPv4 addresses, then AAAA for its IPv6 ones."""
        out = []
        if v4:
            out += [rr(host, T.A, ttl, socket.inet_aton(a), unique=True) for a in self.v4]
        if v6:
            out += [rr(host, T.AAAA, ttl, socket.inet_pton(socket.AF_INET6, a), unique=True)
                    for a in self.v6]
        return out

    def announcements(self, scale: int = 1) -> list[bytes]:
        raise NotImplementedError

    def answer(self, data: bytes, source: tuple, sock: socket.socket) -> None:
        raise NotImplementedError

    def ready_line(self) -> str:
        return "ready"

    def send(self, sock: socket.socket, packet: bytes, dest: tuple) -> None:
        sock.sendto(packet, dest)

    def multicast(self, packet: bytes) -> None:
        self.send(self.sock4, packet, (GROUP4, PORT))
        self.send(self.sock6, packet, (GROUP6, PORT, 0, self.index))

    def announce(self, scale: int = 1) -> None:
        for packet in self.announcements(scale):
            self.multicast(packet)

    def run(self) -> None:
        """Announce (again a second later), answer until SIGTERM/SIGINT, say goodbye."""
        stop = False

        def on_signal(*_: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        sel = selectors.DefaultSelector()
        sel.register(self.sock4, selectors.EVENT_READ)
        sel.register(self.sock6, selectors.EVENT_READ)
        self.announce()
        print(self.ready_line(), flush=True)
        again: float | None = time.monotonic() + 1.0
        while not stop:
            # Bounded: a signal handler that sets `stop` does not interrupt select().
            timeout = min(0.2, max(0.0, again - time.monotonic())) if again else 0.2
            for key, _ in sel.select(timeout):
                data, source = key.fileobj.recvfrom(self.RECV_SIZE)
                try:
                    self.answer(data, source, key.fileobj)
                except (ValueError, IndexError, struct.error) as exc:
                    print("bad packet", exc, flush=True)
            if again and time.monotonic() >= again:
                self.announce()
                again = None
        self.announce(scale=0)
        print("goodbye", flush=True)
