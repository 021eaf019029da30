#!/usr/bin/env python3
"""Every performance number of issue 7 in one run, as one markdown table.

    sudo .venv/bin/python bench/all.py [--quick] [--runs 7] [--idle 30] [--raw FILE]

Side by side with avahi (avahi-daemon 0.8 in its own host on its own system bus,
tests/peers/avahi.py AvahiDaemon) measured in the same run, on virtual LANs built here
(tests/lan.py; needs root; nothing goes out on the machine's own network):

- Discovery, for 1, 50 and 500 peers published by one python-zeroconf process
  (tests/helpers/zc_peers.py) on their own host: wall time from spawn to exit, and
  completeness, of `xmppll browse` answered by a running agent, `xmppll browse
  --no-agent` on a host with no agent, and `avahi-browse -trp _presence._tcp` against a
  cold daemon (nothing browsed the type in the last 1.5 s: it waits ~1 s for "all for
  now") and a warm one (a background `avahi-browse -rp` keeps it browsing).
- Publication: `xmppll announce` and `avahi-publish -s` (against its running daemon),
  from spawn until a browser already running on another host sees the name, with two
  observers for both: `xmppll browse --follow` (`added`) and `avahi-browse -rp`
  (resolved `=`). A status change until the follower prints `updated`: `xmppll status
  away` (spawn) against avahi's own TXT update (EntryGroup.UpdateServiceTxt over D-Bus,
  what libpurple does; avahi-publish has none) and against restarting avahi-publish.
- Messaging: `xmppll send` to a known peer with and without an agent; the agent's inbox
  throughput over 1, 100 and 500 concurrent streams (tests/helpers/raw_peer.py flood:
  timed until the agent's closing tag, sent only once all is fsync'd) with its peak RSS;
  start-up of `xmppll --help` and `xmppll status` beside `python3 -c pass`.
- Scale: RSS and CPU seconds at idle (utime+stime from /proc/PID/stat over `--idle` s)
  of the agent and of avahi-daemon plus its background browser, per peer count, and how
  each cost grows with the peers.

Commands are spawned and timed inside their host by a resident runner (this script,
`--runner`), round-robin across commands so load drifts hit them alike, after one
discarded warm-up round. Timestamps are CLOCK_MONOTONIC, which all namespaces share.
Each cell is the median (min-max) of `--runs` runs. The machine's load moves every
number: the table says what it was, and `python3 -c pass` is the floor to compare.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from common import StampedLines, cpu_ticks, json_test, wait_idle, wait_until  # noqa: E402
from install import Install, editable, install  # noqa: E402
from lan import Host, Lan, Lines  # noqa: E402

from xmppll.agent import history  # noqa: E402

ZC_PEERS = str(ROOT / "tests" / "helpers" / "zc_peers.py")
RAW_PEER = str(ROOT / "tests" / "helpers" / "raw_peer.py")
PY = sys.executable
SYSTEM_PY = "/usr/bin/python3"  # has python3-dbus, which the venv lacks
SERVICE = "_presence._tcp"
COLD_PAUSE = 1.5  # s; avahi answers -t at once for ~1 s after the last browse ended
RUN_TIMEOUT = 60.0  # s, for any one timed command
SEEN_TIMEOUT = 15.0  # s, for an observer to see a publication or an update

# avahi's own TXT update, as a client that keeps its entry group does (libpurple):
# publish NAME, print `established`, then for each stdin line (TXT strings separated by
# blanks) stamp the monotonic clock, call UpdateServiceTxt and print the stamp.
AVAHI_TXT = r"""
import sys, time, dbus
name, port = sys.argv[1], int(sys.argv[2])
bus = dbus.SystemBus()
server = dbus.Interface(bus.get_object("org.freedesktop.Avahi", "/"),
                        "org.freedesktop.Avahi.Server")
group = dbus.Interface(bus.get_object("org.freedesktop.Avahi", server.EntryGroupNew()),
                       "org.freedesktop.Avahi.EntryGroup")
def txt(strings):
    return dbus.Array([dbus.ByteArray(s.encode()) for s in strings], signature="ay")
any_ = (dbus.Int32(-1), dbus.Int32(-1), dbus.UInt32(0))
group.AddService(*any_, name, "_presence._tcp", "", "", dbus.UInt16(port),
                 txt(sys.argv[3:]))
group.Commit()
deadline = time.monotonic() + 10
while group.GetState() != 2:  # ESTABLISHED
    if group.GetState() in (3, 4) or time.monotonic() > deadline:
        sys.exit(f"entry group state {group.GetState()}")
    time.sleep(0.01)
print("established", flush=True)
for line in sys.stdin:
    stamp = time.monotonic()
    group.UpdateServiceTxt(*any_, name, "_presence._tcp", "", txt(line.split()))
    print("updated", stamp, flush=True)
