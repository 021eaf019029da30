#!/usr/bin/env python3
"""Messaging benchmark on the virtual LAN: send latency, inbox throughput, agent memory.

    sudo .venv/bin/python bench/messaging.py [--runs 7] [--messages 10000] [--json]

Builds its own LAN of network namespaces (tests/lan.py; needs root) and runs every
command as a real subprocess inside a host:

- `xmppll send` end to end (process start to exit, as the shell sees it) to a peer
  already published, standalone (no agent on the sender's host: it resolves over mDNS,
  connects, and waits for the peer's closing tag) and through a running agent (one
  control round trip; the agent reuses its stream and waits for the receipt), beside
  the spawn floor of `python3 -c pass` in the same host;
- the agent's inbox throughput: tests/helpers/raw_peer.py on another host sends N
  messages over one stream, or spread over 100 concurrent streams, closes, and stops
  the clock when the agent's closing tag arrives. The agent sends it only once every
  stanza it read is fsync'd in the inbox, so the rate counts stored stanzas (checked
  against the inbox's line count after each run);
- the agent's peak RSS (VmHWM in /proc/<pid>/status), idle and after each flood; one
  fresh agent per flood shape, so each peak belongs to one shape (a third shape, 3x the
  messages over 100 streams, shows how the peak follows the stanzas in flight).

Each row is the median, min and max of `--runs` runs. Speed is measured here, never
asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from common import print_table  # noqa: E402
from lan import Host, Lan, Lines  # noqa: E402

RAW_PEER = str(ROOT / "tests" / "helpers" / "raw_peer.py")
PY = sys.executable


@dataclass
class Row:
    what: str
    unit: str  # "ms", "stanzas/s" or "MB"
    target: str = ""
    values: list[float] = field(default_factory=list)
    note: str = ""

    def cells(self) -> list[str]:
        if not self.values:
            return [self.what, "-", "-", "-", "0", self.target, self.note]
        shown = [fmt(v, self.unit) for v in
                 (statistics.median(self.values), min(self.values), max(self.values))]
        return [self.what, f"{shown[0]} {self.unit}", shown[1], shown[2],
                str(len(self.values)), self.target, self.note]

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "unit": self.unit, "values": self.values,
                "median": statistics.median(self.values) if self.values else None,
                "target": self.target, "note": self.note}


def fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.1f}" if value < 10 else f"{value:.0f}"
    if unit == "MB":
        return f"{value:.1f}"
    return f"{value:,.0f}"


def timed(host: Host, argv: list[str]) -> float:
    """Wall seconds of one command in `host`, from spawn to exit; fails loudly."""
    start = time.monotonic()
    done = host.run(argv, timeout=60)
    elapsed = time.monotonic() - start
    if done.returncode:
        raise RuntimeError(f"{argv[-3:]} exited {done.returncode}: {done.stderr.strip()}")
    return elapsed


def start_agent(host: Host, name: str) -> tuple[subprocess.Popen[Any], int, Lines]:
    proc = host.xmppll_popen("announce", "--json", name)
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    event = out.wait_json(lambda r: r["event"] == "announced", 20)
    return proc, event["port"], err


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (the peak) of a process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def inbox_lines(host: Host, name: str) -> int:
    path = Path(host.env["XDG_STATE_HOME"]) / "xmppll" / name / "inbox.jsonl"
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


def wait_seen(host: Host, agent: str, peer: str, timeout: float = 10) -> None:
    code = ("import sys; from xmppll.agent import control; "
            "sys.exit(sys.argv[2] not in [p['name'] for p in "
            "control.request(sys.argv[1], 'peers')['peers']])")
    deadline = time.monotonic() + timeout
    while host.run([PY, "-c", code, agent, peer], timeout=10).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{agent} never saw {peer}")
        time.sleep(0.1)


def bench_send(lan: Lan, runs: int) -> list[Row]:
    a, b, c = lan[0], lan[1], lan[2]
    floor = Row("spawn floor: python3 -c pass (in a host)", "ms")
    version = Row("spawn: xmppll --version", "ms")
    standalone = Row("send, standalone, to a published peer (start to exit)", "ms",
                     "< 400 ms", note="resolve + stream + peer's close after fsync")
    via_agent = Row("send through the sender's agent (start to exit)", "ms",
                    note="control round trip; reused stream, receipt after fsync")
    start_agent(b, "tester@h2")  # the receiver, `--verify mark`: any sender is taken
    start_agent(a, "tester@h1")  # h1 sends through its agent; h3 has none: standalone
    wait_seen(a, "tester@h1", "tester@h2")
    send = [PY, "-m", "xmppll", "send", "tester@h2"]
    timed(c, [*send, "warm-up"])  # the first run pays for cold page cache
    timed(a, [*send, "warm-up"])
    for i in range(runs):
        floor.values.append(timed(c, [PY, "-c", "pass"]) * 1000)
        version.values.append(timed(c, [PY, "-m", "xmppll", "--version"]) * 1000)
        standalone.values.append(timed(c, [*send, f"bench {i}"]) * 1000)
        via_agent.values.append(timed(a, [*send, f"bench {i}"]) * 1000)
    return [floor, version, standalone, via_agent]


def bench_flood(lan: Lan, runs: int, messages: int, streams: int, name: str) -> list[Row]:
    """`messages` stanzas over `streams` concurrent streams from h3 into a fresh agent."""
    b, c = lan[1], lan[2]
    shape = "one stream" if streams == 1 else f"{streams} concurrent streams"
    rate = Row(f"agent inbox: {messages:,} messages over {shape}", "stanzas/s",
               ">= 5,000 stanzas/s" if streams == 1 else "",
               note="until the agent's closing tag: all fsync'd")
    peak = Row(f"agent peak RSS (VmHWM), {messages:,} messages over {shape}", "MB",
               "< 80 MB" if streams >= 100 and messages <= 10000 else "")
    proc, port, err = start_agent(b, name)
    idle = memory_mb(proc.pid)
    before = 0
    for i in range(runs):
        done = c.run([PY, RAW_PEER, "flood", b.ipv4, str(port), "--count", str(messages),
                      "--streams", str(streams), "--body", f"bench {i}"], timeout=300)
        if done.returncode:
            raise RuntimeError(f"flood failed: {done.stderr.strip()} {err.lines[-5:]}")
        result = json.loads(done.stdout)
        stored = inbox_lines(b, name)
        if stored - before != messages:
            raise RuntimeError(f"run {i}: {stored - before} stanzas stored, not {messages}")
        before = stored
        rate.values.append(messages / result["seconds"])
        peak.values.append(memory_mb(proc.pid)["VmHWM"])
    peak.note = f"idle: {idle['VmRSS']:.1f} MB"
    proc.terminate()
    proc.wait(10)
    return [rate, peak]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per measurement (>= 7)")
    parser.add_argument("--messages", type=int, default=10000,
                        help="messages per throughput run")
    parser.add_argument("--json", action="store_true", help="JSON Lines instead of a table")
    args = parser.parse_args()
    with Lan(3) as lan:
        rows = bench_send(lan, args.runs)
        rows += bench_flood(lan, args.runs, args.messages, 1, "one@h2")
        rows += bench_flood(lan, args.runs, args.messages, 100, "hundred@h2")
        # The agent reads on while the previous batch is being fsync'd: what it holds is
        # the stanzas in flight, so the peak grows with the flood, not the stream count.
        rows += bench_flood(lan, min(args.runs, 3), 3 * args.messages, 100, "big@h2")[1:]
    if args.json:
        for row in rows:
            print(json.dumps(row.to_json()))
    else:
        # Every number here moves with the machine's load: say what it was.
        load = os.getloadavg()
        print(f"# {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} "
              f"{load[2]:.2f} at the end")
        print_table(["measurement", "median", "min", "max", "runs", "target", "note"], rows)


if __name__ == "__main__":
    main()
