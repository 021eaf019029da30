"""The Directory: what the rest of xmppll needs from discovery, whatever carries it.

Link-local mDNS (discovery.mdns) is one implementation; wide-area DNS-SD over unicast
DNS is another. Messaging sees only this interface: resolve a name to where it
listens, say which names own an address (to verify a sender), stream peer events,
and publish, update or withdraw our own record. `Directories` puts several behind one
face, so a second implementation plugs in without touching the agent or streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from xmppll.addresses import Address, advertises


@dataclass
class Peer:
    """One peer as a directory knows it. `fields` holds what its TXT says (status,
    msg, nick, first, last, email, jid, caps, txt), in the Peer JSON shape."""

    name: str
    host: str
    addresses: list[str]
    port: int
    fields: dict[str, Any] = field(default_factory=dict)
    domain: str | None = None  # None: the local link; else the DNS-SD domain

    @property
    def caps(self) -> dict[str, Any] | None:
        return self.fields.get("caps")

    def to_json(self) -> dict[str, Any]:
        """The Peer JSON shape of browse and the agent's events (DESIGN.md); `domain`
        only for wide-area peers, so link-local records keep their shape."""
        data = {"name": self.name, "host": self.host, "addresses": list(self.addresses),
                "port": self.port, **self.fields}
        if self.domain is not None:
            data["domain"] = self.domain
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Peer:
        rest = {k: v for k, v in data.items()
                if k not in ("name", "host", "addresses", "port", "domain", "event")}
        return cls(data["name"], data["host"], list(data["addresses"]), int(data["port"]),
                   rest, data.get("domain"))


@dataclass
class Published:
    """Our own record as published: the name may differ from the one asked for
    (renamed on conflict), and the addresses are those we advertise (empty when the
    host's own responder owns the address records)."""

    name: str
    host: str
    port: int
    addresses: list[str]


PeerEvent = dict[str, Any]  # {"event": "added"|"updated"|"removed", **Peer JSON}
OnEvent = Callable[[dict[str, Any]], None]


class Directory(Protocol):
    """One way of finding peers and being found."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def peers(self) -> list[Peer]: ...

    def find(self, name: str) -> Peer | None:
        """From what is known now, without asking anyone."""

    async def resolve(self, name: str, wait: float) -> Peer | None:
        """Ask as needed, up to `wait` seconds."""

    def stale(self, name: str) -> None:
        """A connection to `name` failed: what we hold may be out of date, ask again
        (RFC 6762 §10.4)."""

    async def publish(self, name: str, port: int, txt: bytes, *, rename: bool,
                      final_txt: Awaitable[bytes] | None = None) -> Published:
        """Probe or claim `name`, then publish. `final_txt`, when given, is the TXT to
        register, awaited only once the name is ours: a name's first key is still being
        made while it is probed (agent/keymaker.py); `txt` serves until then."""

    async def update(self, txt: bytes) -> None: ...

    async def withdraw(self) -> Awaitable[None]:
        """Say goodbye: returns once peers have been told (the first mDNS goodbye is
        out, the DNS records are deleted); the awaitable ends with the repeats."""


class Directories:
    """Several directories behind the Directory interface: the first that knows a
    name answers for it, an address is owned by whoever lists it in any of them."""

    def __init__(self, members: list[Any]) -> None:
        self.members = members

    async def start(self) -> None:
        for member in self.members:
            await member.start()

    async def close(self) -> None:
        for member in self.members:
            await member.close()

    def peers(self) -> list[Peer]:
        return [peer for member in self.members for peer in member.peers()]

    def find(self, name: str) -> Peer | None:
        for member in self.members:
            peer = member.find(name)
            if peer is not None:
                return peer
        return None

    async def resolve(self, name: str, wait: float) -> Peer | None:
        found = self.find(name)
        if found is not None or not self.members:
            return found
        tasks = [asyncio.ensure_future(m.resolve(name, wait)) for m in self.members]
        try:
            for next_done in asyncio.as_completed(tasks):
                peer = await next_done
                if peer is not None:
                    return peer
            return None
        finally:
            for task in tasks:
                task.cancel()

    def stale(self, name: str) -> None:
        for member in self.members:
            member.stale(name)

    async def publish(self, name: str, port: int, txt: bytes, *, rename: bool,
                      final_txt: Awaitable[bytes] | None = None) -> Published:
        """The first member may rename us (an mDNS conflict); the others then publish
        that name as it is."""
        first = await self.members[0].publish(name, port, txt, rename=rename,
                                              final_txt=final_txt)
        if final_txt is not None:
            txt = await final_txt
        for member in self.members[1:]:
            await member.publish(first.name, port, txt, rename=False)
        return first

    async def update(self, txt: bytes) -> None:
        for member in self.members:
            await member.update(txt)

    async def withdraw(self) -> Awaitable[None]:
        repeats = [await member.withdraw() for member in self.members]
        return asyncio.gather(*repeats)

    def owners(self, address: Address) -> list[str]:
        """Names of the peers that advertise `address`."""
        return [peer.name for peer in self.peers() if advertises(peer.addresses, address)]

    def advertised_by(self, name: str, address: Address) -> bool:
        peer = self.find(name)
        return peer is not None and advertises(peer.addresses, address)

    def pin(self, name: str) -> str | None:
        """The TLS key fingerprint `name` advertises (x-xmppll-tls), if any."""
        peer = self.find(name)
        return None if peer is None else peer.fields.get("tls")
