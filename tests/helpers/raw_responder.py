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
import json
import socket
import struct

import dnswire
from dnswire import HOST_TTL, OTHER_TTL, PORT, T, encode_name, message, questions, rr, srv_rr

SERVICE = ("_presence", "_tcp", "local")

Labels = tuple[str, ...]


def txt_rdata(strings: list[str]) -> bytes:
    return b"".join(bytes((len(s.encode()),)) + s.encode() for s in strings)


class Responder(dnswire.Responder):
    def __init__(self, instance: str, port: int, msg: str, ptr_only: bool = False,
                 ipv4_only: bool = False) -> None:
        self.ptr_only = ptr_only
        self.ipv4_only = ipv4_only
        label = socket.gethostname().split(".")[0]
        self.instance: Labels = (instance, *SERVICE)
        self.host: Labels = (label, "local")
        self.port = port
        self.txt = txt_rdata(["txtvers=1", "status=avail", f"port.p2pj={port}",
                              "1st=J.", "last=Doe", f"msg={msg}"])
        super().__init__(ipv4_fallback=True)

    # --- records -------------------------------------------------------------------
    def ptr(self, ttl: int) -> bytes:
        return rr(SERVICE, T.PTR, ttl, encode_name(self.instance), unique=False)

    def srv(self, ttl: int) -> bytes:
        return srv_rr(self.instance, ttl, self.port, self.host)

    def txt_rr(self, ttl: int) -> bytes:
        return rr(self.instance, T.TXT, ttl, self.txt, unique=True)

    def addrs(self, ttl: int, v4: bool = True, v6: bool = True) -> list[bytes]:
        return self.address_rrs(self.host, ttl, v4, v6)

    def everything(self, ttl_scale: int = 1) -> list[bytes]:
        host, other = HOST_TTL * ttl_scale, OTHER_TTL * ttl_scale
        if self.ptr_only:
            return [self.ptr(other)]
        return [self.ptr(other), self.srv(host), self.txt_rr(other), *self.addrs(host)]

    def announcements(self, scale: int = 1) -> list[bytes]:
        return [message(self.everything(ttl_scale=scale))]

    # --- wire ------------------------------------------------------------------------
    def multicast(self, packet: bytes) -> None:
        if self.ipv4_only:  # every record, the AAAA too, arrives over IPv4: no scope
            self.send(self.sock4, packet, (dnswire.GROUP4, PORT))
        else:
            super().multicast(packet)

    def answer(self, data: bytes, source: tuple, sock: socket.socket) -> None:
        if self.ipv4_only and sock is self.sock6:
            return
        answers: list[bytes] = []
        additionals: list[bytes] = []
        for raw_labels, qtype in questions(data):
            labels = [label.decode("utf-8", "replace") for label in raw_labels]
            print("query", json.dumps(labels, ensure_ascii=False), qtype, flush=True)
            name = tuple(label.lower() for label in labels)
            if name == tuple(s.lower() for s in SERVICE) and qtype in (T.PTR, T.ANY):
                answers.append(self.ptr(OTHER_TTL))
                if not self.ptr_only:
                    additionals += [self.srv(HOST_TTL), self.txt_rr(OTHER_TTL),
                                    *self.addrs(HOST_TTL)]
            elif name == tuple(s.lower() for s in self.instance):
                if qtype in (T.SRV, T.ANY):
                    answers.append(self.srv(HOST_TTL))
                    additionals += self.addrs(HOST_TTL)
                if qtype in (T.TXT, T.ANY):
                    answers.append(self.txt_rr(OTHER_TTL))
            elif name == tuple(s.lower() for s in self.host):
                answers += self.addrs(HOST_TTL, v4=qtype in (T.A, T.ANY),
                                      v6=qtype in (T.AAAA, T.ANY))
        if not answers:
            return
        additionals = [a for a in dict.fromkeys(additionals) if a not in answers]
        if source[1] != PORT:  # legacy unicast query (RFC 6762 §6.7): reply to it alone
            qid = struct.unpack_from("!H", data)[0]
            sock.sendto(message(answers, additionals, qid), source)
        else:
            self.multicast(message(answers, additionals))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("instance", nargs="?", default="j.doe@raw")
    parser.add_argument("--port", type=int, default=5298)
    parser.add_argument("--msg", default="one label, one dot")
    parser.add_argument("--ptr-only", action="store_true",
                        help="announce and answer the PTR alone, no additional records: "
                        "a browser must then ask for the SRV/TXT of the name itself")
    parser.add_argument("--ipv4-only", action="store_true",
                        help="send everything over IPv4 only (the AAAA included), as a "
                        "V4-only stack does: receivers get fe80:: with no interface")
    args = parser.parse_args()
    Responder(args.instance, args.port, args.msg, ptr_only=args.ptr_only,
              ipv4_only=args.ipv4_only).run()


if __name__ == "__main__":
    main()