"""


# --- inside a host: the runner --------------------------------------------------------

def runner() -> None:
    """Serve requests (one JSON line each on stdin, one JSON line back on stdout):
    `run` times a command from spawn to exit; `spawn` starts one in the background and
    says when; `stop` SIGTERMs a spawned one and reaps it."""
    procs: dict[int, subprocess.Popen[Any]] = {}
    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        env = {**os.environ, **req["env"]} if req.get("env") else None
        if op == "run":
            t0 = time.monotonic()
            start = time.perf_counter()
            try:
                done = subprocess.run(req["argv"], stdin=subprocess.DEVNULL,
                                      capture_output=True, text=True, env=env,
                                      timeout=req.get("timeout", RUN_TIMEOUT))
                rc, out, err = done.returncode, done.stdout, done.stderr
            except subprocess.TimeoutExpired as exc:
                rc, out, err = -1, exc.stdout or "", f"timed out after {exc.timeout} s"
                if isinstance(out, bytes):
                    out = out.decode(errors="replace")
            wall = time.perf_counter() - start
            reply: dict[str, Any] = {"t0": t0, "wall": wall, "rc": rc, "out": out,
                                     "err": err[-500:]}
        elif op == "first":  # spawn until its first line on stdout, then SIGTERM
            start = time.perf_counter()
            proc = subprocess.Popen(req["argv"], stdin=subprocess.DEVNULL, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert proc.stdout is not None
            import threading  # a command that never prints is killed, not waited for

            killer = threading.Timer(req.get("timeout", RUN_TIMEOUT), proc.kill)
            killer.start()
            line = proc.stdout.readline()
            killer.cancel()
            wall = time.perf_counter() - start
            proc.terminate()
            _, err = proc.communicate(timeout=10)
            reply = {"wall": wall, "rc": 0 if line else proc.returncode,
                     "out": line.decode(errors="replace"),
                     "err": err.decode(errors="replace")[-500:]}
        elif op == "spawn":
            log = open(req["log"], "ab") if req.get("log") else subprocess.DEVNULL  # noqa: SIM115
            t0 = time.monotonic()
            proc = subprocess.Popen(req["argv"], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=log)
            procs[proc.pid] = proc
            reply = {"t0": t0, "pid": proc.pid}
        elif op == "stop":
            proc = procs.pop(req["pid"])
            proc.terminate()
            try:
                rc = proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait(5)
            reply = {"rc": rc}
        else:
            reply = {"error": f"unknown op {op}"}
        print(json.dumps(reply), flush=True)


class Runner:
    """The orchestrator's handle on one host's runner."""

    def __init__(self, host: Host, env: dict[str, str] | None = None) -> None:
        self.host = host
        self.proc = host.popen([PY, __file__, "--runner"], env=env, stdin=subprocess.PIPE)
        self.out = Lines(self.proc.stdout)
        self.err = Lines(self.proc.stderr)

    def call(self, timeout: float = RUN_TIMEOUT + 15, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        try:
            return self.out.wait_json(lambda r: True, timeout)
        except AssertionError as exc:
            raise RuntimeError(f"runner on {self.host.name}: {exc}\n"
                               + "\n".join(self.err.lines[-20:])) from None

    def run(self, argv: list[str], timeout: float = RUN_TIMEOUT,
            env: dict[str, str] | None = None) -> dict[str, Any]:
        return self.call(op="run", argv=argv, timeout=timeout, env=env)

    def first(self, argv: list[str]) -> dict[str, Any]:
        return self.call(op="first", argv=argv)

    def spawn(self, argv: list[str], log: str | None = None) -> tuple[float, int]:
        reply = self.call(op="spawn", argv=argv, log=log)
        return reply["t0"], reply["pid"]

    def stop(self, pid: int) -> int:
        return self.call(op="stop", pid=pid)["rc"]


# --- helpers ----------------------------------------------------------------------------

class Stamped(StampedLines):
    """Lines of a stream with the monotonic time each was read; waits walk forward."""

    def __init__(self, stream: IO[str]) -> None:
        self.next = 0
        super().__init__(stream)

    def wait(self, test: Callable[[str], bool], timeout: float = SEEN_TIMEOUT) -> float:
        """The stamp of the first line after the last match that passes `test`."""
        stamp, _, index = self.find(test, timeout, self.next)
        self.next = index + 1
        return stamp

    def wait_json(self, test: Callable[[dict[str, Any]], bool],
                  timeout: float = SEEN_TIMEOUT) -> float:
        return self.wait(json_test(test), timeout)


# What the timed commands run: a wheel in a venv of its own (install.py), unless
# --editable; BASELINE, with --baseline REV, is the same for an older commit.
CURRENT: Install = editable()
BASELINE: Install | None = None


def xmppll(*args: str) -> list[str]:
    return CURRENT.xmppll(*args)


def floor() -> list[str]:
    """The interpreter floor: the same Python as the timed commands, doing nothing."""
    return [CURRENT.python, "-c", "pass"]


def start_agent(host: Host, name: str, inst: Install | None = None
                ) -> tuple[subprocess.Popen[Any], dict[str, Any]]:
    proc = host.popen((inst or CURRENT).xmppll("announce", "--json", name))
    # drained, so a chatty agent never blocks on a full pipe; kept for error reports
    proc.err_lines = Lines(proc.stderr)  # type: ignore[attr-defined]
    event = Lines(proc.stdout).wait_json(lambda r: r["event"] == "announced", 30)
    return proc, event


def xmppll_names(out: str, prefix: str) -> set[str]:
    names = set()
    for line in out.splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            name = json.loads(line)["name"]
            if name.startswith(prefix):
                names.add(name)
    return names


def avahi_names(lines: Iterable[str], prefix: str) -> set[str]:
    """Unique names among the resolved (`=`) lines of `avahi-browse -p`."""
    from peers import parse_browse_line

    names = set()
    for line in lines:
        rec = parse_browse_line(line)
        if rec and rec["event"] == "=" and rec["name"].startswith(prefix):
            names.add(rec["name"])
    return names


def proc_stat(pid: int) -> tuple[float, float, float]:
    """(CPU seconds so far, VmRSS MB, VmHWM MB) of a process."""
    cpu = cpu_ticks(pid) / os.sysconf("SC_CLK_TCK")
    mem = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            mem[key] = int(value.split()[0]) / 1024
    return cpu, mem["VmRSS"], mem["VmHWM"]


def run_ns(pid: int) -> int:
    """Nanoseconds on CPU of the live threads of a process (schedstat: finer than the
    10 ms ticks of utime+stime, which an idle process may not reach in 30 s)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def listen_overflows(host: Host) -> int:
    """TcpExt ListenOverflows of a host: connections its listeners had no queue room for
    (the client's SYN is dropped and retried 1 s later)."""
    lines = host.run(["cat", "/proc/net/netstat"], timeout=10).stdout.splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenOverflows"])
    return 0


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


# --- results ----------------------------------------------------------------------------

@dataclass
class Series:
    """Repeated measurements of one thing, with completeness where it applies."""

    values: list[float] = field(default_factory=list)
    found: list[int] = field(default_factory=list)
    expected: int | None = None
    errors: list[str] = field(default_factory=list)

    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


class Results:
    def __init__(self) -> None:
        self.series: dict[str, Series] = {}
        self.notes: list[str] = []

    def get(self, key: str, expected: int | None = None) -> Series:
        if key not in self.series:
            self.series[key] = Series(expected=expected)
        return self.series[key]

    def median(self, key: str) -> float | None:
        return self.series[key].median() if key in self.series else None

    def to_json(self) -> dict[str, Any]:
        return {"series": {k: vars(s) for k, s in self.series.items()}, "notes": self.notes}


def round_robin(res: Results, jobs: list[tuple[str, Callable[[], None]]], runs: int,
                warmup: int = 1) -> None:
    """Call each job once per round; the jobs record their own results (only while
    `Recording.on`, which is off in the warm-up round). A job that fails is noted and
    the rounds go on, so one bad run leaves a note, not a missing table."""
    for round_ in range(warmup + runs):
        Recording.on = round_ >= warmup
        for label, job in jobs:
            try:
                job()
            except Exception as exc:  # noqa: BLE001 - reported in the table's notes
                res.notes.append(f"⚠ {label}, round {round_ + 1 - warmup}: "
                                 f"{type(exc).__name__}: {str(exc)[:300]}")
    Recording.on = True


