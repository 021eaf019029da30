#!/usr/bin/env python3
"""The agent under churn and traffic for a long time (issue 14): does it leak?

    sudo .venv/bin/python bench/soak.py [--duration 1800] [--churn 50] [--rate 10]
                                        [--sample 10] [--warmup 300] [--json FILE]

One virtual LAN (tests/lan.py; needs root; nothing reaches the machine's network):
h1 runs the agent under test; h2 publishes `--churn` peers every second with
python-zeroconf and withdraws (goodbye) the ones of the second before, so that many
join and that many leave each second; h3 runs a second agent. Each agent is asked by a
client on its own control socket (like `xmppll send` through the agent) to send
`--rate` messages a second to the other, each with a unique body, so messages flow both
ways over the agents' streams, with receipts after fsync.

Every `--sample` seconds the h1 agent's RSS (VmRSS) and open file descriptors are
read from /proc. At the end every message a sender was told was delivered is looked
for in the receiver's inbox. Pass: after `--warmup` seconds, RSS grows by at most 5 %
(last sample against the first one after warm-up), descriptors end where they were
after warm-up (within a few: streams and timers come and go), and no acknowledged
message is missing. Bounded: it stops after `--duration` seconds, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

from lan import Lan, Lines  # noqa: E402

PY = sys.executable
FD_SLACK = 8  # descriptors that may differ between two samples without a leak

# h2: every second, `churn` new peers join (no probing) and last second's leave.
CHURN = r"""
import asyncio, signal, sys
sys.path.insert(0, sys.argv[3])
from functools import partial
from lanpeer import host_label, numbered_infos, peer_txt, register_all
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncZeroconf

async def main():
    churn, duration = int(sys.argv[1]), float(sys.argv[2])
    azc = AsyncZeroconf(ip_version=IPVersion.All)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    label = host_label()
    previous, second, joined, left = [], 0, 0, 0
    end = loop.time() + duration
    while not stop.is_set() and loop.time() < end:
        tick = loop.time()
        infos = numbered_infos(churn, f"churn{second}-", 30000, f"{label}.local.", peer_txt)
        await register_all(azc, infos)
        joined += len(infos)
        await asyncio.gather(*(azc.async_unregister_service(i) for i in previous))
        left += len(previous)
        previous, second = infos, second + 1
        print(f"second {second} joined {joined} left {left}", flush=True)
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, tick + 1.0 - loop.time()))
        except TimeoutError:
            pass
    await azc.async_unregister_all_services()
    await azc.async_close()

asyncio.run(main())
"""

# On an agent's host: `rate` messages a second to TO through the agent NAME's control
# socket (one request each, as `xmppll send` makes), for `duration` seconds; prints one
# JSON line per message: its body and whether the agent said it was delivered.
SENDER = r"""
import json, sys, time
from xmppll.agent import control
name, to, rate, duration = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
start = time.monotonic()
i = 0
while time.monotonic() - start < duration:
    body = f"soak {name} {i}"
    try:
        control.request(name, "send", message={"to": to, "body": body}, timeout=20)
        ok, error = True, None
    except Exception as exc:
        ok, error = False, str(exc)
    print(json.dumps({"body": body, "ok": ok, "error": error}), flush=True)
    i += 1
    time.sleep(max(0.0, start + i / rate - time.monotonic()))
