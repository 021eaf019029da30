"""What the discovery commands do when no agent runs: a short-lived mDNS session of
their own. Each function opens the link, does one job and closes it."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from xmppll import identity
from xmppll.discovery.directory import PeerEvent
from xmppll.discovery.mdns.directory import PUBLISHED_FILE, published_record
from xmppll.discovery.mdns.link import open_link
from xmppll.discovery.mdns.peers import PeerView, browse_once
from xmppll.discovery.mdns.publish import Publication, send_goodbyes
from xmppll.errors import NoPeerError


async def _browse(timeout: float, interfaces: list[str] | None,
                  exclude: set[str]) -> list[PeerEvent]:
    azc = await open_link(interfaces, unicast=True)
    try:
        return await browse_once(azc.zeroconf, timeout=timeout, exclude=exclude)
    finally:
        await azc.async_close()


def browse(timeout: float, interfaces: list[str] | None = None,
           exclude: set[str] | None = None) -> list[PeerEvent]:
    """Everyone on the link but the names in `exclude` (our own agents: a user's
    browse lists other people, not themselves)."""
    return asyncio.run(_browse(timeout, interfaces, exclude or set()))


async def _follow(emit: Callable[[PeerEvent], None], interfaces: list[str] | None,
                  timeout: float | None, exclude: set[str]) -> None:
    azc = await open_link(interfaces)
    view = PeerView(azc.zeroconf, on_event=emit, exclude=exclude)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await view.start()
        view.query_ptr(known_answers=False)
        while not stop.is_set():
            wait = 10.0 if timeout is None else min(10.0, timeout - loop.time())
            if wait <= 0:
                break
            try:
                await asyncio.wait_for(stop.wait(), wait)
            except TimeoutError:
                view.refresh()
    finally:
        await view.stop()
        await azc.async_close()


def follow(emit: Callable[[PeerEvent], None], interfaces: list[str] | None = None,
           duration: float | None = None, exclude: set[str] | None = None) -> None:
    """Stream added/updated/removed events until interrupted (or for `duration`)."""
    async def main() -> None:
        end = asyncio.get_running_loop().time() + duration if duration else None
        await _follow(emit, interfaces, end, exclude or set())
    asyncio.run(main())


def withdraw_stale(name: str, interfaces: list[str] | None = None) -> Publication:
    """Goodbyes for the records a dead agent left on the link, so peers drop it now
    rather than after the 75-minute PTR TTL."""
    state = identity.state_dir(name)
    try:
        record = published_record(state)
    except FileNotFoundError:
        raise NoPeerError(f"no record of a published {name} on this host "
                          f"({state / PUBLISHED_FILE})") from None

    async def main() -> None:
        azc = await open_link(interfaces)
        try:
            await send_goodbyes(azc, record)
        finally:
            await azc.async_close()

    asyncio.run(main())
    (state / PUBLISHED_FILE).unlink(missing_ok=True)
    return record