class Recording:
    on = True


# --- discovery and scale ----------------------------------------------------------------

def bench_discovery(res: Results, n: int, runs: int, idle: float) -> None:
    """One LAN: h1 agent, h2 no agent, h3 cold avahi, h4 warm avahi, h5 the n peers."""
    from peers import AvahiDaemon

    prefix = "peer"
    with Lan(5) as lan:
        h1, h2, h3, h4, h5 = lan.hosts
        publisher = h5.popen([PY, ZC_PEERS, str(n), "--prefix", prefix])
        Lines(publisher.stdout).wait_for(f"ready {n}", 60)
        agent_started = time.monotonic()
        agent, _ = start_agent(h1, "tester@h1")
        cold = AvahiDaemon(h3)
        warm = AvahiDaemon(h4)
        background = h4.popen(["avahi-browse", "-rp", SERVICE], env=warm.env)
        bg = Lines(background.stdout)
        wait_until(lambda: len(avahi_names(list(bg.lines), prefix)) >= n, 60,
                   f"the background avahi-browse to resolve {n} peers")
        wait_until(lambda: len(xmppll_names(
            h1.xmppll("browse", "--json", timeout=30).stdout, prefix)) >= n, 60,
            f"h1's agent to cache {n} peers")
        r1, r2 = Runner(h1), Runner(h2)
        r3, r4 = Runner(h3, env=cold.env), Runner(h4, env=warm.env)
        browse_avahi = ["avahi-browse", "-trp", SERVICE]
        cold_ended = [0.0]

        def timed(key: str, runner: Runner, argv: list[str],
                  count: Callable[[str], set[str]] | None = None) -> None:
            reply = runner.run(argv)
            if not Recording.on:
                return
            s = res.get(key, n if count else None)
            s.values.append(reply["wall"])
            if reply["rc"]:
                s.errors.append(f"exit {reply['rc']}: {reply['err'].strip()[-200:]}")
            if count:
                s.found.append(len(count(reply["out"])))

        def avahi_cold() -> None:
            # A browse that ended less than ~1 s ago leaves the daemon warm: wait.
            time.sleep(max(0.0, cold_ended[0] + COLD_PAUSE - time.monotonic()))
            timed(f"browse/{n}/avahi-cold", r3, browse_avahi,
                  lambda out: avahi_names(out.splitlines(), prefix))
            cold_ended[0] = time.monotonic()

        round_robin(res, [
            ("agent", lambda: timed(f"browse/{n}/agent", r1, xmppll("browse", "--json"),
                                    lambda out: xmppll_names(out, prefix))),
            ("no-agent", lambda: timed(f"browse/{n}/no-agent", r2,
                                       xmppll("browse", "--json", "--no-agent"),
                                       lambda out: xmppll_names(out, prefix))),
            ("avahi-cold", avahi_cold),
            ("avahi-warm", lambda: timed(f"browse/{n}/avahi-warm", r4, browse_avahi,
                                         lambda out: avahi_names(out.splitlines(), prefix))),
            ("floor", lambda: timed(f"browse/{n}/floor", r1, floor())),
        ], runs)

        # Idle: nothing asks anything; the agent and avahi keep their caches.
        watched = {"agent": agent.pid, "avahi-daemon": warm.proc.pid,
                   "avahi-browse": background.pid}
        for what, pid in watched.items():
            expect = {"agent": "python", "avahi-daemon": "avahi-daemon",
                      "avahi-browse": "avahi-browse"}[what]
            if not comm(pid).startswith(expect):
                raise RuntimeError(f"pid {pid} is {comm(pid)!r}, not {what}")
        time.sleep(1.0)  # the last browse's answers settle
        age = time.monotonic() - agent_started
        res.notes.append(f"Idle window, {n} peer{'s' * (n > 1)}: "
                         f"{age:.0f}–{age + idle:.0f} s after the agent started.")
        before = {what: proc_stat(pid) for what, pid in watched.items()}
        before_ns = {what: run_ns(pid) for what, pid in watched.items()}
        time.sleep(idle)
        after = {what: proc_stat(pid) for what, pid in watched.items()}
        after_ns = {what: run_ns(pid) for what, pid in watched.items()}
        for what in watched:
            res.get(f"idle/{n}/{what}/cpu_ns").values.append(
                (after_ns[what] - before_ns[what]) / 1e9)
            res.get(f"idle/{n}/{what}/cpu").values.append(after[what][0] - before[what][0])
            res.get(f"idle/{n}/{what}/rss").values.append(after[what][1])
            res.get(f"idle/{n}/{what}/hwm").values.append(after[what][2])


# --- publication ------------------------------------------------------------------------

