#!/usr/bin/env python3
"""The inbox over months (issue 17): a 5,000,000-message inbox, today's code against the
base commit's, in the same run.

    sudo .venv/bin/python bench/inbox.py [--messages 5000000] [--base 5508333]

The inbox is written directly in the on-disk format (not sent): once as the base
commit's single inbox.jsonl, once as segments (16 MiB each, with their summaries) with
the newest at inbox.jsonl; the same records, spread over the last 60 days, from 5 peers.
The base commit's xmppll is `git archive`d into a temp dir and run from there.

In process (files only): the writer's start-up (Inbox()), the read for
`listen --backlog` with 10 messages unread, and the read a plain `listen` start
makes (nothing to catch up); then a prune with the default retention (30 days, 256 MiB
of read history), disk used before and after.

On the virtual LAN (tests/lan.py), for each code: an agent (`announce`) with the
inbox, its start-up to `announced` (mDNS probing is most of it, alike for both), then
a plain `listen` attaching while `xmppll status` runs at once (its wall time against
the same command with no listener attaching), then `listen --backlog` to its 10th line.
Retention is off in the agents here (it is measured in process).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from common import ROOT, StampedLines, print_table, wait_until  # noqa: E402

sys.path.insert(0, str(ROOT))
from lan import Host, Lan  # noqa: E402

from xmppll.agent import history, retention, segments  # noqa: E402
from xmppll.agent.inbox import SEGMENT_BYTES, Inbox, read_after  # noqa: E402
from xmppll.agent.policy import Policy  # noqa: E402

PY = sys.executable
PEERS = [f"build{i}@ci" for i in range(5)]
DAYS = 60
TARGET = "< 100 ms"


@dataclass
class Row:
    what: str
    old: list[float] = field(default_factory=list)
    new: list[float] = field(default_factory=list)
    unit: str = "ms"
    target: str = ""
    note: str = ""

    def cells(self) -> list[str]:
        def show(values: list[float]) -> str:
            if not values:
                return "-"
            value = statistics.median(values)
            if self.unit == "ms":
                return f"{value * 1000:,.1f} ms"
            return f"{value / 2**20:,.0f} MiB"
        return [self.what, show(self.old), show(self.new), self.target, self.note]


# --- the inbox, made directly -----------------------------------------------------------

def generate(n: int, old_state: Path, new_state: Path) -> None:
    """n records into old_state/inbox.jsonl (one file) and new_state (segments)."""
    for d in (old_state, new_state / segments.SEALED):
        d.mkdir(parents=True, exist_ok=True)
    start = time.time() - DAYS * 86400
    step = DAYS * 86400 / n
    tpl = ('{"seq": %d, "kind": "message", "from": "%s", "to": "bench@h1", "type": "chat", '
           '"id": "b%d", "body": "build %d passed: 412 tests, 0 failures", "subject": null, '
           '"thread": null, "xml": "<message/>", "peer": {"address": "10.77.0.9", '
           '"port": 5298, "name": "%s"}, "verified": true, "received": "%s"}\n')
    old = open(old_state / "inbox.jsonl", "wb")  # noqa: SIM115
    seg: dict[str, Any] = {}

    def open_segment(first: int, stamp: str) -> None:
        seg.update(fh=open(new_state / "inbox.jsonl.tmp", "wb"), first=first, count=0,  # noqa: SIM115
                   bytes=0, oldest=stamp, newest=stamp, peers=dict.fromkeys(PEERS, 0))

    def seal() -> None:
        seg["fh"].close()
        path = segments.sealed_path(new_state, seg["first"])
        os.replace(new_state / "inbox.jsonl.tmp", path)
        segments.write_summary(path, {
            "version": segments.META_VERSION, "bytes": seg["bytes"], "count": seg["count"],
            "first": seg["first"], "last": seg["first"] + seg["count"] - 1,
            "oldest": seg["oldest"], "newest": seg["newest"], "peers": seg["peers"]})

    chunk = 20000
    for base in range(1, n + 1, chunk):
        stamp = datetime.fromtimestamp(start + base * step, UTC).isoformat(
            timespec="milliseconds").replace("+00:00", "Z")
        lines = [tpl % (s, PEERS[s % 5], s, s, PEERS[s % 5], stamp)
                 for s in range(base, min(n, base + chunk - 1) + 1)]
        data = "".join(lines).encode()
        old.write(data)
        if not seg:
            open_segment(base, stamp)
        seg["fh"].write(data)
        seg["count"] += len(lines)
        seg["bytes"] += len(data)
        seg["newest"] = stamp
        for p in PEERS:
            seg["peers"][p] += len(lines) // 5
        if seg["bytes"] >= SEGMENT_BYTES:
            seal()
            seg.clear()
    old.close()
    if seg:
        seg["fh"].close()
        os.replace(new_state / "inbox.jsonl.tmp", new_state / "inbox.jsonl")
    for state in (old_state, new_state):
        (state / "cursor").write_bytes(str(n - 10).rjust(20).encode())


def load_old(base: str, into: Path) -> tuple[Path, ModuleType]:
    """The base commit's xmppll package in `into`, and its inbox module loaded."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", base, "xmppll"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    spec = importlib.util.spec_from_file_location("old_inbox",
                                                  into / "xmppll" / "agent" / "inbox.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return into, module


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


