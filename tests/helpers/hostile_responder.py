"""An mDNS responder for hostile `_presence._tcp` records, built packet by packet: names
and TXT strings made of any bytes (control characters, invalid UTF-8, one label with
dots in it), TXT records far past the 400 bytes peers should send, malformed TXT rdata.

Run inside a host of the virtual LAN (never in the machine's own namespace):

    python tests/helpers/hostile_responder.py SPEC.json

SPEC.json: {"instances": [{"name": ..., "port": ..., "txt": [...], "host": ...}, ...]}
- `name`: the instance label (one DNS label, at most 63 bytes: dots stay in it);
- `txt`: the TXT strings (each at most 255 bytes), or `txt_hex`: raw rdata, malformed
  at will (a length byte running past the end);
- `host`: the SRV target's label [default: this host's label], answered with this
  host's addresses.
Strings are UTF-8; a lone surrogate \\udc80-\\udcff stands for that raw byte (Python's
surrogateescape), which is how JSON carries bytes that are not UTF-8.

Each instance's records (PTR, SRV, TXT, A, AAAA) go in a packet of their own; a TXT too
big to share one goes alone (IP fragments it; RFC 6762 §17 caps a packet at 9000
bytes, python-zeroconf drops more than 8966). Announces twice at start (one second
apart), prints `ready N`, answers PTR/SRV/TXT/A/AAAA/ANY questions for its names
(multicast, or unicast to a legacy querier's port), with --log-queries prints each
question heard (`query SOURCE ["label", ...] TYPE`), sends goodbyes on SIGTERM/SIGINT
and prints `goodbye`.
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
from dataclasses import dataclass

import ifaddr

GROUP4, GROUP6, PORT = "224.0.0.251", "ff02::fb", 5353
IFNAME = "eth0"
T_A, T_PTR, T_TXT, T_AAAA, T_SRV, T_ANY = 1, 12, 16, 28, 33, 255
CLASS_IN, FLUSH = 1, 0x8000
SERVICE = (b"_presence", b"_tcp", b"local")
HOST_TTL, OTHER_TTL = 120, 4500
SHARED_PACKET = 1400  # bytes: above this a TXT record is sent in a packet of its own

Labels = tuple[bytes, ...]


def raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def encode_name(labels: Labels) -> bytes:
    out = b""
    for label in labels:
        if not 0 < len(label) < 64:
            raise ValueError(f"label of {len(label)} bytes: {label!r}")
        out += bytes((len(label),)) + label
    return out + b"\0"


def decode_name(data: bytes, pos: int) -> tuple[Labels, int]:
    labels: list[bytes] = []
    end = None
    for _ in range(128):
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
    _id, flags, qd = struct.unpack_from("!HHH", data)
    if flags & 0x8000:
        return []
    pos, found = 12, []
    for _ in range(qd):
        labels, pos = decode_name(data, pos)
        qtype, _qclass = struct.unpack_from("!HH", data, pos)
        pos += 4
        found.append((labels, qtype))
    return found


def fold(labels: Labels) -> Labels:
    return tuple(label.lower() for label in labels)


def rr(name: Labels, rtype: int, ttl: int, rdata: bytes, *, unique: bool) -> bytes:
    rclass = CLASS_IN | (FLUSH if unique else 0)
    return encode_name(name) + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def message(answers: list[bytes], additionals: list[bytes] = (), qid: int = 0) -> bytes:
    header = struct.pack("!HHHHHH", qid, 0x8400, 0, len(answers), 0, len(additionals))
    return header + b"".join(answers) + b"".join(additionals)


@dataclass
class Instance:
    name: Labels
    host: Labels
    port: int
    txt: bytes

    @classmethod
    def from_spec(cls, spec: dict, default_host: bytes) -> Instance:
        if "txt_hex" in spec:
            txt = bytes.fromhex(spec["txt_hex"])
        else:
            strings = [raw(s) for s in spec.get("txt", [])]
            for s in strings:
                if len(s) > 255:
                    raise ValueError(f"TXT string of {len(s)} bytes")
            txt = b"".join(bytes((len(s),)) + s for s in strings)
        host = raw(spec["host"]) if spec.get("host") else default_host
        return cls((raw(spec["name"]), *SERVICE), (host, b"local"), int(spec["port"]), txt)


class Responder:
    def __init__(self, instances: list[dict], log_queries: bool = False) -> None:
        self.log_queries = log_queries
        label = socket.gethostname().split(".")[0].encode()
        self.instances = [Instance.from_spec(spec, label) for spec in instances]
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
        local = socket.inet_aton(self.v4[0])
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
    def addrs(self, host: Labels, ttl: int, v4: bool = True, v6: bool = True) -> list[bytes]:
        out = []
        if v4:
            out += [rr(host, T_A, ttl, socket.inet_aton(a), unique=True) for a in self.v4]
        if v6:
            out += [rr(host, T_AAAA, ttl, socket.inet_pton(socket.AF_INET6, a), unique=True)
                    for a in self.v6]
        return out

    def srv(self, inst: Instance, ttl: int) -> bytes:
        rdata = struct.pack("!HHH", 0, 0, inst.port) + encode_name(inst.host)
        return rr(inst.name, T_SRV, ttl, rdata, unique=True)

    def packets(self, inst: Instance, scale: int = 1, ptr: bool = True, srv: bool = True,
                txt: bool = True, qid: int = 0) -> list[bytes]:
        """The records of one instance as one packet, or two when its TXT is big."""
        records = []
        if ptr:
            records.append(rr(SERVICE, T_PTR, OTHER_TTL * scale, encode_name(inst.name),
                              unique=False))
        if srv:
            records += [self.srv(inst, HOST_TTL * scale), *self.addrs(inst.host,
                                                                      HOST_TTL * scale)]
        txt_rr = rr(inst.name, T_TXT, OTHER_TTL * scale, inst.txt, unique=True) if txt else b""
        if not txt_rr:
            return [message(records, qid=qid)] if records else []
        if sum(map(len, records)) + len(txt_rr) <= SHARED_PACKET or not records:
            return [message([*records, txt_rr], qid=qid)]
        return [message(records, qid=qid), message([txt_rr], qid=qid)]

    def everything(self, scale: int = 1) -> list[bytes]:
        return [p for inst in self.instances for p in self.packets(inst, scale)]

    # --- wire ----------------------------------------------------------------------
    def multicast(self, packet: bytes) -> None:
        for sock, dest in ((self.sock4, (GROUP4, PORT)), (self.sock6, (GROUP6, PORT, 0,
                                                                      self.index))):
            try:
                sock.sendto(packet, dest)
            except OSError as exc:  # EMSGSIZE for a record past 64 KiB: say so, go on
                print("send failed", len(packet), exc, flush=True)

    def answer(self, data: bytes, source: tuple, sock: socket.socket) -> None:
        out: list[bytes] = []
        qid = struct.unpack_from("!H", data)[0] if source[1] != PORT else 0
        for labels, qtype in questions(data):
            if self.log_queries:
                shown = [label.decode("utf-8", "surrogateescape") for label in labels]
                print("query", source[0], json.dumps(shown), qtype, flush=True)
            name = fold(labels)
            for inst in self.instances:
                if name == fold(SERVICE) and qtype in (T_PTR, T_ANY):
                    out += self.packets(inst, qid=qid)
                elif name == fold(inst.name):
                    out += self.packets(inst, ptr=False, srv=qtype in (T_SRV, T_ANY),
                                        txt=qtype in (T_TXT, T_ANY), qid=qid)
                elif name == fold(inst.host) and qtype in (T_A, T_AAAA, T_ANY):
                    out.append(message(self.addrs(inst.host, HOST_TTL,
                                                  v4=qtype in (T_A, T_ANY),
                                                  v6=qtype in (T_AAAA, T_ANY)), qid=qid))
        for packet in dict.fromkeys(out):
            if source[1] != PORT:  # legacy unicast query (RFC 6762 §6.7): reply to it alone
                try:
                    sock.sendto(packet, source)
                except OSError as exc:
                    print("send failed", len(packet), exc, flush=True)
            else:
                self.multicast(packet)

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
        for packet in self.everything():
            self.multicast(packet)
        print(f"ready {len(self.instances)}", flush=True)
        again: float | None = time.monotonic() + 1.0
        while not stop:
            timeout = min(0.2, max(0.0, again - time.monotonic())) if again else 0.2
            for key, _ in sel.select(timeout):
                data, source = key.fileobj.recvfrom(65536)
                try:
                    self.answer(data, source, key.fileobj)
                except (ValueError, IndexError, struct.error) as exc:
                    print("bad packet", exc, flush=True)
            if again and time.monotonic() >= again:
                for packet in self.everything():
                    self.multicast(packet)
                again = None
        for packet in self.everything(scale=0):
            self.multicast(packet)
        print("goodbye", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("spec", help="JSON file: {\"instances\": [...]}")
    parser.add_argument("--log-queries", action="store_true",
                        help="print `query SOURCE LABELS-AS-JSON TYPE` per question heard")
    args = parser.parse_args()
    with open(args.spec) as fh:
        spec = json.load(fh)
    Responder(spec["instances"], args.log_queries).run()


if __name__ == "__main__":
    main()