def bench_publication(res: Results, runs: int) -> None:
    """h1 xmppll follower, h2 xmppll publisher, h3 avahi publisher, h4 avahi observer."""
    from peers import AvahiDaemon, parse_browse_line

    with Lan(4) as lan:
        h1, h2, h3, h4 = lan.hosts
        publisher_avahi = AvahiDaemon(h3)
        observer_avahi = AvahiDaemon(h4)
        follower = Stamped(h1.xmppll_popen("browse", "--follow", "--json").stdout)
        observer = Stamped(h4.popen(["stdbuf", "-oL", "avahi-browse", "-rp", SERVICE],
                                    env=observer_avahi.env).stdout)
        time.sleep(1.5)  # the follower's and observer's start-up queries pass first
        r2, r3 = Runner(h2), Runner(h3, env=publisher_avahi.env)

        def followed(event: str, name: str, **fields: str) -> Callable[[dict[str, Any]], bool]:
            return lambda r: (r["event"] == event and r["name"] == name
                              and all(r.get(k) == v for k, v in fields.items()))

        def observed(mark: str, name: str) -> Callable[[str], bool]:
            def test(line: str) -> bool:
                rec = parse_browse_line(line)
                return bool(rec and rec["event"] == mark and rec["name"] == name)
            return test

        counter = [0]

        def publish(kind: str, runner: Runner, argv_for: Callable[[str], list[str]],
                    host: str) -> None:
            counter[0] += 1
            name = f"{kind}{counter[0]}@{host}"
            t0, pid = runner.spawn(argv_for(name))
            try:
                seen_x = follower.wait_json(followed("added", name))
                seen_a = observer.wait(observed("=", name))
            finally:
                runner.stop(pid)
            follower.wait_json(followed("removed", name))
            observer.wait(observed("-", name))
            if Recording.on:
                res.get(f"publish/{kind}/xmppll-observer").values.append(seen_x - t0)
                res.get(f"publish/{kind}/avahi-observer").values.append(seen_a - t0)

        round_robin(res, [
            ("xmppll", lambda: publish("xmppll", r2, lambda name: xmppll(
                "announce", "--json", name), "h2")),
            ("avahi", lambda: publish("avahi", r3, lambda name: [
                "avahi-publish", "-s", name, SERVICE, "5298", "txtvers=1", "status=avail"],
                "h3")),
        ], runs)

        # Status changes, all seen by the xmppll follower: avahi-browse -r resolves a
        # service once and never reports a TXT change.
        start_agent(h2, "status@h2")
        follower.wait_json(followed("added", "status@h2"))
        helper = h3.popen([SYSTEM_PY, "-c", AVAHI_TXT, "status@h3", "5298", "txtvers=1",
                           "status=avail"], env=publisher_avahi.env, stdin=subprocess.PIPE)
        helper_out = Stamped(helper.stdout)
        helper_out.wait(lambda line: line == "established", 15)
        follower.wait_json(followed("added", "status@h3"))
        republished = [r3.spawn(["avahi-publish", "-s", "republish@h3", SERVICE, "5298",
                                 "txtvers=1", "status=avail"])[1]]
        follower.wait_json(followed("added", "republish@h3"))
        step = [0]

        def status_xmppll() -> None:
            step[0] += 1
            status, msg = ("away", "avail")[step[0] % 2], f"x{step[0]}"
            reply = r2.run(xmppll("status", status, "--msg", msg))
            if reply["rc"]:
                raise RuntimeError(f"xmppll status failed: {reply['err']}")
            seen = follower.wait_json(followed("updated", "status@h2", msg=msg))
            if Recording.on:
                res.get("status/xmppll").values.append(seen - reply["t0"])

        def status_avahi_dbus() -> None:
            step[0] += 1
            status, msg = ("away", "avail")[step[0] % 2], f"a{step[0]}"
            assert helper.stdin is not None
            helper.stdin.write(f"txtvers=1 status={status} msg={msg}\n")
            helper.stdin.flush()
            helper_out.wait(lambda line: line.startswith("updated"), 10)
            t0 = float(helper_out.lines[helper_out.next - 1][1].split()[1])
            seen = follower.wait_json(followed("updated", "status@h3", msg=msg))
            if Recording.on:
                res.get("status/avahi-dbus").values.append(seen - t0)

        def status_republish() -> None:
            step[0] += 1
            status, msg = ("away", "avail")[step[0] % 2], f"r{step[0]}"
            t0 = time.monotonic()
            r3.stop(republished[0])
            republished[0] = r3.spawn(["avahi-publish", "-s", "republish@h3", SERVICE,
                                       "5298", "txtvers=1", f"status={status}",
                                       f"msg={msg}"])[1]
            # the goodbye shows as `removed`, the new record as `added`
            seen = follower.wait_json(lambda r: r["event"] in ("added", "updated")
                                      and r["name"] == "republish@h3" and r.get("msg") == msg)
            if Recording.on:
                res.get("status/avahi-republish").values.append(seen - t0)

        round_robin(res, [("xmppll", status_xmppll), ("avahi-dbus", status_avahi_dbus),
                     ("republish", status_republish)], runs)


# --- messaging --------------------------------------------------------------------------

def bench_messaging(res: Results, runs: int, messages: int,
                    shapes: tuple[int, ...]) -> None:
    """h1 agent (sender, start-up), h2 agent (receiver), h3 no agent, h4 flood targets,
    h5 flood client."""
    with Lan(5) as lan:
        h1, h2, h3, h4, h5 = lan.hosts
        start_agent(h2, "tester@h2")
        start_agent(h1, "tester@h1")
        wait_until(lambda: "tester@h2" in xmppll_names(
            h1.xmppll("browse", "--json", timeout=30).stdout, "tester@"), 20,
            "h1's agent to see tester@h2")
        r1, r3, r5 = Runner(h1), Runner(h3), Runner(h5)
        count = [0]

        def timed(key: str, runner: Runner, argv: list[str]) -> None:
            reply = runner.run(argv)
            if Recording.on:
                s = res.get(key)
                s.values.append(reply["wall"])
                if reply["rc"]:
                    s.errors.append(f"exit {reply['rc']}: {reply['err'].strip()[-200:]}")

        def send(key: str, runner: Runner) -> None:
            count[0] += 1
            timed(key, runner, xmppll("send", "tester@h2", f"bench {count[0]}"))

        round_robin(res, [
            ("send agent", lambda: send("send/agent", r1)),
            ("send no agent", lambda: send("send/no-agent", r3)),
            ("floor h1", lambda: timed("startup/floor", r1, floor())),
            ("floor h3", lambda: timed("startup/floor-h3", r3, floor())),
            ("help", lambda: timed("startup/help", r1, xmppll("--help"))),
            ("status", lambda: timed("startup/status", r1, xmppll("status", "--json"))),
        ], runs)

        # One stream also against the baseline's agent (--baseline), in the same LAN.
        floods = [(streams, CURRENT, "") for streams in shapes]
        if BASELINE is not None:
            floods.insert(1, (1, BASELINE, "-before"))
        for streams, inst, before in floods:
            name = f"flood{streams}{before}@h4"
            agent, event = start_agent(h4, name, inst)
            state = Path(h4.env["XDG_STATE_HOME"]) / "xmppll" / name
            key = f"{streams}{before}"  # the results' key
            res.get(f"flood/{key}/idle-rss").values.append(proc_stat(agent.pid)[1])
            stored = 0
            overflows = listen_overflows(h4)
            for i in range(min(runs, 5)):
                reply = r5.run([PY, RAW_PEER, "flood", h4.ipv4, str(event["port"]),
                                "--count", str(messages), "--streams", str(streams),
                                "--body", f"bench {i}"], timeout=300)
                # The last seq, not a line count: the inbox seals its file every 16 MiB.
                now = history.stats(state)["last_seq"] or 0
                got, stored = now - stored, now
                res.get(f"flood/{key}/hwm").values.append(proc_stat(agent.pid)[2])
                s = res.get(f"flood/{key}/rate")
                s.found.append(got)
                s.expected = messages
                if reply["rc"]:  # kept as a marked error: the other runs still count
                    last = reply["err"].strip().splitlines()[-1:] or ["?"]
                    agent_said = " / ".join(agent.err_lines.lines[-3:]) or "nothing"
                    s.errors.append(f"run {i + 1}: the flood client failed ({last[0]}); "
                                    f"{got} of {messages} stanzas stored; the agent's "
                                    f"stderr: {agent_said}")
                    continue
                s.values.append(messages / json.loads(reply["out"])["seconds"])
            res.get(f"flood/{key}/overflows").values.append(
                listen_overflows(h4) - overflows)
            agent.terminate()
            agent.wait(10)


