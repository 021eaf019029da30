"""`send` without an agent: a one-shot composition of the same parts the agent uses
(mDNS lookup, a hub of connections, the dispatch, delivery), alive for one command.

Questions go out from an ephemeral port (legacy unicast, RFC 6762 §6.7), so the
answers come back to this process: asked from 5353, they would go to whichever
process sharing 5353 on this host the kernel picks (an agent, another `send`), and
concurrent senders on one host then failed with "no peer" (exit 68).

A transient presence is published before dialling any peer that is not known to
accept unpublished senders: libpurple refuses them, and telepathy-salut aborts when a
stream header names a service that is not published (salut-facts.md). xmppll's
agents accept them, so a send to one costs no probe (~0.9 s). Publishing needs 5353,
so the transient presence gets a link of its own, opened only then.

The name's TLS key, when its agent made one (in its state directory), is used here too:
the transient presence advertises it and our streams prove it. Peers that met the
name's agent remember that key, and a presence without it, or a stream that does not
prove it, is to them a downgrade: the sender is unverified, refused under
`--verify strict`. A name that never had an agent has no key, and none is made here.

What a peer sends us on the connection we opened is stored in our inbox like
anything else: through the agent of our name if one runs, else directly.

Several one-shot sends at once, with no agent: sends from one name to one peer take
turns (a lock per pair in the runtime directory), because libpurple drops a buddy's
previous connection when a new one arrives and salut closes a second one at once.
Those that need a transient presence also take turns (a lock per name): two probes
for one name at once would each see the other and give up. Sends to xmppll peers
need neither. An agent does all of this better: one connection per peer, the name
published once.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from xmppll import identity
from xmppll.agent import control, locks
from xmppll.agent.inbox import Inbox
from xmppll.discovery.mdns.link import local_addresses, mdns_port_taken, open_link
from xmppll.discovery.mdns.peers import PeerView, browse_once, wait_for_peer
from xmppll.discovery.mdns.publish import Publication, Publisher, choose_host
from xmppll.discovery.presence import Presence, encode_txt
from xmppll.errors import NoPeerError, Tally, XmpplError
from xmppll.xmpp.caps import CAPS_NODE
from xmppll.xmpp.delivery import Delivery, Hooks, PeerInfo
from xmppll.xmpp.disco import Disco
from xmppll.xmpp.dispatch import Dispatcher
from xmppll.xmpp.hub import Hub
from xmppll.xmpp.receipts import Receipts
from xmppll.xmpp.tls import TXT_KEY, Credentials, KnownPeers, Tls

log = logging.getLogger("xmppll")
RESOLVE_TIMEOUT = 1.5  # answers come in ~0.15 s; lost ones on the 2nd query at ~1.1 s
ALL_TIMEOUT = 3.0  # s: the browse that finds every peer for --all
LOCK_WAIT = 120.0  # s: the longest a send waits for its turn behind other sends


@dataclass
class Options:
    me: str
    timeout: float
    wait: float
    receipt: bool
    interfaces: list[str] | None
    wide: Any = None  # WideAreaSettings: resolve in these DNS-SD domains first
    tls: str = "prefer"  # prefer | require | off: no key of ours, the peer's is checked


class HandoffStore:
    """The Store of a one-shot send: what arrives goes to our name's inbox, through
    its agent when one runs (the agent owns the inbox then), else written here under
    the agent's lock, so an agent starting meanwhile waits its turn."""

    def __init__(self, me: str) -> None:
        self.me = me

    def submit(self, record: dict[str, Any], key: tuple[str, str] | None) -> asyncio.Future:
        return asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(
            None, self._store, record))

    def unstored(self) -> int:
        return 0

    def _store(self, record: dict[str, Any]) -> dict[str, Any] | None:
        if control.is_alive(identity.socket_path(self.me)):
            return control.request(self.me, "store", record=record)
        state = identity.state_dir(self.me)
        state.mkdir(parents=True, exist_ok=True)
        fd = os.open(state / locks.AGENT_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if control.is_alive(identity.socket_path(self.me)):
                return control.request(self.me, "store", record=record)
            return asyncio.run(_store_directly(state, record))
        finally:
            os.close(fd)


async def _store_directly(state: Any, record: dict[str, Any]) -> dict[str, Any]:
    inbox = Inbox(state)
    try:
        return await inbox.submit(record)
    finally:
        inbox.close()


class OneShot:
    """The mDNS session and the connections of one `send` run."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.azc: Any = None
        self.responder: Any = None  # the 5353 link of the transient presence
        self.view: PeerView | None = None
        self.publisher: Publisher | None = None
        self.sources: list[str] | None = None
        # The transient presence advertises a port we really listen on (nothing is
        # accepted from it during a send, but it is not someone else's port).
        self._listener: socket.socket | None = None
        self._held: dict[str, int] = {}  # the locks this send holds
        me = options.me
        dispatcher = Dispatcher(HandoffStore(me), lambda: me)
        self.creds = (Credentials.load(identity.state_dir(me) / "tls")
                      if options.tls != "off" else None)
        self.hub = Hub(me=lambda: me, peers=None, dispatcher=dispatcher,
                       tls=Tls(options.tls, self.creds,
                               KnownPeers(identity.known_peers_path())))
        self.delivery = Delivery(self.hub, Receipts(dispatcher), Disco(dispatcher), Hooks(
            resolve=self.resolve, stale=self.stale,
            sources=lambda peer: None if peer.domain else self.sources,
            before_dial=self.before_dial))

    async def __aenter__(self) -> OneShot:
        self._shared = mdns_port_taken()
        self.azc = await open_link(self.options.interfaces, unicast=True)
        self.view = PeerView(self.azc.zeroconf, exclude={self.options.me})
        await self.view.start(browse=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.hub.close()
        if self.publisher is not None:
            log.info("withdrawing the transient presence of %s", self.options.me)
            await self.publisher.say_goodbye()
        if self.view is not None:
            await self.view.stop()
        if self._listener is not None:
            self._listener.close()
        for fd in self._held.values():
            os.close(fd)
        if self.responder is not None:
            await self.responder.async_close()
        await self.azc.async_close()

    async def resolve(self, name: str, wait: float) -> PeerInfo | None:
        """The peer's SRV port and addresses, in the --domain first (one round of DNS
        queries), then on the link; waits up to `wait` for it to appear there."""
        assert self.view is not None
        if self.options.wide is not None:
            from xmppll.discovery.widearea import oneshot as wide_oneshot

            found = await asyncio.to_thread(wide_oneshot.resolve, self.options.wide, name)
            if found is not None:
                log.info("resolved %s in %s: %s port %s", name, found.domain,
                         ", ".join(found.addresses), found.port)
                return PeerInfo(found.name, found.addresses, found.port, found.caps,
                                domain=found.domain, pin=found.fields.get("tls"))
        if self.view.find(name) is None:
            self.view.query_ptr(known_answers=False)
        peer = await wait_for_peer(self.view, name, max(wait, RESOLVE_TIMEOUT))
        if peer is None:
            return None
        log.info("resolved %s: %s port %s", name, ", ".join(peer["addresses"]), peer["port"])
        return PeerInfo(peer["name"], peer["addresses"], peer["port"], peer.get("caps"),
                        pin=peer.get("tls"))

    def stale(self, name: str) -> None:
        if self.view is not None:
            self.view.ask(name)

    async def all_peers(self) -> list[str]:
        peers = await browse_once(self.azc.zeroconf, timeout=ALL_TIMEOUT,
                                  exclude={self.options.me})
        return [p["name"] for p in peers]

    async def before_dial(self, peer: PeerInfo, refused: bool) -> None:
        await self._take_turn(peer.name)
        if peer.domain is None and (refused or (peer.caps or {}).get("node") != CAPS_NODE):
            await self.publish_self()

    async def _take_turn(self, peer: str) -> None:
        """Wait until no other one-shot send from our name talks to `peer`."""
        await self._hold(f"send\0{self.options.me}\0{peer}")

    async def prepare(self, name: str) -> None:
        """Before a message's own clock starts: wait for our turn with the peer and
        publish our transient presence if the peer needs one, so that the time spent
        waiting behind other sends is not taken from the message's --timeout."""
        peer = await self.resolve(name, self.options.wait)
        if peer is not None:
            await self.before_dial(peer, refused=False)

    async def _hold(self, what: str) -> None:
        """A lock of this host's one-shot sends, held until this send ends. After
        LOCK_WAIT we go ahead anyway: a stuck process must not block every later
        send."""
        key = what.lower()
        if key in self._held:
            return
        digest = hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:16]
        directory = control.prepare_runtime_dir()
        fd = os.open(directory / f"send-{digest}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self._held[key] = fd
        if not await locks.acquire(fd, LOCK_WAIT):
            log.warning("another send from %s has not finished: going ahead", self.options.me)

    async def publish_self(self) -> None:
        """A transient presence so that strict peers can resolve and accept us."""
        if self.sources is not None:
            return
        opts = self.options
        if opts.me in control.running_agents():
            info = control.request(opts.me, "info")
            self.sources = info["addresses"] or [a.address for a in local_addresses(
                opts.interfaces)]
            return
        await self._hold(f"presence\0{opts.me}")
        await locks.wait_for_withdrawal(identity.state_dir(opts.me))
        mine = local_addresses(opts.interfaces)
        label = identity.host_label()
        self.responder = await open_link(opts.interfaces)
        host = asyncio.ensure_future(
            choose_host(self.responder.zeroconf, label, mine, shared=self._shared))
        self._listener = socket.create_server(("", 0), family=socket.AF_INET6,
                                              dualstack_ipv6=True)
        port = self._listener.getsockname()[1]
        txt = encode_txt(transient_presence(port, self.creds))
        self.publisher = Publisher(self.responder, rename=False)
        log.info("publishing a transient presence for %s (port %d)", opts.me, port)
        record = await self.publisher.publish(
            Publication(opts.me, f"{label}.local.", port, txt, []), host)
        self.sources = record.addresses or [a.address for a in mine]


def transient_presence(port: int, creds: Credentials | None) -> Presence:
    """Available, on `port`, with the name's TLS key when it has one (as its agent
    publishes it: xmppll.agent.agent.Agent._add_key)."""
    presence = Presence(port=port, status="avail")
    if creds is not None:
        presence.extra.append((TXT_KEY, creds.pin))
    return presence


async def send_all(records: Iterator[tuple[int, dict[str, Any]]], options: Options,
                   *, everyone: bool = False) -> int:
    """Send each (line number, record) as it is read (stdin may be a slow pipe);
    returns how many were delivered. Stops at the first failure, saying how many went
    out before it."""
    tally = Tally()
    inputs = tally.read(records)
    loop = asyncio.get_running_loop()
    async with OneShot(options) as session:
        names = await session.all_peers() if everyone else []
        if everyone and not names:
            raise NoPeerError("no peers on the link")
        while item := await loop.run_in_executor(None, next, inputs, None):
            lineno, record = item
            try:
                if everyone:
                    results = await session.delivery.send_to_all(
                        record, names, timeout=options.timeout)
                    tally.sent += sum(not isinstance(r, XmpplError) for r in results)
                    failed = [r for r in results if isinstance(r, XmpplError)]
                    if failed:
                        raise failed[0]
                    continue
                await session.prepare(record["to"])
                await session.delivery.send(record, timeout=options.timeout,
                                            wait=options.wait, receipt=options.receipt)
                tally.sent += 1
            except XmpplError as exc:
                raise tally.failed(exc, lineno) from None
    return tally.sent


async def send_files(to: str | None, paths: list[str], shown: list[str | None],
                     options: Options, *, everyone: bool = False, method: str = "auto",
                     report: Any = None) -> list[dict[str, Any]]:
    """`send --file` without an agent: each file to `to` (or every peer) from a
    one-shot session; one result per (file, peer). Files are opened first, so one
    that cannot be read fails (66) before anything goes on the link."""
    from xmppll.xmpp.files.send import FileSender
    from xmppll.xmpp.files.send import send_files as send_each
    from xmppll.xmpp.files.transfer import open_source

    opened = []
    try:
        for path, name in zip(paths, shown, strict=True):
            opened.append(open_source(path, name))
        async with OneShot(options) as session:
            names = await session.all_peers() if everyone else [to or ""]
            if not names:
                raise NoPeerError("no peers on the link")
            sender = FileSender(session.delivery, lambda: session.sources)
            return await send_each(sender, names, opened, timeout=options.timeout,
                                   wait=options.wait, method=method, report=report)
    finally:
        for source in opened:
            source.close()
