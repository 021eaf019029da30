"""Discovery end to end on the virtual LAN: announce, browse, status, withdraw.

Every xmppll command is a real subprocess inside a host of the LAN (never in the
machine's own namespace). Waits are bounded and wait for the thing itself: a line on a
process's output (Lines.wait_json), or a one-shot browse repeated until it shows what
it must, with a deadline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lan import Host, Lan, Lines

HELPERS = Path(__file__).parent / "helpers"
ANNOUNCE_WAIT = 10.0  # probing takes ~1 s; generous for a loaded CI machine
EVENT_WAIT = 5.0  # an mDNS change reaches a follower in milliseconds on the bridge

Peer = dict[str, Any]


class Proc:
    """A background command with both output streams read as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.out = Lines(proc.stdout)
        self.err = Lines(proc.stderr)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.out.lines) if line.startswith("{")]

    def wait_exit(self, timeout: float = 10.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running after {timeout} s; stderr: {self.err.lines}"
            ) from None


def announce(host: Host, *args: str) -> Proc:
    return Proc(host.xmppll_popen("announce", "--json", *args))


def announced(agent: Proc, timeout: float = ANNOUNCE_WAIT) -> dict[str, Any]:
    try:
        return agent.out.wait_json(lambda r: r["event"] == "announced", timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nstderr: {agent.err.lines}") from None


def follow(host: Host) -> Proc:
    return Proc(host.xmppll_popen("browse", "--follow", "--json"))


def event(follower: Proc, kind: str, name: str, timeout: float = EVENT_WAIT,
          **fields: Any) -> Peer:
    def match(r: dict[str, Any]) -> bool:
        return r["event"] == kind and r["name"] == name and all(
            r[k] == v for k, v in fields.items()
        )

    match.__name__ = f"{kind} {name} {fields or ''}"
    return follower.out.wait_json(match, timeout)


def browse(host: Host, *args: str) -> list[Peer]:
    """One-shot `browse --json --no-agent` (the link itself, not an agent's cache)."""
    done = host.xmppll("browse", "--json", "--no-agent", *args, timeout=30)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def browse_until(host: Host, want: Callable[[dict[str, Peer]], bool],
                 timeout: float = ANNOUNCE_WAIT) -> dict[str, Peer]:
    """Repeat a one-shot browse until `want(peers by name)` holds, or fail at `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        peers = {p["name"]: p for p in browse(host)}
        if want(peers):
            return peers
        if time.monotonic() > deadline:
            raise AssertionError(f"browse on {host.name} never satisfied the test: {peers}")


def fails(done: subprocess.CompletedProcess[str], code: int) -> str:
    """Assert exit `code` with exactly one `xmppll: error:` line on stderr; return it."""
    lines = done.stderr.splitlines()
    assert done.returncode == code, (done.returncode, done.stderr)
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("xmppll: error: "), lines[0]
    assert done.stdout == ""
    return lines[0]


def check_peer(peer: Peer, host: Host, port: int) -> None:
    """Resolved as XEP-0174 peers must be: this host's own name and addresses."""
    assert peer["host"] == f"{host.name}.local"
    assert host.ipv4 in peer["addresses"]
    assert f"{host.ipv6_ll}%eth0" in peer["addresses"]
    assert all(not a.startswith("fe80:") or a.endswith("%eth0") for a in peer["addresses"])
    assert peer["port"] == port
    assert peer["txt"]["txtvers"] == "1"
    assert peer["txt"]["port.p2pj"] == str(port)


# --- announce and browse ---------------------------------------------------------------


def test_announce_is_seen_by_browse_on_other_hosts(lan: Lan) -> None:
    a, b, c = lan
    watcher = follow(c)
    agent = announce(a, "--port", "5562", "--msg", "Hanging out", "--nick", "JuliC",
                     "--first", "Juliet", "--last", "Capulet", "--email", "juliet@example.org",
                     "--jid", "juliet@capulet.example", "--txt", "k=v", "--txt", "Flag")
    ev = announced(agent)
    assert ev["name"] == "tester@h1"
    assert ev["host"] == "h1.local"
    assert ev["port"] == 5562
    assert set(ev["addresses"]) == {a.ipv4, a.ipv6_ll}

    added = event(watcher, "added", "tester@h1")
    peers = browse_until(b, lambda p: "tester@h1" in p)
    seen = peers["tester@h1"]
    assert "event" not in seen
    for peer in (seen, added):
        check_peer(peer, a, 5562)
        assert peer["status"] == "avail"
        assert (peer["msg"], peer["nick"]) == ("Hanging out", "JuliC")
        assert (peer["first"], peer["last"]) == ("Juliet", "Capulet")
        assert (peer["email"], peer["jid"]) == ("juliet@example.org", "juliet@capulet.example")
        assert peer["caps"]["hash"] == "sha-1"
        assert peer["caps"]["node"] and peer["caps"]["ver"]
        txt = peer["txt"]
        assert list(txt)[:3] == ["txtvers", "status", "port.p2pj"], "wire order"
        assert txt["k"] == "v"
        assert txt["flag"] is None, "a bare --txt KEY is a boolean attribute"
        assert (txt["1st"], txt["last"], txt["msg"]) == ("Juliet", "Capulet", "Hanging out")
    assert browse(c) == [seen], "one entry per name, the same on every host"
    assert browse(a) == [], "a host does not list its own agent"


def test_status_change_and_withdraw_reach_a_follower(lan: Lan) -> None:
    a, b, _ = lan
    watcher = follow(b)
    agent = announce(a, "--msg", "first")
    announced(agent)
    event(watcher, "added", "tester@h1", status="avail", msg="first")

    done = a.xmppll("status", "away", "--msg", "X")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) | {"status": "away", "msg": "X"} == json.loads(done.stdout)
    updated = event(watcher, "updated", "tester@h1", status="away", msg="X")
    assert updated["txt"]["status"] == "away"
    agent.out.wait_json(lambda r: r["event"] == "status" and r["status"] == "away", EVENT_WAIT)

    done = a.xmppll("status", "dnd")
    assert done.returncode == 0, done.stderr
    event(watcher, "updated", "tester@h1", status="dnd", msg="X")
    done = a.xmppll("status", "--msg", "")
    assert done.returncode == 0, done.stderr
    event(watcher, "updated", "tester@h1", status="dnd", msg=None)
    current = json.loads(a.xmppll("status").stdout)
    assert (current["name"], current["status"], current["msg"]) == ("tester@h1", "dnd", None)

    done = a.xmppll("withdraw")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"event": "withdrawn", "name": "tester@h1"}
    event(watcher, "removed", "tester@h1")
    assert agent.wait_exit() == 0
    kinds = [e["event"] for e in watcher.events() if e["name"] == "tester@h1"]
    assert kinds == ["added", "updated", "updated", "updated", "removed"], \
        "a status change is an update in place, never a goodbye and a new add"


