"""File transfer with the real peers (issue 11): 5 MB each way, byte-identical, between
an xmppll agent and libpurple (finch: XEP-0096 SI + XEP-0065 SOCKS5 bytestreams) and
telepathy-salut (jabber:iq:oob over HTTP). A small world of its own, so the module
runs alone:

| host | runs | role |
| --- | --- | --- |
| h1 | `xmppll announce --accept-files always` | the xmppll agent, `dl/` its download folder |
| h2 | avahi-daemon, finch `romeo@h2` | libpurple; accepts over D-Bus into `finch/got/` |
| h3 | avahi-daemon, telepathy-salut `alice@h3` | salut; accepts every file into `got/` |
| h4 | nothing running | a standalone `xmppll send` on a terminal (tmux) |

Both peers must be alive at the end: nothing we send may crash them. Artifacts in
tests/artifacts/interop-files/: the peers' debug logs (every stanza), the agent's
stderr, and the terminal capture of the progress bar.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import lan_missing, require
from lan import Host, Lan
from peers import ARTIFACTS, AvahiDaemon, Finch, Salut, missing_finch, missing_salut
from xmppll_side import Agent, start_agent, stop_gently, wait_until

pytestmark = pytest.mark.lan
OUT = ARTIFACTS / "interop-files"
SIZE = 5 << 20
TRANSFER = 30.0  # s, bound on each 5 MB transfer (they take well under a second)


@dataclass
class World:
    lan: Lan
    agent: Agent
    finch: Finch
    salut: Salut

    @property
    def h1(self) -> Host:
        return self.lan[0]

    @property
    def h4(self) -> Host:
        return self.lan[3]

    def romeo(self) -> Finch:
        assert self.finch.alive(), f"finch died; see its debug log in {OUT}"
        return self.finch

    def alice(self) -> Salut:
        assert self.salut.alive(), f"telepathy-salut exited ({self.salut.returncode})"
        return self.salut


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    missing = lan_missing()
    require(missing is None, f"virtual LAN support: {missing}")
    require(missing_finch() is None, f"libpurple Bonjour peer: {missing_finch()}")
    require(missing_salut() is None, f"telepathy-salut peer: {missing_salut()}")
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    lan = Lan(4)
    stack: list[Callable[[], None]] = []
    w: World | None = None
    try:
        h1, h2, h3, _h4 = lan.hosts

        def finch() -> Finch:
            avahi = AvahiDaemon(h2)
            stack.append(avahi.stop)
            peer = Finch(h2, avahi, "romeo", "Romeo", "Montague")
            stack.append(peer.stop)
            return peer

        def salut() -> Salut:
            avahi = AvahiDaemon(h3)
            stack.append(avahi.stop)
            peer = Salut(h3, avahi, "alice", "Alice", "Liddell")
            stack.append(peer.stop)
            return peer

        with ThreadPoolExecutor(3) as pool:
            f_agent = pool.submit(start_agent, h1, "--accept-files", "always",
                                  "--download-dir", str(h1.home / "dl"))
            f_finch, f_salut = pool.submit(finch), pool.submit(salut)
            agent, romeo, alice = f_agent.result(), f_finch.result(), f_salut.result()
        stack.append(lambda: stop_gently(agent.proc))
        alice.accept_files(alice.dir / "got")
        romeo.wait_buddy_online(agent.name, 15)
        alice.wait_presence(agent.name, timeout=15)
        w = World(lan, agent, romeo, alice)
        yield w
        assert romeo.alive(), "finch died during the module"
        assert alice.alive(), f"telepathy-salut exited ({alice.returncode}) during the module"
    finally:
        try:
            if w is not None:
                w.finch.save_debug_log(OUT)
                w.salut.save_debug_log(OUT)
                (OUT / "agent-h1.stderr").write_text("\n".join(w.agent.err.lines) + "\n")
        finally:
            for stop in reversed(stack):
                try:
                    stop()
                except Exception as exc:  # teardown goes on; the test result stands
                    print(f"interop-files teardown: {exc!r}")
            lan.close()


def make(path: Path, size: int = SIZE) -> str:
    """`size` random bytes at `path`; their sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def sha256(path: Path | str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def received(w: World, name: str, sender: str) -> dict[str, Any]:
    """The agent's inbox record for `name` once received (failing at a failed one)."""
    inbox = Path(w.h1.env["XDG_STATE_HOME"]) / "xmppll" / w.agent.name / "inbox.jsonl"

    def check() -> dict[str, Any] | None:
        try:
            lines = inbox.read_text().splitlines()
        except FileNotFoundError:
            return None
        for r in map(json.loads, lines):
            if r.get("kind") == "file" and r.get("name") == name:
                assert r["state"] != "failed", f"the agent failed {name}: {r['reason']}"
                if r["state"] == "received":
                    assert r["from"] == sender
                    return r
        return None

    return wait_until(check, TRANSFER, f"{name} in the agent's inbox")


def send(w: World, to: str, path: Path) -> float:
    """`xmppll send TO --file PATH` on h1 (through the agent); the seconds it took."""
    started = time.monotonic()
    done = w.h1.xmppll("send", to, "--file", str(path), "--wait", "10",
                       timeout=TRANSFER + 15)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    return time.monotonic() - started


# --- libpurple: SI + SOCKS5 bytestreams ---------------------------------------------------

def test_xmppll_to_finch(world: World) -> None:
    romeo = world.romeo()
    path = world.h1.home / "to-romeo.bin"
    digest = make(path)
    before = len(romeo.file_signals())
    with ThreadPoolExecutor(1) as pool:
        sending = pool.submit(send, world, romeo.name, path)
        got = romeo.receive_file(romeo.dir / "got", after=before, size=SIZE,
                                 timeout=TRANSFER)
        took = sending.result(TRANSFER + 20)
    assert sha256(got) == digest
    print(f"xmppll -> finch: 5 MB in {took:.2f} s")


def test_finch_to_xmppll(world: World) -> None:
    romeo = world.romeo()
    path = romeo.dir / "from-romeo.bin"
    digest = make(path)
    before = romeo.send_file(world.agent.name, path)
    record = received(world, path.name, romeo.name)
    romeo.wait_file_signal("FileSendComplete", after=before, timeout=TRANSFER)
    assert record["sha256"] == digest and record["size"] == SIZE
    assert record["method"] == "si"
    assert sha256(record["path"]) == digest


# --- telepathy-salut: jabber:iq:oob over HTTP ---------------------------------------------

def test_xmppll_to_salut(world: World) -> None:
    alice = world.alice()
    path = world.h1.home / "to-alice.bin"
    digest = make(path)
    took = send(world, alice.name, path)
    got = alice.wait_file_received(path.name, TRANSFER)
    assert got.stat().st_size == SIZE and sha256(got) == digest
    print(f"xmppll -> salut: 5 MB in {took:.2f} s")


def test_salut_to_xmppll(world: World) -> None:
    alice = world.alice()
    path = alice.dir / "from-alice.bin"
    digest = make(path)
    channel = alice.send_file(world.agent.name, path)
    record = received(world, path.name, alice.name)
    alice.wait_file_state(channel, "completed", TRANSFER)
    assert record["sha256"] == digest and record["size"] == SIZE
    assert record["method"] == "oob"
    assert sha256(record["path"]) == digest


def test_both_peers_still_run(world: World) -> None:
    world.romeo()
    world.alice()
    assert not [line for line in world.agent.problems() if "traceback" in line.lower()]


# --- the progress bar on a real terminal ---------------------------------------------------

_TERMINAL_SH = """#!/bin/sh
# Started by tmux in h4's namespace; tmux's environment is not ours, so set it all.
{exports}
export TERM=screen LANG=C.UTF-8 LC_ALL=C.UTF-8
{python} -m xmppll send {to} --file {file} --wait 10
echo "exit=$?"
sleep 60
"""


def test_progress_bar_on_a_terminal(world: World) -> None:
    """`xmppll send --file` on a tmux pane (a real tty) from h4, standalone: the bar
    is drawn on stderr and ends at 100 %; every distinct frame captured is kept."""
    h4 = world.h4
    require(shutil.which("tmux") is not None, "tmux")
    path = h4.home / "on-a-terminal.bin"
    digest = make(path, 300 << 20)
    env = {k: v for k, v in h4.env.items()
           if k in ("HOME", "USER", "LOGNAME", "PATH", "PYTHONPATH", "VIRTUAL_ENV")
           or k.startswith("XDG_")}
    script = h4.home / "terminal.sh"
    script.write_text(_TERMINAL_SH.format(
        exports="\n".join(f"export {k}='{v}'" for k, v in env.items()),
        python=sys.executable, to=world.agent.name, file=path))
    script.chmod(0o755)
    sock = h4.home / "tmux.sock"
    tmux = ["tmux", "-S", str(sock)]
    done = h4.run([*tmux, "new-session", "-d", "-s", "bar", "-x", "100", "-y", "8",
                   str(script)], timeout=20)
    assert done.returncode == 0, done.stderr
    frames: list[str] = []
    try:
        deadline = time.monotonic() + TRANSFER + 15
        while time.monotonic() < deadline:
            shot = h4.run([*tmux, "capture-pane", "-p", "-t", "bar"], timeout=10).stdout
            if not frames or shot != frames[-1]:
                frames.append(shot)
            if "exit=" in shot:
                break
            time.sleep(0.02)
    finally:
        (OUT / "progress-bar-frames.txt").write_text(
            "\n".join(f"--- frame {i}\n{f.rstrip()}" for i, f in enumerate(frames)) + "\n")
        h4.run([*tmux, "kill-server"], timeout=10)
    last = frames[-1]
    assert "exit=0" in last, last
    assert "100%" in last and "on-a-terminal.bin" in last, last
    # A sane rate: the veth moves at most a few GB/s (it once showed 314.6 GB/s).
    rate = re.search(r"at ([\d.]+) (B|kB|MB|GB)/s", last)
    assert rate is not None, last
    assert float(rate[1]) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[rate[2]] < 20e9, last
    record = received(world, path.name, "tester@h4")
    assert record["sha256"] == digest