# --- the agent path: one-shot commands at the interpreter's floor (issue 14) ------------

AGENT_PATH_TARGET = 0.010  # s over the floor, median: browse, status, withdraw, listen, TAB
SEND_TARGET = 0.020  # s over the floor: send, with the peer's fsync and receipt


def bench_agent_path(res: Results, runs: int) -> None:
    """h1 runs an agent (and a second one per round, to withdraw), h2 an agent that
    answers with receipts, h3 none (standalone send). Every command of the agent path,
    from CURRENT and (with --baseline) BASELINE, beside the floor, round-robin."""
    with Lan(3) as lan:
        h1, h2, h3 = lan.hosts
        start_agent(h2, "tester@h2")
        start_agent(h1, "tester@h1")
        wait_until(lambda: "tester@h2" in xmppll_names(
            h1.xmppll("browse", "--json", timeout=30).stdout, "tester@"), 20,
            "h1's agent to see tester@h2")
        r1, r3 = Runner(h1), Runner(h3)
        sockets = Path(h1.env["XDG_RUNTIME_DIR"]) / "xmppll"
        tab = {"_XMPPLL_COMPLETE": "bash_complete", "COMP_LINE": "xmppll send tes",
               "COMP_WORDBREAKS": " \t\n\"'@><=;|&(:"}
        count = [0]
        installs = [i for i in (CURRENT, BASELINE) if i is not None]

        def timed(key: str, reply: dict[str, Any], check: str | None = None) -> None:
            if not Recording.on:
                return
            s = res.get(key)
            s.values.append(reply["wall"])
            if reply["rc"]:
                s.errors.append(f"exit {reply['rc']}: {reply['err'].strip()[-200:]}")
            elif check is not None and check not in reply["out"]:
                s.errors.append(f"no {check!r} in the output: {reply['out'][-200:]!r}")

        def withdraw(inst: Install) -> None:
            count[0] += 1
            name = f"w{count[0]}@h1"
            _, pid = r1.spawn(inst.xmppll("announce", "--json", name))
            wait_until(lambda: (sockets / f"{name}.sock").exists(), 20, f"{name} to start")
            # Done starting (announcements, first queries, the key child): in the state
            # of the agent the status and browse rows talk to.
            wait_idle(pid)
            timed(f"path/{inst.label}/withdraw", r1.run(inst.xmppll("withdraw", name)))
            r1.stop(pid)

        def listen(inst: Install) -> None:
            # Something unread in h1's inbox: listen --backlog prints it at once.
            sent = h2.xmppll("send", "tester@h1", "bench listen", timeout=30)
            if sent.returncode:
                raise RuntimeError(f"send to tester@h1: {sent.stderr.strip()[-200:]}")
            timed(f"path/{inst.label}/listen",
                  r1.first(inst.xmppll("listen", "--backlog", "--json")), "bench listen")

        jobs: list[tuple[str, Callable[[], None]]] = [
            ("floor", lambda: timed("path/floor", r1.run(floor()))),
            ("floor h3", lambda: timed("path/floor-h3", r3.run(floor()))),
        ]
        for inst in installs:
            label = inst.label
            jobs += [
                (f"{label} status", lambda i=inst: timed(
                    f"path/{i.label}/status", r1.run(i.xmppll("status", "--json")), "tester@h1")),
                (f"{label} browse", lambda i=inst: timed(
                    f"path/{i.label}/browse", r1.run(i.xmppll("browse", "--json")), "tester@h2")),
                (f"{label} send", lambda i=inst: timed(
                    f"path/{i.label}/send", r1.run(i.xmppll("send", "tester@h2", "bench")))),
                (f"{label} listen", lambda i=inst: listen(i)),
                (f"{label} TAB", lambda i=inst: timed(
                    f"path/{i.label}/complete", r1.run(i.xmppll(), env=tab), "h2")),
                (f"{label} withdraw", lambda i=inst: withdraw(i)),
                (f"{label} help", lambda i=inst: timed(
                    f"path/{i.label}/help", r1.run(i.xmppll("--help")), "Usage")),
                (f"{label} send standalone", lambda i=inst: timed(
                    f"path/{i.label}/send-standalone",
                    r3.run(i.xmppll("send", "tester@h2", "standalone")))),
            ]
        round_robin(res, jobs, runs)


METHOD_NOTES = [
    "Times are wall time from spawn to exit (to the observer's line for publication and "
    "status), spawned inside the host, so every row includes its own process start-up: "
    "`python3 -c pass` is the floor of any Python command, and avahi's tools are C.",
    "Completeness: names listed / names published (xmppll: JSON lines; avahi: unique "
    "names among `=` lines).",
    "Cold avahi: no browse of the type on that daemon for 1.5 s (its record cache may "
    "still hold the peers; it waits ~1 s for \"all for now\"); warm: a background "
    "`avahi-browse -rp` keeps it browsing. `xmppll browse --no-agent` keeps no cache "
    "between runs.",
    "Idle CPU is not a steady state: the window (below) is early in the agent's and "
    "the background browser's life, so it holds whichever of their continuous queries "
    "fall in it (RFC 6762 §5.2: intervals doubling from 1 s; at 500 peers each carries "
    "~500 known answers in ~40 datagrams, which every host processes), and no refresh "
    "of the SRV/A records (TTL 120 s, refreshed from ~96 s): `--idle 120` or more "
    "would include one.",
]


# --- the table --------------------------------------------------------------------------

