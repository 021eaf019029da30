"""The link: my interfaces and addresses, and one python-zeroconf instance on them.

Everything that touches python-zeroconf's setup lives here, including the two things
its defaults get wrong for us: IPv4 only, and a receive buffer that drops events in a
burst of announcements (zeroconf-facts.md §4).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import ifaddr
from zeroconf import InterfaceChoice, IPVersion
from zeroconf.asyncio import AsyncZeroconf

from xmppll.errors import IOFailure, UsageError

SERVICE_TYPE = "_presence._tcp.local."
# DNS record types and classes (RFC 1035, 3596, 2782; RFC 6762 §5.4 and §10.2 for the
# top class bit: "unicast response" in a question, "cache flush" in an answer).
TYPE_A, TYPE_PTR, TYPE_TXT, TYPE_AAAA, TYPE_SRV, TYPE_ANY = 1, 12, 16, 28, 33, 255
CLASS_IN, CLASS_UNIQUE = 1, 0x8000
RCVBUF_BYTES = 4 * 1024 * 1024
TTL_ENV = "XMPPLL_MDNS_TTL"  # tests: every record we publish lives this many seconds
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


@dataclass(frozen=True)
class LocalAddress:
    interface: str
    address: str  # without scope
    index: int  # interface index (the IPv6 scope)

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.address


def local_addresses(interfaces: list[str] | None = None) -> list[LocalAddress]:
    """The addresses we can be reached at: every non-loopback address of the chosen
    interfaces (all when none are chosen). An unknown interface is a usage error."""
    adapters = {a.nice_name: a for a in ifaddr.get_adapters()}
    if interfaces:
        unknown = [name for name in interfaces if name not in adapters]
        if unknown:
            raise UsageError(
                f"unknown interface {unknown[0]!r}: this host has "
                + ", ".join(sorted(adapters))
            )
    chosen = interfaces or sorted(adapters)
    found: list[LocalAddress] = []
    for name in chosen:
        adapter = adapters[name]
        for ip in adapter.ips:
            text = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            if ipaddress.ip_address(text).is_loopback:
                continue
            found.append(LocalAddress(name, text, adapter.index or 0))
    return found


def record_ttls() -> dict[str, int]:
    """ServiceInfo TTL arguments: RFC 6762's 120 s / 75 min, or $XMPPLL_MDNS_TTL
    seconds for all of them (tests of expiry and sleep use a few seconds)."""
    value = os.environ.get(TTL_ENV, "")
    if value.isdigit() and int(value) > 0:
        return {"host_ttl": int(value), "other_ttl": int(value)}
    return {}


def zeroconf_interfaces(interfaces: list[str] | None) -> InterfaceChoice | list:
    """python-zeroconf's interface argument: IPv4 addresses, IPv6 interface indexes.

    Loopback is left out: multicast to ff02::fb over `lo` fails with a warning on every
    packet, and processes on one host still hear each other through multicast loop."""
    found = local_addresses(interfaces)
    if not found and not interfaces:
        return InterfaceChoice.All  # only loopback: still lets local processes meet
    choice = interface_choice(found)
    if not choice:
        raise UsageError(f"interface {', '.join(interfaces or [])} has no IP address")
    return choice


def interface_choice(found: Iterable[LocalAddress]) -> list[str | int]:
    """The explicit python-zeroconf interface list for these addresses."""
    choice: list[str | int] = []
    for addr in found:
        if addr.is_ipv6:
            if addr.index not in choice:
                choice.append(addr.index)
        else:
            choice.append(addr.address)
    return choice


async def open_link(
    interfaces: list[str] | None = None, *, unicast: bool = False
) -> AsyncZeroconf:
    """A started AsyncZeroconf on IPv4 and IPv6 with a large receive buffer.

    `unicast`: a querier only, on an ephemeral port instead of 5353 (RFC 6762 §6.7
    "legacy unicast"): responders answer it directly, and no other process on this host
    can receive those answers in its place. A one-shot question wants this: answers to
    a QU question sent from port 5353 go to whichever process sharing 5353 the kernel
    picks (an agent, a `browse --follow`), and a one-shot browse then hears nothing."""
    try:
        azc = AsyncZeroconf(
            interfaces=zeroconf_interfaces(interfaces), ip_version=IPVersion.All,
            unicast=unicast,
        )
    except (OSError, RuntimeError) as exc:
        raise IOFailure(f"cannot open mDNS sockets: {exc}") from exc
    await azc.zeroconf.async_wait_for_start()
    raise_receive_buffers(azc)
    return azc


def raise_receive_buffers(azc: AsyncZeroconf) -> None:
    """A burst of 1000 announcements overflows the default buffer and loses events;
    4 MiB does not (measured). Root may exceed rmem_max with SO_RCVBUFFORCE."""
    for reader in azc.zeroconf.engine.readers:
        sock = reader.sock
        for option in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, RCVBUF_BYTES)
                break
            except OSError:
                continue


class LinkScopes:
    """Which of my interfaces an IPv6 link-local address without a scope is on.

    An AAAA that arrived over IPv4 carries no interface (python-zeroconf scopes only
    what arrives on an IPv6 socket), and fe80:: without one can never be connected to.
    The interface is the one whose IPv4 subnet holds the same host's A record (the
    records came over that link), else the only interface with IPv6 where there is
    one; else it cannot be known, and `scope_for` says 0."""

    def __init__(self, interfaces: list[str] | None = None) -> None:
        self.interfaces = interfaces
        self._nets: list[tuple[ipaddress.IPv4Network, int]] = []
        self._v6: set[int] = set()
        self.refresh()

    def refresh(self) -> None:
        nets, v6 = [], set()
        for adapter in ifaddr.get_adapters():
            if self.interfaces and adapter.nice_name not in self.interfaces:
                continue
            for ip in adapter.ips:
                if isinstance(ip.ip, tuple):
                    if ipaddress.ip_address(ip.ip[0]).is_link_local:
                        v6.add(adapter.index or 0)
                elif not ipaddress.ip_address(ip.ip).is_loopback:
                    net = ipaddress.ip_network(f"{ip.ip}/{ip.network_prefix}", strict=False)
                    nets.append((net, adapter.index or 0))
        self._nets, self._v6 = nets, v6 - {0}

    def scope_for(self, ipv4_of_host: Iterable[str]) -> int:
        for text in ipv4_of_host:
            addr = ipaddress.ip_address(text)
            for net, index in self._nets:
                if addr in net and index in self._v6:
                    return index
        return next(iter(self._v6)) if len(self._v6) == 1 else 0


def format_address(packed: bytes, scope_id: int = 0) -> str:
    """Text form of an address; IPv6 link-local with `%ifname`, since it is useless
    without its scope and a name is what people and getaddrinfo both read."""
    addr = ipaddress.ip_address(packed)
    text = str(addr)
    if addr.version == 6 and addr.is_link_local and scope_id:
        try:
            text += "%" + socket.if_indextoname(scope_id)
        except OSError:
            text += f"%{scope_id}"
    return text


def mdns_port_taken() -> bool:
    """Whether another responder (avahi-daemon, another agent) already owns UDP 5353 on
    this host; read-only, 0.3 ms: a bind test would disturb an avahi starting now."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as fh:
                next(fh, None)
                if any(line.split()[1].endswith(":14E9") for line in fh if line.strip()):
                    return True
        except OSError:
            continue
    return False


def query_single_label(zc: Any, instance: str, types: tuple[int, ...]) -> None:
    """Ask for `<instance>._presence._tcp.local` with the instance as ONE label, even
    when it contains a dot. python-zeroconf splits every name on '.', so a peer that
    publishes `j.doe@host` correctly (Avahi, Apple) would never hear its questions;
    this writes the question by hand and sends it on zeroconf's own sockets, so the
    (multicast) answers land in its cache like any other."""
    labels = [instance.encode(), b"_presence", b"_tcp", b"local"]
    name = b"".join(bytes((len(label),)) + label for label in labels) + b"\0"
    packet = struct.pack("!6H", 0, 0, len(types), 0, 0, 0) + b"".join(
        name + struct.pack("!HH", type_, 1) for type_ in types
    )
    for sender in zc.engine.senders:
        if sender.is_ipv6:
            _, _, flow, scope = sender.sock_name
            sender.transport.sendto(packet, ("ff02::fb", 5353, flow, scope))
        else:
            sender.transport.sendto(packet, ("224.0.0.251", 5353))
