#!/usr/bin/env python3
"""Wide-area DNS-SD benchmark: browse of 1 / 50 / 500 peers against avahi, and the
time from publishing to being visible.

    sudo .venv/bin/python bench/widearea.py [--runs 5] [--sizes 1,50,500]

Two segments joined by a router (tests/routed.py); named on a2 serves one zone per
size (s1.test, s50.test, s500.test), filled by signed UPDATEs; b1 browses across the
router with `xmppll browse --domain Z --no-link --json` (no agent: a fresh process
each run, Python start included) and with a fresh `avahi-browse -trp -d Z
_presence._tcp` against an avahi-daemon configured for wide area. Then, per zone, an
agent on b1 with --domain Z (already polling it) answers `xmppll browse --json` from
its cache, through the click-free fast path and, for comparison, through click. Last,
where the one-shot path's time goes: the bare interpreter and the packages' imports.
Each browse must list every peer. Times are wall clock around the whole command,
median (min-max) of --runs, the two tools interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from bind import Named  # noqa: E402
from common import print_table  # noqa: E402
from lan import Lines  # noqa: E402
from peers import AvahiDaemon, parse_browse_line  # noqa: E402
from routed import Segments  # noqa: E402

PY = sys.executable
PUBLISH = ROOT / "tests" / "helpers" / "dns_publish_many.py"


@dataclass
class Row:
    what: str
    times: list[float] = field(default_factory=list)
    found: list[int] = field(default_factory=list)
    expected: int = 0
    note: str = ""

    def cells(self) -> list[str]:
        ms = [t * 1000 for t in self.times]
        timing = (f"{statistics.median(ms):.0f} ms ({min(ms):.0f}-{max(ms):.0f})"
                  if ms else "-")
        listed = f"{min(self.found)}/{self.expected}" if self.found else "-"
        return [self.what, timing, listed, self.note]


def timed(host, argv, env=None, timeout=120):
    t = time.monotonic()
    done = host.run(argv, env=env, timeout=timeout)
    return time.monotonic() - t, done


# The one-shot browse's DNS steps, timed in one process (after the imports).
PHASES = """
import sys, time
t = time.perf_counter()
from xmppll.discovery.widearea import browse
from xmppll.discovery.widearea.config import Server
print(f"import the wide-area browse (dnspython) {(time.perf_counter() - t) * 1000:.1f}")
querier = browse.Querier(Server(sys.argv[1], 53))
t = time.perf_counter()
names = browse.instances(querier, sys.argv[2])
print(f"PTR ({len(names)} instances) {(time.perf_counter() - t) * 1000:.1f}")
t = time.perf_counter()
peers = browse.resolve_instances(querier, sys.argv[2], names)
print(f"SRV+TXT, then addresses ({len(peers)} peers) {(time.perf_counter() - t) * 1000:.1f}")
"""


def count_peers(stdout: str) -> int:
    return stdout.count('"name": "peer')


def agent_rows(host, named, key, zone: str, n: int, runs: int, avahi: Row) -> list[Row]:
    """An agent with --domain already polling the zone (its own record in it too):
    `xmppll browse` is answered from its cache, through the click-free fast path
    (cli/fast.py), and through click (XMPPLL_NO_FAST=1) for comparison."""
    proc = host.xmppll_popen("announce", "bench@b1", "--json", "--domain", zone,
                             "--dns-server", named.address, "--tsig-key", str(key))
    try:
        Lines(proc.stdout).wait_json(lambda r: r["event"] == "announced", 30)
        deadline = time.monotonic() + 30
        while True:  # the agent's first poll of the zone is done
            done = host.run([PY, "-m", "xmppll", "browse", "--json"], timeout=60)
            if count_peers(done.stdout) >= n or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        fast = Row(f"xmppll browse (agent cache, fast path), {n} peers", expected=n)
        slow = Row(f"xmppll browse (agent cache, via click), {n} peers", expected=n)
        for _ in range(runs):
            for row, env in ((fast, None), (slow, {**host.env, "XMPPLL_NO_FAST": "1"})):
                t, done = timed(host, [PY, "-m", "xmppll", "browse", "--json"], env=env)
                assert done.returncode == 0, done.stderr
                row.times.append(t)
                row.found.append(count_peers(done.stdout))
        for row in (fast, slow):
            ratio = statistics.median(row.times) / statistics.median(avahi.times)
            row.note = f"{ratio:.2f}x avahi"
        return [fast, slow]
    finally:
        proc.terminate()
        proc.wait(10)


def cost_rows(host, named, zone: str, runs: int) -> list[Row]:
    """Where the one-shot browse's time goes: the interpreter alone, and the imports
    (python -X importtime, cumulative, of the top-level packages) of one run."""
    floor = Row("python -c pass (interpreter start, the floor)")
    for _ in range(runs):
        floor.times.append(timed(host, [PY, "-c", "pass"])[0])
    done = host.run([PY, "-X", "importtime", "-m", "xmppll", "browse", "--json", "--no-link",
                     "--domain", zone, "--dns-server", named.address], timeout=60)
    spent: dict[str, int] = {}
    for line in done.stderr.splitlines():  # "import time: self | cumulative | name"
        parts = line.split("|")
        if len(parts) == 3 and parts[0].split(":")[-1].strip().isdigit():
            root = parts[2].strip().split(".")[0]
            spent[root] = spent.get(root, 0) + int(parts[0].split(":")[-1])
    rows = [floor]
    for name in sorted(spent, key=spent.__getitem__, reverse=True)[:6]:
        rows.append(Row(f"  import {name}.* (one-shot browse --domain)",
                        times=[spent[name] / 1e6], note="-X importtime, own modules only"))
    done = host.run([PY, "-c", PHASES, named.address, zone], timeout=60)
    assert done.returncode == 0, done.stderr
    for line in done.stdout.splitlines():
        what, ms = line.rsplit(" ", 1)
        rows.append(Row(f"  {what} (in-process)", times=[float(ms) / 1000]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", default="1,50,500")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    zones = {n: f"s{n}.test" for n in sizes}
    rows: list[Row] = []
    with Segments(2, 2) as net:
        a1, a2, b1 = net.a[0], net.a[1], net.b[0]
        named = Named(a2, "lan.test", more_zones=tuple(zones.values()), max_records=0)
        key = a1.home / "tsig.key"
        key.write_text(named.key_file.read_text())
        key.chmod(0o600)
        resolv = b1.home / "resolv.conf"
        resolv.write_text(f"nameserver {named.address}\n")
        avahi = AvahiDaemon(b1, wide_area="lan.test", resolv_conf=resolv)
        for n, zone in zones.items():
            done = a1.run([PY, str(PUBLISH), named.address, str(key), zone, str(n), a1.ipv4,
                           "600"], timeout=120)
            assert done.returncode == 0, done.stderr
        for n, zone in zones.items():
            ours = Row(f"xmppll browse --domain --no-link, {n} peers", expected=n)
            theirs = Row(f"avahi-browse -trp -d, {n} peers", expected=n)
            for _ in range(args.runs):
                t, done = timed(b1, [PY, "-m", "xmppll", "browse", "--json", "--no-link",
                                     "--domain", zone, "--dns-server", named.address])
                ours.times.append(t)
                ours.found.append(count_peers(done.stdout))
                t, done = timed(b1, ["avahi-browse", "-trp", "-d", zone, "_presence._tcp"],
                                env=avahi.env)
                theirs.times.append(t)
                resolved = {r["name"] for r in map(parse_browse_line, done.stdout.splitlines())
                            if r and r["event"] == "="}
                theirs.found.append(len(resolved))
            ratio = statistics.median(ours.times) / statistics.median(theirs.times)
            ours.note = f"{ratio:.2f}x avahi"
            rows += [ours, theirs]
            rows += agent_rows(b1, named, key, zone, n, args.runs, theirs)
        rows += cost_rows(b1, named, zones[max(sizes)], args.runs)
        # publish -> visible: announce on a1, then fresh browses on b1 until listed
        vis_ours = Row("announce --domain -> visible to xmppll browse on B", expected=1)
        vis_avahi = Row("announce --domain -> visible to avahi-browse on B", expected=1)
        for i in range(args.runs):
            name = f"pub{i}@a1"
            proc = a1.xmppll_popen("announce", name, "--json", "--domain", "lan.test",
                                   "--dns-server", named.address, "--tsig-key", str(key),
                                   "--dns-ttl", "10")
            out = Lines(proc.stdout)
            out.wait_json(lambda r: r["event"] == "announced", 30)
            t0 = time.monotonic()
            for row, argv, env in (
                    (vis_ours, [PY, "-m", "xmppll", "browse", "--json", "--no-link",
                                "--domain", "lan.test", "--dns-server", named.address], None),
                    (vis_avahi, ["avahi-browse", "-trp", "-d", "lan.test", "_presence._tcp"],
                     avahi.env)):
                start = t0 if row is vis_ours else time.monotonic()
                while True:
                    done = b1.run(argv, env=env, timeout=60)
                    if name.replace("@", "\\064") in done.stdout or f'"{name}"' in done.stdout:
                        row.times.append(time.monotonic() - start)
                        row.found.append(1)
                        break
                    if time.monotonic() - start > 30:
                        row.found.append(0)
                        break
            proc.terminate()
            proc.wait(10)
        vis_ours.note = "from the 'announced' line (UPDATE done)"
        vis_avahi.note = "avahi caches the PTR for its TTL (10 s here)"
        rows += [vis_ours, vis_avahi]
    print_table(["measurement", "median (min-max)", "listed", "note"], rows)


if __name__ == "__main__":
    main()
