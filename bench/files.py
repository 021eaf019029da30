#!/usr/bin/env python3
"""A large file between two xmppll agents (SI + SOCKS5 and OOB over HTTP) against a raw
TCP copy of the same file between the same two hosts, in one run.

    sudo .venv/bin/python bench/files.py [--size-mb 1024] [--runs 5] [--to DIR]

Builds its own LAN of network namespaces (tests/lan.py; needs root): the receiving
agent `alice@h1` (`--accept-files always`) and the sending agent `bob@h2`, both with
`--tls off`, and the same two with their keys (`alice-tls@h1`, `bob-tls@h2`: the file
goes inside TLS, issue 13). Each run times, from process spawn:
- `raw`: a Python receiver already listening on h1 (recv_into a 1 MiB buffer, write,
  fsync: what the agent does, without the hash) and a sender spawned on h2
  (sendfile), until the receiver has fsync'd;
- `si` and `oob`: `xmppll send alice@h1 --file F --method M` on h2 (through bob's
  agent) until it exits: it succeeds only once alice has every byte stored and
  fsync'd (S5B: her close after the fsync; OOB: her iq result after it);
- the same, until alice's inbox says `received`: that record carries the file's
  SHA-256, which she computes after answering the sender;
- `si`/`oob` over TLS: the send between the agents with keys, until it exits.
Both receivers write under h1's home (on disk: the fsync of 1 GiB is most of the time
and varies with the machine's other I/O), or under `--to DIR` (/dev/shm takes the disk
out and leaves the network and CPU). Throughput is size / median time; the ratio is
against `raw`. The agents' peak RSS is
VmHWM from /proc/<pid>/status, read after all runs (the peak over their whole life).
Targets (issue 11): ratio >= 0.8, peak RSS <= 60 MB. Each transfer is bounded by a
timeout; the received copies are deleted after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import lan  # noqa: E402
from common import print_table  # noqa: E402
from lan import Host, Lan  # noqa: E402
from xmppll_side import Agent, start_agent, stop_gently  # noqa: E402

PORT = 47001
TIMEOUT = 120.0  # s, bound on one transfer
RATIO_TARGET = 0.8
RSS_TARGET_MB = 60.0

RECEIVER = r"""
import os, socket, sys, time
srv = socket.create_server(("0.0.0.0", int(sys.argv[2])))
print("listening", flush=True)
conn, _ = srv.accept()
buf = bytearray(1 << 20)
view = memoryview(buf)
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
total = 0
while n := conn.recv_into(view):
    mv = view[:n]
    while mv:
        mv = mv[os.write(fd, mv):]
    total += n
os.fsync(fd)
os.close(fd)
print(total, flush=True)
"""

SENDER = r"""
import socket, sys
with socket.create_connection((sys.argv[2], int(sys.argv[3]))) as sock, \
        open(sys.argv[1], "rb") as fh:
    sock.sendfile(fh)
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):
        pass
