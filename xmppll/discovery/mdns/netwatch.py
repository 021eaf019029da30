"""Watching the host's interfaces and addresses: rtnetlink, read on the event loop.

python-zeroconf binds its sockets once and never looks again ("monitoring system
interfaces is outside of the scope", python-zeroconf #976); since 0.150 it can
reconcile its sockets when told to (`AsyncZeroconf.async_update_interfaces`), but the
telling is ours. Netlink says so the moment the kernel changes anything, costs nothing
while nothing changes, and needs no privilege; polling `ifaddr` would either lag by its
period or wake the agent for nothing. Where netlink is missing (not Linux) a slow poll
of the address set stands in for it.

A change comes as a burst (a DHCP renewal deletes and adds; a Wi-Fi handover takes a
link down and up and adds addresses one by one): the burst is damped, and `on_change`
gets one call once it has been quiet for `SETTLE` seconds, with the indexes of the
interfaces that came up (went from not running to running) during it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable

import ifaddr

log = logging.getLogger("xmppll")

SETTLE = 0.2  # seconds of quiet that end a burst of netlink messages
POLL = 5.0  # seconds between address polls where netlink is unavailable

# rtnetlink (linux/rtnetlink.h, linux/if.h)
_RTMGRP_LINK, _RTMGRP_IPV4_IFADDR, _RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100
_RTM_NEWLINK, _RTM_DELLINK, _RTM_NEWADDR, _RTM_DELADDR = 16, 17, 20, 21
_NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFF_UP, _IFF_RUNNING = 0x1, 0x40

OnChange = Callable[[set[int]], None]


def parse(data: bytes) -> list[tuple[int, int, int]]:
    """(message type, interface index, link flags) for each link or address message
    in one netlink datagram; flags are 0 for address messages."""
    found = []
    offset = 0
    while offset + _NLMSG_HDR.size <= len(data):
        length, kind, _, _, _ = _NLMSG_HDR.unpack_from(data, offset)
        if length < _NLMSG_HDR.size:
            break
        body = offset + _NLMSG_HDR.size
        if kind in (_RTM_NEWLINK, _RTM_DELLINK) and body + _IFINFOMSG.size <= len(data):
            _, _, index, flags, _ = _IFINFOMSG.unpack_from(data, body)
            found.append((kind, index, flags))
        elif kind in (_RTM_NEWADDR, _RTM_DELADDR) and body + 8 <= len(data):
            index = struct.unpack_from("=i", data, body + 4)[0]  # ifaddrmsg.ifa_index
            found.append((kind, index, 0))
        offset += (length + 3) & ~3
    return found


def _running(flags: int) -> bool:
    return flags & (_IFF_UP | _IFF_RUNNING) == _IFF_UP | _IFF_RUNNING


class NetWatch:
    """Calls `on_change(came_up)` after each settled burst of interface changes."""

    def __init__(self, on_change: OnChange) -> None:
        self.on_change = on_change
        self._sock: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._poller: asyncio.Task | None = None
        self._came_up: set[int] = set()
        self._running: dict[int, bool] = {}

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                                 socket.NETLINK_ROUTE)
            sock.bind((0, _RTMGRP_LINK | _RTMGRP_IPV4_IFADDR | _RTMGRP_IPV6_IFADDR))
        except (AttributeError, OSError) as exc:
            log.info("no netlink (%s): polling the interfaces every %.0f s", exc, POLL)
            self._poller = asyncio.ensure_future(self._poll())
            return
        self._sock = sock
        self._running = links_running()
        loop.add_reader(sock.fileno(), self._readable)

    def stop(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._timer is not None:
            self._timer.cancel()
        if self._poller is not None:
            self._poller.cancel()

    def _readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:  # ENOBUFS: messages lost, so assume anything changed
                log.info("netlink: %s", exc)
                self._changed()
                break
            for kind, index, flags in parse(data):
                if kind == _RTM_NEWLINK:
                    running = _running(flags)
                    if running and not self._running.get(index, False):
                        self._came_up.add(index)
                    self._running[index] = running
                elif kind == _RTM_DELLINK:
                    self._running.pop(index, None)
                self._changed()

    def _changed(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(SETTLE, self._settled)

    def _settled(self) -> None:
        self._timer = None
        came_up, self._came_up = self._came_up, set()
        self.on_change(came_up)

    async def _poll(self) -> None:
        last = _snapshot()
        while True:
            await asyncio.sleep(POLL)
            now = _snapshot()
            if now != last:
                came_up = {index for index in now if index not in last}
                last = now
                self.on_change(came_up)


def _snapshot() -> dict[int, frozenset[str]]:
    """Every interface's addresses, by index."""
    return {
        adapter.index or 0: frozenset(str(ip.ip) for ip in adapter.ips)
        for adapter in ifaddr.get_adapters()
    }


def links_running() -> dict[int, bool]:
    """Which interfaces are up and running now (sysfs, where IFF_RUNNING is the
    operational state; empty where there is no sysfs)."""
    found: dict[int, bool] = {}
    for index, name in socket.if_nameindex():
        with contextlib.suppress(OSError), open(f"/sys/class/net/{name}/operstate") as fh:
            found[index] = fh.read().strip() in ("up", "unknown")
    return found
