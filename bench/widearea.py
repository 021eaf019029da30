#!/usr/bin/env python3
"""Wide-area DNS-SD benchmark: browse of 1 / 50 / 500 peers against avahi, and the
time from publishing to being visible.

    sudo .venv/bin/python bench/widearea.py [--runs 5] [--sizes 1,50,500]

Two segments joined by a router (tests/routed.py); named on a2 serves one zone per
size (s1.test, s50.test, s500.test), filled by signed UPDATEs; b1 browses across the
router with `xmppll browse --domain Z --no-link --json` (no agent: a fresh process
each run, Python start included) and with a fresh `avahi-browse -trp -d Z
_presence._tcp` against an avahi-daemon configured for wide area. Each browse must list
every peer. Times are wall clock around the whole command, median (min-max) of --runs,
the two tools interleaved.
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
                ours.found.append(done.stdout.count('"name": "peer'))
                t, done = timed(b1, ["avahi-browse", "-trp", "-d", zone, "_presence._tcp"],
                                env=avahi.env)
                theirs.times.append(t)
                resolved = {r["name"] for r in map(parse_browse_line, done.stdout.splitlines())
                            if r and r["event"] == "="}
                theirs.found.append(len(resolved))
            ratio = statistics.median(ours.times) / statistics.median(theirs.times)
            ours.note = f"{ratio:.2f}x avahi"
            rows += [ours, theirs]
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
