"""What the one-shot commands do: through the running agent when there is one (a
socket round trip, no zeroconf, no XML, no asyncio imported), standalone otherwise.

The command-line face calls one function here per command and prints what it gets.
"""

from __future__ import annotations

from xmppll import identity
from xmppll.agent import control
from xmppll.errors import NoPeerError, Tally, UnavailableError, UsageError, XmpplError

TYPE_CHECKING = False  # typing costs ~2.5 ms to import: commands through the agent skip it
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

    Json = dict[str, Any]


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
          wide: Any = None, link: bool = True) -> tuple[list[Json], list[XmpplError]]:
    """Everyone on the link (the agent's cache at once, else a one-shot browse), and in
    the wide-area domains of `wide` asked from DNS; with the failures of the domains
    that could not be browsed: the other peers are still listed."""
    found: list[Json] = []
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
                timeout: float) -> list[Json]:
    if agent:
        return control.request(agent, "peers")["peers"]
    from xmppll.discovery.mdns import oneshot

    return oneshot.browse(timeout, interfaces, exclude=set(control.running_agents()))


def follow(agent: str | None, emit: Callable[[Json], None],
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


def withdraw(name: str | None) -> Json:
    """The agent answers once peers have been told (its first goodbyes are out) and
    finishes on its own: the name can be announced again at once (agent/locks.py)."""
    reply = control.request(control.find_agent(name), "withdraw")
    return {"event": "withdrawn", "name": reply["name"]}


def withdraw_stale(name: str, interfaces: list[str] | None, *, wide: Any = None) -> Json:
    """Goodbyes for what a dead agent left: on the link, and with `wide` in DNS (a
    signed UPDATE deletes its records: DNS has no goodbye)."""
    import contextlib

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


def status(name: str | None, status: str | None, msg: str | None, *,
           avatar: bytes | None = None, no_avatar: bool = False) -> list[Json]:
    """Our presence (every agent's, when several run and none is named), or the
    changed one (`avatar`: a new picture, `no_avatar`: none)."""
    changing = status is not None or msg is not None or avatar is not None or no_avatar
    if name is None and not changing:
        agents = control.running_agents()
        if len(agents) > 1:
            return [control.request(agent, "info") for agent in agents]
    agent = control.find_agent(name)
    if not changing:
        return [control.request(agent, "info")]
    pictures: Json = {}
    if avatar is not None or no_avatar:
        import base64

        pictures = {"avatar": base64.b64encode(avatar).decode() if avatar else None,
                    "no_avatar": no_avatar}
    return [control.request(agent, "status", status=status, msg=msg, **pictures)]


def avatar(agent: str | None, name: str, interfaces: list[str] | None,
           timeout: float) -> tuple[str, str | None, bytes | None]:
    """(the peer's name, its phsh, its picture) through the agent, else asked on the
    link; (name, None, None) when it publishes none."""
    if agent:
        import base64

        reply = control.request(agent, "avatar", peer=name, wait=timeout,
                                timeout=timeout + 5)
        data = base64.b64decode(reply["data"]) if reply.get("data") else None
        return reply["name"], reply.get("avatar"), data
    import asyncio

    from xmppll.discovery.mdns.avatar import fetch_once

    found, sha, data = asyncio.run(fetch_once(name, interfaces, timeout))
    if sha is not None and data is None:
        from xmppll.errors import TimeoutFailure

        raise TimeoutFailure(f"{found} did not send its picture {sha}")
    return found, sha, data


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


def send(records: Iterator[tuple[int, Json]], *, agent: str | None, me: str,
         everyone: bool, timeout: float, wait: float, receipt: bool,
         interfaces: list[str] | None, wide: Any = None, tls: str = "prefer") -> int:
    """Deliver each (line number, message); returns how many were delivered."""
    if agent is None:
        import asyncio

        from xmppll.agent import sending

        options = sending.Options(me=me, timeout=timeout, wait=wait, receipt=receipt,
                                  interfaces=interfaces, wide=wide, tls=tls)
        return asyncio.run(sending.send_all(records, options, everyone=everyone))
    tally = Tally()
    for lineno, record in tally.read(records):
        try:
            tally.sent += _send_via_agent(agent, record, everyone=everyone, timeout=timeout,
                                          wait=wait, receipt=receipt)
        except XmpplError as exc:
            raise tally.failed(exc, lineno) from None
    return tally.sent


def _send_via_agent(agent: str, record: Json, *, everyone: bool, timeout: float,
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


def send_files(paths: list[str], shown: list[str | None], *, agent: str | None, me: str,
               to: str | None, everyone: bool, timeout: float, wait: float, method: str,
               interfaces: list[str] | None,
               report: Callable[[Json], None] | None = None) -> list[Json]:
    """Offer each file (`-` is stdin) to `to` or every peer; returns one result per
    (file, peer) once every receiver has all the bytes, raises the first failure."""
    if agent is None:
        import asyncio

        from xmppll.agent import sending

        options = sending.Options(me=me, timeout=timeout, wait=wait, receipt=False,
                                  interfaces=interfaces)
        results = asyncio.run(sending.send_files(to, paths, shown, options,
                                                 everyone=everyone, method=method,
                                                 report=report))
    else:
        results = _send_files_via_agent(paths, shown, agent=agent, to=to,
                                        everyone=everyone, timeout=timeout, wait=wait,
                                        method=method, report=report)
    failed = [r for r in results if "error" in r]
    if failed:
        detail = (f" ({len(results) - len(failed)} of {len(results)} transfers done)"
                  if len(results) > 1 else "")
        raise XmpplError(f"{failed[0]['error']}{detail}", int(failed[0]["code"]))
    return results


def _send_files_via_agent(paths: list[str], shown: list[str | None], *, agent: str,
                          to: str | None, everyone: bool, timeout: float, wait: float,
                          method: str, report: Callable[[Json], None] | None
                          ) -> list[Json]:
    """The agent opens the files by path (it runs as this user); stdin is spooled to
    a private temporary file first, removed when done."""
    import os
    import shutil
    import sys
    import tempfile

    from xmppll.errors import NoInputError

    spooled: list[str] = []
    full: list[str] = []
    try:
        for path in paths:
            if path == "-":
                fd, tmp = tempfile.mkstemp(prefix="xmppll-stdin-")
                spooled.append(tmp)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
                full.append(tmp)
                continue
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise NoInputError(f"cannot read {path}: {exc.strerror}") from None
            if os.path.isdir(path):
                raise NoInputError(f"cannot send {path}: it is a directory")
            full.append(os.path.abspath(path))
        names = [n or ("stdin" if p == "-" else None) for p, n in zip(paths, shown,
                                                                     strict=True)]
        for line in control.stream(agent, "send_file", files=full, names=names, to=to,
                                   everyone=everyone, send_timeout=timeout, wait=wait,
                                   method=method):
            if line.get("ok") is False:
                raise XmpplError(line.get("error", "the agent failed"),
                                 int(line.get("code", 70)))
            if line.get("done"):
                return line["sent"]
            if report is not None and "progress" in line:
                report(line)
        raise UnavailableError(f"the agent for {agent} went away during the transfer")
    finally:
        for tmp in spooled:
            os.unlink(tmp)


def accept(agent: str | None, offer_id: str, to: str | None) -> Json:
    """Accept a pending file offer; returns its `received` record once on disk."""
    import os

    target = control.find_agent(agent)
    folder = os.path.abspath(to) if to else None
    return control.request(target, "accept", id=offer_id, to=folder, timeout=None)["record"]


def decline(agent: str | None, offer_id: str, reason: str | None) -> Json:
    target = control.find_agent(agent)
    return control.request(target, "decline", id=offer_id, reason=reason)["record"]