def ms(value: float) -> str:
    value *= 1000
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def timing(s: Series | None, unit: str = "ms") -> str:
    if s is None or not s.values:
        return "n/a"
    lo, hi = min(s.values), max(s.values)
    if unit == "ms":
        cell = f"{ms(s.median())} ms ({ms(lo)}–{ms(hi)})"
    elif unit == "/s":
        cell = f"{s.median():,.0f}/s ({lo:,.0f}–{hi:,.0f})"
    elif unit == "MB":
        cell = f"{s.median():.1f} MB"
    elif unit == "cpu_ns":  # CPU seconds from schedstat
        cell = f"{s.median() * 1000:.1f} ms"
    else:  # CPU seconds, in clock ticks (10 ms)
        cell = f"{s.median() * 1000:.0f} ms"
    return cell + (" ⚠" if s.errors else "")


def completeness(s: Series | None) -> str:
    if s is None or not s.found or not s.expected:
        return ""
    whole = sum(f >= s.expected for f in s.found)
    worst = min(s.found)
    text = f"{statistics.median(s.found):g}/{s.expected} median"
    if whole == len(s.found):
        return f"{s.expected}/{s.expected} in {whole}/{len(s.found)} runs"
    return f"{text}, min {worst}; complete in {whole}/{len(s.found)} runs"


def overflow_note(s: Series | None) -> str:
    total = int(sum(s.values)) if s else 0
    return (f"{total} connections overflowed the agent's listen queue (SYN retried after "
            "1 s)" if total else "no listen queue overflow")


def ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return ""
    return f"{a / b:.2f}×"


def report(res: Results, cfg: argparse.Namespace, info: dict[str, Any]) -> str:
    S = res.series.get
    rows: list[tuple[str, ...]] = []

    def row(area: str, what: str, mine: str, ref_label: str, ref: str, rat: str,
            note: str = "") -> None:
        rows.append((area, what, mine, ref_label, ref, rat, note))

    for n in cfg.peers:
        peers = f"{n} peer{'s' * (n > 1)}"
        a, na = S(f"browse/{n}/agent"), S(f"browse/{n}/no-agent")
        w, c = S(f"browse/{n}/avahi-warm"), S(f"browse/{n}/avahi-cold")
        row("Discovery", f"browse, {peers}: `xmppll browse` (agent) vs `avahi-browse -trp`, "
            "warm daemon", timing(a), "avahi warm", timing(w),
            ratio(res.median(f"browse/{n}/agent"), res.median(f"browse/{n}/avahi-warm")),
            f"xmppll {completeness(a)}; avahi {completeness(w)}; same host's "
            f"`python3 -c pass` {timing(S(f'browse/{n}/floor'))}")
        row("Discovery", f"browse, {peers}: `xmppll browse --no-agent` vs `avahi-browse -trp`, "
            "cold daemon", timing(na), "avahi cold", timing(c),
            ratio(res.median(f"browse/{n}/no-agent"), res.median(f"browse/{n}/avahi-cold")),
            f"xmppll {completeness(na)}; avahi {completeness(c)}")
    for obs, label in (("xmppll-observer", "`xmppll browse --follow` `added`"),
                       ("avahi-observer", "`avahi-browse -rp` `=`")):
        row("Publication", f"start → seen on another host by {label}",
            timing(S(f"publish/xmppll/{obs}")), "`avahi-publish -s`",
            timing(S(f"publish/avahi/{obs}")),
            ratio(res.median(f"publish/xmppll/{obs}"), res.median(f"publish/avahi/{obs}")),
            "avahi-publish talks to a daemon already running; RFC 6762 §8.1 alone takes "
            "750-1000 ms (mean 875) once a responder is ready: 0-250 ms at random, three "
            "probes 250 ms apart, 250 ms")
    row("Publication", "status change → `updated` on a follower: `xmppll status away` "
        "(spawn) vs avahi UpdateServiceTxt (D-Bus call)", timing(S("status/xmppll")),
        "avahi TXT update", timing(S("status/avahi-dbus")),
        ratio(res.median("status/xmppll"), res.median("status/avahi-dbus")),
        "avahi-publish has no TXT update; the D-Bus call is what libpurple uses")
    row("Publication", "status change by restarting `avahi-publish` (the CLI's only way)",
        "n/a", "kill + avahi-publish", timing(S("status/avahi-republish")),
        ratio(res.median("status/xmppll"), res.median("status/avahi-republish")),
        "xmppll status / re-publish; the name is probed again")
    floor = res.median("startup/floor")
    row("Messaging", "`xmppll send` to a known peer, with agent", timing(S("send/agent")),
        "`python3 -c pass`", timing(S("startup/floor")),
        ratio(res.median("send/agent"), floor), "reused stream, receipt after fsync")
    row("Messaging", "`xmppll send` to a known peer, no agent (resolve, connect, close)",
        timing(S("send/no-agent")), "`python3 -c pass`", timing(S("startup/floor-h3")),
        ratio(res.median("send/no-agent"), res.median("startup/floor-h3")),
        f"with agent / without: {ratio(res.median('send/agent'), res.median('send/no-agent'))}")
    one = res.median("flood/1/rate")
    for streams in cfg.streams:
        rate = S(f"flood/{streams}/rate")
        rss = S(f"flood/{streams}/hwm")
        idle_rss = S(f"flood/{streams}/idle-rss")
        row("Messaging", f"inbox throughput, {cfg.messages:,} stanzas over {streams} "
            f"concurrent stream{'s' * (streams > 1)}", timing(rate, "/s"),
            "1 stream" if streams > 1 else "", timing(S("flood/1/rate"), "/s")
            if streams > 1 else "", ratio(res.median(f"flood/{streams}/rate"), one)
            if streams > 1 else "",
            f"agent peak RSS {timing(rss, 'MB')} (idle {timing(idle_rss, 'MB')}); "
            f"stored {completeness(rate)}; {overflow_note(S(f'flood/{streams}/overflows'))}")
    if "flood/1-before/rate" in res.series:
        row("Messaging", f"inbox throughput, 1 stream, this tree vs before ({cfg.baseline})",
            timing(S("flood/1/rate"), "/s"), "before", timing(S("flood/1-before/rate"), "/s"),
            ratio(one, res.median("flood/1-before/rate")),
            f"the same flood against each agent in one LAN; before: stored "
            f"{completeness(S('flood/1-before/rate'))}")
    path_floor = res.median("path/floor")
    for key, what, target in (
            ("status", "`xmppll status --json`", AGENT_PATH_TARGET),
            ("browse", "`xmppll browse --json` (1 peer, from the agent's cache)",
             AGENT_PATH_TARGET),
            ("withdraw", "`xmppll withdraw NAME` (returns once peers have been told)",
             AGENT_PATH_TARGET),
            ("listen", "`xmppll listen --backlog`: spawn → first stanza printed",
             AGENT_PATH_TARGET),
            ("complete", "TAB: `xmppll send tes<TAB>` (bash completion of a peer name)",
             AGENT_PATH_TARGET),
            ("send", "`xmppll send` to an xmppll agent (its fsync and receipt included)",
             SEND_TARGET),
            ("help", "`xmppll --help` (click)", None),
            ("send-standalone", "`xmppll send`, no agent on the host (resolve, connect)",
             None)):
        mine = res.median(f"path/{CURRENT.label}/{key}")
        base = res.median(f"path/{BASELINE.label}/{key}") if BASELINE else None
        ref = res.median("path/floor-h3") if key == "send-standalone" else path_floor
        over = f"floor + {ms(mine - ref)} ms" if mine is not None and ref else ""
        if target is not None:
            goal = f"target ≤ floor + {target * 1000:.0f} ms: " + (
                "met" if mine is not None and ref and mine - ref <= target else "missed")
        else:
            goal = "target: no slower than before" + (
                (": met" if mine <= base * 1.05 else ": missed") if mine and base else "")
        before = (f"; before ({BASELINE.label}): {timing(S(f'path/{BASELINE.label}/{key}'))}"
                  f", {ratio(mine, base)} of it" if BASELINE else "")
        row("Agent path", what, timing(S(f"path/{CURRENT.label}/{key}")), "`python3 -c pass`",
            timing(S("path/floor-h3" if key == "send-standalone" else "path/floor")),
            ratio(mine, ref), f"{over}; {goal}{before}")
    for key, what in (("help", "`xmppll --help`"), ("status", "`xmppll status` (agent running)")):
        row("Start-up", what, timing(S(f"startup/{key}")), "`python3 -c pass`",
            timing(S("startup/floor")), ratio(res.median(f"startup/{key}"), floor))
    for n in cfg.peers:
        peers = f"{n} peer{'s' * (n > 1)}"
        agent_rss, d_rss = S(f"idle/{n}/agent/rss"), S(f"idle/{n}/avahi-daemon/rss")
        b_rss = S(f"idle/{n}/avahi-browse/rss")
        avahi_rss = (d_rss.median() or 0) + (b_rss.median() or 0) if d_rss and b_rss else None
        row("Scale", f"idle RSS, {peers} cached: agent vs avahi-daemon + `avahi-browse -rp`",
            timing(agent_rss, "MB"), "avahi", f"{avahi_rss:.1f} MB" if avahi_rss else "n/a",
            ratio(agent_rss.median() if agent_rss else None, avahi_rss),
            f"agent peak {timing(S(f'idle/{n}/agent/hwm'), 'MB')}; "
            f"daemon {timing(d_rss, 'MB')} + browser {timing(b_rss, 'MB')}")
        a_cpu, d_cpu = S(f"idle/{n}/agent/cpu"), S(f"idle/{n}/avahi-daemon/cpu")
        b_cpu = S(f"idle/{n}/avahi-browse/cpu")
        avahi_cpu = (d_cpu.median() or 0) + (b_cpu.median() or 0) if d_cpu and b_cpu else None
        row("Scale", f"idle CPU over {cfg.idle:g} s, {peers}: agent vs avahi-daemon + browser",
            timing(a_cpu, "cpu"), "avahi",
            f"{avahi_cpu * 1000:.0f} ms" if avahi_cpu is not None else "n/a",
            ratio(a_cpu.median() if a_cpu else None, avahi_cpu),
            f"daemon {timing(d_cpu, 'cpu')} + browser {timing(b_cpu, 'cpu')} "
            "(utime+stime, 10 ms ticks); schedstat: agent "
            f"{timing(S(f'idle/{n}/agent/cpu_ns'), 'cpu_ns')}, daemon "
            f"{timing(S(f'idle/{n}/avahi-daemon/cpu_ns'), 'cpu_ns')}, browser "
            f"{timing(S(f'idle/{n}/avahi-browse/cpu_ns'), 'cpu_ns')}")

    header = ("area", "measurement", "xmppll", "reference", "reference value",
              "xmppll / reference", "notes")
    lines = [f"Medians of {cfg.runs} runs (min–max), after one warm-up round; "
             f"{info['cpus']} CPUs ({info['cpu']}), load average {info['load_start']} at "
             f"start, {info['load_end']} at end; {info['system']}; Python "
             f"{info['python']}; avahi {info['avahi']}; xmppll {info['install']}; bench "
             f"took {info['took']:.0f} s"
             + (" (--quick)" if cfg.quick else "") + ".", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in rows]
    lines += ["", *growth(res, cfg)]
    errors = [f"- ⚠ {key}: {'; '.join(sorted(set(s.errors)))}"
              for key, s in res.series.items() if s.errors]
    if errors:
        lines += ["", "Errors (cells marked ⚠):", *errors]
    lines += ["", "Notes:", *(f"- {note}" for note in METHOD_NOTES), *(
        f"- {note}" for note in res.notes)]
    return "\n".join(lines)


