"""Browsing over unicast DNS: PTR, then SRV + TXT per instance, then host addresses.

All the questions of one step go out together on one UDP socket (a window of them in
flight, each retried until the deadline), so a browse of N peers costs about three
round trips, not 3N. An answer too big for UDP (a PTR RRset of hundreds of instances)
is asked again over TCP.

An empty domain (NXDOMAIN, or NOERROR with no PTR) is no peers, not a failure.
"""

from __future__ import annotations

import contextlib
import random
import select
import socket
import struct
import time
from collections.abc import Iterable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype

from xmppll.discovery.directory import Peer
from xmppll.discovery.widearea.config import Server
from xmppll.discovery.widearea.records import (
    instance_name,
    make_peer,
    service_name,
)
from xmppll.errors import TimeoutFailure, UnavailableError

TIMEOUT = 3.0  # s for one browse step, retries included
RETRY = 0.3  # s before a question without an answer is asked again
WINDOW = 200  # questions in flight at once
PTR, SRV, TXT, A, AAAA, SOA = (dns.rdatatype.PTR, dns.rdatatype.SRV, dns.rdatatype.TXT,
                              dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.SOA)
Question = tuple[dns.name.Name, int]


class Querier:
    """Many questions to one server, pipelined over one UDP socket."""

    def __init__(self, server: Server, timeout: float = TIMEOUT) -> None:
        self.server = server
        self.timeout = timeout

    def ask(self, questions: Iterable[Question]) -> dict[Question, dns.message.Message]:
        """Answers by question; a question missing from the result got no answer."""
        todo = list(dict.fromkeys(questions))
        answers: dict[Question, dns.message.Message] = {}
        if not todo:
            return answers
        family = socket.AF_INET6 if ":" in self.server.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        truncated: list[Question] = []
        try:
            sock.connect((self.server.address, self.server.port))
            sock.setblocking(False)
            self._exchange(sock, todo, answers, truncated)
        except OSError as exc:
            raise UnavailableError(f"cannot reach the DNS server {self.server}: "
                                   f"{exc.strerror or exc}") from None
        finally:
            sock.close()
        for question in truncated:
            query = dns.message.make_query(*question)
            with contextlib.suppress(dns.exception.DNSException, OSError):
                answers[question] = dns.query.tcp(query, self.server.address,
                                                  timeout=self.timeout, port=self.server.port)
        return answers

    def _exchange(self, sock: socket.socket, todo: list[Question],
                  answers: dict[Question, dns.message.Message],
                  truncated: list[Question]) -> None:
        deadline = time.monotonic() + self.timeout
        waiting = list(reversed(todo))
        inflight: dict[int, tuple[Question, bytes, float]] = {}
        while waiting or inflight:
            now = time.monotonic()
            if now > deadline:
                return
            while waiting and len(inflight) < WINDOW:
                question = waiting.pop()
                qid = random.randrange(65536)
                while qid in inflight:
                    qid = random.randrange(65536)
                wire = _query_wire(question, qid)
                inflight[qid] = (question, wire, now)
                _send(sock, wire)
            for qid, (question, wire, sent) in list(inflight.items()):
                if now - sent > RETRY:
                    inflight[qid] = (question, wire, now)
                    _send(sock, wire)
            ready, _, _ = select.select([sock], [], [], min(RETRY, deadline - now))
            if not ready:
                continue
            while True:
                try:
                    data = sock.recv(65535)
                except BlockingIOError:
                    break
                except ConnectionRefusedError:
                    raise UnavailableError(f"the DNS server {self.server} refused the "
                                           "query (nothing listens on its port)") from None
                try:
                    response = dns.message.from_wire(data)
                except dns.exception.DNSException:
                    continue
                entry = inflight.get(response.id)
                if entry is None or not response.question or \
                        (response.question[0].name, response.question[0].rdtype) != entry[0]:
                    continue
                del inflight[response.id]
                if response.flags & dns.flags.TC:
                    truncated.append(entry[0])
                else:
                    answers[entry[0]] = response


# RD set, one question; then EDNS0's OPT record: root, type 41, payload 4096, no flags.
_HEADER = struct.Struct("!HHHHHH")
_OPT = b"\x00\x00\x29\x10\x00" + bytes(6)


