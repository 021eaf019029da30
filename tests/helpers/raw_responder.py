"""A tiny, correct mDNS responder for one `_presence._tcp` instance, built packet by packet.

It exists to publish what python-zeroconf cannot: an instance name with a dot in it,
sent as ONE DNS label (`j.doe@raw`), as Avahi, Bonjour and libpurple do (RFC 6763 §4.3).
Run inside a host of the virtual LAN (never in the machine's own namespace):

    python tests/helpers/raw_responder.py [INSTANCE] [--port 5298] [--msg TEXT] [--ptr-only]

It sends an unsolicited announcement (PTR, SRV, TXT, A, AAAA) at start and one second
later, prints `ready`, answers PTR/SRV/TXT/A/AAAA/ANY questions whose labels match
exactly, and prints one line per question it heard (`query <labels as JSON> <type>`),
so a test can tell which queries a browser sent for the name (a query for the dotted
name split into two labels is not ours and gets no answer, as from any real responder).
On SIGTERM/SIGINT it sends goodbyes (TTL 0) and exits.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import selectors
import signal
import socket
import struct
import time

import ifaddr

GROUP4, GROUP6, PORT = "224.0.0.251", "ff02::fb", 5353
IFNAME = "eth0"
T_A, T_PTR, T_TXT, T_AAAA, T_SRV, T_ANY = 1, 12, 16, 28, 33, 255
CLASS_IN, FLUSH = 1, 0x8000
SERVICE = ("_presence", "_tcp", "local")
HOST_TTL, OTHER_TTL = 120, 4500

Labels = tuple[str, ...]


def encode_name(labels: Labels) -> bytes:
    out = b""
    for label in labels:
        raw = label.encode()
        assert 0 < len(raw) < 64, label
        out += bytes((len(raw),)) + raw
    return out + b"\0"


def decode_name(data: bytes, pos: int) -> tuple[Labels, int]:
    """Labels at `pos` (following compression pointers) and the offset after the name."""
    labels: list[str] = []
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
        labels.append(data[pos : pos + length].decode("utf-8", "replace"))
        pos += length
    raise ValueError("name too long or looping")


def questions(data: bytes) -> list[tuple[Labels, int]]:
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


def rr(name: Labels, rtype: int, ttl: int, rdata: bytes, *, unique: bool) -> bytes:
    rclass = CLASS_IN | (FLUSH if unique else 0)
    return encode_name(name) + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def txt_rdata(strings: list[str]) -> bytes:
    return b"".join(bytes((len(s.encode()),)) + s.encode() for s in strings)


class Responder:
    def __init__(self, instance: str, port: int, msg: str, ptr_only: bool = False) -> None:
        self.ptr_only = ptr_only
        label = socket.gethostname().split(".")[0]
        self.instance: Labels = (instance, *SERVICE)
        self.host: Labels = (label, "local")
        self.port = port
        self.txt = txt_rdata(["txtvers=1", "status=avail", f"port.p2pj={port}",
                              "1st=J.", "last=Doe", f"msg={msg}"])
        self.v4: list[str] = []
        self.v6: list[str] = []
        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                text = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
                addr = ipaddress.ip_address(text)
                if not addr.is_loopback:
                    (self.v6 if addr.version == 6 else self.v4).append(text)
        self.index = socket.if_nametoindex(IFNAME)
        self.sock4 = self._socket4()
        self.sock6 = self._socket6()

    def _socket4(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("", PORT))
        local = socket.inet_aton(self.v4[0]) if self.v4 else socket.inet_aton("0.0.0.0")
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     socket.inet_aton(GROUP4) + local)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, local)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        return s

    def _socket6(self) -> socket.socket:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("::", PORT))
        ifindex = struct.pack("@I", self.index)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                     socket.inet_pton(socket.AF_INET6, GROUP6) + ifindex)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self.index)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        return s

    # --- records -------------------------------------------------------------------
    def ptr(self, ttl: int) -> bytes:
        return rr(SERVICE, T_PTR, ttl, encode_name(self.instance), unique=False)

    def srv(self, ttl: int) -> bytes:
        rdata = struct.pack("!HHH", 0, 0, self.port) + encode_name(self.host)
        return rr(self.instance, T_SRV, ttl, rdata, unique=True)

    def txt_rr(self, ttl: int) -> bytes:
        return rr(self.instance, T_TXT, ttl, self.txt, unique=True)

    def addrs(self, ttl: int, v4: bool = True, v6: bool = True) -> list[bytes]:
        out = []
        if v4:
            out += [rr(self.host, T_A, ttl, socket.inet_aton(a), unique=True) for a in self.v4]
        if v6:
            out += [rr(self.host, T_AAAA, ttl, socket.inet_pton(socket.AF_INET6, a),
                       unique=True) for a in self.v6]
        return out

    def everything(self, ttl_scale: int = 1) -> list[bytes]:
        host, other = HOST_TTL * ttl_scale, OTHER_TTL * ttl_scale
        if self.ptr_only:
            return [self.ptr(other)]
        return [self.ptr(other), self.srv(host), self.txt_rr(other), *self.addrs(host)]

    @staticmethod
    def message(answers: list[bytes], additionals: list[bytes] = (), qid: int = 0,
                question: bytes = b"") -> bytes:
        header = struct.pack("!HHHHHH", qid, 0x8400, 1 if question else 0, len(answers),
                             0, len(additionals))
        return header + question + b"".join(answers) + b"".join(additionals)

    # --- wire ------------------------------------------------------------------------
    def multicast(self, packet: bytes) -> None:
        self.sock4.sendto(packet, (GROUP4, PORT))
        self.sock6.sendto(packet, (GROUP6, PORT, 0, self.index))

    def answer(self, data: bytes, source: tuple, sock: socket.socket) -> None:
        answers: list[bytes] = []
        additionals: list[bytes] = []
        for labels, qtype in questions(data):
            print("query", json.dumps(list(labels), ensure_ascii=False), qtype, flush=True)
            name = tuple(label.lower() for label in labels)
            if name == tuple(s.lower() for s in SERVICE) and qtype in (T_PTR, T_ANY):
                answers.append(self.ptr(OTHER_TTL))
                if not self.ptr_only:
                    additionals += [self.srv(HOST_TTL), self.txt_rr(OTHER_TTL),
                                    *self.addrs(HOST_TTL)]
            elif name == tuple(s.lower() for s in self.instance):
                if qtype in (T_SRV, T_ANY):
                    answers.append(self.srv(HOST_TTL))
                    additionals += self.addrs(HOST_TTL)
                if qtype in (T_TXT, T_ANY):
                    answers.append(self.txt_rr(OTHER_TTL))
            elif name == tuple(s.lower() for s in self.host):
                answers += self.addrs(HOST_TTL, v4=qtype in (T_A, T_ANY),
                                      v6=qtype in (T_AAAA, T_ANY))
        if not answers:
            return
        additionals = [a for a in dict.fromkeys(additionals) if a not in answers]
        if source[1] != PORT:  # legacy unicast query (RFC 6762 §6.7): reply to it alone
            qid = struct.unpack_from("!H", data)[0]
            sock.sendto(self.message(answers, additionals, qid), source)
        else:
            self.multicast(self.message(answers, additionals))

    def run(self) -> None:
        stop = False

        def on_signal(*_: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        sel = selectors.DefaultSelector()
        sel.register(self.sock4, selectors.EVENT_READ)
        sel.register(self.sock6, selectors.EVENT_READ)
        self.multicast(self.message(self.everything()))
        print("ready", flush=True)
        again = time.monotonic() + 1.0
        while not stop:
            # Bounded: a signal handler that sets `stop` does not interrupt select().
            timeout = min(0.2, max(0.0, again - time.monotonic())) if again else 0.2
            for key, _ in sel.select(timeout):
                data, source = key.fileobj.recvfrom(9000)
                try:
                    self.answer(data, source, key.fileobj)
                except (ValueError, IndexError, struct.error) as exc:
                    print("bad packet", exc, flush=True)
            if again and time.monotonic() >= again:
                self.multicast(self.message(self.everything()))
                again = None
        self.multicast(self.message(self.everything(ttl_scale=0)))
        print("goodbye", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("instance", nargs="?", default="j.doe@raw")
    parser.add_argument("--port", type=int, default=5298)
    parser.add_argument("--msg", default="one label, one dot")
    parser.add_argument("--ptr-only", action="store_true",
                        help="announce and answer the PTR alone, no additional records: "
                        "a browser must then ask for the SRV/TXT of the name itself")
    args = parser.parse_args()
    Responder(args.instance, args.port, args.msg, ptr_only=args.ptr_only).run()


if __name__ == "__main__":
    main()
