#!/usr/bin/env python3
"""Many sends to one peer: in parallel against one after the other, in one run.

    sudo .venv/bin/python bench/parallel.py [--messages 200] [--runs 3]

Builds its own LAN of network namespaces (tests/lan.py; needs root): an xmppll agent
(the sender) on h1, finch (libpurple) with avahi-daemon on h2, an xmppll agent with
`listen` on h3. For each receiver it times N `xmppll send` processes through the
sender's agent, all started at once (the agent queues them on the peer's one
connection), and the same N one after the other; it counts what arrived (finch's
ReceivedImMsg signals, the listener's lines) and reports messages/s. Speed is measured
here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from common import print_table, wait_until  # noqa: E402
from lan import Host, Lan, Lines  # noqa: E402
from peers import AvahiDaemon, Finch  # noqa: E402
from xmppll_side import listen, start_agent, stop_gently  # noqa: E402


@dataclass
class Row:
    what: str
    seconds: list[float] = field(default_factory=list)
    arrived: list[int] = field(default_factory=list)
    messages: int = 0

    def cells(self) -> list[str]:
        median = statistics.median(self.seconds)
        rate = self.messages / median if median else 0
        return [self.what, f"{median:.2f}", f"{min(self.seconds):.2f}-{max(self.seconds):.2f}",
                f"{rate:.0f}", f"{min(self.arrived)}/{self.messages}"]


def in_parallel(host: Host, to: str, tag: str, n: int) -> float:
    start = time.monotonic()
    procs = [host.xmppll_popen("send", to, f"{tag} {i}") for i in range(n)]
    failed = sum(proc.wait(300) != 0 for proc in procs)
    took = time.monotonic() - start
    if failed:
        print(f"  {failed} of {n} parallel sends to {to} failed", file=sys.stderr)
    return took


def in_sequence(host: Host, to: str, tag: str, n: int) -> float:
    start = time.monotonic()
    failed = 0
    for i in range(n):
        failed += host.xmppll("send", to, f"{tag} {i}", timeout=60).returncode != 0
    took = time.monotonic() - start
    if failed:
        print(f"  {failed} of {n} sequential sends to {to} failed", file=sys.stderr)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    n = args.messages
    with Lan(3) as lan:
        h1, h2, h3 = lan.hosts
        sender = start_agent(h1, "juliet@h1")
        receiver = start_agent(h3, "ops@h3")
        avahi = AvahiDaemon(h2)
        finch = Finch(h2, avahi)
        proc, inbox, _err = listen(h3)
        try:
            wait_until(lambda: finch.buddy_online(sender.name), 15, "finch to see juliet@h1")
            rows = {key: Row(what, messages=n) for key, what in (
                ("lp-par", f"{n} to libpurple, in parallel"),
                ("lp-seq", f"{n} to libpurple, one after the other"),
                ("x-par", f"{n} to an xmppll agent, in parallel"),
                ("x-seq", f"{n} to an xmppll agent, one after the other"))}
            for _ in range(args.runs):
                for key, to, how in (("lp-par", finch.name, in_parallel),
                                     ("lp-seq", finch.name, in_sequence),
                                     ("x-par", receiver.name, in_parallel),
                                     ("x-seq", receiver.name, in_sequence)):
                    tag = f"b{random.randrange(10**6)}"
                    rows[key].seconds.append(how(h1, to, tag, n))
                    rows[key].arrived.append(_arrived(finch, inbox, to == finch.name, tag, n))
        finally:
            stop_gently(proc)
            finch.stop()
            avahi.stop()
    print(f"python3 -c pass in a host is the floor of each process; {args.runs} runs")
    print_table(["what", "median s", "min-max s", "msgs/s", "arrived (worst run)"],
                list(rows.values()))


def _arrived(finch: Finch, inbox: Lines, to_finch: bool, tag: str, n: int) -> int:
    """How many of the run's messages the receiver shows, waiting a little for the
    last ones."""
    def count() -> int:
        if to_finch:
            return len({m for _, m in finch.received() if m.startswith(tag + " ")})
        return sum(1 for line in inbox.lines if f'"{tag} ' in line)
    deadline = time.monotonic() + 10
    while count() < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return count()


if __name__ == "__main__":
    main()