def test_withdraw_then_announce_hands_the_name_over(lan: Lan) -> None:
    """`withdraw` answers once peers have been told, while its agent still repeats the
    goodbyes; an announce of the same name right after waits for that agent to go
    instead of failing as "already running", so the goodbyes all precede its probe."""
    a, b, _ = lan
    watcher = follow(b)
    old = announce(a, "mercutio@h1")
    announced(old)
    event(watcher, "added", "mercutio@h1")
    new = Proc(a.popen(["sh", "-c", '"$0" -m xmppll withdraw mercutio@h1 >/dev/null && '
                        'exec "$0" -m xmppll announce --json mercutio@h1', sys.executable]))
    assert announced(new)["name"] == "mercutio@h1", "no rename: the old agent had left"
    assert old.wait_exit() == 0
    event(watcher, "removed", "mercutio@h1")
    event(watcher, "added", "mercutio@h1")
    browse_until(b, lambda peers: "mercutio@h1" in peers)
    kinds = [e["event"] for e in watcher.events() if e["name"] == "mercutio@h1"]
    assert kinds == ["added", "removed", "added"], kinds
    assert not [line for line in new.err.lines if "error" in line], new.err.lines


def test_withdraw_stale_clears_a_killed_agent(lan: Lan) -> None:
    a, b, _ = lan
    watcher = follow(b)
    agent = announce(a, "romeo@h1")
    announced(agent)
    event(watcher, "added", "romeo@h1")
    agent.proc.kill()  # SIGKILL: no goodbye goes out
    agent.wait_exit()

    done = a.xmppll("withdraw", "--stale", "romeo@h1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"event": "withdrawn", "name": "romeo@h1", "stale": True}
    event(watcher, "removed", "romeo@h1")
    fails(a.xmppll("withdraw", "--stale", "romeo@h1"), 68)  # nothing left to clear


def test_status_and_withdraw_without_an_agent(lan: Lan) -> None:
    a = lan[0]
    for args in (["status"], ["status", "away"], ["withdraw"], ["withdraw", "nobody@h1"]):
        line = fails(a.xmppll(*args), 69)
        assert "no agent" in line


# --- names: conflicts, emoji, dots -----------------------------------------------------


def test_a_taken_name_is_renamed_in_the_user_part(lan: Lan) -> None:
    a, b, c = lan
    first = announce(a, "juliet@shared")
    assert announced(first)["name"] == "juliet@shared"
    second = announce(b, "juliet@shared")
    assert announced(second)["name"] == "juliet-2@shared"
    kinds = [(e["event"], e["name"]) for e in second.events()]
    assert kinds == [("conflict", "juliet@shared"), ("renamed", "juliet-2@shared"),
                     ("announced", "juliet-2@shared")]
    assert second.events()[1]["from"] == "juliet@shared"

    peers = browse_until(c, lambda p: {"juliet@shared", "juliet-2@shared"} <= set(p))
    check_peer(peers["juliet@shared"], a, 5298)
    check_peer(peers["juliet-2@shared"], b, 5298)
    assert [e["event"] for e in first.events()] == ["announced"], "the holder keeps its name"
    done = b.xmppll("status")
    assert json.loads(done.stdout)["name"] == "juliet-2@shared"


def test_no_rename_fails_clearly_and_publishes_nothing(lan: Lan) -> None:
    a, b, c = lan
    first = announce(a, "juliet@shared")
    announced(first)
    done = b.xmppll("announce", "--json", "--no-rename", "juliet@shared", timeout=20)
    assert done.returncode == 69, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("xmppll:")]
    assert len(errors) == 1 and errors[0].startswith("xmppll: error: "), done.stderr
    assert "juliet@shared" in errors[0] and "taken" in errors[0]
    peers = browse(c)
    assert [p["name"] for p in peers] == ["juliet@shared"]
    check_peer(peers[0], a, 5298)