def _query_wire(question: Question, qid: int) -> bytes:
    """What `dns.message.make_query(name, type, id=qid)` with EDNS0 (payload 4096)
    sends, built directly: a 500-peer browse asks 1000 questions, and dnspython's
    message objects cost about 55 us each."""
    name, rdtype = question
    return (_HEADER.pack(qid, 0x0100, 1, 0, 0, 1) + name.to_wire()
            + struct.pack("!HH", rdtype, 1) + _OPT)


def _send(sock: socket.socket, wire: bytes) -> None:
    with contextlib.suppress(BlockingIOError):  # a full buffer: the retry sends it again
        sock.send(wire)


def _rrset(response: dns.message.Message | None, name: dns.name.Name, rdtype: int) -> list:
    if response is None:
        return []
    for rrset in response.answer:
        if rrset.name == name and rrset.rdtype == rdtype:
            return list(rrset)
    return []


def _ttl(response: dns.message.Message, name: dns.name.Name, rdtype: int) -> int:
    for rrset in response.answer:
        if rrset.name == name and rrset.rdtype == rdtype:
            return rrset.ttl
    return 0


def instances(querier: Querier, domain: str) -> list[dns.name.Name]:
    """The instance names the domain's PTR lists; [] for an empty or missing domain."""
    question = (service_name(domain), PTR)
    response = querier.ask([question]).get(question)
    if response is None:
        raise TimeoutFailure(f"{domain}: no answer from the DNS server {querier.server} "
                             f"in {querier.timeout:g} s")
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return []
    if rcode != dns.rcode.NOERROR:
        raise UnavailableError(f"{domain}: the DNS server {querier.server} answered "
                               f"{dns.rcode.to_text(rcode)} to the browse")
    return [rdata.target for rdata in _rrset(response, question[0], PTR)]


def resolve_instances(querier: Querier, domain: str, names: list[dns.name.Name],
                      now: float | None = None) -> list[Peer]:
    """SRV + TXT of every instance, then the addresses of their hosts (from the SRV
    answers' additional section when the server put them there)."""
    answers = querier.ask([(n, t) for n in names for t in (SRV, TXT)])
    addresses: dict[dns.name.Name, list[str]] = {}
    found: list[tuple[dns.name.Name, dns.name.Name, int, bytes, int]] = []
    for instance in names:
        srv = _rrset(answers.get((instance, SRV)), instance, SRV)
        txt_response = answers.get((instance, TXT))
        txt = _rrset(txt_response, instance, TXT)
        if not srv:
            continue  # a PTR left dangling, or the instance went away meanwhile
        target = min(srv, key=lambda r: (r.priority, -r.weight))
        rdata = b"".join(bytes((len(s),)) + s for s in (txt[0].strings if txt else ()))
        ttl = _ttl(txt_response, instance, TXT) if txt_response is not None else 0
        found.append((instance, target.target, target.port, rdata, ttl))
        for rrset in answers[(instance, SRV)].additional:
            if rrset.rdtype in (A, AAAA):
                addresses.setdefault(rrset.name, []).extend(r.address for r in rrset)
    hosts = {host for _, host, _, _, _ in found if host not in addresses}
    more = querier.ask([(h, t) for h in hosts for t in (A, AAAA)])
    for host in hosts:
        addresses[host] = [r.address for t in (A, AAAA)
                           for r in _rrset(more.get((host, t)), host, t)]
    peers = []
    for instance, host, port, rdata, ttl in found:
        peer = make_peer(instance, domain, host, port, rdata,
                         list(dict.fromkeys(addresses.get(host, []))), ttl=ttl, now=now)
        if peer is not None:
            peers.append(peer)
    return peers


def browse(querier: Querier, domain: str, now: float | None = None) -> list[Peer]:
    return resolve_instances(querier, domain, instances(querier, domain), now)


def lookup(querier: Querier, domain: str, name: str) -> Peer | None:
    """One instance by name, without the PTR (a sender we do not know yet)."""
    found = resolve_instances(querier, domain, [instance_name(name, domain)])
    return found[0] if found else None
