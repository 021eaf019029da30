"""Who is on the link: a live view of every `_presence._tcp` peer, built from the mDNS
cache, and a one-shot browse that knows when it has heard everyone.

The view is recomputed from the cache for each instance a batch of records touched, so
a lost or duplicated event cannot leave it wrong: whatever the cache says is the truth,
and events are the differences between two truths.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import ipaddress
from collections.abc import Callable
from typing import Any

from zeroconf import (
    DNSAddress,
    DNSOutgoing,
    DNSPointer,
    DNSQuestion,
    DNSService,
    DNSText,
    RecordUpdateListener,
    Zeroconf,
    current_time_millis,
)
from zeroconf.asyncio import AsyncServiceBrowser

from xmppll.discovery.directory import PeerEvent
from xmppll.discovery.mdns.link import (
    CLASS_IN,
    CLASS_UNIQUE,
    SERVICE_TYPE,
    TYPE_A,
    TYPE_AAAA,
    TYPE_PTR,
    TYPE_SRV,
    TYPE_TXT,
    LinkScopes,
    format_address,
    query_single_label,
)
from xmppll.discovery.presence import decode_txt, peer_fields

_SUFFIX = "." + SERVICE_TYPE
REFRESH_AT = 0.75  # re-query a peer's SRV/addresses at 75 % of their TTL (RFC 6762 §5.2)
ASK_DELAY = 0.025  # questions about incomplete peers are batched this long
SCOPE_WAIT = 0.05  # how long a new peer waits for the IPv6 copy of its address records
FIRST_WINDOW = 0.1  # seconds: a one-shot browse's first round, before the link's pace is known
MAX_RTT = 0.5  # cap on the measured round trip (the first answer may have waited for ARP)
LOSSY_ROUNDS = 3  # extra calm rounds a one-shot browse needs once it has seen answers lost
EMPTY_ROUNDS = 2  # extra calm rounds before a one-shot browse calls a silent link empty
MAX_ROUND = 1.0  # seconds: the longest round of a one-shot browse
MAX_ASK_GAP = 3_600_000  # ms: questions about an incomplete name back off to once an hour



def instance_of(full: str) -> str:
    return full[: -len(_SUFFIX)] if full.lower().endswith(_SUFFIX) else full


def _full(instance: str) -> str:
    return instance + _SUFFIX


def _alive(records: list, type_: int, now: float) -> list:
    return [r for r in records if r.type == type_ and not r.is_expired(now)]


class PeerView(RecordUpdateListener):
    """Every complete peer (PTR, SRV, TXT and an address all alive in the cache).

    `on_event` receives `added`/`updated`/`removed` events with the Peer JSON shape.
    Names in `exclude` (our own, case-insensitive) are never reported.
    """

    def __init__(
        self,
        zc: Zeroconf,
        on_event: Callable[[PeerEvent], None] | None = None,
        exclude: set[str] | None = None,
        scopes: LinkScopes | None = None,
    ) -> None:
        self.zc = zc
        self.on_event = on_event
        self.exclude = {name.lower() for name in exclude or ()}
        self.scopes = scopes or LinkScopes()
        self.peers: dict[str, PeerEvent] = {}
        self.seen: set[str] = set()  # every instance a PTR was heard for
        self.changed = asyncio.Event()
        # Set only on news (a name heard for the first time, a peer added/changed/gone),
        # not on every repeated record: a one-shot browse measures quiet by it.
        self.progress = asyncio.Event()
        self._to_ask: dict[str, bool] = {}
        self._ask_timer: asyncio.TimerHandle | None = None
        self._ptr: dict[str, DNSPointer] = {}
        self._by_server: dict[str, set[str]] = {}  # host name -> instances on it
        self._server_of: dict[str, str] = {}  # instance -> its host name (the inverse)
        self._dirty: set[str] = set()
        self._asked: dict[str, float] = {}
        self._ask_gap: dict[str, float] = {}  # ms before an incomplete name is asked again
        self._browser: AsyncServiceBrowser | None = None
        self._tasks: set[asyncio.Task] = set()
        self._held: set[str] = set()

    async def start(self, *, browse: bool = True) -> None:
        """Listen (and let python-zeroconf's browser schedule its PTR queries and
        refreshes, unless a caller drives its own queries)."""
        self.zc.async_add_listener(self, DNSQuestion(SERVICE_TYPE, TYPE_PTR, CLASS_IN))
        if browse:
            self._browser = AsyncServiceBrowser(self.zc, SERVICE_TYPE, handlers=[_ignore])

    async def stop(self) -> None:
        if self._browser is not None:
            await self._browser.async_cancel()
        self.zc.async_remove_listener(self)
        if self._ask_timer is not None:
            self._ask_timer.cancel()
        for task in self._tasks:
            task.cancel()

    def exclude_name(self, name: str) -> None:
        self.exclude.add(name.lower())
        self._dirty.add(_full(name).lower())
        self.async_update_records_complete()

    def own_name(self, name: str) -> None:
        """Our name is now `name` (renamed): a name we gave up is someone else's, and
        they are listed like any peer."""
        for old in self.exclude - {name.lower()}:
            self._dirty.add(_full(old))
        self.exclude = set()
        self.exclude_name(name)

    def recheck(self) -> None:
        """After a sleep or a link change: ask the link for everyone again (not
        listing what we know, which may all be stale), and drop what no longer
        resolves from the cache."""
        self.query_ptr(known_answers=False)
        now = current_time_millis()
        for key, peer in list(self.peers.items()):
            self._ask(_full(peer["name"]), now, force=True)
            self._dirty.add(key)
        self.async_update_records_complete()

    # python-zeroconf's listener interface: called in the event loop, must not block.
    def async_update_records(self, zc: Zeroconf, now: float, records: list) -> None:
        for update in records:
            record = update.new
            if record.type == TYPE_PTR and record.key == SERVICE_TYPE:
                key = record.alias.lower()
                self._ptr[key] = record
                self._dirty.add(key)
            elif record.type in (TYPE_SRV, TYPE_TXT) and record.key.endswith(_SUFFIX):
                self._dirty.add(record.key)
            elif record.type in (TYPE_A, TYPE_AAAA) and (
                update.old is None or record.is_expired(now)
            ):
                # Only a new or vanishing address changes a peer. A host with many
                # instances repeats the same A/AAAA in every announcement: re-resolving
                # all of its instances for each would be quadratic in a burst (1000
                # names: the agent fell ~10 s behind, its socket overflowed, events
                # were lost).
                self._dirty.update(self._by_server.get(record.key, ()))

    def async_update_records_complete(self) -> None:
        dirty, self._dirty = self._dirty, set()
        now = current_time_millis()
        for key in dirty:
            self._evaluate(key, now)
        self.changed.set()

    def _evaluate(self, key: str, now: float) -> None:
        ptr = self._ptr.get(key)
        peer = None
        if ptr is not None and not ptr.is_expired(now):
            if key not in self.seen:
                self.seen.add(key)
                self.progress.set()
            peer = self._resolve_from_cache(ptr.alias, now)
            if peer is None:
                self._ask(ptr.alias, now, backoff=True)
            else:
                self._ask_gap.pop(key, None)
        elif ptr is not None:
            self._forget(key)
        if peer is not None and instance_of(key) in self.exclude:
            peer = None
        if (peer is not None and key not in self.peers and _unscoped(peer)
                and key not in self._held):
            # Peers send each announcement over IPv4 and IPv6; an AAAA heard over IPv4
            # has no scope, and fe80:: without one cannot be connected to. The IPv6
            # copy (zeroconf keeps its scope) lands within milliseconds: wait for it
            # once, rather than emit `added` with a useless address and an `updated`
            # right after.
            self._held.add(key)
            self._schedule(SCOPE_WAIT, key)
            return
        self._held.discard(key)
        self._emit(key, peer)

    def _forget(self, key: str) -> None:
        """A name whose PTR is gone (goodbye or expiry) leaves nothing behind: under
        churn (50 names a second) every per-name entry kept grew the agent ~1 KB a
        name, 37 % in ten minutes."""
        self._ptr.pop(key, None)
        self.seen.discard(key)
        self._asked.pop(key, None)
        self._ask_gap.pop(key, None)
        self._held.discard(key)
        self._link_server(key, None)

    def _link_server(self, key: str, server: str | None) -> None:
        old = self._server_of.pop(key, None)
        if old is not None and old != server:
            names = self._by_server.get(old)
            if names is not None:
                names.discard(key)
                if not names:
                    del self._by_server[old]
        if server is not None:
            self._server_of[key] = server
            self._by_server.setdefault(server, set()).add(key)

    def _emit(self, key: str, peer: PeerEvent | None) -> None:
        old = self.peers.get(key)
        if peer == old:
            return
        if peer is None:
            del self.peers[key]
            event = {"event": "removed", **old}
        else:
            self.peers[key] = peer
            event = {"event": "added" if old is None else "updated", **peer}
        self.progress.set()
        if self.on_event:
            self.on_event(event)

    def _resolve_from_cache(self, full: str, now: float) -> PeerEvent | None:
        cache = self.zc.cache
        records = cache.async_entries_with_name(full)
        srvs: list[DNSService] = _alive(records, TYPE_SRV, now)
        txts: list[DNSText] = _alive(records, TYPE_TXT, now)
        if not srvs or not txts:
            return None
        srv, txt = _current(srvs), _current(txts)
        server = srv.server_key
        if full.lower() in self._ptr:  # only names we list: find() may ask about any
            self._link_server(full.lower(), server)
        hosts = cache.async_entries_with_name(server)
        addrs: list[DNSAddress] = (_fresh(_alive(hosts, TYPE_AAAA, now))
                                   + _fresh(_alive(hosts, TYPE_A, now)))
        ipv4 = [str(ipaddress.ip_address(a.address)) for a in addrs if len(a.address) == 4]
        found = set()
        for a in addrs:
            scope = a.scope_id or 0
            if not scope and a.address[0] == 0xFE and a.address[1] & 0xC0 == 0x80:
                scope = self.scopes.scope_for(ipv4)
                if not scope:
                    continue  # never list fe80:: that nothing can connect to
            found.add(format_address(a.address, scope))
        if not found:
            return None
        addresses = sorted(found, key=lambda a: (":" not in a, a))
        return {
            "name": instance_of(full),
            "host": srv.server.rstrip("."),
            "addresses": addresses,
            "port": srv.port,
            **peer_fields(decode_txt(txt.text)),
        }

    def _ask(self, full: str, now: float, *, force: bool = False,
             backoff: bool = False) -> None:
        """Query what is missing (at most once a second per name). Questions wait
        ASK_DELAY and go out together: the SRV/TXT a PTR answer did not carry are
        usually a few milliseconds behind it, and 200 peers must not mean 200 packets.

        `backoff`: the view's own questions about a name that stays incomplete (a PTR
        whose SRV/TXT never come: a crashed or hostile peer, a TXT too big for any
        packet) come at doubling intervals, 1 s, 2 s, 4 s... up to an hour (RFC 6762
        §5.2), not once a second for the PTR's 75 minutes from every agent."""
        key = full.lower()
        last = self._asked.get(key, 0)
        gap = self._ask_gap.get(key, 1000) if backoff else 1000
        if not force and now - last < gap:
            return
        self._asked[key] = now
        if backoff and not force:
            self._ask_gap[key] = min(2 * gap, MAX_ASK_GAP) if key in self._ask_gap else 1000
        self._to_ask[full] = force
        if self._ask_timer is None:
            self._ask_timer = asyncio.get_running_loop().call_later(ASK_DELAY, self._send_asks)

    def _send_asks(self) -> None:
        self._ask_timer = None
        pending, self._to_ask = self._to_ask, {}
        now = current_time_millis()
        out = DNSOutgoing(0)
        for full, force in pending.items():
            if not force and self._resolve_from_cache(full, now) is not None:
                continue
            out.add_question(DNSQuestion(full, TYPE_SRV, CLASS_IN | CLASS_UNIQUE))
            out.add_question(DNSQuestion(full, TYPE_TXT, CLASS_IN | CLASS_UNIQUE))
            for srv in _alive(self.zc.cache.async_entries_with_name(full), TYPE_SRV, now):
                out.add_question(DNSQuestion(srv.server, TYPE_A, CLASS_IN | CLASS_UNIQUE))
                out.add_question(DNSQuestion(srv.server, TYPE_AAAA, CLASS_IN | CLASS_UNIQUE))
            if "." in instance_of(full):
                query_single_label(self.zc, instance_of(full), (TYPE_SRV, TYPE_TXT))
            self._schedule(self._ask_gap.get(full.lower(), 1000) / 1000 + 0.1, full.lower())
        if out.questions:
            self.zc.async_send(out)

    def find(self, name: str) -> PeerEvent | None:
        """A peer by name, also when only its SRV/TXT/addresses are cached so far."""
        full = _full(name)
        return self.peers.get(full.lower()) or self._resolve_from_cache(
            full, current_time_millis())

    def ask(self, name: str) -> None:
        """Query the link for one instance (SRV, TXT, addresses)."""
        self._ask(_full(name), current_time_millis())

    def _schedule(self, delay: float, key: str) -> None:
        """Re-evaluate later: an unanswered question must not leave a name pending."""
        loop = asyncio.get_running_loop()

        def again() -> None:
            self._dirty.add(key)
            self.async_update_records_complete()

        loop.call_later(delay, again)

    def refresh(self) -> None:
        """Keep the host records of live peers fresh, so a peer that died without a
        goodbye drops out when its SRV/A expire (RFC 6762 §5.2, §10.5) instead of
        lingering for the 75-minute PTR TTL."""
        now = current_time_millis()
        for key, peer in list(self.peers.items()):
            records = self.zc.cache.async_entries_with_name(_full(peer["name"]))
            srvs = _alive(records, TYPE_SRV, now)
            due = not srvs or any(
                now - r.created > r.ttl * 1000 * REFRESH_AT for r in srvs
            )
            if due:
                self._ask(_full(peer["name"]), now, force=True)
            self._dirty.add(key)
        for key, when in list(self._asked.items()):
            if key not in self._ptr and now - when > MAX_ASK_GAP:
                del self._asked[key]  # asked about by name (find/ask), never heard of
        self._compact_browser()
        self.async_update_records_complete()

    def _compact_browser(self) -> None:
        """python-zeroconf's browser (0.154) marks the PTR refresh of a name that said
        goodbye as cancelled, but leaves it in its heap until it comes due: at 80 % of
        the PTR's 75-minute TTL. Under churn that is every name of the last hour, each
        holding its strings (50 names a second: 180,000). Drop the cancelled ones once
        they outnumber the live ones (the heap is the browser's own list, so it is
        filtered in place; the scheduler skips cancelled entries anyway)."""
        scheduler = getattr(self._browser, "query_scheduler", None)
        heap = getattr(scheduler, "_query_heap", None)
        if not isinstance(heap, list) or len(heap) <= 2 * len(self._ptr) + 64:
            return
        heap[:] = [query for query in heap if not getattr(query, "cancelled", False)]
        heapq.heapify(heap)

    def query_ptr(self, *, known_answers: bool = True) -> None:
        """One PTR query (QU: answers come straight back), listing what we already have
        so responders we heard stay quiet and only the missing ones answer."""
        out = DNSOutgoing(0)
        out.add_question(DNSQuestion(SERVICE_TYPE, TYPE_PTR, CLASS_IN | CLASS_UNIQUE))
        if known_answers:
            now = current_time_millis()
            # A name still incomplete is not listed: its responder then answers again
            # with the SRV/TXT/addresses as additionals (the ones lost last time).
            incomplete = self.pending()
            for ptr in self._ptr.values():
                key = ptr.alias.lower()
                if not ptr.is_expired(now) and key in self.seen and key not in incomplete:
                    out.add_answer_at_time(ptr, now)
        self.zc.async_send(out)

    def pending(self) -> set[str]:
        """Instances heard of but not complete yet (excluded ones do not count)."""
        return {
            key for key in self.seen
            if key not in self.peers and instance_of(key) not in self.exclude
        }


