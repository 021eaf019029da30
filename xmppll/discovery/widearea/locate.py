"""Which DNS server to ask, and which domains to browse when none is named.

Queries go to `dns_server` when set, else to the first nameserver of resolv.conf.
UPDATEs go to `dns_server` when set, else to the zone's primary: the MNAME of its SOA
(RFC 2136 §4), or failing that its first NS, looked up through resolv.conf's server.
Browse domains can come from `b._dns-sd._udp` and `lb._dns-sd._udp` under the search
domains of resolv.conf (RFC 6763 §11).
"""

from __future__ import annotations

import ipaddress

import dns.name
import dns.rcode
import dns.rdatatype

from xmppll.discovery.widearea.browse import Querier
from xmppll.discovery.widearea.config import Server, WideAreaSettings
from xmppll.errors import ConfigError, NoPeerError, TimeoutFailure

RESOLV_CONF = "/etc/resolv.conf"


def _resolv_conf(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return [line.split() for line in file if line.split()
                    and not line.lstrip().startswith(("#", ";"))]
    except OSError:
        return []


def system_server(path: str = RESOLV_CONF) -> Server:
    for words in _resolv_conf(path):
        if words[0] == "nameserver" and len(words) > 1:
            address = words[1].partition("%")[0]
            try:
                ipaddress.ip_address(address)
            except ValueError:
                continue
            return Server(address)
    raise ConfigError(f"no nameserver in {path}: give --dns-server ADDRESS")


def search_domains(path: str = RESOLV_CONF) -> list[str]:
    found: list[str] = []
    for words in _resolv_conf(path):
        if words[0] in ("search", "domain"):
            found += [w.rstrip(".").lower() for w in words[1:] if w.rstrip(".")]
    return list(dict.fromkeys(found))


def query_server(settings: WideAreaSettings) -> Server:
    return settings.server or system_server(settings.resolv_conf)


def update_server(settings: WideAreaSettings, domain: str) -> Server:
    """Where the UPDATE for `domain` goes."""
    if settings.server is not None:
        return settings.server
    querier = Querier(system_server(settings.resolv_conf))
    zone = dns.name.from_text(domain)
    answers = querier.ask([(zone, dns.rdatatype.SOA), (zone, dns.rdatatype.NS)])
    soa, ns = answers.get((zone, dns.rdatatype.SOA)), answers.get((zone, dns.rdatatype.NS))
    if soa is None and ns is None:
        raise TimeoutFailure(f"{domain}: no answer from {querier.server} for the zone's "
                             "SOA: give --dns-server ADDRESS")
    primaries = [r.mname for rrset in (soa.answer + soa.authority if soa else [])
                 if rrset.rdtype == dns.rdatatype.SOA for r in rrset]
    primaries += [r.target for rrset in (ns.answer if ns else [])
                  if rrset.rdtype == dns.rdatatype.NS for r in rrset]
    for primary in primaries:
        found = querier.ask([(primary, dns.rdatatype.A), (primary, dns.rdatatype.AAAA)])
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            response = found.get((primary, rdtype))
            for rrset in response.answer if response else []:
                if rrset.rdtype == rdtype:
                    return Server(next(iter(rrset)).address)
    raise NoPeerError(f"{domain}: cannot find the zone's primary server from its SOA or NS "
                      "records: give --dns-server ADDRESS")


def discovered_domains(settings: WideAreaSettings) -> list[str]:
    """The browse domains the search domains advertise (b and lb, RFC 6763 §11)."""
    searches = search_domains(settings.resolv_conf)
    if not searches:
        return []
    querier = Querier(query_server(settings))
    questions = [(dns.name.from_text(f"{kind}._dns-sd._udp.{s}"), dns.rdatatype.PTR)
                 for s in searches for kind in ("b", "lb")]
    answers = querier.ask(questions)
    found: list[str] = []
    for question in questions:
        response = answers.get(question)
        if response is None or response.rcode() != dns.rcode.NOERROR:
            continue
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.PTR:
                found += [r.target.to_text(omit_final_dot=True).lower() for r in rrset]
    return list(dict.fromkeys(found))
