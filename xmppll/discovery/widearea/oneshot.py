"""What the commands do with `--domain` when no agent does it for them: one browse,
a polling follow, a lookup for `send`, and `withdraw --stale` for a dead agent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable

import dns.name
import dns.rdatatype

from xmppll import identity
from xmppll.discovery.directory import Peer, PeerEvent
from xmppll.discovery.widearea import browse as dnssd
from xmppll.discovery.widearea import locate, update
from xmppll.discovery.widearea.config import WideAreaSettings
from xmppll.discovery.widearea.directory import PUBLISHED_FILE, WideAreaDirectory
from xmppll.discovery.widearea.records import host_name, instance_name
from xmppll.errors import NoPeerError, XmpplError


def domains(settings: WideAreaSettings) -> list[str]:
    found = list(settings.domains)
    if settings.discover:
        found += [d for d in locate.discovered_domains(settings) if d not in found]
    return found


def browse(settings: WideAreaSettings, exclude: set[str] | None = None
           ) -> tuple[list[PeerEvent], list[XmpplError]]:
    """Every domain's peers, and the failures of those that could not be browsed (the
    others, and the link, are still listed)."""
    exclude = {n.lower() for n in exclude or ()}
    peers: list[PeerEvent] = []
    errors: list[XmpplError] = []
    querier = dnssd.Querier(locate.query_server(settings))
    for domain in domains(settings):
        try:
            peers += [p.to_json() for p in dnssd.browse(querier, domain)
                      if p.name.lower() not in exclude]
        except XmpplError as exc:
            errors.append(exc)
    return peers, errors


def resolve(settings: WideAreaSettings, name: str) -> Peer | None:
    querier = dnssd.Querier(locate.query_server(settings))
    for domain in domains(settings):
        peer = dnssd.lookup(querier, domain, name)
        if peer is not None:
            return peer
    return None


class Follower:
    """A WideAreaDirectory polling on a thread of its own, so that it can run beside the
    mDNS follow (which owns the main thread's loop)."""

    def __init__(self, settings: WideAreaSettings, emit: Callable[[PeerEvent], None],
                 exclude: set[str] | None = None) -> None:
        self._lock = threading.Lock()

        def locked(event: PeerEvent) -> None:
            with self._lock:
                emit(event)

        self.directory = WideAreaDirectory(settings, on_peer=locked, exclude=exclude)
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, daemon=True, name="xmppll-dns")

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await self.directory.start()
            await self._stop.wait()
            await self.directory.close()
        asyncio.run(main())

    def run(self, duration: float | None) -> None:
        """In the foreground, until interrupted or `duration` s."""
        async def main() -> None:
            await self.directory.start()
            try:
                if duration is None:
                    await asyncio.Event().wait()
                await asyncio.sleep(duration)
            finally:
                await self.directory.close()
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)


def withdraw_stale(settings: WideAreaSettings, name: str) -> list[str]:
    """Delete what a dead agent published under `name` in each domain: the PTR and the
    instance, and the host's address records when they were the agent's own (from its
    state file, else when the SRV names <host label>.<domain>). Returns the domains.
    The caller checks that no agent of that name runs."""
    state = identity.state_dir(name) / PUBLISHED_FILE
    try:
        saved = json.loads(state.read_text())["domains"]
    except (OSError, ValueError, KeyError):
        saved = {}
    querier = dnssd.Querier(locate.query_server(settings))
    done: list[str] = []
    for domain in settings.domains:
        instance = instance_name(name, domain)
        answer = querier.ask([(instance, dns.rdatatype.SRV)]).get((instance, dns.rdatatype.SRV))
        targets = [r.target for rrset in (answer.answer if answer else [])
                   if rrset.rdtype == dns.rdatatype.SRV for r in rrset]
        if not targets and domain not in saved:
            continue
        if domain in saved:
            host = dns.name.from_text(saved[domain]["host"]) if saved[domain]["own_host"] \
                else None
        else:
            mine = host_name(identity.host_label(), domain)
            host = mine if mine in targets else None
        server = locate.update_server(settings, domain)
        update.send(update.removal(domain, settings.key, name=name, host=host), server,
                    domain, settings.key)
        done.append(domain)
    if not done:
        raise NoPeerError(f"no records of {name} in {', '.join(settings.domains)}")
    state.unlink(missing_ok=True)
    return done
