"""`xmppll send --file`, `accept` and `decline` end to end: real commands on hosts of
the virtual LAN (mDNS only inside its namespaces).

One LAN for the module:
- h1 runs the agent `alice@h1`, which accepts every file (`--accept-files always`);
- h2 runs the agent `bob@h2`, which asks (`ask`, the default);
- h3 runs no agent: its `send` is standalone.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import lan_missing, require
from lan import Host, Lan, wait_until
from xmppll_side import Agent, start_agent, stop_gently

pytestmark = pytest.mark.lan


@dataclass
class Net:
    lan: Lan
    h1: Host
    h2: Host
    h3: Host
    alice: Agent
    bob: Agent


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    missing = lan_missing()
    require(missing is None, f"virtual LAN support: {missing}")
    lan = Lan(3)
    try:
        h1, h2, h3 = lan.hosts
        alice = start_agent(h1, "alice@h1", "--accept-files", "always",
                            "--download-dir", str(h1.home / "dl"))
        bob = start_agent(h2, "bob@h2", "--download-dir", str(h2.home / "dl"))
        yield Net(lan, h1, h2, h3, alice, bob)
        for agent in (alice, bob):
            stop_gently(agent.proc)
    finally:
        lan.close()


def make(host: Host, name: str, size: int) -> tuple[Path, str]:
    path = host.home / name
    sha = hashlib.sha256()
    block = os.urandom(1 << 20)
    with open(path, "wb") as fh:
        left = size
        while left:
            chunk = block[: min(left, len(block))]
            fh.write(chunk)
            sha.update(chunk)
            left -= len(chunk)
    return path, sha.hexdigest()


def inbox_files(host: Host, name: str) -> list[dict[str, Any]]:
    path = Path(host.env["XDG_STATE_HOME"]) / "xmppll" / name / "inbox.jsonl"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [r for r in map(json.loads, lines) if r.get("kind") == "file"]


def received(host: Host, name: str, file_name: str) -> dict[str, Any]:
    return wait_until(lambda: next((r for r in inbox_files(host, name)
                                    if r["state"] == "received"
                                    and r["name"] == file_name), None),
                      10, f"{file_name} received by {name}")


def sha256(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


@pytest.mark.parametrize("method", ["si", "oob"])
def test_standalone_send_of_5_mb(net: Net, method: str) -> None:
    path, digest = make(net.h3, f"five-{method}.bin", 5 << 20)
    done = net.h3.xmppll("send", "alice@h1", "--file", str(path), "--method", method,
                         timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no progress bar in a pipe
    record = received(net.h1, "alice@h1", path.name)
    assert record["sha256"] == digest and record["method"] == method
    assert record["path"] == str(net.h1.home / "dl" / "tester@h3" / path.name)
    assert sha256(record["path"]) == digest


@pytest.mark.parametrize("method", ["si", "oob"])
def test_100_mb_through_the_agent_each_method(net: Net, method: str) -> None:
    path, digest = make(net.h2, f"hundred-{method}.bin", 100 << 20)
    started = time.monotonic()
    done = net.h2.xmppll("send", "alice@h1", "--file", str(path), "--method", method,
                         timeout=120)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    record = received(net.h1, "alice@h1", path.name)
    assert record["sha256"] == digest and record["size"] == 100 << 20
    assert record["from"] == "bob@h2" and record["verified"] is True
    print(f"100 MB by {method} through the agent: {took:.2f} s")
    os.unlink(record["path"])
    path.unlink()


def test_stdin_under_a_name_and_text_first(net: Net) -> None:
    data = b"line one\nline two\n" * 1000
    done = net.h3.run([*_xmppll(), "send", "alice@h1", "--file", "-", "--name",
                       "build.log", "make failed"], input=data, timeout=60)
    assert done.returncode == 0, done.stderr
    record = received(net.h1, "alice@h1", "build.log")
    assert Path(record["path"]).read_bytes() == data
    assert record["from"] == "tester@h3"


def test_ask_then_accept_id_into_a_folder(net: Net) -> None:
    path, digest = make(net.h3, "asked.bin", 300_000)
    sender = net.h3.xmppll_popen("send", "bob@h2", "--file", str(path))
    offer = wait_until(lambda: next((r for r in inbox_files(net.h2, "bob@h2")
                                     if r["state"] == "offered"
                                     and r["name"] == "asked.bin"), None),
                       15, "the offer in bob's inbox")
    assert offer["from"] == "tester@h3" and offer["size"] == 300_000
    target = net.h2.home / "chosen"
    done = net.h2.xmppll("accept", offer["id"], "--to", str(target), "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["state"] == "received" and record["sha256"] == digest
    assert record["path"] == str(target / "asked.bin")
    assert sender.wait(30) == 0, sender.stderr.read() if sender.stderr else ""


def test_decline_is_69_and_no_answer_is_75(net: Net) -> None:
    path, _ = make(net.h3, "declined.bin", 1000)
    sender = net.h3.xmppll_popen("send", "bob@h2", "--file", str(path))
    offer = wait_until(lambda: next((r for r in inbox_files(net.h2, "bob@h2")
                                     if r["state"] == "offered"
                                     and r["name"] == "declined.bin"), None),
                       15, "the offer in bob's inbox")
    done = net.h2.xmppll("decline", offer["id"], "--reason", "not now")
    assert done.returncode == 0, done.stderr
    assert sender.wait(30) == 69
    assert "not now" in (sender.stderr.read() if sender.stderr else "")
    path2, _ = make(net.h3, "unanswered.bin", 1000)
    done = net.h3.xmppll("send", "bob@h2", "--file", str(path2), "--timeout", "2",
                         timeout=30)
    assert done.returncode == 75, done.stderr


def test_a_file_that_cannot_be_read_is_66(net: Net) -> None:
    done = net.h3.xmppll("send", "alice@h1", "--file", "/nonexistent/x", timeout=30)
    assert done.returncode == 66, done.stderr
    done = net.h2.xmppll("send", "alice@h1", "--file", "/nonexistent/x", timeout=30)
    assert done.returncode == 66, done.stderr


def test_send_all_files(net: Net) -> None:
    """alice takes it at once; bob asks and nobody answers: 75, saying 1 of 2 went."""
    path, digest = make(net.h3, "to-all.bin", 10_000)
    done = net.h3.xmppll("send", "--all", "--file", str(path), "--timeout", "3",
                         timeout=60)
    assert done.returncode == 75, done.stderr
    assert "1 of 2 transfers done" in done.stderr
    assert received(net.h1, "alice@h1", "to-all.bin")["sha256"] == digest


def _xmppll() -> list[str]:
    import sys

    return [sys.executable, "-m", "xmppll"]