def _current(records: list) -> Any:
    """The record a peer publishes now. Not simply the newest `created`: on a cache-flush
    record python-zeroconf marks the records it replaces to expire in one second by
    setting their `created` to now and their TTL to 1 (RFC 6762 §10.2), so a flushed
    old TXT looks newer than the TXT that flushed it (seen as an `updated` back to the
    previous status during quick status changes)."""
    return max(records, key=lambda r: (r.ttl > 1, r.created))


def _fresh(addrs: list) -> list:
    """Addresses without the ones a cache-flush record replaced: python-zeroconf keeps
    those one more second with TTL 1 (RFC 6762 §10.2), and a peer that moved must be
    tried at its new address at once, not after a connect to the old one fails."""
    current = [a for a in addrs if a.ttl > 1]
    return current or addrs


def _unscoped(peer: PeerEvent) -> bool:
    """Whether a peer lists an IPv6 link-local address without its `%interface`."""
    return any(a.lower().startswith("fe80:") and "%" not in a for a in peer["addresses"])


def _ignore(**_: Any) -> None:
    """AsyncServiceBrowser needs a handler; the view reads the cache instead."""


async def browse_once(
    zc: Zeroconf,
    *,
    timeout: float,
    exclude: set[str] | None = None,
    quiet: float = 0.05,
    quiet_rounds: int = 2,
) -> list[PeerEvent]:
    """Everyone on the link, returned as soon as the link has gone quiet.

    Answers to a query arrive in a burst; lost ones come back only when asked again.
    So: ask, wait until `quiet` passes with no news (repeated copies of records we have
    are not news), ask again listing what we know so only the missing answer, and stop
    after `quiet_rounds` rounds that brought no news and left nothing unresolved (or at
    `timeout`).

    The link's pace is measured, not assumed. Until the first answer each round lasts
    twice the one before (0.1, 0.2, 0.4, 0.8 s), so a silent link is called empty after
    1.5 s: fixed short rounds called a link with a 400 ms round trip (Wi-Fi power save,
    a loaded link) empty while its answers were on the way, and the first unicast
    answer to a new querier also waits for ARP. Once answers come, a round lasts at
    least twice the time the first one took. A name first heard in a later round means
    answers get lost: then LOSSY_ROUNDS more calm rounds are needed, each twice as long
    as the one before (at 20 % loss two short ones often missed a peer).
    """
    view = PeerView(zc, exclude=exclude)
    await view.start(browse=False)
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + timeout
    calm, window = 0, FIRST_WINDOW
    rtt: float | None = None
    answered = lossy = False
    try:
        while loop.time() < deadline:
            if rtt is None:
                needed = quiet_rounds + EMPTY_ROUNDS
            else:
                needed = quiet_rounds + (LOSSY_ROUNDS if lossy else 0)
            if calm >= needed:
                break
            known = len(view.seen)
            view.progress.clear()
            sent = loop.time()
            view.query_ptr()
            if rtt is None:
                horizon = window
            elif lossy:
                # Lost answers are often an ARP or ND exchange lost, which the kernel
                # retries after one second: calm rounds grow so that the last ones
                # span it (50 ms rounds: 1.55 s in all).
                horizon = min(max(quiet, 2 * rtt) * 2**calm, MAX_ROUND)
            else:
                horizon = max(quiet, 2 * rtt)
            news, heard = await _until_quiet(view, quiet, deadline, until=sent + horizon)
            if rtt is None and heard is not None:
                rtt = min(heard - start, MAX_RTT)
            window *= 2
            new_names = len(view.seen) > known
            lossy = lossy or (new_names and answered)
            answered = answered or new_names
            calm = 0 if news or view.pending() else calm + 1
    finally:
        await view.stop()
    return sorted(view.peers.values(), key=lambda p: p["name"].lower())