def growth(res: Results, cfg: argparse.Namespace) -> list[str]:
    """How each cost grows with the peers: the value at each count, and the cost per
    added peer between consecutive counts (similar slopes: linear; a falling one: a
    fixed cost that the peers do not add to)."""
    counts = sorted(cfg.peers)
    if len(counts) < 2:
        return []
    at = " / ".join(map(str, counts))
    out = [f"How cost grows with peers (values at {at} peers; cost per added peer "
           "between consecutive counts):"]

    def line(what: str, key: str, scale: float, unit: str) -> str:
        values = [res.median(key.format(n=n)) for n in counts]
        if any(v is None for v in values):
            return f"- {what}: n/a"
        values = [v * scale for v in values]  # type: ignore[operator]
        shown = " / ".join(f"{v:.0f}" if v >= 10 else f"{v:.1f}" for v in values)
        slopes = ", ".join(
            f"{(b - a) / (m - n):+.2f} {unit}/peer ({n}→{m})"
            for a, b, n, m in zip(values, values[1:], counts, counts[1:], strict=False))
        return f"- {what}: {shown} {unit}; {slopes}"

    for key, what in (("agent", "`xmppll browse` (agent), wall"),
                      ("no-agent", "`xmppll browse --no-agent`, wall"),
                      ("avahi-warm", "`avahi-browse -trp` (warm daemon), wall"),
                      ("avahi-cold", "`avahi-browse -trp` (cold daemon), wall")):
        out.append(line(what, "browse/{n}/" + key, 1000, "ms"))
    for key, what in (("agent", "agent"), ("avahi-daemon", "avahi-daemon"),
                      ("avahi-browse", "background `avahi-browse -rp`")):
        out.append(line(f"{what}, idle RSS", "idle/{n}/" + key + "/rss", 1024, "KB"))
        out.append(line(f"{what}, CPU over {cfg.idle:g} s idle (schedstat)",
                        "idle/{n}/" + key + "/cpu_ns", 1000, "ms"))
    return out


