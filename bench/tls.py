#!/usr/bin/env python3
"""What STARTTLS costs (issue 13), plain against TLS in one run, in process over loopback.

    .venv/bin/python bench/tls.py [--streams 300] [--messages 5000] [--runs 5]

Two hubs of xmppll (the agent's Hub, dispatch and delivery), each with its own key, on
127.0.0.1 with a table of names standing in for discovery (no mDNS, no root):

- per stream: `Hub.dial` until the stream is usable, then its close; plain (headers and
  features) against TLS (features, <starttls/>, <proceed/>, a TLS 1.3 handshake in
  which both keys are proven, the restart). The STARTTLS cost is the difference of the
  medians. Target: <= 3 ms per handshake.
- messages/s over one stream, already open: N messages written one by one as delivery
  writes them (each `Connection.send` queues its stanza on the connection's ordered
  write path, which hands the transport what a loop turn queued, at most 16 KiB, in one
  write, and waits when the transport is full), until the receiver has dispatched the
  last; the receiver's store is a no-op so the stream,
  the parser and TLS are what is measured, not the disk. And the same through
  `Delivery.send` with XEP-0184 receipts to a real inbox (fsync'd), the agent's path.
  Target: TLS >= 0.8x plain.

Each cell is the median (min-max) of --runs runs, plain and TLS alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import print_table  # noqa: E402
from test_connections import LOOP  # noqa: E402
from test_tls import PinNames as Names  # noqa: E402 (the tests' directory stand-in)

from xmppll.agent.inbox import Inbox  # noqa: E402
from xmppll.agent.store import InboxStore  # noqa: E402
from xmppll.xmpp import stanza as st  # noqa: E402
from xmppll.xmpp import tls  # noqa: E402
from xmppll.xmpp.caps import CAPS_NODE, caps_ver  # noqa: E402
from xmppll.xmpp.delivery import Delivery, Hooks, PeerInfo  # noqa: E402
from xmppll.xmpp.disco import Disco  # noqa: E402
from xmppll.xmpp.dispatch import Dispatcher  # noqa: E402
from xmppll.xmpp.hub import Hub, bind_port  # noqa: E402
from xmppll.xmpp.receipts import Receipts  # noqa: E402

CAPS = {"node": CAPS_NODE, "hash": "sha-1", "ver": caps_ver()}


class NullStore:
    """Counts what is dispatched; stores nothing."""

    def __init__(self) -> None:
        self.count = 0
        self.event = asyncio.Event()
        self.want = 0

    def submit(self, record: dict[str, Any], key: Any) -> asyncio.Future:
        self.count += 1
        if self.count >= self.want:
            self.event.set()
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    def unstored(self) -> int:
        return 0


class Side:
    def __init__(self, name: str, names: Names, state: Path, policy: str,
                 store: str = "null") -> None:
        creds = tls.Credentials.load_or_create(state / "tls", name)
        self.name = name
        self.inbox = Inbox(state) if store == "inbox" else None
        self.store: Any = InboxStore(self.inbox) if self.inbox else NullStore()
        self.dispatcher = Dispatcher(self.store, lambda: name)
        receipts, disco = Receipts(self.dispatcher), Disco(self.dispatcher)
        self.hub = Hub(me=lambda: name, peers=names, dispatcher=self.dispatcher,
                       tls=tls.Tls(policy, creds if policy != "off" else None,
                                   tls.KnownPeers(state / "known_peers")))
        self.delivery = Delivery(self.hub, receipts, disco, Hooks(
            resolve=names.resolve, stale=lambda n: None, sources=lambda peer: None, idle=60))
        self.socks = bind_port(0, given=False)
        port = self.socks[0].getsockname()[1]
        names.table[name.lower()] = PeerInfo(name, [LOOP], port, CAPS,
                                             pin=creds.pin if policy != "off" else None)

    async def start(self) -> Side:
        await self.hub.serve(self.socks)
        return self

    async def close(self) -> None:
        await self.hub.close()
        for sock in self.socks:
            sock.close()
        if self.inbox:
            self.inbox.close()


async def pair(tmp: Path, policy: str, store: str = "null") -> tuple[Side, Side, Names]:
    names = Names()
    a = await Side("a@h1", names, tmp / f"a-{policy}-{store}", policy, store).start()
    b = await Side("b@h2", names, tmp / f"b-{policy}-{store}", policy, store).start()
    return a, b, names


async def streams(tmp: Path, policy: str, count: int) -> list[float]:
    """ms from dial to a usable stream, `count` times, each closed before the next."""
    a, b, names = await pair(tmp, policy)
    target = names.table["b@h2"].target
    out = []
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            conn = await a.hub.dial(target, timeout=5, sources=None)
            out.append((time.perf_counter() - t0) * 1000)
            assert conn.secure == (policy != "off")
            await conn.close_politely()
    finally:
        await a.close()
        await b.close()
    return out


async def one_stream(tmp: Path, policy: str, count: int) -> float:
    """messages/s written one by one on one open stream until all are dispatched."""
    a, b, names = await pair(tmp, policy)
    try:
        conn = await a.hub.dial(names.table["b@h2"].target, timeout=5, sources=None)
        b.store.want = count
        body = "build 42 failed: " + "x" * 100
        t0 = time.perf_counter()
        for i in range(count):
            await conn.send([st.message_from_json({"to": "b@h2", "body": body, "id": f"m{i}"},
                                                  from_="a@h1")])
        await asyncio.wait_for(b.store.event.wait(), 60)
        return count / (time.perf_counter() - t0)
    finally:
        await a.close()
        await b.close()


async def delivered(tmp: Path, policy: str, count: int) -> float:
    """messages/s through Delivery.send with receipts into a real inbox (one stream)."""
    a, b, _ = await pair(tmp, policy, store="inbox")
    try:
        await a.delivery.send({"to": "b@h2", "body": "warm-up"}, timeout=10)
        t0 = time.perf_counter()
        await asyncio.gather(*(a.delivery.send({"to": "b@h2", "body": f"m {i}"}, timeout=60)
                               for i in range(count)))
        rate = count / (time.perf_counter() - t0)
        assert a.hub.dialled + b.hub.dialled == 1, "one stream"
        return rate
    finally:
        await a.close()
        await b.close()


@dataclass
class Row:
    what: str
    unit: str
    target: str = ""
    values: dict[str, list[float]] = field(default_factory=lambda: {"off": [], "prefer": []})
    derived: str = ""

    def cell(self, policy: str) -> str:
        v = self.values[policy]
        fmt = "{:.2f}" if self.unit == "ms" else "{:.0f}"
        return (f"{fmt.format(statistics.median(v))} ({fmt.format(min(v))}-"
                f"{fmt.format(max(v))})")

    def cells(self) -> list[str]:
        return [self.what, self.unit, self.cell("off"), self.cell("prefer"), self.derived,
                self.target]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    stream_row = Row("stream open (dial to usable)", "ms", "STARTTLS <= 3 ms")
    raw_row = Row(f"{args.messages} messages, one stream", "msg/s", "TLS >= 0.8x plain")
    deliv_row = Row(f"{args.messages // 5} messages, delivery+receipts+inbox", "msg/s",
                    "TLS >= 0.8x plain")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for run in range(args.runs):
            for policy in ("off", "prefer") if run % 2 == 0 else ("prefer", "off"):
                times = asyncio.run(streams(tmp, policy, args.streams))
                stream_row.values[policy].append(statistics.median(times))
                raw_row.values[policy].append(
                    asyncio.run(one_stream(tmp, policy, args.messages)))
                deliv_row.values[policy].append(
                    asyncio.run(delivered(tmp / f"r{run}", policy, args.messages // 5)))
    med = {row.what: {p: statistics.median(v) for p, v in row.values.items()}
           for row in (stream_row, raw_row, deliv_row)}
    m = med[stream_row.what]
    stream_row.derived = f"+{m['prefer'] - m['off']:.2f} ms STARTTLS"
    for row in (raw_row, deliv_row):
        m = med[row.what]
        row.derived = f"{m['prefer'] / m['off']:.2f}x plain"
    load = os.getloadavg()
    print(f"# bench/tls.py: {os.cpu_count()} CPUs, load {load[0]:.2f} {load[1]:.2f}, "
          f"{args.runs} runs, median (min-max) of per-run medians; TLS 1.3, P-256, both "
          "keys proven")
    print_table(["what", "unit", "plain", "TLS", "TLS vs plain", "target"],
                [stream_row, raw_row, deliv_row])


if __name__ == "__main__":
    main()
