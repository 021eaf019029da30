"""Faces between xmppll peers on the virtual LAN (issue 15): pictures published,
changed, cleared and fetched (through an agent and one-shot), chat states under
`listen --chatstates`, and `xmppll chat` driven in a real terminal (tmux) on a host of
the LAN. The real-peer halves (libpurple, salut) are in the interop modules.

| host | runs |
| --- | --- |
| h1 | agent tester@h1 (with a picture), `listen --chatstates` |
| h2 | agent tester@h2, `listen` and `listen --chatstates`; `xmppll chat` in tmux |
| h3 | nothing: one-shot `xmppll avatar` |

Screen captures of the chat land in tests/artifacts/chat/.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import lan_missing, require
from lan import Host, Lan
from xmppll_side import Agent, listen, start_agent, stop_gently, wait_until, xmppll_json

from xmppll.discovery.mdns.avatar import sha1_hex

ARTIFACTS = Path(__file__).parent / "artifacts" / "chat"
pytestmark = pytest.mark.lan


def picture(seed: int, size: int = 12_000) -> bytes:
    """A PNG-signed picture of `size` bytes (bigger than one 1500-byte frame, and than
    the 8966-byte packets python-zeroconf accepts)."""
    body = bytes((seed * 7 + i * 13) % 256 for i in range(size - 8))
    return b"\x89PNG\r\n\x1a\n" + body


@dataclass
class World:
    lan: Lan
    agent1: Agent
    agent2: Agent
    pictures: dict[str, Path]

    @property
    def h1(self) -> Host:
        return self.lan[0]

    @property
    def h2(self) -> Host:
        return self.lan[1]

    @property
    def h3(self) -> Host:
        return self.lan[2]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    missing = lan_missing()
    require(missing is None, f"virtual LAN support: {missing}")
    lan = Lan(3)
    try:
        pictures = {}
        for i, name in enumerate(("a", "b")):
            path = lan.tmp / f"{name}.png"
            path.write_bytes(picture(i))
            pictures[name] = path
        agent1 = start_agent(lan[0], "--avatar", str(pictures["a"]))
        agent2 = start_agent(lan[1])
        yield World(lan, agent1, agent2, pictures)
        for agent in (agent1, agent2):
            assert not agent.problems(), agent.err.lines
    finally:
        lan.close()


def _peer(host: Host, name: str) -> dict | None:
    return next((p for p in xmppll_json(host, "browse", "--json") if p["name"] == name), None)


def _avatar(host: Host, name: str, out: Path, *args: str) -> bytes:
    done = host.xmppll("avatar", name, "--output", str(out), "--json", *args)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["avatar"] == sha1_hex(out.read_bytes()) and record["type"] == "png"
    return out.read_bytes()


def test_pictures_published_fetched_changed_and_cleared(world: World) -> None:
    h1, h2, h3 = world.h1, world.h2, world.h3
    name = world.agent1.name
    a, b = (world.pictures[k].read_bytes() for k in "ab")
    assert world.agent1.event["avatar"] == sha1_hex(a)
    peer = wait_until(lambda: (p := _peer(h2, name)) and p["avatar"] and p, 10,
                      f"{name} with a picture in h2's browse")
    assert peer["avatar"] == sha1_hex(a) and peer["txt"]["phsh"] == sha1_hex(a)
    assert _peer(h1, world.agent2.name)["avatar"] is None
    # Through h2's agent, and one-shot on h3 (no agent there).
    assert _avatar(h2, name, world.lan.tmp / "via-agent.png") == a
    assert _avatar(h3, name, world.lan.tmp / "one-shot.png") == a
    piped = h2.run([sys.executable, "-m", "xmppll", "avatar", name, "-o", "-"],
                   input=b"")
    assert piped.returncode == 0 and piped.stdout == a
    # Changed in place: h2 sees the new hash and fetches the new picture at once.
    t0 = time.monotonic()
    done = h1.xmppll("status", "--avatar", str(world.pictures["b"]), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["avatar"] == sha1_hex(b)
    wait_until(lambda: _peer(h2, name)["avatar"] == sha1_hex(b), 5, "the new phsh on h2")
    assert _avatar(h2, name, world.lan.tmp / "changed.png") == b
    assert time.monotonic() - t0 < 5
    # Cleared: null in browse, and `avatar` says there is none (69).
    assert h1.xmppll("status", "--no-avatar", "--json").returncode == 0
    wait_until(lambda: _peer(h2, name)["avatar"] is None, 5, "no phsh on h2")
    gone = h2.xmppll("avatar", name, "-o", str(world.lan.tmp / "none.png"))
    assert gone.returncode == 69 and "publishes no picture" in gone.stderr
    # And back, for the tests below.
    assert h1.xmppll("status", "--avatar", str(world.pictures["a"])).returncode == 0


def test_avatar_refuses_a_terminal_and_bad_files(world: World) -> None:
    bad = world.lan.tmp / "not-a-picture.gif"
    bad.write_bytes(b"GIF89a" + b"0" * 100)
    done = world.h1.xmppll("status", "--avatar", str(bad))
    assert done.returncode == 65 and "neither PNG nor JPEG" in done.stderr
    done = world.h3.xmppll("avatar", "nobody@h9", "--timeout", "1")
    assert done.returncode == 68


def test_chat_states_only_under_listen_chatstates(world: World) -> None:
    h1, h2 = world.h1, world.h2
    to = world.agent2.name
    plain, plain_out, _ = listen(h2)
    states, states_out, _ = listen(h2, "--chatstates")
    try:
        time.sleep(0.5)
        for state in ("composing", "paused"):
            done = h1.xmppll("send", "--chatstate", state, to)
            assert done.returncode == 0, done.stderr
        sent = h1.xmppll("send", to, "after typing")
        assert sent.returncode == 0, sent.stderr
        got = [states_out.wait_json(lambda r, s=s: r.get("state") == s, 10)
               for s in ("composing", "paused")]
        for record, state in zip(got, ("composing", "paused"), strict=True):
            assert record["kind"] == "chatstate" and record["state"] == state
            assert record["from"] == world.agent1.name and "seq" not in record
        states_out.wait_json(lambda r: r.get("body") == "after typing", 10)
        plain_out.wait_json(lambda r: r.get("body") == "after typing", 10)
        time.sleep(0.3)
        kinds = {json.loads(line).get("kind") for line in plain_out.lines if line.strip()}
        assert kinds == {"message"}, plain_out.lines
        # Nothing of it was stored: the inbox holds the message only.
        stored = xmppll_json(h2, "inbox", "--peer", world.agent1.name, "--json")
        assert all(r.get("kind") == "message" and r.get("body") for r in stored), stored
    finally:
        stop_gently(plain)
        stop_gently(states)


# --- xmppll chat in a terminal -----------------------------------------------------------

class Tmux:
    """A terminal on a LAN host: tmux running one command, keys in, screen out."""

    def __init__(self, host: Host, command: list[str], name: str = "chat") -> None:
        self.host, self.name = host, name
        self.socket = host.home / f"tmux-{name}.sock"
        script = host.home / f"{name}.sh"
        env = {**host.env, "TERM": "xterm-256color", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        # The status goes to a file: tmux sometimes leaves a finished pane's process
        # unreaped (a zombie) for seconds, and the pane is not marked dead meanwhile.
        self.status_file = host.home / f"{name}.status"
        self.status_file.unlink(missing_ok=True)
        script.write_text("#!/bin/sh\n" + exports + shlex.join(command)
                          + f"\necho $? >{shlex.quote(str(self.status_file))}\n")
        script.chmod(0o755)
        done = host.run(["tmux", "-S", str(self.socket), "new-session", "-d", "-s", name,
                         "-x", "100", "-y", "24", str(script), ";", "set-option", "-t", name,
                         "remain-on-exit", "on"], timeout=20)
        assert done.returncode == 0, done.stderr
        self.captures: list[tuple[str, str]] = []

    def tmux(self, *args: str) -> str:
        done = self.host.run(["tmux", "-S", str(self.socket), *args], timeout=20)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.name, *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", self.name, "-l", text)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.name)

    def wait(self, needle: str, timeout: float = 15, label: str | None = None) -> str:
        last = [""]

        def check() -> str | None:
            last[0] = self.screen()
            return last[0] if needle in last[0] else None

        try:
            found = wait_until(check, timeout, f"{needle!r} on the screen")
        except AssertionError as exc:
            self.captures.append((f"missing {label or needle}", last[0]))
            raise AssertionError(f"{exc}; the screen:\n{last[0]}") from None
        self.captures.append((label or needle, found))
        return found

    def exit_status(self, timeout: float = 10) -> int:
        """The command's exit status once it has ended."""
        def status() -> str | None:
            text = self.status_file.read_text() if self.status_file.exists() else ""
            return text.strip() if text.endswith("\n") else None

        found = wait_until(status, timeout, "the command to exit")
        self.captures.append(("left", self.screen()))
        return int(found)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for i, (label, text) in enumerate(self.captures, 1):
            slug = "".join(c if c.isalnum() else "-" for c in label)[:40].strip("-")
            (directory / f"{i:02d}-{slug}.txt").write_text(text)

    def close(self) -> None:
        self.host.run(["tmux", "-S", str(self.socket), "kill-server"], timeout=10)


