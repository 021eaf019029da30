"""What a wide-area presence is in DNS: names, the TXT refresh time, and the Peer a
browser builds from the records it got back.

Unicast DNS has no goodbye and bind9 no update leases (RFC 9664), so a crashed agent's
records stay. Each heartbeat re-publishes the TXT with `x-xmppll-seen=<unix time>`;
a browser drops an instance not refreshed for STALE_TTLS times its TXT TTL (the
publisher's heartbeat period). Records without the key (published by other tools) are
never dropped for age.
"""

from __future__ import annotations

import time
from typing import Any

import dns.name

from xmppll.discovery.directory import Peer
from xmppll.discovery.presence import decode_txt, peer_fields, split_txt

SERVICE = "_presence._tcp"
SEEN_KEY = "x-xmppll-seen"
REFRESH_KEY = "x-xmppll-refresh"  # the publisher's heartbeat period, s
STALE_TTLS = 3  # heartbeats missed before a browser drops the instance


def zone_name(domain: str) -> dns.name.Name:
    return dns.name.from_text(domain)


def service_name(domain: str) -> dns.name.Name:
    return dns.name.from_text(f"{SERVICE}.{domain}")


def instance_name(name: str, domain: str) -> dns.name.Name:
    """`name` as one raw label (it may hold '.' or '@'), under _presence._tcp.D."""
    return dns.name.Name([name.encode()]).concatenate(service_name(domain))


def instance_label(instance: dns.name.Name) -> str:
    return instance.labels[0].decode("utf-8", "backslashreplace")


def host_name(label: str, domain: str, given: str | None = None) -> dns.name.Name:
    return dns.name.from_text(given) if given else dns.name.from_text(f"{label}.{domain}")


def with_seen(txt: bytes, refresh: int, now: float | None = None) -> bytes:
    """The TXT rdata with our refresh time and period appended (unknown keys to
    everyone else). The period travels with it: a cache hands out a TTL that counts
    down, which says nothing about how often we refresh."""
    stamp = f"{SEEN_KEY}={int(now if now is not None else time.time())}".encode()
    period = f"{REFRESH_KEY}={int(refresh)}".encode()
    return txt + bytes((len(stamp),)) + stamp + bytes((len(period),)) + period


def txt_strings(txt: bytes) -> list[bytes]:
    return split_txt(txt) or [b""]


def seen(txt: dict[str, str | None]) -> int | None:
    try:
        return int(txt.get(SEEN_KEY) or "")
    except ValueError:
        return None


def is_stale(txt: dict[str, str | None], ttl: int, now: float | None = None) -> bool:
    """Not refreshed for STALE_TTLS heartbeats (the period it states, else `ttl`)."""
    stamp = seen(txt)
    if stamp is None:
        return False
    try:
        period = int(txt.get(REFRESH_KEY) or ttl)
    except ValueError:
        period = ttl
    return (now if now is not None else time.time()) - stamp > STALE_TTLS * max(period, 1)


def make_peer(instance: dns.name.Name, domain: str, host: dns.name.Name, port: int,
              txt_rdata: bytes, addresses: list[str], *, ttl: int,
              now: float | None = None) -> Peer | None:
    """The Peer JSON shape, `domain` set, or None when its records are stale; the
    refresh time is left out of `txt`, so a heartbeat is not a change."""
    txt = decode_txt(txt_rdata)
    if is_stale(txt, ttl, now):
        return None
    txt.pop(SEEN_KEY, None)
    txt.pop(REFRESH_KEY, None)
    fields: dict[str, Any] = peer_fields(txt)
    return Peer(instance_label(instance), host.to_text(omit_final_dot=True), addresses,
                port, fields, domain)
