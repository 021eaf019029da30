"""The link-local Directory: mDNS/DNS-SD on this host's interfaces.

It owns the zeroconf instance, the live peer view and our publication, and the
`published.json` that lets `withdraw --stale` say goodbye for a crashed agent.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from xmppll import identity
from xmppll.discovery.directory import OnEvent, Peer, Published
from xmppll.discovery.mdns.avatar import Avatars
from xmppll.discovery.mdns.hostfollow import HostFollower
from xmppll.discovery.mdns.link import (
    LinkScopes,
    local_addresses,
    mdns_port_taken,
    open_link,
    record_ttls,
)
from xmppll.discovery.mdns.netfollow import NetFollower
from xmppll.discovery.mdns.peers import PeerView, wait_for_peer
from xmppll.discovery.mdns.publish import Publication, Publisher, choose_host

REFRESH_INTERVAL = 10.0  # s between checks of which peers' records are due a re-query
PUBLISHED_FILE = "published.json"


def _peer(data: dict[str, Any] | None) -> Peer | None:
    return Peer.from_json(data) if data is not None else None


class MdnsDirectory:
    """Peers on the local link, and our record there."""

    def __init__(self, *, interfaces: list[str] | None, state: Path | None = None,
                 on_peer: OnEvent | None = None, on_event: OnEvent | None = None,
                 exclude: set[str] | None = None) -> None:
        self.interfaces = interfaces or None
        self.state = state
        self.on_peer = on_peer
        self.on_event = on_event or (lambda event: None)
        self.exclude = set(exclude or ())
        self.azc: Any = None
        self.view: PeerView | None = None
        self.publisher: Publisher | None = None
        self._shared = False
        self._refresher: asyncio.Task | None = None
        self.follower: NetFollower | None = None
        self.host_follower: HostFollower | None = None
        self.avatars: Avatars | None = None
        self.picture: bytes | None = None  # ours, announced before the phsh that names it

    async def start(self) -> None:
        """Join the link and follow it: its peers, and this host's own interfaces and
        addresses as they change (netfollow.py)."""
        self._shared = mdns_port_taken()
        self.azc = await open_link(self.interfaces)
        self.avatars = Avatars(self.azc)
        self.view = PeerView(self.azc.zeroconf, on_event=self._on_peer, exclude=self.exclude,
                             scopes=LinkScopes(self.interfaces))
        await self.view.start()
        self._refresher = asyncio.ensure_future(self._refresh_loop())
        self.follower = NetFollower(self.azc, self.interfaces, self.view, None)
        self.follower.start()

    def _on_peer(self, event: dict[str, Any]) -> None:
        """A peer's picture is asked for when its `phsh` names one we lack."""
        if self.avatars is not None and event["event"] != "removed":
            self.avatars.want(event["name"], event.get("avatar"))
        if self.on_peer is not None:
            self.on_peer(event)

    async def close(self) -> None:
        if self.avatars is not None:
            self.avatars.close()
        if self.follower is not None:
            self.follower.stop()
        if self.host_follower is not None:
            self.host_follower.stop()
        if self._refresher is not None:
            self._refresher.cancel()
        if self.view is not None:
            await self.view.stop()
        if self.azc is not None:
            await self.azc.async_close()

    async def _refresh_loop(self) -> None:
        # Peers' records are re-asked at 75 % of their TTL: short test TTLs
        # (XMPPLL_MDNS_TTL) need more frequent looks.
        interval = min(REFRESH_INTERVAL, record_ttls().get("host_ttl", 120) / 4)
        while True:
            await asyncio.sleep(interval)
            assert self.view is not None
            self.view.refresh()
            if self.avatars is not None:
                self.avatars.tap()  # sockets of links that came up meanwhile

    def peers(self) -> list[Peer]:
        return [Peer.from_json(p) for p in self.view.peers.values()] if self.view else []

    def find(self, name: str) -> Peer | None:
        return _peer(self.view.find(name)) if self.view else None

    async def resolve(self, name: str, wait: float) -> Peer | None:
        assert self.view is not None
        return _peer(await wait_for_peer(self.view, name, wait))

    def stale(self, name: str) -> None:
        if self.view is not None:
            self.view.ask(name)

    @property
    def record(self) -> Publication | None:
        return self.publisher.record if self.publisher else None

    async def publish(self, name: str, port: int, txt: bytes, *, rename: bool,
                      final_txt: Awaitable[bytes] | None = None) -> Published:
        """Probe, rename while taken, register. The host name is checked (and
        `final_txt` awaited) during the probe, not before it: visible sooner."""
        label = identity.host_label()
        mine = local_addresses(self.interfaces)
        host = asyncio.ensure_future(
            choose_host(self.azc.zeroconf, label, mine, shared=self._shared))
        self.publisher = Publisher(self.azc, rename=rename, on_event=self._on_publish)
        self.publisher.before_register = self._announce_picture
        record = await self.publisher.publish(Publication(name, f"{label}.local.", port, txt, []),
                                              host, final_txt)
        self._published(record)
        if self.host_follower is None:  # beside avahi: follow its host name
            self.host_follower = HostFollower(self.azc.zeroconf, self.publisher,
                                              self.interfaces)
            self.host_follower.start()
        if self.follower is not None:
            self.follower.publisher = self.publisher
            self.publisher.just_woke = self.follower.clock.asleep
        return Published(record.name, record.server.rstrip("."), record.port,
                         record.addresses)

    def _announce_picture(self, record: Publication) -> None:
        if self.avatars is not None and self.picture is not None:
            self.avatars.publish(record.name, self.picture)

    def set_picture(self, picture: bytes | None) -> None:
        """A new picture (None: none), announced now (with a goodbye for the old one):
        the caller updates the TXT's `phsh` after this, as XEP-0174 asks."""
        self.picture = picture
        record = self.record
        if self.avatars is not None and record is not None:
            self.avatars.publish(record.name, picture)

    async def picture_of(self, name: str, sha: str, wait: float) -> bytes | None:
        assert self.avatars is not None
        return await self.avatars.fetch(name, sha, wait)

    def _published(self, record: Publication) -> None:
        assert self.view is not None
        self.view.own_name(record.name)
        self._save(record)

    def _on_publish(self, event: dict[str, Any]) -> None:
        if event["event"] in ("renamed", "addresses", "host") and self.record is not None:
            self._published(self.record)
        self.on_event(event)

    async def update(self, txt: bytes) -> None:
        if self.publisher is not None and self.publisher.record is not None:
            await self.publisher.update_txt(txt)

    async def withdraw(self) -> Awaitable[None]:
        if self.publisher is None or self.publisher.record is None:
            return asyncio.gather()
        if self.avatars is not None:
            self.avatars.withdraw()
        repeats = self.publisher.say_goodbye()
        if self.state is not None:
            (self.state / PUBLISHED_FILE).unlink(missing_ok=True)
        return repeats

    def _save(self, record: Publication) -> None:
        """Kept so that `withdraw --stale` can say goodbye for us after a crash."""
        if self.state is None:
            return
        path = self.state / PUBLISHED_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**record.to_json(), "pid": os.getpid()}))
        tmp.replace(path)


def published_record(state: Path) -> Publication:
    """What a (dead) agent published, for `withdraw --stale`."""
    return Publication.from_json(json.loads((state / PUBLISHED_FILE).read_text()))


