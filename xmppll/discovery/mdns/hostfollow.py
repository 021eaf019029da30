"""Beside avahi-daemon: following its host name (issue #18).

When another responder on this host owns the address records (choose_host found
`<label>.local` answered with our own addresses), we publish SRV/TXT pointing at its
name and no addresses. If it renames the host (`h1.local` -> `h1-2.local` after a
host-name conflict, or `avahi-set-host-name`), peers would resolve a name nobody
answers. So we watch who answers for our own addresses: avahi announces them under
the new name (python-zeroconf's record listener sees every answer on the link), and
once the old name is no longer answered with them, the SRV is updated in place.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import Any

from zeroconf import DNSOutgoing, DNSQuestion, RecordUpdateListener, Zeroconf, current_time_millis

from xmppll.discovery.mdns.link import (
    CLASS_IN,
    CLASS_UNIQUE,
    TYPE_A,
    TYPE_AAAA,
    local_addresses,
)
from xmppll.discovery.mdns.publish import Publisher, ask_host
from xmppll.errors import XmpplError

log = logging.getLogger("xmppll")
SETTLE = 1.2  # s: a goodbye keeps the old name in caches for 1 s (RFC 6762 §10.1)
OWN_TTL = 2.0  # s our own address set is reused before being read again


class HostFollower(RecordUpdateListener):
    """Moves our SRV target to whatever name the host's own responder now gives our
    addresses; idle while we publish the addresses ourselves."""

    def __init__(self, zc: Zeroconf, publisher: Publisher,
                 interfaces: list[str] | None) -> None:
        self.zc = zc
        self.publisher = publisher
        self.interfaces = interfaces
        self._own: set[str] = set()
        self._own_at = 0.0
        self._candidates: set[str] = set()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self.zc.async_add_listener(self, None)

    def stop(self) -> None:
        self.zc.async_remove_listener(self)
        if self._task is not None:
            self._task.cancel()

    def own(self) -> set[str]:
        now = time.monotonic()
        if now - self._own_at > OWN_TTL:
            try:
                self._own = {a.address for a in local_addresses(self.interfaces)}
            except XmpplError:
                self._own = set()
            self._own_at = now
        return self._own

    def async_update_records(self, zc: Zeroconf, now: float, records: list[Any]) -> None:
        record = self.publisher.record
        if record is None or self.publisher.owns_host:
            return
        server = record.server.lower()
        for update in records:
            new = update.new
            if new.type not in (TYPE_A, TYPE_AAAA) or new.key == server:
                continue
            if new.is_expired(now) or not new.key.endswith(".local."):
                continue
            if str(ipaddress.ip_address(new.address)) in self.own():
                self._candidates.add(new.key)
        if self._candidates and (self._task is None or self._task.done()):
            self._task = asyncio.ensure_future(self._check())

    async def _check(self) -> None:
        await asyncio.sleep(SETTLE)
        candidates, self._candidates = self._candidates, set()
        record = self.publisher.record
        if record is None or self.publisher.owns_host:
            return
        own = self.own()
        old = await fresh_answers(self.zc, record.server, wait=0.5)
        if old & own:
            log.info("%s still answered with our addresses: keeping it", record.server)
            return
        for name in sorted(candidates):
            answers = await ask_host(self.zc, name, wait=0.3)
            if answers and answers <= own:
                log.info("host's responder renamed %s to %s: following it", record.server,
                         name)
                await self.publisher.update_server(name)
                return


async def fresh_answers(zc: Zeroconf, host: str, wait: float) -> set[str]:
    """Addresses answered for `host` after we ask now: unlike `ask_host`, a cached
    record nobody confirms does not count (a responder that renamed without goodbyes
    leaves its old name in caches for the full TTL)."""
    asked = current_time_millis()
    out = DNSOutgoing(0)
    for type_ in (TYPE_A, TYPE_AAAA):
        out.add_question(DNSQuestion(host, type_, CLASS_IN | CLASS_UNIQUE))
    zc.async_send(out)
    await asyncio.sleep(wait)
    now = current_time_millis()
    return {
        str(ipaddress.ip_address(r.address))
        for r in zc.cache.async_entries_with_name(host)
        if r.type in (TYPE_A, TYPE_AAAA) and r.created >= asked and not r.is_expired(now)
    }
