"""Following the network (issue #18): an address that changes under a running agent, an
interface that goes down and comes back, a long sleep, a peer that moves.

Everything runs on the virtual LAN; the changes are made with `ip` inside the host's
namespace, as DHCP or a cable would make them. Short record TTLs come from
XMPPLL_MDNS_TTL, so that "longer than the TTLs" fits in seconds. Waits are bounded and
wait for the thing itself; the only fixed waits are the outage and the sleep, whose
length is what is being tested.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import require
from lan import Host, Lan, Lines, wait_until
from peers import AvahiDaemon, missing_avahi

ANNOUNCE_WAIT = 10.0
SEEN_WAIT = 5.0  # the bound: peers see a change within 5 s
TTL = 3  # seconds, for the tests that need records to expire
RAW_RESPONDER = str(Path(__file__).parent / "helpers" / "raw_responder.py")

Peer = dict[str, Any]


def ip(host: Host, *commands: str) -> None:
    """`ip` commands in the host's namespace (never the machine's own)."""
    done = subprocess.run(["ip", "-n", host.netns, "-batch", "-"], input="\n".join(commands) + "\n",
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def ttl_env(host: Host) -> dict[str, str]:
    return {**host.env, "XMPPLL_MDNS_TTL": str(TTL)}


class Agent:
    def __init__(self, host: Host, *args: str, env: dict[str, str] | None = None) -> None:
        self.host = host
        self.proc = host.xmppll_popen("announce", "--json", *args, env=env)
        self.out, self.err = Lines(self.proc.stdout), Lines(self.proc.stderr)
        try:
            self.record = self.out.wait_json(lambda r: r["event"] == "announced", ANNOUNCE_WAIT)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nstderr: {self.err.lines}") from None

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.out.lines) if line.startswith("{")]


def browse(host: Host, *args: str) -> dict[str, Peer]:
    """One-shot browse of the link itself (checked for unscoped fe80:: by Host.xmppll)."""
    done = host.xmppll("browse", "--json", "--no-agent", *args, timeout=30)
    assert done.returncode == 0, done.stderr
    return {p["name"]: p for p in map(json.loads, done.stdout.splitlines())}


def agent_peers(host: Host) -> dict[str, Peer]:
    """The peers in the running agent's cache on `host`."""
    done = host.xmppll("browse", "--json", timeout=30)
    assert done.returncode == 0, done.stderr
    return {p["name"]: p for p in map(json.loads, done.stdout.splitlines())}


def until(check: Any, timeout: float, what: str) -> tuple[Any, float]:
    start = time.monotonic()
    value = wait_until(check, timeout, what, interval=0.1)
    return value, time.monotonic() - start


def inbox_bodies(host: Host, name: str) -> list[str]:
    path = os.path.join(host.env["XDG_STATE_HOME"], "xmppll", name, "inbox.jsonl")
    try:
        with open(path) as fh:
            return [json.loads(line).get("body") for line in fh if line.strip()]
    except FileNotFoundError:
        return []


def test_address_change_is_announced_and_reachable(lan: Lan) -> None:
    a, b, _ = lan
    agent = Agent(a, "juliet@h1")
    old = a.ipv4
    new = old.rsplit(".", 1)[0] + ".77"
    assert old in browse(b)["juliet@h1"]["addresses"]

    ip(a, f"addr del {old}/24 dev eth0", f"addr add {new}/24 dev eth0")

    def moved() -> Peer | None:
        peer = browse(b).get("juliet@h1")
        return peer if peer and new in peer["addresses"] and old not in peer["addresses"] \
            else None

    peer, took = until(moved, SEEN_WAIT, f"juliet@h1 at {new} only")
    print(f"\naddress change -> seen by a peer's browse: {took:.2f} s")
    assert f"{a.ipv6_ll}%eth0" in peer["addresses"]
    agent.out.wait_json(lambda r: r["event"] == "addresses" and new in r["addresses"], 1)
    done = b.xmppll("send", "juliet@h1", "after the move", timeout=30)
    assert done.returncode == 0, done.stderr
    assert "after the move" in inbox_bodies(a, "juliet@h1")