"""


def sample(pid: int) -> dict[str, float]:
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return {"t": time.monotonic(), "rss": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def inbox_bodies(home: Path, name: str) -> set[str]:
    """Every body in an agent's inbox (the live segment and the sealed ones)."""
    state = home / ".local" / "state" / "xmppll" / name
    bodies = set()
    for path in [state / "inbox.jsonl", *sorted((state / "inbox.d").glob("*"))]:
        if path.is_file():
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    with contextlib.suppress(ValueError):  # a torn last line
                        bodies.add(json.loads(line).get("body"))
    return bodies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds [1800]")
    parser.add_argument("--churn", type=int, default=50, help="peers joining (and as "
                        "many leaving) each second [50]")
    parser.add_argument("--rate", type=float, default=10.0, help="messages a second, "
                        "each way [10]")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between "
                        "RSS/fd samples [10]")
    parser.add_argument("--warmup", type=float, help="seconds before the RSS baseline "
                        "[a sixth of --duration, at most 300]")
    parser.add_argument("--json", type=Path, help="write the samples and counts here")
    cfg = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces): sudo .venv/bin/python bench/soak.py")
    warmup = cfg.warmup if cfg.warmup is not None else min(300.0, cfg.duration / 6)
    with Lan(3) as lan:
        h1, h2, h3 = lan.hosts
        agents = {}
        for host in (h1, h3):
            proc = host.xmppll_popen("announce", "--json", f"soak@{host.name}")
            Lines(proc.stderr)  # drained
            Lines(proc.stdout).wait_json(lambda r: r["event"] == "announced", 30)
            agents[host.name] = proc
        a, b = f"soak@{h1.name}", f"soak@{h3.name}"
        deadline = time.monotonic() + 30
        while b not in h1.xmppll("browse", "--json", timeout=30).stdout:
            if time.monotonic() > deadline:
                sys.exit(f"{a} never saw {b}")
            time.sleep(0.5)
        pid = agents[h1.name].pid
        # The agent is the python under the namespace wrapper: find it by its command.
        pid = _agent_pid(pid, a)
        churn = h2.popen([PY, "-c", CHURN, str(cfg.churn), str(cfg.duration),
                          str(ROOT / "tests" / "helpers")])
        churn_out = Lines(churn.stdout)
        Lines(churn.stderr)
        senders = {
            "h1→h3": Lines(h1.popen([PY, "-c", SENDER, a, b, str(cfg.rate),
                                     str(cfg.duration)]).stdout),
            "h3→h1": Lines(h3.popen([PY, "-c", SENDER, b, a, str(cfg.rate),
                                     str(cfg.duration)]).stdout),
        }
        started = time.monotonic()
        samples = [sample(pid)]
        while time.monotonic() - started < cfg.duration:
            time.sleep(min(cfg.sample, max(0.0, started + cfg.duration - time.monotonic())))
            samples.append(sample(pid))
            s = samples[-1]
            print(f"# {s['t'] - started:6.0f} s  RSS {s['rss']:6.1f} MB  fds {s['fds']:3d}  "
                  f"{churn_out.lines[-1] if churn_out.lines else ''}", file=sys.stderr,
                  flush=True)
        time.sleep(25)  # the last sends finish (each waits up to 20 s)
        final = sample(pid)
        received = {h1.name: inbox_bodies(h1.home, a), h3.name: inbox_bodies(h3.home, b)}
        result: dict[str, Any] = {"duration": cfg.duration, "churn": cfg.churn,
                                  "rate": cfg.rate, "warmup": warmup, "samples": samples,
                                  "final": final, "churn_last": churn_out.lines[-1:]}
        for way, lines in senders.items():
            records = [json.loads(line) for line in lines.lines if line.startswith("{")]
            target = received[h3.name if way == "h1→h3" else h1.name]
            acked = [r for r in records if r["ok"]]
            lost = [r["body"] for r in acked if r["body"] not in target]
            result[way] = {"sent": len(records), "acknowledged": len(acked),
                           "refused": len(records) - len(acked), "lost": len(lost),
                           "lost_first": lost[:5],
                           "errors": sorted({r["error"] for r in records if r["error"]})[:5]}
    print(json.dumps(summary(result), indent=1))
    if cfg.json:
        cfg.json.write_text(json.dumps(result, indent=1))


def summary(result: dict[str, Any]) -> dict[str, Any]:
    samples = result["samples"]
    t0 = samples[0]["t"]
    after = [s for s in samples if s["t"] - t0 >= result["warmup"]] or samples[-1:]
    base, last = after[0], samples[-1]
    growth = (last["rss"] - base["rss"]) / base["rss"] * 100
    out = {
        "ran_s": round(last["t"] - t0),
        "rss_mb": {"start": samples[0]["rss"], "after_warmup": base["rss"],
                   "max": max(s["rss"] for s in samples), "last": last["rss"],
                   "median_after_warmup": statistics.median(s["rss"] for s in after)},
        "rss_growth_after_warmup_pct": round(growth, 2),
        "fds": {"start": samples[0]["fds"], "after_warmup": base["fds"],
                "max": max(s["fds"] for s in samples), "last": last["fds"],
                "after_the_senders_stopped": result["final"]["fds"]},
        "churn": result["churn_last"],
        "h1→h3": result["h1→h3"], "h3→h1": result["h3→h1"],
    }
    out["pass"] = {
        "rss ≤ +5 %": growth <= 5.0,
        "no descriptor leak": result["final"]["fds"] <= base["fds"] + FD_SLACK,
        "no message lost": result["h1→h3"]["lost"] == 0 and result["h3→h1"]["lost"] == 0,
    }
    return out


def _agent_pid(wrapper: int, name: str) -> int:
    """The agent's own pid: the python process under the namespace wrapper whose
    command line announces `name`."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (b"announce" in cmd and name.encode() in cmd and b"python" in cmd[0]
                and _descends(int(entry), wrapper)):
            return int(entry)
    return wrapper


def _descends(pid: int, ancestor: int) -> bool:
    """Whether `pid` runs under `ancestor`: another soak's agent (same name, another
    LAN) has the same command line."""
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


if __name__ == "__main__":
    main()
