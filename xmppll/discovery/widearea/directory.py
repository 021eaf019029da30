"""The wide-area Directory: peers from DNS-SD domains on a unicast DNS server, and our
record there, kept fresh by a heartbeat.

Polling, not push: bind9 has neither LLQ nor DNS Push (RFC 8765). Each poll first asks
the zone's SOA; an unchanged serial means nothing changed and ends the poll there, so
a quiet zone costs one query per poll and browser. DNS work runs in a thread (the
queries block), never on the agent's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import socket
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import dns.name
import dns.rdatatype

from xmppll import identity
from xmppll.addresses import Address, advertises
from xmppll.discovery.directory import OnEvent, Peer, Published
from xmppll.discovery.widearea import browse, locate, update
from xmppll.discovery.widearea.config import Server, WideAreaSettings
from xmppll.discovery.widearea.records import host_name, with_seen
from xmppll.errors import XmpplError

log = logging.getLogger("xmppll")
POLL_INTERVAL = 5.0  # s between polls of each domain
PUBLISHED_FILE = "published-dns.json"


def route_source(server: Server) -> list[str]:
    """The address this host reaches `server` from (what the routing table picks):
    published as our A/AAAA, since that is where peers behind routers reach us too."""
    family = socket.AF_INET6 if ":" in server.address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((server.address, server.port))
        address = sock.getsockname()[0]
    ip = ipaddress.ip_address(address)
    return [] if ip.is_loopback or ip.is_link_local else [address]


class WideAreaDirectory:
    """Peers of the configured DNS-SD domains, and our record in them."""

    def __init__(self, settings: WideAreaSettings, *, state: Path | None = None,
                 on_peer: OnEvent | None = None, on_event: OnEvent | None = None,
                 exclude: set[str] | None = None, poll: float = POLL_INTERVAL) -> None:
        self.settings = settings
        self.state = state
        self.on_peer = on_peer or (lambda event: None)
        self.on_event = on_event or (lambda event: None)
        self.exclude = {name.lower() for name in exclude or ()}
        self.poll = poll
        self.domains = list(settings.domains)
        self.known: dict[tuple[str, str], Peer] = {}  # (domain, name lower) -> Peer
        self.serials: dict[str, int | None] = {}
        self.published: dict[str, Any] | None = None
        self._tasks: list[asyncio.Task] = []
        self._wake = asyncio.Event()
        self._servers: dict[str, Server] = {}
        self._polls = 0

    # -- browsing
    async def start(self) -> None:
        if self.settings.discover:
            with contextlib.suppress(XmpplError):
                found = await asyncio.to_thread(locate.discovered_domains, self.settings)
                self.domains += [d for d in found if d not in self.domains]
        await self._poll_all()
        self._tasks.append(asyncio.ensure_future(self._poll_loop()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()

    def _querier(self) -> browse.Querier:
        return browse.Querier(locate.query_server(self.settings))

    async def _poll_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll)
            self._wake.clear()
            await self._poll_all()

    async def _poll_all(self) -> None:
        for domain in self.domains:
            try:
                peers = await asyncio.to_thread(self._poll, domain)
            except XmpplError as exc:
                # Link-local discovery goes on whatever the DNS server does: keep what we
                # had for this domain and say why once per failure.
                log.warning("%s", exc)
                continue
            if peers is not None:
                self._apply(domain, peers)

    def _poll(self, domain: str) -> list[Peer] | None:
        """The domain's peers, or None when its SOA serial says nothing changed."""
        querier = self._querier()
        zone = dns.name.from_text(domain)
        answer = querier.ask([(zone, dns.rdatatype.SOA)]).get((zone, dns.rdatatype.SOA))
        serial = next((r.serial for rrset in answer.answer if rrset.rdtype == dns.rdatatype.SOA
                       for r in rrset), None) if answer else None
        if serial is not None and serial == self.serials.get(domain) and \
                not self._expiring(domain):
            return None
        peers = browse.browse(querier, domain)
        self.serials[domain] = serial
        return peers

    def _expiring(self, domain: str) -> bool:
        """Peers may go stale without any change in the zone (a dead publisher): look
        again anyway every few polls."""
        self._polls += 1
        return self._polls % 6 == 0

    def _apply(self, domain: str, peers: list[Peer]) -> None:
        now = {p.name.lower(): p for p in peers if p.name.lower() not in self.exclude}
        for key in [k for k in self.known if k[0] == domain and k[1] not in now]:
            gone = self.known.pop(key)
            self.on_peer({"event": "removed", **gone.to_json()})
        for lower, peer in now.items():
            old = self.known.get((domain, lower))
            self.known[(domain, lower)] = peer
            if old is None:
                self.on_peer({"event": "added", **peer.to_json()})
            elif old.to_json() != peer.to_json():
                self.on_peer({"event": "updated", **peer.to_json()})

    def peers(self) -> list[Peer]:
        return list(self.known.values())

    def find(self, name: str) -> Peer | None:
        for domain in self.domains:
            peer = self.known.get((domain, name.lower()))
            if peer is not None:
                return peer
        return None

    async def resolve(self, name: str, wait: float) -> Peer | None:
        """Known, else asked by name in every domain (one SRV+TXT round trip), until
        `wait` runs out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            peer = self.find(name)
            if peer is not None:
                return peer
            for domain in self.domains:
                try:
                    peer = await asyncio.to_thread(
                        browse.lookup, self._querier(), domain, name)
                except XmpplError as exc:
                    log.warning("%s", exc)
                    continue
                if peer is not None:
                    self.known[(domain, name.lower())] = peer
                    return peer
            if loop.time() + 0.5 > deadline:
                return None
            await asyncio.sleep(0.5)

    def stale(self, name: str) -> None:
        for key in [k for k in self.known if k[1] == name.lower()]:
            self.known.pop(key)
        self._wake.set()

    def owners(self, address: Address) -> list[str]:
        return [peer.name for peer in self.known.values()
                if advertises(peer.addresses, address)]

    # -- publishing
    async def publish(self, name: str, port: int, txt: bytes, *, rename: bool,
                      final_txt: Awaitable[bytes] | None = None) -> Published:
        """One signed UPDATE per domain; the first failure is the caller's error."""
        if self.settings.key is None:
            raise XmpplError("publishing in a DNS domain needs --tsig-key", 64)
        if final_txt is not None:
            txt = await final_txt
        label = identity.host_label()
        own_host = self.settings.host is None
        first = self.settings.domains[0]
        server = await asyncio.to_thread(locate.update_server, self.settings, first)
        addresses = await asyncio.to_thread(route_source, server) if own_host else []
        self.published = {"name": name, "port": port, "txt": txt.hex(),
                          "addresses": addresses, "domains": {}}
        for domain in self.settings.domains:
            server = self._servers.get(domain) or await asyncio.to_thread(
                locate.update_server, self.settings, domain)
            self._servers[domain] = server
            host = host_name(label, domain, self.settings.host)
            self.published["domains"][domain] = {
                "server": str(server), "host": host.to_text(),
                "own_host": own_host}
        try:
            await self._send_all(txt)
        except XmpplError:
            self.published = None  # nothing of ours is out there to withdraw
            raise
        self.exclude.add(name.lower())
        for key in [k for k in self.known if k[1] == name.lower()]:
            self.known.pop(key)
        self._save()
        self._tasks.append(asyncio.ensure_future(self._heartbeat()))
        host = self.published["domains"][first]["host"].rstrip(".")
        return Published(name, host, port, addresses)

    async def _send_all(self, txt: bytes) -> None:
        assert self.published is not None
        self.published["txt"] = txt.hex()
        for domain, where in self.published["domains"].items():
            message = update.publication(
                domain, self.settings.key, name=self.published["name"],
                host=dns.name.from_text(where["host"]),
                addresses=self.published["addresses"], port=self.published["port"],
                txt=with_seen(txt, self.settings.ttl), ttl=self.settings.ttl,
                own_host=where["own_host"])
            await asyncio.to_thread(update.send, message, self._servers[domain], domain,
                                    self.settings.key)

    async def _heartbeat(self) -> None:
        """Re-publish every TTL: refreshes the TXT time and restores records someone
        deleted. A failure is logged and retried at the next beat (the agent and the
        link go on)."""
        while True:
            await asyncio.sleep(self.settings.ttl)
            if self.published is None:
                return
            try:
                await self._send_all(bytes.fromhex(self.published["txt"]))
            except XmpplError as exc:
                log.warning("heartbeat: %s", exc)
                self.on_event({"event": "dns-error", "error": str(exc)})

    async def update(self, txt: bytes) -> None:
        if self.published is not None:
            await self._send_all(txt)

    async def withdraw(self) -> Awaitable[None]:
        """A DNS UPDATE is acknowledged: nothing to repeat once it returns."""
        if self.published is None:
            return asyncio.gather()
        published, self.published = self.published, None
        for domain, where in published["domains"].items():
            message = update.removal(
                domain, self.settings.key, name=published["name"],
                host=dns.name.from_text(where["host"]) if where["own_host"] else None)
            try:
                await asyncio.to_thread(update.send, message, self._servers[domain], domain,
                                        self.settings.key)
            except XmpplError as exc:
                log.warning("withdraw: %s (`xmppll withdraw --stale --domain %s` "
                            "deletes it later)", exc, domain)
                continue
        if self.state is not None:
            (self.state / PUBLISHED_FILE).unlink(missing_ok=True)
        return asyncio.gather()

    def _save(self) -> None:
        """Kept so that `withdraw --stale` knows which host records were ours."""
        if self.state is None or self.published is None:
            return
        self.state.mkdir(parents=True, exist_ok=True)
        path = self.state / PUBLISHED_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self.published, "pid": os.getpid()}))
        tmp.replace(path)
