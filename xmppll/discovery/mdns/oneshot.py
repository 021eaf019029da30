"""What the discovery commands do when no agent runs: a short-lived mDNS session of
their own. Each function opens the link, does one job and closes it."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from typing import Any

from xmppll import identity
from xmppll.agent import control
from xmppll.discovery.mdns.link import open_link
from xmppll.discovery.mdns.peers import PeerView, browse_once
from xmppll.discovery.mdns.publish import Record, send_goodbyes
from xmppll.errors import NoPeerError, UnavailableError

Event = dict[str, Any]


def _local_names() -> set[str]:
    """Our own agents' names: a user's browse lists other people, not themselves."""
    return set(control.running_agents())


async def _browse(timeout: float, interfaces: list[str] | None) -> list[Event]:
    azc = await open_link(interfaces, unicast=True)
    try:
        return await browse_once(azc.zeroconf, timeout=timeout, exclude=_local_names())
    finally:
        await azc.async_close()


def browse(timeout: float, interfaces: list[str] | None = None) -> list[Event]:
    return asyncio.run(_browse(timeout, interfaces))


async def _follow(emit: Callable[[Event], None], interfaces: list[str] | None,
                  timeout: float | None) -> None:
    azc = await open_link(interfaces)
    view = PeerView(azc.zeroconf, on_event=emit, exclude=_local_names())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await view.start()
        view.query_ptr(known_answers=False)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 10.0)
            except TimeoutError:
                view.refresh()
            if timeout is not None and loop.time() >= timeout:
                break
    finally:
        await view.stop()
        await azc.async_close()


def follow(emit: Callable[[Event], None], interfaces: list[str] | None = None,
           duration: float | None = None) -> None:
    """Stream added/updated/removed events until interrupted (or for `duration`)."""
    async def main() -> None:
        end = asyncio.get_running_loop().time() + duration if duration else None
        await _follow(emit, interfaces, end)
    asyncio.run(main())


def withdraw_stale(name: str, interfaces: list[str] | None = None) -> Record:
    """Goodbyes for the records a dead agent left on the link, so peers drop it now
    rather than after the 75-minute PTR TTL."""
    if control.is_alive(identity.socket_path(name)):
        raise UnavailableError(
            f"the agent for {name} is still running; use: xmppll withdraw {name}"
        )
    path = identity.state_dir(name) / "published.json"
    try:
        record = Record.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise NoPeerError(f"no record of a published {name} on this host ({path})") from None

    async def main() -> None:
        azc = await open_link(interfaces)
        try:
            await send_goodbyes(azc, record)
        finally:
            await azc.async_close()

    asyncio.run(main())
    path.unlink(missing_ok=True)
    return record