"""


@dataclass
class Row:
    what: str
    size: int
    seconds: list[float] = field(default_factory=list)
    baseline: Row | None = None

    def rate(self) -> float:
        return self.size / statistics.median(self.seconds) if self.seconds else 0.0

    def cells(self) -> list[str]:
        ratio = f"{self.rate() / self.baseline.rate():.2f}" if self.baseline else "1.00"
        return [self.what, f"{statistics.median(self.seconds):.2f}",
                f"{min(self.seconds):.2f}-{max(self.seconds):.2f}",
                f"{self.rate() / 1e6:.0f}", ratio]


def make_file(path: Path, size: int) -> None:
    block = os.urandom(16 << 20)
    with open(path, "wb") as fh:
        left = size
        while left:
            left -= fh.write(block[: min(left, len(block))])
        fh.flush()
        os.fsync(fh.fileno())  # its write-back must not land in the first run


def raw_copy(h1: Host, h2: Host, source: Path, size: int, folder: Path) -> float:
    target = folder / "raw.bin"
    receiver = h1.popen([sys.executable, "-c", RECEIVER, str(target), str(PORT)])
    assert receiver.stdout is not None
    assert receiver.stdout.readline().strip() == "listening"
    start = time.monotonic()
    sender = h2.popen([sys.executable, "-c", SENDER, str(source), h1.ipv4, str(PORT)])
    got = receiver.stdout.readline().strip()
    took = time.monotonic() - start
    if sender.wait(TIMEOUT) or receiver.wait(TIMEOUT) or got != str(size):
        raise RuntimeError(f"raw copy failed: received {got!r} of {size}")
    target.unlink()
    return took


def inbox_received(host: Host, agent: Agent, name: str) -> dict | None:
    path = Path(host.env["XDG_STATE_HOME"]) / "xmppll" / agent.name / "inbox.jsonl"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    for record in map(json.loads, lines):
        if record.get("kind") == "file" and record.get("name") == name:
            if record["state"] == "failed":
                raise RuntimeError(f"{name}: {record['reason']}")
            if record["state"] == "received":
                return record
    return None


def xmppll_copy(h1: Host, h2: Host, alice: Agent, bob: Agent, source: Path, method: str,
                run: int, size: int) -> tuple[float, float]:
    """(seconds until `send` exits, seconds until the `received` record)."""
    name = f"{method}-{bob.name}-{run}.bin"
    link = source.with_name(name)  # a name per transfer (--name is for stdin only)
    os.link(source, link)
    start = time.monotonic()
    done = h2.xmppll("send", "--from", bob.name, alice.name, "--file", str(link),
                     "--method", method, timeout=TIMEOUT)
    link.unlink()
    sent = time.monotonic() - start
    if done.returncode:
        raise RuntimeError(f"xmppll send --method {method}: {done.stderr}")
    record = lan.wait_until(lambda: inbox_received(h1, alice, name), TIMEOUT,
                            f"{name} received", interval=0.005, error=RuntimeError)
    took = time.monotonic() - start
    if record["size"] != size:
        raise RuntimeError(f"{name}: {record['size']} of {size} bytes")
    os.unlink(record["path"])
    return sent, took


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of `pid` in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0]) * 1024 / 1e6
    return fields["VmHWM"], fields["VmRSS"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="MiB (default 1024)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--to", type=Path, default=None,
                        help="where h1 writes what it receives (default: its home)")
    args = parser.parse_args()
    size = args.size_mb << 20
    with Lan(2) as net:
        h1, h2 = net.hosts
        folder = (args.to or h1.home) / f"files-bench-{net.runid}"
        folder.mkdir(parents=True)
        alice = start_agent(h1, "alice@h1", "--accept-files", "always", "--download-dir",
                            str(folder), "--max-file-size", str(size), "--tls", "off")
        bob = start_agent(h2, "bob@h2", "--tls", "off")
        alice_tls = start_agent(h1, "alice-tls@h1", "--accept-files", "always",
                                "--download-dir", str(folder), "--max-file-size", str(size))
        bob_tls = start_agent(h2, "bob-tls@h2")
        agents = (alice, bob, alice_tls, bob_tls)
        try:
            source = h2.home / "big.bin"
            make_file(source, size)
            idle = {a.name: peak_rss_mb(a.proc.pid)[0] for a in agents}
            raw = Row("raw TCP copy (python, sendfile -> write + fsync)", size)
            rows = [raw, Row("xmppll SI + SOCKS5 (send exits)", size, baseline=raw),
                    Row("xmppll OOB over HTTP (send exits)", size, baseline=raw),
                    Row("xmppll SI, until the record with SHA-256", size, baseline=raw),
                    Row("xmppll OOB, until the record with SHA-256", size, baseline=raw),
                    Row("xmppll SI + SOCKS5 inside TLS (send exits)", size, baseline=raw),
                    Row("xmppll OOB over HTTPS (send exits)", size, baseline=raw)]

            def xmppll_step(method: str, sent: Row, recorded: Row | None,
                            pair: tuple[Agent, Agent]) -> Callable[[int], None]:
                def step(run: int) -> None:
                    a, b = xmppll_copy(h1, h2, pair[0], pair[1], source, method, run, size)
                    sent.seconds.append(a)
                    if recorded is not None:
                        recorded.seconds.append(b)
                return step

            steps = [lambda run: raw.seconds.append(raw_copy(h1, h2, source, size, folder)),
                     xmppll_step("si", rows[1], rows[3], (alice, bob)),
                     xmppll_step("oob", rows[2], rows[4], (alice, bob)),
                     xmppll_step("si", rows[5], None, (alice_tls, bob_tls)),
                     xmppll_step("oob", rows[6], None, (alice_tls, bob_tls))]
            for run in range(args.runs):
                k = run % len(steps)
                for step in steps[k:] + steps[:k]:  # no method always first
                    step(run)
            peaks = {a.name: peak_rss_mb(a.proc.pid) for a in agents}
        finally:
            for agent in agents:
                stop_gently(agent.proc)
            shutil.rmtree(folder, ignore_errors=True)
    load = os.getloadavg()
    print(f"{args.size_mb} MiB file, {args.runs} runs, received into "
          f"{'h1 home (disk)' if args.to is None else args.to}, {os.cpu_count()} CPUs, load "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print_table(["transfer", "median s", "min-max s", "MB/s", "ratio to raw"], rows)
    print()
    print_table(["agent", "peak RSS (VmHWM) MB", "RSS at the end MB", "VmHWM before MB"],
                [_Cells([name, f"{hwm:.1f}", f"{rss:.1f}", f"{idle[name]:.1f}"])
                 for name, (hwm, rss) in peaks.items()])
    worst_ratio = min(r.rate() / raw.rate() for r in rows[1:3])  # the plain ones
    worst_rss = max(hwm for hwm, _ in peaks.values())
    ok = worst_ratio >= RATIO_TARGET and worst_rss <= RSS_TARGET_MB
    print(f"\ntargets: ratio of the transfer >= {RATIO_TARGET} (worst {worst_ratio:.2f}), "
          f"peak RSS <= {RSS_TARGET_MB:.0f} MB (worst {worst_rss:.1f}): "
          + ("met" if ok else "NOT met"))
    sys.exit(0 if ok else 1)


@dataclass
class _Cells:
    values: list[str]

    def cells(self) -> list[str]:
        return self.values


if __name__ == "__main__":
    main()
