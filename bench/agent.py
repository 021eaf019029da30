#!/usr/bin/env python3
"""The agent as a warm cache (issue 4): one-shot commands against avahi and the floor.

    sudo .venv/bin/python bench/agent.py [--runs 9] [--peers 50] [--json]

One virtual LAN (tests/lan.py; needs root), one set of `--peers` names published by
python-zeroconf from one process (tests/helpers/zc_peers.py), and on it:

- h1 runs an avahi-daemon (tests/peers/avahi.py AvahiDaemon, its own system bus) and an
  agent beside it, as a desktop would; there, round-robin: `xmppll browse --json`
  (answered from the agent's cache), `xmppll browse --no-agent --json` (a one-shot
  mDNS browse of its own), `avahi-browse -trp _presence._tcp` cold (no browser of
  the type on the daemon, none for the last 1.5 s: it waits for avahi's "all for
  now", ~1 s) and `python3 -c pass`; then, with a background `avahi-browse -rp
  _presence._tcp` keeping the daemon browsing, `xmppll browse` and avahi-browse -trp
  warm in the same rounds;
- `xmppll send` to an agent on h2: from h1 through its agent (a reused stream), and
  from h4, which has no agent (resolve, connect, deliver, close), with the floor;
  beside them `xmppll status` (start-up plus one control round trip, no delivery) and
  `xmppll --version` (start-up alone) show where the time of `send` goes.

Commands are timed inside their host by this same script (`--runner`), spawn to exit,
round-robin so that load drifts hit every command alike, after one warm-up round.
Prints the median, min and max wall time per command and the issue's ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from common import wait_until  # noqa: E402
from lan import Host, Lan, Lines  # noqa: E402

ZC_PEERS = str(ROOT / "tests" / "helpers" / "zc_peers.py")
PY = sys.executable
SERVICE = "_presence._tcp"
COLD_PAUSE = 1.5  # s; avahi answers -t at once for ~1 s after the last browse ended


# --- inside a host ---------------------------------------------------------------------

def runner() -> None:
    """Time each command of the spec on stdin, round-robin; print the walls as JSON.

    Each command's output lines that start with its `count` prefix are counted (from
    the last round), so a fast but empty answer shows up as such."""
    spec = json.load(sys.stdin)
    commands = spec["commands"]
    walls: dict[str, list[float]] = {c["label"]: [] for c in commands}
    counts: dict[str, int] = {}
    errors: dict[str, str] = {}
    for round_ in range(spec["warmup"] + spec["runs"]):
        for c in commands:
            time.sleep(c.get("pause", 0))
            start = time.perf_counter()
            done = subprocess.run(c["argv"], stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=60)
            wall = time.perf_counter() - start
            if done.returncode:
                errors[c["label"]] = f"exit {done.returncode}: {done.stderr.strip()[-300:]}"
            if round_ >= spec["warmup"]:
                walls[c["label"]].append(wall)
            if c.get("count") is not None:
                counts[c["label"]] = sum(
                    line.startswith(c["count"]) for line in done.stdout.splitlines())
    print(json.dumps({"walls": walls, "counts": counts, "errors": errors}))


# --- the bench -------------------------------------------------------------------------

def measure(host: Host, commands: list[dict[str, Any]], runs: int,
            env: dict[str, str] | None = None) -> dict[str, Any]:
    spec = {"commands": commands, "runs": runs, "warmup": 1}
    done = host.run([PY, __file__, "--runner"], input=json.dumps(spec), env=env,
                    timeout=600)
    if done.returncode:
        raise RuntimeError(f"runner on {host.name} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def cached(host: Host, prefix: str) -> int:
    done = host.xmppll("browse", "--json", timeout=30)
    return sum(json.loads(line)["name"].startswith(prefix)
               for line in done.stdout.splitlines() if line.strip())


def start_agent(host: Host) -> None:
    proc = host.xmppll_popen("announce", "--json")
    Lines(proc.stdout).wait_json(lambda r: r["event"] == "announced", 20)


def xmppll(*args: str) -> list[str]:
    return [PY, "-m", "xmppll", *args]


def run_bench(runs: int, n_peers: int) -> dict[str, Any]:
    results: dict[str, Any] = {"runs": runs, "peers": n_peers, "rows": {}, "counts": {},
                               "errors": {}, "notes": [], "load": [os.getloadavg()[0]]}

    def take(measured: dict[str, Any], prefix: str = "") -> None:
        for label, walls in measured["walls"].items():
            results["rows"][prefix + label] = walls
        results["counts"].update({prefix + k: v for k, v in measured["counts"].items()})
        results["errors"].update({prefix + k: v for k, v in measured["errors"].items()})

    with Lan(4) as lan:
        a, b, p, e = lan.hosts
        publisher = p.popen([PY, ZC_PEERS, str(n_peers), "--prefix", "peer"])
        Lines(publisher.stdout).wait_for(f"ready {n_peers}", 60)
        try:
            from peers import AvahiDaemon
        except ImportError as exc:
            avahi = None
            results["notes"].append(f"avahi rows skipped: tests/peers/avahi.py AvahiDaemon ({exc})")
        else:
            # First, so that the agent finds it and shares the host (as on a desktop).
            avahi = AvahiDaemon(a)
        env = avahi.env if avahi else None
        start_agent(a)
        wait_until(lambda: cached(a, "peer") >= n_peers, 30, "h1's agent to cache the peers")

        floor = {"label": "python3 -c pass (h1)", "argv": [PY, "-c", "pass"]}
        peer_json = '{"name": "peer'
        agent_browse = {"label": "xmppll browse (agent)", "argv": xmppll("browse", "--json"),
                        "count": peer_json}
        browse = ["avahi-browse", "-trp", SERVICE]
        count = "=;eth0;IPv4;peer"  # one resolved line per peer and protocol
        take(measure(a, [
            agent_browse,
            {"label": "xmppll browse --no-agent",
             "argv": xmppll("browse", "--json", "--no-agent"), "count": peer_json},
            # A browse that ended less than ~1 s ago leaves the daemon warm: pause.
            *([{"label": "avahi-browse -trp (cold daemon)", "argv": browse, "count": count,
                "pause": COLD_PAUSE}] if avahi else []),
            floor,
        ], runs, env=env))
        if avahi:
            background = a.popen(["avahi-browse", "-rp", SERVICE], env=env)
            bg = Lines(background.stdout)
            wait_until(lambda: sum(line.startswith(count) for line in bg.lines) >= n_peers,
                       30, "the background avahi-browse to resolve every peer")
            take(measure(a, [
                {**agent_browse, "label": "xmppll browse (agent), warm round"},
                {"label": "avahi-browse -trp (warm daemon)", "argv": browse, "count": count},
                {**floor, "label": "python3 -c pass (h1), warm round"},
            ], runs, env=env))

        start_agent(b)
        wait_until(lambda: cached(a, "tester@h2") >= 1, 20, "h1's agent to see h2")
        text = "benchmark message"
        take(measure(a, [
            {"label": "xmppll send (agent)", "argv": xmppll("send", "tester@h2", text)},
            {"label": "xmppll status (agent)", "argv": xmppll("status", "--json")},
            {"label": "xmppll --version", "argv": xmppll("--version")},
            {**floor, "label": "python3 -c pass (h1, send)"},
        ], runs, env=env))
        take(measure(e, [
            {"label": "xmppll send (no agent)", "argv": xmppll("send", "tester@h2", text)},
            {"label": "python3 -c pass (h4)", "argv": floor["argv"]},
        ], runs))
    results["load"].append(os.getloadavg()[0])
    return results


def report(results: dict[str, Any]) -> None:
    rows = results["rows"]
    med = {label: statistics.median(walls) * 1000 for label, walls in rows.items() if walls}
    print(f"# xmppll agent bench: {results['peers']} peers, median of {results['runs']} runs "
          "(ms, spawn to exit, timed inside the host)")
    print(f"# {os.cpu_count()} CPUs, 1-min load average {results['load'][0]:.1f} at start, "
          f"{results['load'][-1]:.1f} at end: compare the python3 -c pass rows between runs")
    print(f"{'command':36} {'median':>8} {'min':>8} {'max':>8} {'found':>6}")
    for label, walls in rows.items():
        ms = [w * 1000 for w in walls]
        found = results["counts"].get(label, "")
        print(f"{label:36} {med[label]:8.1f} {min(ms):8.1f} {max(ms):8.1f} {found!s:>6}")
    for label, error in results["errors"].items():
        print(f"! {label}: {error}")
    for note in results["notes"]:
        print(f"! {note}")

    def goal(text: str, value: float, limit: float, unit: str = "") -> None:
        verdict = "met" if value <= limit else "MISSED"
        print(f"{text:58} {value:8.2f}{unit} <= {limit:.2f}{unit}  {verdict}")

    print()
    agent = med.get("xmppll browse (agent)")
    standalone = med.get("xmppll browse --no-agent")
    warm = med.get("avahi-browse -trp (warm daemon)")
    cold = med.get("avahi-browse -trp (cold daemon)")
    warm_agent = med.get("xmppll browse (agent), warm round")
    if warm_agent and warm:
        goal("browse (agent) / avahi-browse -trp warm (same rounds)", warm_agent / warm, 1.0)
    if standalone and cold:
        goal("browse --no-agent / avahi-browse -trp cold", standalone / cold, 0.5)
    if agent and standalone:
        print(f"{'browse (agent) / browse --no-agent':58} {agent / standalone:8.2f}")
    if agent:
        print(f"{'browse (agent) - python3 -c pass (h1)':58} "
              f"{agent - med['python3 -c pass (h1)']:8.1f} ms")
    send, send_floor = med.get("xmppll send (agent)"), med.get("python3 -c pass (h1, send)")
    if send and send_floor:
        goal("send (agent) - python3 -c pass", send - send_floor, 60.0, " ms")
    status = med.get("xmppll status (agent)")
    if send and status:
        print(f"{'send (agent) - status (agent): the delivery itself':58} "
              f"{send - status:8.1f} ms")
    alone = med.get("xmppll send (no agent)")
    if send and alone:
        print(f"{'send (agent) / send (no agent)':58} {send / alone:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="timed runs per command (>= 7)")
    parser.add_argument("--peers", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="raw results as JSON")
    parser.add_argument("--runner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.runner:
        runner()
        return
    results = run_bench(args.runs, args.peers)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        report(results)


if __name__ == "__main__":
    main()
