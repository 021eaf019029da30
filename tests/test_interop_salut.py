"""Interoperability with telepathy-salut 0.8.1 (Telepathy's link-local XMPP, the engine of
Empathy), installed from bullseye by tests/run.sh and started once for the module.

| host | runs | role |
| --- | --- | --- |
| h1 | `xmppll announce`, `xmppll listen --json` for the whole module | the xmppll peer |
| h2 | avahi-daemon, telepathy-salut `alice@h2` + its D-Bus driver, a packet capture | salut |

salut keeps ONE connection per contact (wocky's meta porter): a connection it opened or
accepted stays while a Text channel holds it (or for 5 s after its last use), and a
second connection from the same contact meanwhile is answered with header, features and
`</stream:stream>` at once (salut-facts.md). The tests here are ordered around that:
`xmppll send` over a fresh connection first, once salut's own caps query to the agent
has ended; then salut writes to xmppll, which leaves salut's connection open for good;
then the reply from xmppll must travel over that open connection.

Nothing here sends salut a stream whose `from` names an unpublished service: that aborts
salut 0.8.1. The module checks that salut is still running at the end.

Artifacts in tests/artifacts/interop/: salut's debug log (every stanza both ways), its
driver's events, the raw TCP streams of h2 (salut-transcripts/), avahi's log, timings.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import lan_missing, require
from lan import Host, Lan, Lines
from peers import (
    ARTIFACTS,
    AvahiDaemon,
    Salut,
    Sniffer,
    missing_salut,
    package_versions,
    tcp_transcripts,
)
from xmppll_side import TRICKY, Agent, listen, start_agent, stop_gently, wait_until, xmppll_json

OUT = ARTIFACTS / "interop"
PACKAGES = ("telepathy-salut", "libtelepathy-glib0", "avahi-daemon", "python3-dbus",
            "python3-gi", "dbus")
SALUT_CONN_IDLE = 5.0  # s: wocky's meta porter closes an unheld connection after this
XHTML_IM = "http://jabber.org/protocol/xhtml-im"


@dataclass
class World:
    lan: Lan
    avahi: AvahiDaemon
    salut: Salut
    sniffer: Sniffer
    agent: Agent
    inbox: Lines  # `xmppll listen --json` on h1, for the whole module
    timings: dict[str, float] = field(default_factory=dict)
    started: float = 0.0

    @property
    def h1(self) -> Host:
        return self.lan[0]

    @property
    def h2(self) -> Host:
        return self.lan[1]

    def alice(self) -> Salut:
        """salut, checked alive: a remote abort would otherwise show as timeouts."""
        assert self.salut.alive(), (
            f"telepathy-salut exited ({self.salut.returncode}); see its debug log in {OUT}")
        return self.salut

    def names(self) -> dict[str, str]:
        out = {h.ipv4: h.name for h in self.lan.hosts}
        out.update({h.ipv6_ll: h.name for h in self.lan.hosts if h.ipv6_ll})
        return out

    def salut_connections(self) -> list[tuple[str, int, str, int]]:
        """Established TCP connections between salut's host and h1:
        (h2 address, h2 port, h1 address, h1 port), from `ss` in h2's namespace."""
        h1_addrs = {self.h1.ipv4, self.h1.ipv6_ll}
        done = self.h2.run(["ss", "-Htn", "state", "established"], timeout=10)
        found = []
        for line in done.stdout.splitlines():
            fields = line.split()
            if len(fields) < 4:
                continue
            (local, lport), (peer, pport) = (_addr_port(f) for f in fields[2:4])
            if peer in h1_addrs:
                found.append((local, lport, peer, pport))
        return found


def _addr_port(text: str) -> tuple[str, int]:
    """`10.0.0.1:5298`, `[fe80::1%eth0]:5298` or `[::ffff:10.0.0.1]:5298` (a dual-stack
    socket's view of IPv4) -> (address without scope, port)."""
    addr, _, port = text.rpartition(":")
    return addr.strip("[]").partition("%")[0].removeprefix("::ffff:"), int(port)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    missing = lan_missing()
    require(missing is None, f"virtual LAN support: {missing}")
    require(missing_salut() is None, f"telepathy-salut peer: {missing_salut()}")
    OUT.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    lan = Lan(2)
    stack: list[Callable[[], None]] = []
    w: World | None = None
    try:
        h1, h2 = lan.hosts
        with ThreadPoolExecutor(2) as pool:
            f_agent = pool.submit(start_agent, h1, "--first=Tweedle", "--last=Dee",
                                  "--msg=Contrariwise")
            avahi = pool.submit(AvahiDaemon, h2).result()
            stack.append(avahi.stop)
            # In the LAN's own directory: copied to OUT at the end.
            sniffer = Sniffer(h2, lan.tmp / "capture-h2.jsonl")
            stack.append(sniffer.stop)
            salut = Salut(h2, avahi, "alice", "Alice", "Liddell")
            stack.append(salut.stop)
            agent = f_agent.result()
        timings["salut start to Connected"] = salut.startup_seconds or 0
        inbox_proc, inbox, _inbox_err = listen(h1)
        stack.append(lambda: stop_gently(inbox_proc))
        timings["module setup (LAN, avahi, salut, agent, listen)"] = time.monotonic() - t0
        w = World(lan, avahi, salut, sniffer, agent, inbox, timings, t0)
        yield w
        # The module fails if salut did not survive it (it aborts on some remote input).
        assert salut.alive(), f"telepathy-salut exited ({salut.returncode}) during the module"
    finally:
        try:
            if w is not None:
                _save_artifacts(w)
        finally:
            for stop in reversed(stack):
                try:
                    stop()
                except Exception as exc:  # teardown goes on; the test result stands
                    print(f"salut interop teardown: {exc!r}")
            lan.close()