def test_interface_down_and_back(lan: Lan) -> None:
    a, b, c = lan
    agent = Agent(a, "juliet@h1", env=ttl_env(a))
    Agent(b, env=ttl_env(b))
    until(lambda: "tester@h2" in agent_peers(a), SEEN_WAIT, "the agent sees tester@h2")

    ip(a, "link set eth0 down")
    down = time.monotonic()
    assert "juliet@h1" not in browse(c), "a link that is down answers nothing"
    # Its cache forgets the peer once the TTL runs out (nothing refreshes it).
    until(lambda: "tester@h2" not in agent_peers(a), TTL + 5, "tester@h2 expires")
    time.sleep(max(0.0, 10 - (time.monotonic() - down)))
    ip(a, "link set eth0 up")

    peer, took = until(lambda: browse(c).get("juliet@h1"), SEEN_WAIT, "juliet@h1 back")
    print(f"\nlink back -> seen by a peer's browse: {took:.2f} s")
    assert a.ipv4 in peer["addresses"]
    _, took = until(lambda: "tester@h2" in agent_peers(a), SEEN_WAIT, "agent sees tester@h2")
    print(f"link back -> the agent lists its peer again: {took:.2f} s (after the first)")
    assert agent.proc.poll() is None


def test_sleep_past_the_ttls_reprobes_and_yields_the_name(lan: Lan) -> None:
    a, b, c = lan
    sleeper = Agent(a, "juliet@h1", env=ttl_env(a))
    Agent(c, env=ttl_env(c))
    until(lambda: "tester@h3" in agent_peers(a), SEEN_WAIT, "the agent sees tester@h3")

    os.kill(sleeper.proc.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    ip(a, "link set eth0 down")
    # Meanwhile someone else takes the name.
    taker = Agent(b, "juliet@h1", env=ttl_env(b))
    assert taker.record["name"] == "juliet@h1"
    time.sleep(max(0.0, 2 * TTL - (time.monotonic() - stopped)))
    ip(a, "link set eth0 up")
    os.kill(sleeper.proc.pid, signal.SIGCONT)

    renamed = sleeper.out.wait_json(lambda r: r["event"] == "renamed", SEEN_WAIT)
    assert (renamed["from"], renamed["name"]) == ("juliet@h1", "juliet-2@h1")
    assert ("conflict", "juliet@h1") in [(e["event"], e.get("name")) for e in sleeper.events()]

    def settled() -> dict[str, Peer] | None:
        peers = browse(c)
        ok = {"juliet@h1", "juliet-2@h1"} <= set(peers)
        return peers if ok and a.ipv4 in peers["juliet-2@h1"]["addresses"] else None

    peers, _ = until(settled, SEEN_WAIT, "both names on the link")
    assert b.ipv4 in peers["juliet@h1"]["addresses"]
    assert a.ipv4 not in peers["juliet@h1"]["addresses"]
    assert [e["event"] for e in taker.events()] == ["announced"], "the new owner keeps it"

    def listed() -> dict[str, Peer] | None:
        peers = agent_peers(a)
        return peers if {"tester@h3", "juliet@h1"} <= set(peers) else None

    mine, _ = until(listed, SEEN_WAIT, "the sleeper's peer list")
    assert set(mine) == {"tester@h3", "juliet@h1"}
    assert b.ipv4 in mine["juliet@h1"]["addresses"]
    assert sleeper.proc.poll() is None and taker.proc.poll() is None


def test_a_peer_that_moves_is_reached_at_its_new_address(lan: Lan) -> None:
    a, b, _ = lan
    Agent(a)
    Agent(b)
    done = a.xmppll("send", "tester@h2", "before", "--wait", "5", timeout=30)
    assert done.returncode == 0, done.stderr
    old, new = b.ipv4, b.ipv4.rsplit(".", 1)[0] + ".78"
    ip(b, f"addr del {old}/24 dev eth0", f"addr add {new}/24 dev eth0")

    def moved() -> bool:
        addresses = agent_peers(a).get("tester@h2", {}).get("addresses", [])
        return new in addresses and old not in addresses

    _, took = until(moved, SEEN_WAIT, "the agent's cache has the new address only")
    print(f"\npeer's address change -> in the agent's cache: {took:.2f} s")
    start = time.monotonic()
    done = a.xmppll("send", "tester@h2", "after", "--timeout", "5", timeout=30)
    assert done.returncode == 0, done.stderr
    print(f"send to the moved peer: {time.monotonic() - start:.2f} s")
    assert inbox_bodies(b, "tester@h2")[-2:] == ["before", "after"]
    assert new in browse(a)["tester@h2"]["addresses"]


def test_a_link_local_address_heard_over_ipv4_gets_its_scope(lan: Lan) -> None:
    """A responder that sends everything over IPv4 (its AAAA included): its fe80::
    address has no interface on arrival, and is listed with the one it came over."""
    a, b, _ = lan
    responder = Lines(b.popen([sys.executable, RAW_RESPONDER, "v4only@h2", "--ipv4-only"]
                              ).stdout)
    responder.wait_for("ready", 10)
    peer = browse(a)["v4only@h2"]
    assert set(peer["addresses"]) == {b.ipv4, f"{b.ipv6_ll}%eth0"}
    Agent(a)
    cached, _ = until(lambda: agent_peers(a).get("v4only@h2"), SEEN_WAIT, "v4only@h2 cached")
    assert set(cached["addresses"]) == {b.ipv4, f"{b.ipv6_ll}%eth0"}


# The conflicting host: announces `h1.local` with its own address, unprobed, as a
# second machine configured with the same name would (coexistence-facts.md §2 e).
CLAIM_H1 = """
import asyncio, sys
from zeroconf import ServiceInfo
from zeroconf.asyncio import AsyncZeroconf
async def main():
    azc = AsyncZeroconf()
    info = ServiceInfo("_claim._tcp.local.", "claim._claim._tcp.local.", port=9,
                       server="h1.local.", parsed_addresses=[sys.argv[1]])
    await azc.async_register_service(info, cooperating_responders=True)
    print("ready", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


def _follows_avahi_rename(lan: Lan, rename: Any) -> None:
    require(missing_avahi() is None, f"avahi peer: {missing_avahi()}")
    a, b, c = lan
    avahi = AvahiDaemon(a)
    try:
        agent = Agent(a, "romeo@h1")
        assert (agent.record["host"], agent.record["addresses"]) == ("h1.local", [])
        assert browse(c)["romeo@h1"]["host"] == "h1.local"
        start = time.monotonic()
        rename(avahi, b)
        avahi.log.wait_for("Host name is h1-2.local", SEEN_WAIT)
        event = agent.out.wait_json(lambda r: r["event"] == "host", SEEN_WAIT)
        assert (event["host"], event["from"]) == ("h1-2.local", "h1.local")

        def moved() -> Peer | None:
            peer = browse(c).get("romeo@h1")
            return peer if peer and peer["host"] == "h1-2.local" and \
                a.ipv4 in peer["addresses"] else None

        peer, _ = until(moved, SEEN_WAIT, "romeo@h1 on h1-2.local")
        print(f"\navahi renamed the host -> a peer's browse shows the new SRV target: "
              f"{time.monotonic() - start:.2f} s")
        assert b.ipv4 not in peer["addresses"]
        info = a.xmppll("status", "--json", timeout=30)
        assert json.loads(info.stdout)["host"] == "h1-2.local", info.stdout
        done = c.xmppll("send", "romeo@h1", "after the rename", "--timeout", "5", timeout=30)
        assert done.returncode == 0, done.stderr
        assert "after the rename" in inbox_bodies(a, "romeo@h1")
        assert agent.proc.poll() is None
    finally:
        avahi.stop()


def test_beside_avahi_the_srv_follows_avahi_set_host_name(lan: Lan) -> None:
    def rename(avahi: AvahiDaemon, _other: Host) -> None:
        done = avahi.run(["avahi-set-host-name", "h1-2"])
        assert done.returncode == 0, done.stderr

    _follows_avahi_rename(lan, rename)


def test_beside_avahi_the_srv_follows_a_host_name_conflict(lan: Lan) -> None:
    def rename(_avahi: AvahiDaemon, other: Host) -> None:
        claim = Lines(other.popen([sys.executable, "-c", CLAIM_H1, other.ipv4]).stdout)
        claim.wait_for("ready", 10)

    _follows_avahi_rename(lan, rename)
