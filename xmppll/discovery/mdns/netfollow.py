"""Following the network: what the agent does when its host's interfaces or addresses
change, or when it wakes from a sleep (RFC 6762 §8: "wakes up from sleep, receives an
indication of a network interface Link Change event ... MUST perform ... Probing and
Announcing").

- Sockets: python-zeroconf's are reconciled with the live interface set
  (`async_update_interfaces`, zeroconf >= 0.150): a removed address's socket, which
  fails with "Network is unreachable" for good, is closed and a socket for the new
  address is opened. An interface that comes back up gets fresh sockets too.
- Records: when we publish the host's addresses, the ones gone get a goodbye and the
  new set is announced (peers see the change in milliseconds, not after 120 s).
  Beside avahi-daemon, which owns the address records and follows them itself,
  there is nothing to publish.
- Name: after a link comes back or a sleep, the name is probed again and, if someone
  took it meanwhile, given up and renamed; else announced again.
- Peers: asked for again, and the ones that no longer resolve are dropped.

Changes are handled one at a time; changes arriving meanwhile are merged into one
more round.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from xmppll.discovery.mdns.link import (
    LocalAddress,
    interface_choice,
    local_addresses,
    raise_receive_buffers,
)
from xmppll.discovery.mdns.netwatch import NetWatch, links_running
from xmppll.discovery.mdns.peers import PeerView
from xmppll.discovery.mdns.publish import Publisher
from xmppll.discovery.mdns.wake import WakeClock
from xmppll.errors import XmpplError

log = logging.getLogger("xmppll")
RECHECK_DELAY = 1.0  # seconds after a change before peers that did not answer are dropped


class NetFollower:
    def __init__(self, azc: Any, interfaces: list[str] | None, view: PeerView,
                 publisher: Publisher | None) -> None:
        self.azc = azc
        self.interfaces = interfaces or None
        self.view = view
        self.publisher = publisher
        self.watch = NetWatch(self._changed)
        self.clock = WakeClock(self._woke)
        self._task: asyncio.Task | None = None
        self._due = False
        self._came_up: set[int] = set()
        self._reprobe = False

    def start(self) -> None:
        self.watch.start()
        self.clock.start()
        if self.publisher is not None:
            self.publisher.just_woke = self.clock.asleep

    def stop(self) -> None:
        self.watch.stop()
        self.clock.stop()
        if self._task is not None:
            self._task.cancel()

    def _changed(self, came_up: set[int]) -> None:
        self._came_up |= came_up
        self._reprobe = self._reprobe or bool(came_up)
        self._kick()

    def _woke(self, seconds: float) -> None:
        log.info("awake after %.0f s away: probing the name and checking peers again",
                 seconds)
        self._reprobe = True
        self._kick()

    def _kick(self) -> None:
        self._due = True
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while self._due:
            self._due = False
            came_up, self._came_up = self._came_up, set()
            reprobe, self._reprobe = self._reprobe, False
            try:
                await self._follow(came_up, reprobe)
            except XmpplError as exc:
                log.error("after a network change: %s", exc)
            except Exception:  # one bad round must not end the following
                log.exception("after a network change")

    async def _follow(self, came_up: set[int], reprobe: bool) -> None:
        mine = usable_addresses(self.interfaces)
        log.info("network changed; addresses now %s%s",
                 ", ".join(f"{a.address}%{a.interface}" for a in mine) or "none",
                 f" (back up: {sorted(came_up)})" if came_up else "")
        zc = self.azc.zeroconf
        choice = interface_choice(mine)
        if self.publisher is not None:
            addresses = sorted({a.address for a in mine}, key=lambda a: (":" in a, a))
            if reprobe:
                self.publisher.hold()
            # Before the sockets change: goodbyes for a vanished address go out on
            # the sockets that still work, and python-zeroconf, which re-announces
            # on a new socket, then announces the new addresses, not the old.
            await self.publisher.update_addresses(addresses)
        if came_up:
            # Fresh sockets on an interface that was down: leave it, then join again.
            await self.azc.async_update_interfaces(
                interface_choice(a for a in mine if a.index not in came_up))
        await self.azc.async_update_interfaces(choice)
        raise_receive_buffers(self.azc)
        log.info("mDNS sockets: %s", ", ".join(str(s.sock_name[0]) for s in zc.engine.senders)
                 or "none")
        self.view.scopes.refresh()
        if self.publisher is not None and reprobe:
            await self.publisher.reprobe()
        self.view.recheck()
        await asyncio.sleep(RECHECK_DELAY)
        self.view.refresh()


def usable_addresses(interfaces: list[str] | None) -> list[LocalAddress]:
    """Our addresses on interfaces that are up and running: a downed interface keeps
    its IPv4 address, but nothing sent there arrives."""
    try:
        found = local_addresses(interfaces)
    except XmpplError:  # a chosen interface is gone (a USB adapter unplugged)
        found = []
        for name in interfaces or []:
            try:
                found += local_addresses([name])
            except XmpplError:
                continue
    running = links_running()
    return [a for a in found if running.get(a.index, True)]
