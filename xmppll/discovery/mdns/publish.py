"""Being on the link: probe for my name, publish PTR/SRV/TXT (and my host's addresses
when no other responder owns them), update the TXT in place, defend the name, and say
goodbye.

python-zeroconf's own probe is slow (1.2 s before anyone sees us) and renames the
machine part on a conflict; XEP-0174 wants the user part renamed. So we probe as RFC
6762 §8.1 says (3 queries 250 ms apart, ~0.9 s) and register without its probe.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from zeroconf import (
    DNSOutgoing,
    DNSQuestion,
    DNSService,
    RecordUpdateListener,
    ServiceInfo,
    Zeroconf,
    current_time_millis,
)
from zeroconf.asyncio import AsyncZeroconf

from xmppll.discovery.mdns.link import (
    CLASS_IN,
    CLASS_UNIQUE,
    SERVICE_TYPE,
    TYPE_A,
    TYPE_AAAA,
    TYPE_ANY,
    TYPE_SRV,
    LocalAddress,
    record_ttls,
)
from xmppll.errors import UnavailableError

PROBE_INTERVAL = 0.25
GOODBYE_INTERVAL = 0.125
GOODBYE_REPEATS = 2  # after the first
_RESPONSE = 0x8400  # QR + AA: an unsolicited authoritative answer
log = logging.getLogger("xmppll")
MAX_RENAMES = 20


def renamed(name: str, attempt: int) -> str:
    """XEP-0174 asks a conflicting user part to change (juliet -> juliet-2), where
    python-zeroconf would change the machine part instead."""
    user, _, host = name.rpartition("@")
    base = user
    if "-" in user and user.rsplit("-", 1)[1].isdigit():
        base = user.rsplit("-", 1)[0]
    return f"{base}-{attempt}@{host}"


@dataclass
class Publication:
    """What one publication consists of, enough to rebuild it for a goodbye later."""

    name: str
    server: str  # FQDN with trailing dot
    port: int
    txt: bytes
    addresses: list[str]

    def info(self) -> ServiceInfo:
        return ServiceInfo(
            SERVICE_TYPE,
            f"{self.name}.{SERVICE_TYPE}",
            port=self.port,
            properties=self.txt,
            server=self.server,
            parsed_addresses=self.addresses,
            **record_ttls(),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "server": self.server,
            "port": self.port,
            "txt": self.txt.hex(),
            "addresses": self.addresses,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Publication:
        return cls(
            name=data["name"],
            server=data["server"],
            port=int(data["port"]),
            txt=bytes.fromhex(data["txt"]),
            addresses=list(data["addresses"]),
        )


async def choose_host(
    zc: Zeroconf, label: str, mine: list[LocalAddress], *, shared: bool
) -> tuple[str, list[str]]:
    """The SRV target and the addresses we must publish under it.

    When another responder on this host (avahi-daemon, another agent) already answers
    for `<label>.local` with our own addresses, we publish none: ours would make avahi
    rename the machine or flush its records with our goodbyes (coexistence-facts §2).
    When a different machine answers for the label, we take `<label>-2` and so on.
    """
    own = {a.address for a in mine}
    addresses = sorted(own, key=lambda a: (":" in a, a))
    candidate = label
    for attempt in range(2, MAX_RENAMES + 2):
        answers = await ask_host(zc, f"{candidate}.local.", wait=0.3 if shared else 0.15)
        log.info("host %s.local answered by %s", candidate, ", ".join(sorted(answers)) or
                 "nobody")
        if not answers:
            return f"{candidate}.local.", addresses
        if answers <= own:
            return f"{candidate}.local.", []
        candidate = f"{label}-{attempt}"
    raise UnavailableError(f"no free host name found for {label}.local on this link")


async def ask_host(zc: Zeroconf, host: str, wait: float) -> set[str]:
    """Addresses anyone answers for `host` within `wait` seconds."""
    out = DNSOutgoing(0)
    for type_ in (TYPE_A, TYPE_AAAA):
        out.add_question(DNSQuestion(host, type_, CLASS_IN | CLASS_UNIQUE))
    zc.async_send(out)
    deadline = time.monotonic() + wait
    while True:
        now = current_time_millis()
        found = {
            str(ipaddress.ip_address(r.address))
            for r in zc.cache.async_entries_with_name(host)
            if r.type in (TYPE_A, TYPE_AAAA) and not r.is_expired(now)
        }
        if found or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(0.02)


class _NameWatch(RecordUpdateListener):
    """Sees every SRV/TXT for one instance name that is not ours: a conflict."""

    def __init__(self, record: Publication) -> None:
        self.record = record
        self.conflict: DNSService | None = None
        self.event = asyncio.Event()

    def async_update_records(self, zc: Zeroconf, now: float, records: list) -> None:
        key = f"{self.record.name}.{SERVICE_TYPE}".lower()
        for update in records:
            new = update.new
            if new.key != key or new.is_expired(now) or new.type != TYPE_SRV:
                continue
            if (new.server_key, new.port) != (self.record.server.lower(), self.record.port):
                self.conflict = new
                self.event.set()


class Publisher:
    """Publishes one name and keeps it: rename on conflict (`juliet-2@capulet`), TXT
    updates in place, goodbyes on withdraw. `on_event` gets conflict/renamed events."""

    def __init__(
        self,
        azc: AsyncZeroconf,
        *,
        rename: bool = True,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.azc = azc
        self.zc = azc.zeroconf
        self.rename = rename
        self.on_event = on_event or (lambda event: None)
        self.record: Publication | None = None
        self._info: ServiceInfo | None = None
        self._watch: _NameWatch | None = None
        self._defender: asyncio.Task | None = None
        self._announcing: Awaitable | None = None
        # Whether we publish the host's A/AAAA (False: another responder does).
        self.owns_host = False
        self._yielding = False
        self._held = False
        # Set by whoever watches the clock: True just after a sleep, when a name
        # conflict means someone took the name while we were away, not a tie.
        self.just_woke: Callable[[], bool] = lambda: False
        # Called with the record about to be registered: what must be on the link
        # before its TXT (a picture before the `phsh` naming it).
        self.before_register: Callable[[Publication], None] = lambda record: None

    async def publish(
        self, record: Publication, host: Awaitable[tuple[str, list[str]]] | None = None,
        final_txt: Awaitable[bytes] | None = None,
    ) -> Publication:
        """Probe, rename while taken, register; returns the record actually published.

        `host`, when given, yields the final SRV target and addresses, and `final_txt`
        the TXT to register; both are awaited after the probe, so checking the host
        name and making a new key run during it (announce visible sooner)."""
        wanted = record.name
        for attempt in range(2, MAX_RENAMES + 2):
            if not await self._probe(record):
                break
            if not self.rename:
                raise UnavailableError(
                    f"the name {record.name!r} is already taken on this link "
                    "(drop --no-rename to get a free variant)"
                )
            self.on_event({"event": "conflict", "name": record.name})
            record = Publication(renamed(wanted, attempt), record.server, record.port,
                            record.txt, record.addresses)
        else:
            raise UnavailableError(f"no free variant of {wanted!r} found on this link")
        if host is not None:
            server, addresses = await host
            record = Publication(record.name, server, record.port, record.txt, addresses)
        if final_txt is not None:
            record = Publication(record.name, record.server, record.port, await final_txt,
                                 record.addresses)
        await self._register(record)
        if record.name != wanted:
            self.on_event({"event": "renamed", "from": wanted, "name": record.name})
        return record

    async def _probe(self, record: Publication) -> bool:
        """RFC 6762 §8.1 probing; True when someone else holds the name."""
        log.info("probing for %s", record.name)
        watch = _NameWatch(record)
        full = f"{record.name}.{SERVICE_TYPE}"
        self.zc.async_add_listener(watch, DNSQuestion(full, TYPE_SRV, CLASS_IN))
        info = record.info()
        try:
            await asyncio.sleep(random.uniform(0, PROBE_INTERVAL))
            for _ in range(3):
                out = DNSOutgoing(0)
                out.add_question(DNSQuestion(full, TYPE_ANY, CLASS_IN | CLASS_UNIQUE))
                out.authorities.append(info.dns_service())
                out.authorities.append(info.dns_text())
                self.zc.async_send(out)
                try:
                    await asyncio.wait_for(watch.event.wait(), PROBE_INTERVAL)
                    log.info("%s is taken (SRV %s port %s)", record.name,
                             watch.conflict.server if watch.conflict else "?",
                             watch.conflict.port if watch.conflict else "?")
                    return True
                except TimeoutError:
                    continue
            return False
        finally:
            self.zc.async_remove_listener(watch)

    async def _register(self, record: Publication) -> None:
        info = record.info()
        self.before_register(record)
        # Not awaiting the announcements: the first one is out when this returns, and
        # that is when peers see us.
        self._announcing = await self.azc.async_register_service(
            info, cooperating_responders=True
        )
        self.record, self._info = record, info
        self.owns_host = bool(record.addresses)
        log.info("registered %s (SRV %s port %d, %s)", record.name, record.server,
                 record.port, ", ".join(record.addresses) or "addresses from the host's "
                 "own responder")
        self._watch = _NameWatch(record)
        full = f"{record.name}.{SERVICE_TYPE}"
        self.zc.async_add_listener(self._watch, DNSQuestion(full, TYPE_SRV, CLASS_IN))
        self._defender = asyncio.ensure_future(self._defend())

    async def _defend(self) -> None:
        """RFC 6762 §9: a conflict seen after registration (two agents started at the
        same instant both pass probing). The lexicographically lower SRV rdata yields
        and renames; the other re-announces, so both sides converge."""
        assert self._watch is not None and self.record is not None
        while True:
            await self._watch.event.wait()
            self._watch.event.clear()
            theirs = self._watch.conflict
            assert theirs is not None
            ours = (self.record.server.lower(), self.record.port)
            if ours > (theirs.server_key, theirs.port) and not self.just_woke():
                await self.azc.async_update_service(self._info)
                continue
            await self._yield_name()
            return

    async def _yield_name(self) -> None:
        self._yielding = True
        try:
            await self._give_up_name()
        finally:
            self._yielding = False

    async def _give_up_name(self) -> None:
        old = self.record
        assert old is not None and self._info is not None and self._watch is not None
        self.zc.async_remove_listener(self._watch)
        # Silently: a goodbye for the shared PTR would remove the winner from caches.
        self.zc.registry.async_remove(self._info)
        self.on_event({"event": "conflict", "name": old.name})
        if not self.rename:
            self.record = None
            self.on_event({"event": "withdrawn", "name": old.name,
                           "reason": "name taken by another peer (--no-rename)"})
            return
        base = Publication(old.name, old.server, old.port, old.txt, old.addresses)
        new = await self.publish(base)
        if new.name == old.name:
            return
        self.on_event({"event": "renamed", "from": old.name, "name": new.name})

    async def update_addresses(self, addresses: list[str]) -> bool:
        """Our host's addresses changed (DHCP, a link gone or back): goodbyes for
        the ones gone, so peers drop them now, and the new set announced with the
        cache-flush bit (RFC 6762 §8.4, §10.2). Nothing when another responder owns
        the address records (it follows the addresses itself). True if anything
        was sent."""
        old = self.record
        if old is None or self._info is None or not self.owns_host:
            return False
        if sorted(addresses) == sorted(old.addresses):
            return False
        gone = [a for a in old.addresses if a not in addresses]
        if gone:
            out = DNSOutgoing(_RESPONSE)
            for record in Publication(old.name, old.server, old.port, old.txt,
                                 gone).info().dns_addresses(override_ttl=0):
                out.add_answer_at_time(record, 0)
            self.zc.async_send(out)
        self.record = Publication(old.name, old.server, old.port, old.txt, list(addresses))
        self._info = self.record.info()
        log.info("addresses of %s now %s (gone: %s)", old.server,
                 ", ".join(addresses) or "none", ", ".join(gone) or "none")
        self.on_event({"event": "addresses", "name": old.name,
                       "addresses": list(addresses)})
        if not self._held:  # else reprobe() announces them
            await self.azc.async_update_service(self._info)
        return True

    async def update_server(self, server: str) -> None:
        """The host's own responder renamed the host (avahi after a host-name
        conflict, or `avahi-set-host-name`): our SRV follows, updated in place (its
        cache-flush bit replaces the old one in peers' caches)."""
        old = self.record
        if old is None or self._info is None or old.server.lower() == server.lower():
            return
        self.record = Publication(old.name, server, old.port, old.txt, old.addresses)
        self._info = self.record.info()
        if self._watch is not None:  # our own new SRV is not a conflict
            self._watch.record = self.record
        self.on_event({"event": "host", "name": old.name, "host": server.rstrip("."),
                       "from": old.server.rstrip(".")})
        if not self._held:
            await self.azc.async_update_service(self._info)

    def hold(self) -> None:
        """Stop answering for the name, silently, until `reprobe` has decided whether
        it is still ours: after a sleep python-zeroconf would otherwise re-announce it
        on the first fresh socket, fighting whoever took it meanwhile."""
        if self._info is not None and not self._held:
            self.zc.registry.async_remove(self._info)
            self._held = True

    async def reprobe(self) -> None:
        """RFC 6762 §8 after a sleep or a link coming back: someone may have taken
        the name meanwhile. Probe again; if it is taken, give it up silently (no
        goodbye: it would remove the new owner from caches) and rename, else
        announce again."""
        old = self.record
        if old is None or self._info is None or self._watch is None or self._yielding:
            self._release()
            return
        if self._defender is not None:
            self._defender.cancel()
            self._defender = None
        self.hold()
        if not await self._probe(old):
            self._release()
            self._watch.event.clear()
            self._defender = asyncio.ensure_future(self._defend())
            log.info("%s is still ours: announcing it again", old.name)
            await self.azc.async_update_service(self._info)
            return
        self._held = False
        self.zc.async_remove_listener(self._watch)
        self.on_event({"event": "conflict", "name": old.name})
        if not self.rename:
            self.record = self._info = None
            self.on_event({"event": "withdrawn", "name": old.name,
                           "reason": "name taken by another peer (--no-rename)"})
            return
        new = await self.publish(Publication(renamed(old.name, 2), old.server, old.port, old.txt,
                                        old.addresses))
        self.on_event({"event": "renamed", "from": old.name, "name": new.name})

    def _release(self) -> None:
        if self._held and self._info is not None:
            self.zc.registry.async_add(self._info)
        self._held = False

    async def update_txt(self, txt: bytes) -> None:
        """A presence change: the TXT is re-announced in place, never goodbye + re-add
        (peers would see the contact leave and come back)."""
        if self.record is None or self._info is None:
            raise UnavailableError("not published")
        self.record.txt = txt
        self._info = self.record.info()
        await (await self.azc.async_update_service(self._info))

    def say_goodbye(self) -> asyncio.Future:
        """Goodbyes (TTL 0) for everything we published, so peers drop us at once. The
        first is on the wire when this returns, which is when `withdraw` can answer;
        the future ends with the last (they are repeated in case one is lost)."""
        if self._defender is not None:
            self._defender.cancel()
        info, self.record, self._info = self._info, None, None
        if info is None:
            return asyncio.gather()
        self.zc.registry.async_remove(info)
        assert info.server_key is not None
        # Another name of ours on this host still needs the host's addresses.
        addresses = not self.zc.registry.async_get_infos_server(info.server_key)
        return _goodbyes(self.zc, lambda: self.zc.generate_service_broadcast(info, 0, addresses))


def _goodbyes(zc: Zeroconf, packet: Callable[[], DNSOutgoing]) -> asyncio.Future:
    """The first goodbye now, two more GOODBYE_INTERVAL apart (python-zeroconf's count
    and spacing), so one lost datagram does not leave us in peers' caches for a TTL."""
    zc.async_send(packet())

    async def repeat() -> None:
        for _ in range(GOODBYE_REPEATS):
            await asyncio.sleep(GOODBYE_INTERVAL)
            zc.async_send(packet())

    return asyncio.ensure_future(repeat())


async def send_goodbyes(azc: AsyncZeroconf, record: Publication) -> None:
    """Goodbyes on behalf of a dead process: receivers match records by content, not by
    sender, so rebuilding the records is enough (zeroconf-facts.md 4e')."""
    info = record.info()
    zc = azc.zeroconf
    await _goodbyes(zc, lambda: zc.generate_service_broadcast(info, 0, bool(record.addresses)))
