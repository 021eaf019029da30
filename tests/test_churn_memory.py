"""Issue 14: state that grows with every name ever seen is a leak under churn.

In process, no root, no packets: records go straight into a real zeroconf DNSCache and
the PeerView's listener calls, as python-zeroconf's record manager makes them.
"""

from __future__ import annotations

import asyncio
import heapq
from types import SimpleNamespace

from zeroconf import (
    DNSAddress,
    DNSCache,
    DNSPointer,
    DNSService,
    DNSText,
    RecordUpdate,
    current_time_millis,
)

from xmppll.discovery.mdns.link import SERVICE_TYPE
from xmppll.discovery.mdns.peers import PeerView

TXT = b"\x09txtvers=1\x0cstatus=avail"


class FakeZc:
    def __init__(self) -> None:
        self.cache = DNSCache()
        self.sent = 0

    def async_send(self, out: object) -> None:
        self.sent += 1


def _records(name: str, ttl: int) -> list:
    full = f"{name}.{SERVICE_TYPE}"
    return [DNSPointer(SERVICE_TYPE, 12, 1, ttl, full),
            DNSService(full, 33, 0x8001, ttl, 0, 0, 5298, "h2.local."),
            DNSText(full, 16, 0x8001, ttl, TXT)]


def _arrive(view: PeerView, zc: FakeZc, records: list) -> None:
    now = current_time_millis()
    updates = [RecordUpdate(r, zc.cache.async_get_unique(r)) for r in records]
    view.async_update_records(zc, now, updates)  # type: ignore[arg-type]
    zc.cache.async_add_records(records)
    view.async_update_records_complete()


def _leave(view: PeerView, zc: FakeZc, name: str) -> None:
    """A goodbye: TTL 0 records, already expired, removed from the cache."""
    now = current_time_millis()
    live = _records(name, 4500)
    gone = _records(name, 0)
    updates = [RecordUpdate(g, old) for g, old in zip(gone, live, strict=True)]
    view.async_update_records(zc, now, updates)  # type: ignore[arg-type]
    zc.cache.async_remove_records(live)
    view.async_update_records_complete()


def test_peer_view_holds_only_live_names_after_10000_come_and_go() -> None:
    async def main() -> PeerView:
        zc = FakeZc()
        events: list[str] = []
        view = PeerView(zc, on_event=lambda e: events.append(e["event"]))  # type: ignore[arg-type]
        _arrive(view, zc, [DNSAddress("h2.local.", 1, 0x8001, 120, bytes([10, 0, 0, 2]))])
        for i in range(10_000):
            _arrive(view, zc, _records(f"churn{i}@h2", 4500))
            if i >= 50:
                _leave(view, zc, f"churn{i - 50}@h2")
        view.refresh()
        assert events.count("added") == 10_000 and events.count("removed") == 9_950
        return view

    view = asyncio.run(main())
    assert len(view.peers) == 50
    for name in ("seen", "_ptr", "_server_of", "_asked", "_ask_gap", "_held", "_dirty"):
        assert len(getattr(view, name)) <= 50, name
    assert sum(len(v) for v in view._by_server.values()) == 50


def test_cancelled_browser_refreshes_are_dropped() -> None:
    """python-zeroconf keeps a goodbye's cancelled PTR refresh in its heap for an hour."""
    class Q(SimpleNamespace):
        def __lt__(self, other: Q) -> bool:
            return self.when < other.when

    heap = [Q(when=1000 - i, cancelled=i % 10 != 0) for i in range(1000)]
    heapq.heapify(heap)

    async def main() -> None:
        view = PeerView(FakeZc())  # type: ignore[arg-type]
        view._browser = SimpleNamespace(query_scheduler=SimpleNamespace(_query_heap=heap))  # type: ignore[assignment]
        view.refresh()

    asyncio.run(main())
    assert len(heap) == 100 and not any(q.cancelled for q in heap)
    assert heap[0].when == min(q.when for q in heap)


def test_dedupe_window_is_bounded_in_time_too(tmp_path) -> None:
    """A steady 10 messages/s filled the 10,000-entry window for 17 minutes (~2 MB of
    growth in the soak); entries older than WINDOW_AGE now go, repeats still count."""
    from xmppll.agent.inbox import Inbox
    from xmppll.agent.store import InboxStore

    clock = [0.0]

    async def main() -> InboxStore:
        store = InboxStore(Inbox(tmp_path), age=60.0, clock=lambda: clock[0])
        for i in range(3000):  # 10 a second for 300 s
            clock[0] = i / 10
            record = {"kind": "message", "from": "a@h", "id": f"m{i}", "body": "x"}
            await store.submit(record, ("a@h", f"m{i}"))
        again = {"kind": "message", "from": "a@h", "id": "m2999", "body": "x"}
        await store.submit(again, ("a@h", "m2999"))
        return store

    store = asyncio.run(main())
    assert store.repeats == 1
    assert 590 <= len(store.recent) <= 601 and len(store._since) == len(store.recent)