# --- in process ---------------------------------------------------------------------------

def in_process(old: ModuleType, old_state: Path, new_state: Path, n: int, runs: int,
               rows: list[Row]) -> None:
    start = Row("agent start-up: open the inbox (Inbox())", target=TARGET)
    backlog = Row("listen --backlog read: last 10 of the inbox", target=TARGET)
    plain = Row("plain listen start: catch-up read (none unread)", target=TARGET)
    for _ in range(runs):
        for which, mod, state in (("old", old, old_state), ("new", None, new_state)):
            opener = (lambda m=mod, s=state: m.Inbox(s)) if mod else (lambda s=state: Inbox(s))
            reader = mod.read_after if mod else read_after
            wall, inbox = timed(opener)
            inbox.close()
            getattr(start, which).append(wall)
            wall, got = timed(lambda r=reader, s=state: list(r(s, n - 10)))
            assert [g["seq"] for g in got] == list(range(n - 9, n + 1)), which
            getattr(backlog, which).append(wall)
            wall, got = timed(lambda r=reader, s=state: list(r(s, n)))
            assert got == []
            getattr(plain, which).append(wall)
    rows += [start, backlog, plain]


def prune(new_state: Path, n: int, rows: list[Row]) -> None:
    before = history.stats(new_state)
    wall, done = timed(lambda: retention.prune(new_state, Policy()))
    after = history.stats(new_state)
    assert [r["seq"] for r in read_after(new_state, n - 10)] == list(range(n - 9, n + 1))
    rows.append(Row("disk used before prune (30 days, 256 MiB kept)", unit="MiB",
                    old=[before["disk"]], new=[before["disk"]],
                    note=f"{before['messages']:,} messages"))
    rows.append(Row("disk used after prune", unit="MiB", new=[after["disk"]],
                    note=f"old: no retention; new: {after['messages']:,} messages kept, "
                         f"{after['unread']} unread"))
    rows.append(Row("prune (delete read segments)", new=[wall],
                    note=f"{done['segments']} segments"))


# --- on the virtual LAN -------------------------------------------------------------------

# The venv's editable install would win over PYTHONPATH: the old code's commands drop
# its finder first, then import xmppll from the archive.
OLD_PATH = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
            "if '__editable__' not in repr(f)]; sys.path.insert(0, {path!r}); ")
OLD_MAIN = "from xmppll.cli.commands import main; main()"