async def _until_quiet(view: PeerView, quiet: float, deadline: float,
                       until: float = 0.0) -> tuple[bool, float | None]:
    """Wait until `until` has passed and then `quiet` seconds without news (or the
    deadline). Returns whether any news came and, if the view knew no name on entry,
    when it first heard one (the round then ends `quiet` after the news stops)."""
    loop = asyncio.get_running_loop()
    news = False
    first: float | None = None
    empty = not view.seen
    while True:
        now = loop.time()
        remaining = deadline - now
        if remaining <= 0:
            return news, first
        try:
            await asyncio.wait_for(view.progress.wait(), min(max(quiet, until - now), remaining))
        except TimeoutError:
            if loop.time() >= until:
                return news, first
            continue
        news = True
        view.progress.clear()
        if empty and first is None and view.seen:
            first = loop.time()
            until = min(until, first + quiet)


async def wait_for_peer(view: PeerView, name: str, timeout: float) -> PeerEvent | None:
    """The peer `name` once it resolves, asking the link twice a second; None when it
    has not appeared within `timeout`.

    `find` reads the cache directly, so it can see a peer whose fe80:: address came
    over IPv4 (no scope: connect() fails with EINVAL) before the IPv6 copy with the
    scope: such a peer gets SCOPE_WAIT more, as the view's own events do."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    asked = -1.0
    scoped_by: float | None = None
    while True:
        peer = view.find(name)
        now = loop.time()
        if peer is not None and _unscoped(peer):
            scoped_by = scoped_by or now + SCOPE_WAIT
            if now < scoped_by and now < deadline:
                view.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(view.changed.wait(), scoped_by - now)
                continue
        if peer is not None or now >= deadline:
            return peer
        if now - asked >= 0.5:
            view.ask(name)
            asked = now
        view.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(view.changed.wait(), min(0.5, deadline - now))