def _save_artifacts(w: World) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    w.salut.save_debug_log(OUT)
    w.avahi.save_log(OUT)
    (OUT / "agent-h1-salut-module.stderr").write_text("\n".join(w.agent.err.lines) + "\n")
    shutil.copy(w.sniffer.out, OUT / "capture-h2-salut.jsonl")
    folder = OUT / "salut-transcripts"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    names = w.names()
    for i, conn in enumerate(tcp_transcripts(w.sniffer.records(), names), 1):
        client = names.get(conn["client"][0].partition("%")[0], "x")
        server = names.get(conn["server"][0].partition("%")[0], "x")
        (folder / f"{i:02d}-{client}-to-{server}.txt").write_text(conn["text"] + "\n")
    (OUT / "salut-versions.json").write_text(json.dumps(package_versions(*PACKAGES), indent=1))
    w.timings["module total"] = time.monotonic() - w.started
    (OUT / "salut-timings.json").write_text(json.dumps(
        {k: round(v, 3) for k, v in w.timings.items()}, indent=1))


def _browse_entry(w: World, name: str) -> dict[str, Any] | None:
    return next((p for p in xmppll_json(w.h1, "browse", "--json") if p["name"] == name), None)


# --- presence, both ways ---------------------------------------------------------------

@pytest.mark.lan
def test_salut_presence_in_xmppll_browse(world: World) -> None:
    """salut's TXT as xmppll reads it: names, real XEP-0115 caps; away is status=away
    with its message, busy is dnd, and back to avail with no message."""
    alice = world.alice()

    def entry_when(pred: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        return wait_until(lambda: (e := _browse_entry(world, alice.name)) and pred(e) and e,
                          10, f"{alice.name} {what} in xmppll browse")

    rec = entry_when(lambda e: e["status"] == "avail", "avail")
    assert (rec["first"], rec["last"]) == ("Alice", "Liddell")
    assert rec["host"] == "h2.local"
    assert world.h2.ipv4 in rec["addresses"]
    assert rec["caps"]["hash"] == "sha-1" and rec["caps"]["ver"]
    assert rec["caps"]["node"] == "http://telepathy.freedesktop.org/caps"
    assert rec["txt"]["port.p2pj"] == str(rec["port"])

    t = time.monotonic()
    alice.set_presence("away", "down the rabbit hole")
    rec = entry_when(lambda e: e["status"] == "away", "away")
    world.timings["salut away -> xmppll browse"] = time.monotonic() - t
    assert rec["msg"] == "down the rabbit hole"
    alice.set_presence("busy", "tea party")
    rec = entry_when(lambda e: e["status"] == "dnd", "dnd")
    assert rec["msg"] == "tea party"
    alice.set_presence("available")
    rec = entry_when(lambda e: e["status"] == "avail", "avail again")
    assert not rec["msg"], rec


@pytest.mark.lan
def test_xmppll_status_seen_by_salut(world: World) -> None:
    """The agent's presence in salut: online with its message, then away, dnd and back,
    each with the message xmppll set."""
    alice, h1, name = world.alice(), world.h1, world.agent.name

    def shows(status: str, message: str) -> Callable[[dict[str, Any]], bool]:
        return lambda p: p["status"] == status and p["message"] == message

    t = time.monotonic()
    alice.wait_presence(name, shows("available", "Contrariwise"))
    world.timings["salut sees the agent (from this test's start)"] = time.monotonic() - t
    try:
        t = time.monotonic()
        xmppll_json(h1, "status", "away", "--msg", "at lunch", "--json")
        alice.wait_presence(name, shows("away", "at lunch"))
        world.timings["xmppll away -> salut presence"] = time.monotonic() - t
        t = time.monotonic()
        xmppll_json(h1, "status", "dnd", "--msg", "do not disturb", "--json")
        alice.wait_presence(name, shows("dnd", "do not disturb"))
        world.timings["xmppll dnd -> salut presence"] = time.monotonic() - t
    finally:
        xmppll_json(h1, "status", "avail", "--msg", "Contrariwise", "--json")
    alice.wait_presence(name, shows("available", "Contrariwise"))
    assert name in alice.contacts()


# --- messages ----------------------------------------------------------------------------

@pytest.mark.lan
def test_xmppll_send_to_salut_on_a_fresh_connection(world: World) -> None:
    """`xmppll send` dials salut; salut delivers the text unchanged, from the agent's
    name, and `send` reports success.

    salut queried the agent's caps over a connection of its own when it first saw it;
    that one ends 5 s after its last use, and only then is a new one accepted."""
    alice, h1, name = world.alice(), world.h1, world.agent.name
    alice.wait_presence(name)
    t = time.monotonic()
    wait_until(lambda: not world.salut_connections(), SALUT_CONN_IDLE + 5,
               "salut's caps-query connection to the agent to close")
    world.timings["waited for salut's idle connection to close"] = time.monotonic() - t
    t = time.monotonic()
    done = h1.xmppll("send", "-v", alice.name, TRICKY, timeout=30)
    world.timings["xmppll send -> salut (wall)"] = time.monotonic() - t
    msg = alice.wait_message(lambda e: e["text"] == TRICKY)
    assert msg["from"] == name
    assert msg["type"] == "normal"  # Telepathy's type for <message type='chat'>
    # salut took it; `send` must say so. salut answers our closing tag with a bare TCP
    # close although its header says version='1.0' (wocky drops the porter on the
    # remote's close tag without writing its own).
    assert done.returncode == 0, (
        f"salut received the message, but xmppll send: rc {done.returncode}\n{done.stderr}")


@pytest.mark.lan
def test_salut_to_xmppll_listen(world: World) -> None:
    """salut -> `xmppll listen --json`: markup characters and non-ASCII intact in `body`;
    salut's XHTML-IM copy (it adds one to every message) only in `xml`."""
    alice, name = world.alice(), world.agent.name
    marker = f"to listen {random.randrange(10**6)}"
    text = f"{marker}: {TRICKY}"
    t = time.monotonic()
    alice.send(name, text)
    rec = world.inbox.wait_json(lambda r: r.get("kind") == "message"
                                and r["from"] == alice.name and marker in (r["body"] or ""),
                                10)
    world.timings["salut send -> xmppll listen"] = time.monotonic() - t
    assert rec["body"] == text
    assert (rec["to"], rec["type"], rec["verified"]) == (name, "chat", True)
    assert rec["peer"]["name"] == alice.name
    assert rec["peer"]["address"].partition("%")[0] in (world.h2.ipv4, world.h2.ipv6_ll), rec

    assert f"<html xmlns='{XHTML_IM}'>" in rec["xml"], rec["xml"]
    assert "http://www.w3.org/1999/xhtml" in rec["xml"]
    assert "xhtml" not in rec["body"] and "<html" not in rec["body"]
    assert not [e for e in alice.events("delivery-report")], alice.events("delivery-report")


@pytest.mark.lan
def test_xmppll_replies_over_salut_open_connection(world: World) -> None:
    """After salut wrote to xmppll, its connection stays open (its Text channel holds
    it), and salut closes any second connection from the agent at once. So a reply with
    `xmppll send` must go over salut's open connection, and reach salut."""
    alice, h1, name = world.alice(), world.h1, world.agent.name
    # A connection left by an earlier test (ours, kept 10 s for the next message)
    # would carry salut's message instead: start from none, so that salut opens one.
    wait_until(lambda: not world.salut_connections(), 20, "earlier connections to close")
    marker = f"open conn {random.randrange(10**6)}"
    alice.send(name, f"{marker}: ping from salut")
    world.inbox.wait_json(lambda r: r.get("kind") == "message" and marker in (r["body"] or ""),
                          10)
    # The precondition: salut's connection to the agent is open.
    open_conns = [c for c in world.salut_connections() if c[3] == world.agent.event["port"]]
    assert open_conns, f"salut has no open connection to the agent: {world.salut_connections()}"
    reply = f"{marker}: reply from xmppll & <ok> ü"
    t = time.monotonic()
    done = h1.xmppll("send", "-v", alice.name, reply, timeout=30)
    world.timings["xmppll reply over salut's connection (wall)"] = time.monotonic() - t
    assert done.returncode == 0, (
        f"xmppll send to salut with salut's connection open: rc {done.returncode}\n"
        f"{done.stderr}")
    msg = alice.wait_message(lambda e: e["text"] == reply)
    assert msg["from"] == name
    # Over the connection salut opened: still the one (or ones) it had before.
    assert set(world.salut_connections()) >= set(open_conns)


@pytest.mark.lan
def test_salut_survived_the_module(world: World) -> None:
    """Last: salut is still running and connected after everything above."""
    alice = world.alice()
    assert alice.call("ping") == "pong"
    assert alice.presence(alice.name)["status"] == "available"
