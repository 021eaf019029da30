"""What the one-shot commands do: through the running agent when there is one (a
socket round trip, no zeroconf, no XML, no asyncio imported), standalone otherwise.

The command-line face calls one function here per command and prints what it gets.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from xmppll import identity
from xmppll.agent import control
from xmppll.errors import NoPeerError, Tally, UnavailableError, UsageError, XmpplError

TYPE_CHECKING = False  # typing costs ~2.5 ms to import: commands through the agent skip it
if TYPE_CHECKING:
    from typing import Any

    Record = dict[str, Any]
WITHDRAW_WAIT = 10.0  # s for an agent to send its goodbyes and go


def any_agent() -> str | None:
    agents = control.running_agents()
    return agents[0] if agents else None


def running(name: str | None) -> str | None:
    """The agent to use, or None when none runs (several, unnamed: a usage error)."""
    try:
        return control.find_agent(name)
    except UnavailableError:
        return None


def peers(agent: str | None, interfaces: list[str] | None, timeout: float, *,
          wide: Any = None, link: bool = True) -> tuple[list[Record], list[XmpplError]]:
    """Everyone on the link (the agent's cache at once, else a one-shot browse), and in
    the wide-area domains of `wide` asked from DNS; with the failures of the domains
    that could not be browsed: the other peers are still listed."""
    found: list[Record] = []
    failures: list[XmpplError] = []
    if wide is not None:
        from xmppll.discovery.widearea import oneshot as wide_oneshot

        found, failures = wide_oneshot.browse(wide, exclude=set(control.running_agents()))
    if link:
        seen = {(p["name"].lower(), p.get("domain")) for p in found}
        found += [p for p in _link_peers(agent, interfaces, timeout)
                  if (p["name"].lower(), p.get("domain")) not in seen]
    return found, failures


def _link_peers(agent: str | None, interfaces: list[str] | None,
                timeout: float) -> list[Record]:
    if agent:
        return control.request(agent, "peers")["peers"]
    from xmppll.discovery.mdns import oneshot

    return oneshot.browse(timeout, interfaces, exclude=set(control.running_agents()))


def follow(agent: str | None, emit: Callable[[Record], None],
           interfaces: list[str] | None, duration: float | None, *,
           wide: Any = None, link: bool = True) -> None:
    """added/updated/removed events until interrupted (or for `duration` seconds);
    a wide-area domain is polled on a thread of its own beside the link's events."""
    if wide is not None:
        from xmppll.discovery.widearea.oneshot import Follower

        follower = Follower(wide, emit, exclude=set(control.running_agents()))
        if not link:
            follower.run(duration)
            return
        follower.start()
    if agent:
        for event in control.stream(agent, "follow", duration=duration):
            emit(event)
        return
    from xmppll.discovery.mdns import oneshot

    oneshot.follow(emit, interfaces, duration, exclude=set(control.running_agents()))


def withdraw(name: str | None) -> Record:
    """Ask the agent to go, then wait until its socket is gone: when this returns,
    the goodbyes have been sent."""
    agent = control.find_agent(name)
    reply = control.request(agent, "withdraw")
    path = identity.socket_path(agent)
    deadline = time.monotonic() + WITHDRAW_WAIT
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"event": "withdrawn", "name": reply["name"]}


def withdraw_stale(name: str, interfaces: list[str] | None, *, wide: Any = None) -> Record:
    """Goodbyes for what a dead agent left: on the link, and with `wide` in DNS (a
    signed UPDATE deletes its records: DNS has no goodbye)."""
    from xmppll.discovery.mdns import oneshot

    if control.is_alive(identity.socket_path(name)):
        raise UnavailableError(
            f"the agent for {name} is still running; use: xmppll withdraw {name}")
    if wide is None:
        record = oneshot.withdraw_stale(name, interfaces)
        return {"event": "withdrawn", "name": record.name, "stale": True}
    from xmppll.discovery.widearea import oneshot as wide_oneshot

    domains = wide_oneshot.withdraw_stale(wide, name)
    with contextlib.suppress(NoPeerError):  # no mDNS record left: the DNS one was
        oneshot.withdraw_stale(name, interfaces)
    return {"event": "withdrawn", "name": name, "stale": True, "domains": domains}


def status(name: str | None, status: str | None, msg: str | None) -> list[Record]:
    """Our presence (every agent's, when several run and none is named), or the
    changed one."""
    if name is None and status is None and msg is None:
        agents = control.running_agents()
        if len(agents) > 1:
            return [control.request(agent, "info") for agent in agents]
    agent = control.find_agent(name)
    if status is None and msg is None:
        return [control.request(agent, "info")]
    return [control.request(agent, "status", status=status, msg=msg)]


def sending_agent(from_: str | None) -> str | None:
    """The running agent that sends for us: the one named --from, else the only or
    default one; None sends standalone."""
    agents = control.running_agents()
    if from_ is not None:
        return from_ if from_ in agents else None
    try:
        return control.find_agent(None) if agents else None
    except UsageError:
        return None


def send(records: Iterator[tuple[int, Record]], *, agent: str | None, me: str,
         everyone: bool, timeout: float, wait: float, receipt: bool,
         interfaces: list[str] | None, wide: Any = None) -> int:
    """Deliver each (line number, message); returns how many were delivered."""
    if agent is None:
        import asyncio

        from xmppll.agent import sending

        options = sending.Options(me=me, timeout=timeout, wait=wait, receipt=receipt,
                                  interfaces=interfaces, wide=wide)
        return asyncio.run(sending.send_all(records, options, everyone=everyone))
    tally = Tally()
    for lineno, record in tally.read(records):
        try:
            tally.sent += _send_via_agent(agent, record, everyone=everyone, timeout=timeout,
                                          wait=wait, receipt=receipt)
        except XmpplError as exc:
            raise tally.failed(exc, lineno) from None
    return tally.sent


def _send_via_agent(agent: str, record: Record, *, everyone: bool, timeout: float,
                    wait: float, receipt: bool) -> int:
    """One control request per message; the agent answers when the peer took it."""
    reply = control.request(agent, "send", message=record, everyone=everyone,
                            timeout=timeout + wait + 5, send_timeout=timeout, wait=wait,
                            receipt=receipt)
    if not everyone:
        return 1
    results = reply["sent"]
    if not results:
        raise NoPeerError("no peers on the link")
    failed = [r for r in results if "error" in r]
    if failed:
        raise XmpplError(f"{failed[0]['to']}: {failed[0]['error']} "
                         f"({len(results) - len(failed)} of {len(results)} peers took it)",
                         failed[0]["code"])
    return len(results)