def test_chat_in_a_terminal(world: World) -> None:
    require(shutil.which("tmux") is not None, "tmux (tests/run.sh installs it)")
    h1, h2 = world.h1, world.h2
    me, peer = world.agent2.name, world.agent1.name
    # Scroll-back: one message each way before the chat opens.
    assert h1.xmppll("send", me, "before the chat").returncode == 0
    assert h2.xmppll("send", peer, "my earlier line").returncode == 0
    received, received_out, _ = listen(h1, "--chatstates")
    term = Tmux(h2, [sys.executable, "-m", "xmppll", "chat", peer])
    try:
        term.wait(f"{me}>", label="opened")  # capture-pane drops trailing blanks
        screen = term.wait("my earlier line", label="history")
        assert "before the chat" in screen and f"{peer}: before the chat" in screen
        assert f"{me}: my earlier line" in screen
        assert "avail" in screen  # the peer's presence in the bottom bar
        # Typing sends `composing` to an xmppll peer.
        term.type("hello from the terminal ✓")
        received_out.wait_json(lambda r: r.get("state") == "composing"
                               and r.get("from") == me, 10)
        term.keys("Enter")
        received_out.wait_json(lambda r: r.get("body") == "hello from the terminal ✓", 10)
        term.wait(f"{me}: hello from the terminal ✓", label="sent")
        # The peer types, then answers.
        assert h1.xmppll("send", "--chatstate", "composing", me).returncode == 0
        term.wait(f"{peer} is typing", label="peer typing")
        assert h1.xmppll("send", me, "hi back").returncode == 0
        screen = term.wait(f"{peer}: hi back", label="received")
        assert f"{peer} is typing" not in screen
        # A status change shows as a line.
        assert h1.xmppll("status", "away", "--msg", "brb").returncode == 0
        term.wait(f"{peer} is away: brb", label="status change")
        # Ctrl-D leaves cleanly; the peer is told we are gone.
        term.keys("C-d")
        assert term.exit_status() == 0, term.screen()
        assert "-- bye" in term.screen()
        received_out.wait_json(lambda r: r.get("state") == "gone", 10)
    finally:
        term.save(ARTIFACTS)
        term.close()
        stop_gently(received)
        h1.xmppll("status", "avail")
    # chat refuses to run without a terminal, pointing to send and listen.
    done = h2.xmppll("chat", peer)
    assert done.returncode == 64 and "send" in done.stderr and "listen" in done.stderr


def test_chat_without_an_agent_starts_one(world: World) -> None:
    require(shutil.which("tmux") is not None, "tmux (tests/run.sh installs it)")
    h3, h1 = world.h3, world.h1
    received, received_out, _ = listen(h1)
    term = Tmux(h3, [sys.executable, "-m", "xmppll", "chat", world.agent1.name], "chat3")
    try:
        term.wait(f"chat with {world.agent1.name}", label="own agent")
        term.wait("tester@h3>")
        wait_until(lambda: _peer(h1, "tester@h3") is not None, 10, "h3's agent on the link")
        term.type("from a chat with its own agent")
        term.keys("Enter")
        received_out.wait_json(lambda r: r.get("body") == "from a chat with its own agent", 15)
        term.keys("C-d")
        assert term.exit_status() == 0, term.screen()
        wait_until(lambda: _peer(h1, "tester@h3") is None, 10, "h3's agent withdrawn")
    finally:
        term.save(ARTIFACTS / "own-agent")
        term.close()
        stop_gently(received)