def _current_name(agent: Proc) -> str | None:
    name = None
    for e in agent.events():
        if e["event"] in ("announced", "renamed"):
            name = e["name"]
    return name


def test_simultaneous_start_converges_to_two_names(lan: Lan) -> None:
    a, b, c = lan
    agents = [Proc(h.xmppll_popen("announce", "--json", "juliet@shared")) for h in (a, b)]
    for agent in agents:
        announced(agent)
    deadline = time.monotonic() + 10
    while True:
        names = [_current_name(agent) for agent in agents]
        if len(set(names)) == 2:
            break
        assert time.monotonic() < deadline, [agent.out.lines for agent in agents]
        time.sleep(0.05)
    assert set(names) == {"juliet@shared", "juliet-2@shared"}
    peers = browse_until(c, lambda p: set(names) <= set(p))
    for agent, host, name in zip(agents, (a, b), names, strict=True):
        check_peer(peers[name], host, 5298)
        assert agent.proc.poll() is None, agent.err.lines


def test_emoji_and_space_round_trip(lan: Lan) -> None:
    a, b, c = lan
    name = "Zoë 🎉 smith@h1"
    watcher = follow(c)
    agent = announce(a, name, "--msg", "ünïcødé ✓")
    assert announced(agent)["name"] == name
    added = event(watcher, "added", name)
    peers = browse_until(b, lambda p: name in p)
    assert peers[name]["msg"] == added["msg"] == "ünïcødé ✓"
    check_peer(peers[name], a, 5298)
    matched = b.xmppll("browse", "--json", "--no-agent", "zoë 🎉*")
    assert [json.loads(line)["name"] for line in matched.stdout.splitlines()] == [name]