def status_wall(host: Host, xm: list[str], name: str, env: dict[str, str]) -> float:
    t0 = time.monotonic()
    done = host.run([*xm, "status", "--name", name, "--json"], env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return time.monotonic() - t0


def on_lan(host: Host, xm: list[str], name: str, env: dict[str, str], which: str, n: int,
           rows: dict[str, Row]) -> None:
    env = {**env, "XMPPLL_KEEP_DAYS": "100000", "XMPPLL_KEEP_SIZE": "1T"}
    t0 = time.monotonic()
    agent = host.popen([*xm, "announce", name, "--json"], env=env)
    events = StampedLines(agent.stdout)
    stamp, _, _ = events.find(lambda line: '"announced"' in line, 120)
    getattr(rows["up"], which).append(stamp - t0)
    quiet = [status_wall(host, xm, name, env) for _ in range(3)]
    getattr(rows["status"], which).append(statistics.median(quiet))
    # A plain listener attaches and, at once, a status round trip.
    listener = host.popen([*xm, "listen", name, "--json"], env=env)
    time.sleep(0.15)  # the listener's python start, so status lands as it attaches
    getattr(rows["status_attach"], which).append(status_wall(host, xm, name, env))
    listener.terminate()
    listener.wait(60)
    # listen --backlog with the cursor 10 behind.
    (Path(env["XDG_STATE_HOME"]) / "xmppll" / name / "cursor").write_bytes(
        str(n - 10).rjust(20).encode())
    t0 = time.monotonic()
    backlog = host.popen([*xm, "listen", name, "--backlog", "--json"], env=env)
    lines = StampedLines(backlog.stdout)
    stamp, line, _ = lines.find(lambda x: f'"seq": {n}' in x, 300)
    getattr(rows["backlog"], which).append(stamp - t0)
    backlog.terminate()
    backlog.wait(60)
    host.run([*xm, "withdraw", name], env=env, timeout=60)
    agent.wait(60)
    wait_until(lambda: agent.poll() is not None, 10, "agent gone")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5_000_000)
    parser.add_argument("--base", default="5508333", help="the commit of today's code")
    parser.add_argument("--runs", type=int, default=3, help="in-process repetitions")
    parser.add_argument("--no-lan", action="store_true", help="in-process part only")
    args = parser.parse_args()
    n = args.messages
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="xmppll-bench-inbox-") as tmp, Lan(1) as lan:
        h1 = lan[0]
        tmp_path = Path(tmp)
        old_code, old = load_old(args.base, tmp_path / "old")
        name_old, name_new = "old@h1", "new@h1"
        states = Path(h1.env["XDG_STATE_HOME"]) / "xmppll"
        old_state, new_state = states / name_old, states / name_new
        wall, _ = timed(lambda: generate(n, old_state, new_state))
        print(f"bench/inbox.py: {n:,} messages written in {wall:.1f} s "
              f"({(old_state / 'inbox.jsonl').stat().st_size / 2**20:,.0f} MiB each way)",
              file=sys.stderr)
        in_process(old, old_state, new_state, n, args.runs, rows)
        if not args.no_lan:
            lan_rows = {
                "up": Row("agent start-up to 'announced' (mDNS probing included)",
                          note="mostly mDNS probing, alike for both"),
                "status": Row("xmppll status, nothing attaching"),
                "status_attach": Row("xmppll status while a plain listen attaches",
                                     target="as above"),
                "backlog": Row("listen --backlog: spawn to its 10th line",
                               note="python start + agent round trip"),
            }
            boot = OLD_PATH.format(path=str(old_code))
            xm_old = [PY, "-c", boot + OLD_MAIN]
            check = h1.run([PY, "-c", boot + "import xmppll; print(xmppll.__file__)"])
            assert check.stdout.startswith(str(old_code)), check.stdout
            on_lan(h1, xm_old, name_old, h1.env, "old", n, lan_rows)
            on_lan(h1, [PY, "-m", "xmppll"], name_new, h1.env, "new", n, lan_rows)
            rows += lan_rows.values()
        prune(new_state, n, rows)
        shutil.rmtree(states, ignore_errors=True)
    print(f"Inbox of {n:,} messages (old = {args.base}, new = this tree; "
          f"in-process medians of {args.runs})")
    print_table(["what", "old code", "new code", "target", "note"], rows)


if __name__ == "__main__":
    main()