def draw(res: Results, cfg: argparse.Namespace, path: Path) -> None:
    """The growth lines as a picture: browse wall time, idle RSS and idle CPU against
    the number of peers, xmppll beside avahi (matplotlib: a benchmark-only extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted(cfg.peers)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), layout="constrained")

    def plot(ax: Any, key: str, scale: float, label: str, style: str) -> None:
        points = [(n, res.median(key.format(n=n))) for n in counts]
        points = [(n, v * scale) for n, v in points if v is not None]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=label)

    ax = axes[0]
    plot(ax, "browse/{n}/agent", 1000, "xmppll browse (agent)", "o-")
    plot(ax, "browse/{n}/no-agent", 1000, "xmppll browse --no-agent", "s-")
    plot(ax, "browse/{n}/avahi-warm", 1000, "avahi-browse -trp, warm", "^--")
    plot(ax, "browse/{n}/avahi-cold", 1000, "avahi-browse -trp, cold", "v--")
    plot(ax, "browse/{n}/floor", 1000, "python3 -c pass", "k:")
    ax.set(title="browse: spawn to exit", ylabel="ms (median)", yscale="log")
    ax = axes[1]
    plot(ax, "idle/{n}/agent/rss", 1, "xmppll agent", "o-")
    plot(ax, "idle/{n}/avahi-daemon/rss", 1, "avahi-daemon", "^--")
    plot(ax, "idle/{n}/avahi-browse/rss", 1, "avahi-browse -rp", "v--")
    ax.set(title="idle RSS", ylabel="MB")
    ax = axes[2]
    plot(ax, "idle/{n}/agent/cpu_ns", 1000, "xmppll agent", "o-")
    plot(ax, "idle/{n}/avahi-daemon/cpu_ns", 1000, "avahi-daemon", "^--")
    plot(ax, "idle/{n}/avahi-browse/cpu_ns", 1000, "avahi-browse -rp", "v--")
    ax.set(title=f"idle CPU over {cfg.idle:g} s", ylabel="ms (schedstat)")
    for ax in axes:
        ax.set(xlabel="peers on the link", xscale="log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    print(f"# drew {path}", file=sys.stderr)


# --- main -------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    avahi = subprocess.run(["avahi-daemon", "--version"], capture_output=True, text=True)
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "system": f"Linux {platform.release()}",
            "avahi": (avahi.stdout.split() or ["?", "?"])[-1],
            "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 runs, peers 1/10/50, 1,000 stanzas, 5 s idle")
    parser.add_argument("--runs", type=int, help="timed runs per measurement [7; quick 2]")
    parser.add_argument("--idle", type=float, help="idle window in s [30; quick 5]")
    parser.add_argument("--raw", type=Path, help="also write every measurement as JSON here")
    parser.add_argument("--editable", action="store_true", help="time this interpreter's "
                        "install (-m xmppll) instead of a wheel in a venv of its own")
    parser.add_argument("--baseline", metavar="REV", help="also time a wheel of REV (git) "
                        "on the agent path and one stream's flood, as 'before'")
    parser.add_argument("--only", metavar="SECTIONS", help="comma-separated: discovery, "
                        "publication, messaging, agent-path [all]")
    parser.add_argument("--png", type=Path, help="draw how the costs grow with the peers "
                        "here (needs matplotlib: pip install -e '.[bench]')")
    parser.add_argument("--runner", action="store_true", help=argparse.SUPPRESS)
    cfg = parser.parse_args()
    if cfg.runner:
        runner()
        return
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces): sudo .venv/bin/python bench/all.py")
    from peers import missing_avahi

    missing = missing_avahi()
    if missing:
        sys.exit(f"needs {missing}")
    cfg.runs = cfg.runs or (2 if cfg.quick else 7)
    cfg.idle = cfg.idle if cfg.idle is not None else (5.0 if cfg.quick else 30.0)
    cfg.peers = (1, 10, 50) if cfg.quick else (1, 50, 500)
    cfg.messages = 1000 if cfg.quick else 10000
    cfg.streams = (1, 100, 500)
    info = machine_info()
    started = time.monotonic()
    res = Results()
    global CURRENT, BASELINE
    if not cfg.editable:
        print("# installing a wheel of the working tree ...", file=sys.stderr, flush=True)
        CURRENT = install(None, "this tree")
    if cfg.baseline:
        print(f"# installing a wheel of {cfg.baseline} ...", file=sys.stderr, flush=True)
        BASELINE = install(cfg.baseline, cfg.baseline)
    info["install"] = ("editable, python -m xmppll" if cfg.editable else
                       "a wheel in a venv of its own, its console script")
    sections = set((cfg.only or "discovery,publication,messaging,agent-path").split(","))

    def step(what: str, fn: Callable[[], None]) -> None:
        t = time.monotonic()
        print(f"# {what} ...", file=sys.stderr, flush=True)
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - the rest still runs; the table says so
            res.notes.append(f"⚠ {what} stopped early: {type(exc).__name__}: "
                             f"{str(exc)[:500]}")
        print(f"#   {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)

    if "agent-path" in sections:
        step("the agent path", lambda: bench_agent_path(res, cfg.runs))
    if "discovery" in sections:
        for n in cfg.peers:
            step(f"discovery and idle cost, {n} peers",
                 lambda n=n: bench_discovery(res, n, cfg.runs, cfg.idle))
    if "publication" in sections:
        step("publication and status", lambda: bench_publication(res, cfg.runs))
    if "messaging" in sections:
        step("messaging", lambda: bench_messaging(res, cfg.runs, cfg.messages, cfg.streams))
    info["took"] = time.monotonic() - started
    info["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if cfg.raw:
        cfg.raw.write_text(json.dumps({"info": info, **res.to_json()}, indent=1))
    print(report(res, cfg, info))
    if cfg.png:
        draw(res, cfg, cfg.png)


if __name__ == "__main__":
    main()
