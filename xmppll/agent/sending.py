"""`send` without an agent: resolve the peer over mDNS, deliver over a stream of our
own, and publish a transient presence only when the peer insists on a published,
resolved sender (libpurple, `listen --verify strict`), which costs a probe (~0.9 s).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from xmppll import identity
from xmppll.agent import control
from xmppll.discovery.mdns.link import local_addresses, mdns_port_taken, open_link
from xmppll.discovery.mdns.peers import PeerView, wait_for_peer
from xmppll.discovery.mdns.publish import Publisher, Record, choose_host
from xmppll.discovery.presence import Presence, encode_txt
from xmppll.errors import NoPeerError, Tally, XmpplError
from xmppll.xmpp import stanza as st
from xmppll.xmpp.outgoing import Rejected, Target, deliver

log = logging.getLogger("xmppll")
RESOLVE_TIMEOUT = 1.5  # answers come in ~0.15 s; lost ones on the 2nd query at ~1.1 s


@dataclass
class Options:
    me: str
    timeout: float
    wait: float
    receipt: bool
    interfaces: list[str] | None
    wide: Any = None  # WideAreaSettings: resolve in these DNS-SD domains first


class Link:
    """The mDNS session of one `send` run: a peer view, and our transient presence
    once a peer demanded it.

    Questions go out from an ephemeral port (legacy unicast, RFC 6762 §6.7), so the
    answers come back to this process: asked from 5353, they would go to whichever
    process sharing 5353 on this host the kernel picks (an agent, another `send`), and
    concurrent senders on one host then failed with "no peer" (exit 68). Publishing
    needs 5353, so the transient presence gets a link of its own, opened only then."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.azc: Any = None
        self.responder: Any = None  # the 5353 link of the transient presence
        self.view: PeerView | None = None
        self.publisher: Publisher | None = None
        self.sources: list[str] | None = None
        self.routed: set[str] = set()  # wide-area targets: the route picks our source
        # The transient presence advertises a port we really listen on (nothing is
        # accepted from it during a send, but it is not someone else's port).
        self._listener: socket.socket | None = None

    async def __aenter__(self) -> Link:
        self._shared = mdns_port_taken()
        self.azc = await open_link(self.options.interfaces, unicast=True)
        self.view = PeerView(self.azc.zeroconf, exclude={self.options.me})
        await self.view.start(browse=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.publisher is not None:
            log.info("withdrawing the transient presence of %s", self.options.me)
            await self.publisher.withdraw()
        if self.view is not None:
            await self.view.stop()
        if self._listener is not None:
            self._listener.close()
        if self.responder is not None:
            await self.responder.async_close()
        await self.azc.async_close()

    async def resolve(self, name: str) -> Target:
        """The peer's SRV port and addresses; waits up to --wait for it to appear."""
        assert self.view is not None
        if self.options.wide is not None:
            from xmppll.discovery.widearea import oneshot as wide_oneshot

            found = await asyncio.to_thread(wide_oneshot.resolve, self.options.wide, name)
            if found is not None:
                log.info("resolved %s in %s: %s port %s", name, found.domain,
                         ", ".join(found.addresses), found.port)
                self.routed.add(found.name)
                return Target(found.name, found.addresses, found.port)
        self.view.query_ptr(known_answers=False)
        peer = await wait_for_peer(self.view, name, max(self.options.wait, RESOLVE_TIMEOUT))
        if peer is None:
            raise NoPeerError(f"no peer named {name} on the link")
        log.info("resolved %s: %s port %s", name, ", ".join(peer["addresses"]), peer["port"])
        return Target(peer["name"], peer["addresses"], peer["port"])

    async def all_peers(self) -> list[Target]:
        from xmppll.discovery.mdns.peers import browse_once

        peers = await browse_once(self.azc.zeroconf, timeout=3.0, exclude={self.options.me})
        return [Target(p["name"], p["addresses"], p["port"]) for p in peers]

    async def publish_self(self) -> None:
        """A transient presence so that strict peers can resolve and accept us."""
        if self.sources is not None:
            return
        agents = control.running_agents()
        if self.options.me in agents:
            info = control.request(self.options.me, "info")
            self.sources = info["addresses"] or [a.address for a in local_addresses(
                self.options.interfaces)]
            return
        mine = local_addresses(self.options.interfaces)
        label = identity.host_label()
        self.responder = await open_link(self.options.interfaces)
        host = asyncio.ensure_future(
            choose_host(self.responder.zeroconf, label, mine, shared=self._shared))
        self._listener = socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True)
        port = self._listener.getsockname()[1]
        txt = encode_txt(Presence(port=port, status="avail"))
        self.publisher = Publisher(self.responder, rename=False)
        log.info("publishing a transient presence for %s (port %d)", self.options.me, port)
        record = await self.publisher.publish(
            Record(self.options.me, f"{label}.local.", port, txt, []), host)
        self.sources = record.addresses or [a.address for a in mine]


async def send_one(link: Link, target: Target, record: dict[str, Any]) -> str:
    """Deliver one message; returns its id. Publishes us and retries once if the peer
    rejected an unpublished sender."""
    opts = link.options
    element = st.message_from_json(record, from_=opts.me, receipt=opts.receipt)
    msg_id = element.get("id")
    receipts = {msg_id} if opts.receipt and msg_id else None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + opts.timeout
    rejected = False
    while True:
        try:
            sources = None if target.name in link.routed else link.sources
            await deliver(target, [element], me=opts.me, timeout=max(0.2, deadline - loop.time()),
                          sources=sources, receipt_ids=receipts)
            log.info("delivered %s to %s", msg_id, target.name)
            return msg_id or ""
        except Rejected:
            if loop.time() >= deadline:
                raise
            if not rejected:
                log.info("%s rejected an unpublished sender", target.name)
                await link.publish_self()
            rejected = True
            await asyncio.sleep(0.1)  # let the peer resolve our announcement


async def send_all(records: Iterator[tuple[int, dict[str, Any]]], options: Options,
                   *, everyone: bool = False) -> int:
    """Send each (line number, record) as it is read (stdin may be a slow pipe);
    returns how many were delivered. Stops at the first failure, saying how many went
    out before it."""
    tally = Tally()
    inputs = tally.read(records)
    loop = asyncio.get_running_loop()
    async with Link(options) as link:
        targets: dict[str, Target] = {}
        everyone_targets = await link.all_peers() if everyone else []
        while item := await loop.run_in_executor(None, next, inputs, None):
            lineno, record = item
            try:
                if everyone:
                    for target in everyone_targets:
                        await send_one(link, target, {**record, "to": target.name})
                        tally.sent += 1
                    continue
                to = record["to"]
                if to.lower() not in targets:
                    targets[to.lower()] = await link.resolve(to)
                await send_one(link, targets[to.lower()], record)
                tally.sent += 1
            except XmpplError as exc:
                raise tally.failed(exc, lineno) from None
    if everyone and not everyone_targets:
        raise NoPeerError("no peers on the link")
    return tally.sent