@pytest.mark.parametrize("mode", [[], ["--ptr-only"]], ids=["announced", "ptr-only"])
def test_a_dotted_name_from_a_correct_responder_is_listed_exactly(
    lan: Lan, mode: list[str]
) -> None:
    """`j.doe@raw` published as ONE label (as Avahi or Bonjour do), which python-zeroconf
    would split in two if it published or queried it. `ptr-only`: the responder sends
    no SRV/TXT/address records until asked for them by their exact name."""
    a, b, c = lan
    watcher = follow(c)
    responder = Proc(a.popen([sys.executable, str(HELPERS / "raw_responder.py"), "j.doe@raw",
                              "--port", "5299", "--msg", "dots.", *mode]))
    responder.out.wait_for("ready", 10)
    added = event(watcher, "added", "j.doe@raw")
    peers = browse_until(b, lambda p: "j.doe@raw" in p)
    assert list(peers) == ["j.doe@raw"]
    for peer in (peers["j.doe@raw"], added):
        check_peer(peer, a, 5299)
        assert (peer["first"], peer["last"], peer["msg"]) == ("J.", "Doe", "dots.")
    responder.proc.terminate()
    responder.out.wait_for("goodbye", 10)
    event(watcher, "removed", "j.doe@raw")


def test_fifty_peers_in_one_browse(lan: Lan) -> None:
    a, b, c = lan
    many = Proc(c.popen([sys.executable, str(HELPERS / "publish_many.py"), "50"]))
    many.out.wait_for("ready 50", 20)
    peers = browse(b)
    names = sorted(p["name"] for p in peers)
    assert names == [f"peer{i:02d}@h3" for i in range(50)], "a single one-shot browse"
    for peer in peers:
        index = int(peer["name"][4:6])
        check_peer(peer, c, 5298 + index)
        assert peer["first"] == f"Peer{index}"


# --- bad input -------------------------------------------------------------------------

BAD = [
    (64, ["announce", "bad1@h1", "--status", "bogus"]),
    (64, ["status", "bogus"]),
    (65, ["announce", "b" * 61 + "@h1"]),  # 64 bytes
    (65, ["announce", "bad2@h1", "--txt", "k=" + "v" * 300]),
    (64, ["announce", "bad3@h1", "--txt", "=x"]),
    (64, ["announce", "bad4@h1", "--interface", "nope0"]),
    (65, ["announce", "bad.5@h1"]),
    (64, ["announce", "bad6@h1", "--port", "70000"]),
]


def test_bad_input_fails_with_one_line_and_publishes_nothing(lan: Lan) -> None:
    a, b, c = lan
    watcher = follow(c)
    for code, args in BAD:
        fails(a.xmppll(*args, timeout=20), code)
    # Whatever a bad command might have published would reach the follower before a
    # good name announced afterwards.
    agent = announce(a, "sentinel@h1")
    announced(agent)
    event(watcher, "added", "sentinel@h1")
    assert [e["name"] for e in watcher.events()] == ["sentinel@h1"]
    assert [p["name"] for p in browse(b)] == ["sentinel@h1"]


@pytest.mark.parametrize("args", [["browse", "--interface", "nope0"],
                                  ["browse", "--timeout", "0"],
                                  ["withdraw", "--stale", "x@h1", "--interface", "nope0"]])
def test_bad_input_to_other_commands(lan: Lan, args: list[str]) -> None:
    fails(lan[0].xmppll(*args), 64)
