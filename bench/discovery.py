#!/usr/bin/env python3
"""Discovery benchmark on the virtual LAN: how fast peers see each other.

    sudo .venv/bin/python bench/discovery.py [--runs 5] [--json]

Builds its own LANs of network namespaces (tests/lan.py; needs root), runs every
command as a real subprocess inside a host, and prints one table row per measurement:
median, min and max over `--runs` runs. Timestamps are CLOCK_MONOTONIC, which every
namespace shares, taken when a line is read from a process's output (or, for the
sniffer, when its datagram arrives). Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from common import StampedLines, print_table  # noqa: E402
from lan import Host, Lan  # noqa: E402

PUBLISH_MANY = ROOT / "tests" / "helpers" / "publish_many.py"
PY = sys.executable

# Stamps every mDNS datagram seen on this host (own multicast included: loopback is on),
# bound to the group address so it never takes a unicast answer meant for an agent.
SNIFF = r"""
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("224.0.0.251", 5353))
mreq = socket.inet_aton("224.0.0.251") + socket.inet_aton("0.0.0.0")
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(9000)
    print(time.monotonic(), data.hex(), flush=True)
"""


@dataclass
class Row:
    what: str
    target: str = ""
    times: list[float] = field(default_factory=list)
    found: list[int] = field(default_factory=list)
    expected: int | None = None
    note: str = ""

    def cells(self) -> list[str]:
        if self.times:
            med = statistics.median(self.times)
            timing = [f"{ms(med)} ms", ms(min(self.times)), ms(max(self.times))]
        else:
            timing = ["-", "-", "-"]
        complete = "-"
        if self.expected is not None and self.found:
            whole = sum(f == self.expected for f in self.found)
            complete = f"{whole}/{len(self.found)} runs ({min(self.found)}/{self.expected} min)"
        return [self.what, *timing, str(len(self.times)), complete, self.target, self.note]

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "times_s": self.times, "found": self.found,
                "expected": self.expected, "target": self.target, "note": self.note,
                "median_s": statistics.median(self.times) if self.times else None}


def ms(seconds: float) -> str:
    """Milliseconds, with a decimal below 10 ms where whole numbers say nothing."""
    return f"{seconds * 1000:.1f}" if abs(seconds) < 0.01 else f"{seconds * 1000:.0f}"


def timed_run(host: Host, argv: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.monotonic()
    done = host.run(argv, timeout=60)
    return time.monotonic() - start, done


def start_publishers(lan: Lan, hosts: list[Host], per_host: int) -> None:
    procs = [h.popen([PY, str(PUBLISH_MANY), str(per_host)]) for h in hosts]
    for proc in procs:
        line = proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"publish_many failed: {line!r} {proc.stderr.read()}")


def bench_floor(runs: int) -> list[Row]:
    rows = [Row("spawn floor: python3 -c pass (in a host)"),
            Row("spawn: python3 -c 'import zeroconf'"),
            Row("spawn: xmppll --version")]
    with Lan(1) as lan:
        h = lan[0]
        for _ in range(runs):
            rows[0].times.append(timed_run(h, [PY, "-c", "pass"])[0])
            rows[1].times.append(timed_run(h, [PY, "-c", "import zeroconf.asyncio"])[0])
            rows[2].times.append(timed_run(h, [PY, "-m", "xmppll", "--version"])[0])
    return rows


def bench_browse(runs: int, total: int, hosts: int) -> list[Row]:
    per_host = total // hosts
    row = Row(f"one-shot browse --no-agent, {total} peer{'s' * (total > 1)} on {hosts} "
              f"host{'s' * (hosts > 1)}", "50: <= 400 ms, 100 %" if total == 50 else "",
              expected=total)
    agent_row = Row(f"browse through a running agent, {total} peers", expected=total)
    with Lan(hosts + 1) as lan:
        browser, publishers = lan[0], lan.hosts[1:]
        start_publishers(lan, publishers, per_host)
        argv = [PY, "-m", "xmppll", "browse", "--no-agent", "--json"]
        for _ in range(runs):
            elapsed, done = timed_run(browser, argv)
            row.times.append(elapsed)
            row.found.append(len(done.stdout.splitlines()))
        if total < 50:
            return [row]
        agent = browser.popen([PY, "-m", "xmppll", "announce", "--json", "bench@h1"])
        StampedLines(agent.stdout).find_json(lambda r: r["event"] == "announced", 15)
        argv = [PY, "-m", "xmppll", "browse", "--json"]
        deadline = time.monotonic() + 15
        while len(browser.run(argv).stdout.splitlines()) < total:
            if time.monotonic() > deadline:
                break
        for _ in range(runs):
            elapsed, done = timed_run(browser, argv)
            agent_row.times.append(elapsed)
            agent_row.found.append(len(done.stdout.splitlines()))
    return [row, agent_row]


def bench_announce(runs: int) -> list[Row]:
    visible = Row("announce spawn -> `added` on a follower (other host)", "<= 1000 ms")
    own = Row("announce spawn -> its own `announced` event")
    with Lan(2) as lan:
        a, b = lan
        follower = StampedLines(
            b.popen([PY, "-m", "xmppll", "browse", "--follow", "--json"]).stdout)
        time.sleep(0.5)  # let the follower's start-up queries pass; not a correctness wait
        for i in range(runs):
            name = f"bench{i}@h1"
            start = time.monotonic()
            agent = a.popen([PY, "-m", "xmppll", "announce", "--json", name])
            out = StampedLines(agent.stdout)
            seen, _, _ = follower.find_json(
                lambda r, n=name: r["event"] == "added" and r["name"] == n, 15)
            mine, _, _ = out.find_json(lambda r: r["event"] == "announced", 15)
            visible.times.append(seen - start)
            own.times.append(mine - start)
            agent.terminate()
            agent.wait(10)
            follower.find_json(lambda r, n=name: r["event"] == "removed" and r["name"] == n, 15)
    return [visible, own]


def bench_status(runs: int) -> list[Row]:
    wire = Row("status: TXT update on the wire -> `updated` on a follower", "<= 100 ms",
               note="datagram stamped by a sniffer on the agent's host")
    spawn = Row("status: `xmppll status away` spawn -> `updated` on a follower")
    command = Row("status: the `xmppll status` command itself (wall)",
                  note="returns after all 3 announcements")
    with Lan(2) as lan:
        a, b = lan
        agent = a.popen([PY, "-m", "xmppll", "announce", "--json", "bench@h1"])
        StampedLines(agent.stdout).find_json(lambda r: r["event"] == "announced", 15)
        sniffer = StampedLines(a.popen([PY, "-c", SNIFF]).stdout)
        sniffer.find(lambda line: line == "ready", 10)
        follower = StampedLines(
            b.popen([PY, "-m", "xmppll", "browse", "--follow", "--json"]).stdout)
        _, _, seen_at = follower.find_json(
            lambda r: r["event"] == "added" and r["name"] == "bench@h1", 15)
        sniffed_at = len(sniffer.lines)
        for i in range(runs):
            msg = f"bench-status-{i}"
            start = time.monotonic()
            elapsed, done = timed_run(a, [PY, "-m", "xmppll", "status", ("away", "avail")[i % 2],
                                          "--msg", msg])
            if done.returncode:
                raise RuntimeError(done.stderr)
            updated, _, seen_at = follower.find_json(
                lambda r, m=msg: r["event"] == "updated" and r["msg"] == m, 15, seen_at)
            needle = f"msg={msg}".encode().hex()
            _, line, sniffed_at = sniffer.find(lambda s, n=needle: n in s, 15, sniffed_at)
            on_wire = float(line.split()[0])
            wire.times.append(updated - on_wire)
            spawn.times.append(updated - start)
            command.times.append(elapsed)
    return [wire, spawn, command]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per measurement (>= 5)")
    parser.add_argument("--json", action="store_true", help="JSON Lines instead of a table")
    args = parser.parse_args()
    rows = bench_floor(args.runs)
    rows += bench_browse(args.runs, 1, 1)
    rows += bench_browse(args.runs, 50, 2)
    rows += bench_browse(args.runs, 200, 4)
    rows += bench_announce(args.runs)
    rows += bench_status(args.runs)
    if args.json:
        for row in rows:
            print(json.dumps(row.to_json()))
    else:
        print_table(["measurement", "median", "min", "max", "runs", "complete", "target",
                     "note"], rows)


if __name__ == "__main__":
    main()
