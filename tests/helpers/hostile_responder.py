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
import json
import socket
import struct
from dataclasses import dataclass

import dnswire
from dnswire import HOST_TTL, OTHER_TTL, PORT, T, encode_name, message, questions, rr, srv_rr

SERVICE = (b"_presence", b"_tcp", b"local")
SHARED_PACKET = 1400  # bytes: above this a TXT record is sent in a packet of its own


def raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def fold(labels: dnswire.Labels) -> dnswire.Labels:
    return tuple(label.lower() for label in labels)


@dataclass
class Instance:
    name: dnswire.Labels
    host: dnswire.Labels
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


class Responder(dnswire.Responder):
    RECV_SIZE = 65536

    def __init__(self, instances: list[dict], log_queries: bool = False) -> None:
        self.log_queries = log_queries
        label = socket.gethostname().split(".")[0].encode()
        self.instances = [Instance.from_spec(spec, label) for spec in instances]
        super().__init__()

    # --- records -------------------------------------------------------------------
    def srv(self, inst: Instance, ttl: int) -> bytes:
        return srv_rr(inst.name, ttl, inst.port, inst.host)

    def packets(self, inst: Instance, scale: int = 1, ptr: bool = True, srv: bool = True,
                txt: bool = True, qid: int = 0) -> list[bytes]:
        """The records of one instance as one packet, or two when its TXT is big."""
        records = []
        if ptr:
            records.append(rr(SERVICE, T.PTR, OTHER_TTL * scale, encode_name(inst.name),
                              unique=False))
        if srv:
            records += [self.srv(inst, HOST_TTL * scale),
                        *self.address_rrs(inst.host, HOST_TTL * scale)]
        txt_rr = rr(inst.name, T.TXT, OTHER_TTL * scale, inst.txt, unique=True) if txt else b""
        if not txt_rr:
            return [message(records, qid=qid)] if records else []
        if sum(map(len, records)) + len(txt_rr) <= SHARED_PACKET or not records:
            return [message([*records, txt_rr], qid=qid)]
        return [message(records, qid=qid), message([txt_rr], qid=qid)]

    def announcements(self, scale: int = 1) -> list[bytes]:
        return [p for inst in self.instances for p in self.packets(inst, scale)]

    def ready_line(self) -> str:
        return f"ready {len(self.instances)}"

    # --- wire ----------------------------------------------------------------------
    def send(self, sock: socket.socket, packet: bytes, dest: tuple) -> None:
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
                if name == fold(SERVICE) and qtype in (T.PTR, T.ANY):
                    out += self.packets(inst, qid=qid)
                elif name == fold(inst.name):
                    out += self.packets(inst, ptr=False, srv=qtype in (T.SRV, T.ANY),
                                        txt=qtype in (T.TXT, T.ANY), qid=qid)
                elif name == fold(inst.host) and qtype in (T.A, T.AAAA, T.ANY):
                    out.append(message(self.address_rrs(inst.host, HOST_TTL,
                                                        v4=qtype in (T.A, T.ANY),
                                                        v6=qtype in (T.AAAA, T.ANY)), qid=qid))
        for packet in dict.fromkeys(out):
            if source[1] != PORT:  # legacy unicast query (RFC 6762 §6.7): reply to it alone
                self.send(sock, packet, source)
            else:
                self.multicast(packet)


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
