"""Beyond one link (issue 12): wide-area DNS-SD on a real bind9, and a reflector.

One topology for the module (tests/routed.py): segments A and B joined by a router
namespace (ip_forward, no NAT, no multicast routing), so mDNS does not cross.

| host | runs |
| --- | --- |
| a1 | `xmppll announce --domain lan.test` (tester@a1) |
| a2 | named, authoritative for lan.test, `allow-update { key xmppll-key; }` |
| b1 | `xmppll announce --domain lan.test` (tester@b1): sends, and its agent's cache |
| b2 | avahi-daemon with wide-area browsing of lan.test; finch (romeo@b2) at the end |
| router | avahi-daemon reflecting, only in the last test |

named starts once for the module (~20 ms). The records' TTL is 2 s here, so the
heartbeat runs during the tests.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bind import Named, missing_bind
from conftest import lan_missing, require
from lan import Host, Lines, wait_until
from peers import AvahiDaemon, Finch, missing_avahi, missing_finch, parse_browse_line
from routed import Segments

ZONE = "lan.test"
TTL = "2"


@dataclass
class World:
    net: Segments
    named: Named
    agent_a: subprocess.Popen[str]
    agent_b: subprocess.Popen[str]
    out_a: Lines
    avahi_b2: AvahiDaemon | None
    resolv: Path

    @property
    def a1(self) -> Host:
        return self.net.a[0]

    @property
    def b1(self) -> Host:
        return self.net.b[0]

    @property
    def b2(self) -> Host:
        return self.net.b[1]

    def dns(self, *extra: str) -> list[str]:
        return ["--domain", ZONE, "--dns-server", self.named.address, *extra]

    def key(self, host: Host) -> list[str]:
        return ["--tsig-key", str(key_copy(host, self.named))]


def key_copy(host: Host, named: Named) -> Path:
    path = host.home / "tsig.key"
    if not path.exists():
        path.write_text(named.key_file.read_text())
        path.chmod(0o600)
    return path


def announce(host: Host, named: Named, *args: str) -> tuple[subprocess.Popen[str], Lines,
                                                              dict[str, Any]]:
    proc = host.xmppll_popen("announce", "--json", "--domain", ZONE, "--dns-server",
                             named.address, "--tsig-key", str(key_copy(host, named)),
                             "--dns-ttl", TTL, *args)
    out = Lines(proc.stdout)
    err = Lines(proc.stderr)
    try:
        event = out.wait_json(lambda r: r["event"] == "announced", 20)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nstderr: {err.lines}") from None
    return proc, out, event


def browse_dns(host: Host, world: World, *extra: str) -> list[dict[str, Any]]:
    done = host.xmppll("browse", "--json", "--no-link", *world.dns(), *extra, timeout=30)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def avahi_wide(avahi: AvahiDaemon) -> list[dict[str, Any]]:
    done = avahi.run(["timeout", "5", "avahi-browse", "-trp", "-d", ZONE, "_presence._tcp"],
                     timeout=15)
    return [r for r in map(parse_browse_line, done.stdout.splitlines()) if r]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    require(lan_missing() is None, f"virtual LAN support: {lan_missing()}")
    require(missing_bind() is None, f"bind9: {missing_bind()}")
    net = Segments(2, 2)
    try:
        named = Named(net.a[1], ZONE)
        resolv = net.b[1].home / "resolv.conf"
        resolv.write_text(f"nameserver {named.address}\nsearch {ZONE}\n")
        avahi = None
        if missing_avahi() is None:
            avahi = AvahiDaemon(net.b[1], wide_area=ZONE, resolv_conf=resolv)
        agent_a, out_a, _ = announce(net.a[0], named)
        agent_b, _, _ = announce(net.b[0], named)
        yield World(net, named, agent_a, agent_b, out_a, avahi, resolv)
    finally:
        net.close()


@pytest.mark.lan
def test_browse_across_the_router(world: World) -> None:
    """b2 (other segment, no agent) lists a1 from DNS; b1's agent has it in its cache
    beside the link; mDNS alone does not see it (no multicast through the router)."""
    peers = browse_dns(world.b2, world)
    a1 = next(p for p in peers if p["name"] == "tester@a1")
    assert a1["domain"] == ZONE and a1["host"] == f"a1.{ZONE}"
    assert a1["addresses"] == [world.a1.ipv4] and a1["status"] == "avail"
    assert "x-xmppll-seen" not in a1["txt"] and a1["txt"]["txtvers"] == "1"

    def cached() -> dict[str, Any] | None:
        done = world.b1.xmppll("browse", "--json", timeout=20)
        found = [json.loads(x) for x in done.stdout.splitlines()]
        return next((p for p in found if p["name"] == "tester@a1"), None)

    assert wait_until(cached, 10, "tester@a1 in b1's agent cache")["domain"] == ZONE
    local = world.b2.xmppll("browse", "--json", "--timeout", "1.5", timeout=20)
    assert "tester@a1" not in local.stdout


@pytest.mark.lan
def test_avahi_wide_area_browse_lists_it(world: World) -> None:
    require(world.avahi_b2 is not None, f"avahi: {missing_avahi()}")
    assert world.avahi_b2 is not None
    rows = wait_until(lambda: [r for r in avahi_wide(world.avahi_b2)
                               if r["event"] == "=" and r["name"] == "tester@a1"],
                      10, "avahi-browse -d lan.test to resolve tester@a1")
    assert rows[0]["domain"] == ZONE and rows[0]["address"] == world.a1.ipv4
    assert rows[0]["txt_dict"]["status"] == "avail"


@pytest.mark.lan
def test_send_from_b_arrives_verified(world: World) -> None:
    """b1's agent resolves tester@a1 in DNS and connects through the router from the
    address its own DNS record lists; a1's agent verifies it against b1's records."""
    listen = world.a1.xmppll_popen("listen", "--json", "--backlog")
    try:
        out = Lines(listen.stdout)
        done = world.b1.xmppll("send", "tester@a1", "across the router", timeout=30)
        assert done.returncode == 0, done.stderr
        rec = out.wait_json(lambda r: r["body"] == "across the router", 10)
        assert rec["from"] == "tester@b1" and rec["verified"] is True, rec
        assert rec["peer"]["address"] == world.b1.ipv4
    finally:
        listen.send_signal(signal.SIGINT)
        listen.wait(10)
    # Standalone (no agent on b2): resolved in DNS, delivered, unverified sender.
    done = world.b2.xmppll("send", "-v", *world.dns(), "tester@a1", "standalone", timeout=30)
    assert done.returncode == 0, done.stderr
    assert f"resolved tester@a1 in {ZONE}" in done.stderr


@pytest.mark.lan
def test_status_change_is_seen(world: World) -> None:
    done = world.a1.xmppll("status", "away", "--msg", "in DNS", "--json")
    assert done.returncode == 0, done.stderr

    def away() -> bool:
        return any(p["name"] == "tester@a1" and p["status"] == "away" and p["msg"] == "in DNS"
                   for p in browse_dns(world.b2, world))
    wait_until(away, 5, "status away in DNS")


@pytest.mark.lan
def test_bad_keys_and_unsigned_updates_change_nothing(world: World) -> None:
    """An unsigned UPDATE (nsupdate without a key) is REFUSED; xmppll with a wrong
    secret says BADSIG in one line (exit 77); a key others can read is refused before
    anything is sent (exit 78). None of them changes the zone (its serial moves with
    the agents' heartbeats, so the records are checked)."""
    script = (f"server {world.named.address}\nzone {ZONE}\n"
              f"update add evil.{ZONE} 60 A 10.9.9.9\nsend\n")
    done = world.b2.run(["nsupdate"], input=script, timeout=20)
    assert "REFUSED" in done.stdout + done.stderr
    wrong = world.b2.home / "wrong.key"
    wrong.write_text(world.named.key_file.read_text().replace('secret "', 'secret "AAAA'))
    wrong.chmod(0o600)
    done = world.b2.xmppll("announce", *world.dns(), "--tsig-key", str(wrong), "mallory",
                           timeout=30)
    assert done.returncode == 77, done.stderr
    errors = [x for x in done.stderr.splitlines() if "error" in x]
    assert len(errors) == 1 and "BADSIG" in errors[0], done.stderr
    wrong.chmod(0o644)
    done = world.b2.xmppll("announce", *world.dns(), "--tsig-key", str(wrong), "mallory",
                           timeout=30)
    assert done.returncode == 78 and "chmod 600" in done.stderr, done.stderr
    assert world.named.dig(world.b2, f"evil.{ZONE}", "A") == []
    assert not [r for r in world.named.dig(world.b2, f"_presence._tcp.{ZONE}", "PTR")
                if "mallory" in r]
    assert world.named.dig(world.b2, f"b2.{ZONE}", "A") == []


@pytest.mark.lan
def test_empty_or_failing_domains(world: World) -> None:
    """NXDOMAIN is no peers (exit 0); a server that is not there is one line and
    exit 69/75, and the link's peers are still listed."""
    done = world.b2.xmppll("browse", "--json", "--no-link", "--domain", f"nobody.{ZONE}",
                           "--dns-server", world.named.address, timeout=20)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    done = world.b2.xmppll("browse", "--json", "--no-link", "--domain", ZONE,
                           "--dns-server", world.a1.ipv4, timeout=20)  # no named there
    assert done.returncode == 69 and len(done.stderr.splitlines()) == 1, done.stderr
    done = world.b1.xmppll("browse", "--json", "--domain", ZONE, "--dns-server",
                           "10.77.0.99", timeout=30)  # nothing answers
    assert done.returncode == 75, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "no answer" in done.stderr


@pytest.mark.lan
def test_domains_and_server_from_resolv_conf(world: World) -> None:
    """`--domain auto`: the b/lb._dns-sd._udp domains under resolv.conf's search list,
    asked of its nameserver (RFC 6763 §11)."""
    script = (f"mount --bind '{world.resolv}' /etc/resolv.conf && exec \"$@\"")
    done = world.b2.run(["sh", "-c", script, "sh", *_py(), "browse", "--json", "--no-link",
                         "--domain", "auto"], timeout=30)
    assert done.returncode == 0, done.stderr
    assert any(json.loads(x)["name"] == "tester@a1" for x in done.stdout.splitlines())


def _py() -> list[str]:
    import sys
    return [sys.executable, "-m", "xmppll"]


@pytest.mark.lan
def test_withdraw_and_stale_leftovers(world: World) -> None:
    """withdraw deletes the records; a kill -9 leaves them (no goodbye in DNS) until
    `withdraw --stale --domain` deletes them, its server found from the SOA."""
    proc, _, _ = announce(world.a1, world.named, "crash@a1")
    assert any(p["name"] == "crash@a1" for p in browse_dns(world.b2, world))
    proc.kill()
    proc.wait(5)
    assert any(p["name"] == "crash@a1" for p in browse_dns(world.b2, world))
    script = (f"mount --bind '{world.resolv}' /etc/resolv.conf && exec \"$@\"")
    done = world.a1.run(["sh", "-c", script, "sh", *_py(), "withdraw", "--stale", "crash@a1",
                         "--domain", ZONE, *world.key(world.a1), "--json"], timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["domains"] == [ZONE]
    names = [p["name"] for p in browse_dns(world.b2, world)]
    assert "crash@a1" not in names and "tester@a1" in names

    done = world.a1.xmppll("withdraw", "tester@a1", timeout=20)
    assert done.returncode == 0, done.stderr
    world.agent_a.wait(10)
    assert "tester@a1" not in [p["name"] for p in browse_dns(world.b2, world)]
    assert not world.named.dig(world.b2, f"a1.{ZONE}", "A")


@pytest.mark.lan
def test_reflector_carries_xmppll_and_finch_both_ways(world: World) -> None:
    """avahi reflecting on the router: xmppll on A and finch on B see each other as
    local peers and exchange messages both ways (IPv4: link-local AAAA do not cross)."""
    require(missing_avahi() is None and world.avahi_b2 is not None,
            f"avahi: {missing_avahi()}")
    require(missing_finch() is None, f"finch: {missing_finch()}")
    assert world.avahi_b2 is not None
    AvahiDaemon(world.net.router, reflect=True)
    finch = Finch(world.b2, world.avahi_b2, "romeo")
    listen = world.a1.xmppll_popen("listen", "--json", "juliet@a1")
    try:
        out, err = Lines(listen.stdout), Lines(listen.stderr)
        err.wait_for("announced", 20)
        finch.wait_buddy_online("juliet@a1", timeout=20)
        # Under --verify mark the agent does not wait to resolve a sender: let its view
        # (through the reflector) know romeo@b2 first, as a long-running agent would.
        wait_until(lambda: "romeo@b2" in world.a1.xmppll(
            "browse", "--json", timeout=20).stdout, 15, "romeo@b2 in juliet's view")
        finch.send_im("juliet@a1", "from finch on B")
        rec = out.wait_json(lambda r: r["body"] == "from finch on B", 15)
        assert rec["from"] == "romeo@b2" and rec["verified"] is True, rec
        assert rec["peer"]["address"] == world.b2.ipv4
        done = world.a1.xmppll("send", "--from", "juliet@a1", "--wait", "10", "romeo@b2",
                               "from xmppll on A", timeout=40)
        assert done.returncode == 0, done.stderr
        finch.wait_received(lambda s, m: m == "from xmppll on A", 15)
    finally:
        listen.send_signal(signal.SIGINT)
        listen.wait(10)
        finch.stop()


# --- without a network: the key file and the refresh time --------------------------------

KEY = 'key "xmppll-key" {\n\talgorithm hmac-sha256;\n\tsecret "c2VjcmV0LXNlY3JldC1zZWNyZXQ=";\n};\n'


def test_key_file_is_read_and_an_exposed_one_refused(tmp_path: Path) -> None:
    from xmppll.discovery.widearea.config import load_key
    from xmppll.errors import ConfigError

    path = tmp_path / "tsig.key"
    path.write_text(KEY)
    path.chmod(0o600)
    key = load_key(path)
    assert (key.name, key.algorithm, key.secret) == ("xmppll-key", "hmac-sha256",
                                                     b"secret-secret-secret")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600") as err:
        load_key(path)
    assert err.value.exit_code == 78
    path.chmod(0o600)
    path.write_text(KEY.replace("secret ", "sekret "))
    with pytest.raises(ConfigError, match="secret"):
        load_key(path)


def test_refresh_time_drops_dead_publishers_only() -> None:
    import dns.name

    from xmppll.discovery.presence import Presence, encode_txt
    from xmppll.discovery.widearea.records import instance_name, make_peer, with_seen

    txt = with_seen(encode_txt(Presence(port=5298)), refresh=60, now=1000)
    instance = instance_name("juliet@capulet", ZONE)
    assert instance.labels[0] == b"juliet@capulet"
    host = dns.name.from_text(f"capulet.{ZONE}")
    fresh = make_peer(instance, ZONE, host, 5298, txt, ["192.0.2.1"], ttl=5, now=1170)
    assert fresh is not None and "x-xmppll-seen" not in fresh.fields["txt"]
    assert fresh.to_json()["domain"] == ZONE
    assert make_peer(instance, ZONE, host, 5298, txt, [], ttl=5, now=1181) is None
    plain = encode_txt(Presence(port=5298))  # another tool's record: never too old
    assert make_peer(instance, ZONE, host, 5298, plain, [], ttl=5, now=10**10) is not None
