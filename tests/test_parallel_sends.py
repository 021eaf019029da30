"""Parallel sends to one peer: every message arrives, once (issue 16).

A notification script fans out: 20 `xmppll send PEER "..." &` at once. libpurple keeps
one conversation per buddy and drops the previous connection when a new one arrives;
telepathy-salut closes a second connection from a contact at once. So the agent queues
messages to one peer on that peer's one connection, and sends without an agent take
turns. Real peers in the virtual LAN:

    h1  xmppll agent juliet@h1 (the sender for the agent cases)
    h2  avahi-daemon + finch (libpurple) romeo@h2
    h3  avahi-daemon + telepathy-salut alice@h3
    h4  xmppll agent ops@h4 with `listen --json` (an xmppll receiver)
    h5  no agent: the standalone sender
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import lan_missing, require
from lan import Host, Lan, Lines
from peers import AvahiDaemon, Finch, Salut, missing_avahi, missing_finch, missing_salut
from xmppll_side import Agent, listen, start_agent, stop_gently, wait_until

pytestmark = pytest.mark.lan
OUT = Path(__file__).parent / "artifacts" / "parallel"
FANOUT = 20


@dataclass
class World:
    lan: Lan
    finch: Finch
    salut: Salut
    sender: Agent
    receiver: Agent
    inbox: Lines


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    missing = lan_missing()
    require(missing is None, f"virtual LAN support: {missing}")
    require(missing_avahi() is None, f"avahi peer: {missing_avahi()}")
    require(missing_finch() is None, f"libpurple Bonjour peer: {missing_finch()}")
    require(missing_salut() is None, f"telepathy-salut peer: {missing_salut()}")
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    lan = Lan(5)
    stack: list[Callable[[], None]] = []
    w: World | None = None
    try:
        h1, h2, h3, h4, _h5 = lan.hosts
        with ThreadPoolExecutor(4) as pool:
            f_sender = pool.submit(start_agent, h1, "juliet@h1")
            f_receiver = pool.submit(start_agent, h4, "ops@h4")
            f_avahi2 = pool.submit(AvahiDaemon, h2)
            f_avahi3 = pool.submit(AvahiDaemon, h3)
            avahi2, avahi3 = f_avahi2.result(), f_avahi3.result()
            stack += [avahi2.stop, avahi3.stop]
            f_finch = pool.submit(Finch, h2, avahi2)
            f_salut = pool.submit(Salut, h3, avahi3, "alice", "Alice", "Liddell")
            finch, salut = f_finch.result(), f_salut.result()
            stack += [finch.stop, salut.stop]
            sender, receiver = f_sender.result(), f_receiver.result()
        proc, inbox, _err = listen(h4)
        stack.append(lambda: stop_gently(proc))
        w = World(lan, finch, salut, sender, receiver, inbox)
        yield w
        assert finch.alive(), "finch died during the module"
        assert salut.alive(), "telepathy-salut died during the module"
    finally:
        try:
            if w is not None:
                w.finch.save_debug_log(OUT)
                w.salut.save_debug_log(OUT)
                (OUT / "sender-h1.stderr").write_text("\n".join(w.sender.err.lines) + "\n")
        finally:
            for stop in reversed(stack):
                try:
                    stop()
                except Exception as exc:  # teardown goes on; the test result stands
                    print(f"parallel teardown: {exc!r}")
            lan.close()


def fan_out(host: Host, to: str, tag: str, *extra: str) -> list[subprocess.CompletedProcess]:
    """FANOUT `xmppll send` processes started at once; their results in start order."""
    procs = [host.xmppll_popen("send", *extra, to, f"{tag} {i}") for i in range(FANOUT)]
    results = []
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        assert proc.returncode is not None, i
    return results


def tag() -> str:
    return f"par{random.randrange(10**6)}"


def _record(name: str, results: list[subprocess.CompletedProcess], took: float) -> None:
    (OUT / f"{name}.json").write_text(json.dumps({
        "seconds": round(took, 2),
        "exit codes": [r.returncode for r in results],
        "errors": [r.stderr.strip() for r in results if r.returncode]}, indent=1))


def test_twenty_parallel_sends_through_the_agent_to_libpurple(world: World) -> None:
    romeo = world.finch.name
    wait_until(lambda: world.finch.buddy_online(world.sender.name), 15,
               "finch to see juliet@h1")
    t = tag()
    start = time.monotonic()
    results = fan_out(world.sender.host, romeo, t)
    _record("agent-to-libpurple", results, time.monotonic() - start)
    assert [r.returncode for r in results] == [0] * FANOUT, [r.stderr for r in results]
    wanted = {f"{t} {i}" for i in range(FANOUT)}
    wait_until(lambda: wanted <= {m for _, m in world.finch.received()}, 15,
               "finch to show every message")
    got = [m for _, m in world.finch.received() if m.startswith(t + " ")]
    assert sorted(got) == sorted(wanted), "each message exactly once"
    assert world.finch.alive()


def test_twenty_parallel_sends_through_the_agent_to_salut(world: World) -> None:
    alice = world.salut.name
    wait_until(lambda: world.salut.contacts().get(world.sender.name), 15,
               "salut to see juliet@h1")
    t = tag()
    start = time.monotonic()
    results = fan_out(world.sender.host, alice, t)
    _record("agent-to-salut", results, time.monotonic() - start)
    assert [r.returncode for r in results] == [0] * FANOUT, [r.stderr for r in results]
    for i in range(FANOUT):
        world.salut.wait_message(lambda e, i=i: e["text"] == f"{t} {i}", 10)
    got = [e["text"] for e in world.salut.events("message") if e["text"].startswith(t + " ")]
    assert sorted(got) == sorted(f"{t} {i}" for i in range(FANOUT)), "each exactly once"
    assert world.salut.alive()


def test_twenty_parallel_sends_through_the_agent_to_xmppll(world: World) -> None:
    t = tag()
    results = fan_out(world.sender.host, world.receiver.name, t)
    assert [r.returncode for r in results] == [0] * FANOUT, [r.stderr for r in results]
    seen = [world.inbox.wait_json(lambda r: r["body"].startswith(t + " "), 10)["body"]
            for _ in range(FANOUT)]
    assert sorted(seen) == sorted(f"{t} {i}" for i in range(FANOUT))
    time.sleep(0)  # nothing more may come: checked against the inbox on disk below
    stored = [json.loads(line) for line in
              world.receiver.host.run(["cat", str(world.receiver.host.home /
                                       ".local/state/xmppll/ops@h4/inbox.jsonl")],
                                      timeout=10).stdout.splitlines()]
    mine = [r["body"] for r in stored if (r.get("body") or "").startswith(t + " ")]
    assert sorted(mine) == sorted(f"{t} {i}" for i in range(FANOUT)), "stored once each"


def test_twenty_parallel_standalone_sends_to_libpurple(world: World) -> None:
    """No agent on h5: the sends take turns (one transient presence at a time, one
    connection to romeo at a time). Whatever each says, none may claim a message that
    finch did not get."""
    romeo = world.finch.name
    t = tag()
    start = time.monotonic()
    results = fan_out(world.lan.hosts[4], romeo, t, "--from", "cron@h5")
    took = time.monotonic() - start
    _record("standalone-to-libpurple", results, took)
    delivered = {f"{t} {i}" for i, r in enumerate(results) if r.returncode == 0}
    wait_until(lambda: delivered <= {m for _, m in world.finch.received()}, 15,
               "finch to show every message reported delivered")
    got = [m for _, m in world.finch.received() if m.startswith(t + " ")]
    assert len(got) == len(set(got)), "no message twice"
    assert len(delivered) == FANOUT, (f"{FANOUT - len(delivered)} failed in {took:.1f} s: "
                                      f"{[r.stderr for r in results if r.returncode]}")
    assert world.finch.alive()
