"""STARTTLS end to end on the virtual LAN (#13): xmppll <-> xmppll as real subprocesses,
a packet capture in the receiver's namespace, `listen` marking what it got, and a
changed key refused until `xmppll trust`. The in-process cases (MITM, downgrade,
policies) are in test_tls.py.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import lan_missing, require
from lan import Host, Lan
from peers.sniffer import Sniffer
from xmppll_side import listen, start_agent, stop_gently, wait_until, xmppll_json

pytestmark = pytest.mark.lan


@pytest.fixture(scope="module")
def lan() -> Iterator[Lan]:
    missing = lan_missing()
    require(missing is None, f"virtual LAN support: {missing}")
    with Lan(2) as lan:
        yield lan


def peer_on(host: Host, name: str) -> dict[str, Any] | None:
    for peer in xmppll_json(host, "browse", "--json"):
        if peer["name"] == name:
            return peer
    return None


def start_bob(host: Host) -> tuple[Any, Any, Any]:
    proc, out, err = listen(host, "bob@h2")
    err.wait_for("announced", 15)
    return proc, out, err


def test_xmppll_streams_are_encrypted_verified_and_a_new_key_waits_for_trust(
        lan: Lan, tmp_path: Path) -> None:
    a, b = lan.hosts
    sniffer = Sniffer(b, tmp_path / "capture.jsonl")
    bob, out, err = start_bob(b)
    alice = start_agent(a, "alice@h1")
    # Its first start: the key was made by a child process (agent/keymaker.py), so the
    # agent never loaded cryptography (~11 MB it would have kept).
    assert (Path(a.env["XDG_STATE_HOME"]) / "xmppll" / "alice@h1" / "tls" / "key.pem").exists()
    assert "cryptography" not in Path(f"/proc/{alice.proc.pid}/maps").read_text()
    try:
        # browse shows who speaks TLS; each side knows the other's key before sending.
        bob_peer = wait_until(lambda: (p := peer_on(a, "bob@h2")) and p["tls"] and p, 10,
                              "alice to see bob's key")
        wait_until(lambda: (p := peer_on(b, "alice@h1")) and p["tls"], 10,
                   "bob to see alice's key")
        table = a.xmppll("browse", "--table").stdout
        assert table.splitlines()[0].split()[4] == "TLS"
        assert table.splitlines()[1].split()[4] == "yes"

        secret = "s3cr3t-" + secrets.token_hex(8)
        done = a.xmppll("send", "bob@h2", f"{secret} build 42 failed")
        assert done.returncode == 0, done.stderr
        record = out.wait_json(lambda r: secret in (r.get("body") or ""), 15)
        assert (record["from"], record["verified"], record["secure"]) == (
            "alice@h1", True, "tls")
        # The pinned key is remembered on both sides.
        known = Path(a.env["XDG_STATE_HOME"]) / "xmppll" / "known_peers"
        assert f"{bob_peer['tls']} bob@h2" in known.read_text()

        sniffer.stop()
        tcp = [r for r in sniffer.records() if r.get("proto") == "tcp" and r["data"]]
        wire = b"".join(bytes.fromhex(r["data"]) for r in tcp)
        assert b"<starttls" in wire and b"<proceed" in wire, "STARTTLS went over this link"
        assert secret.encode() not in wire, "the body crossed the link in clear"
        assert b"build 42" not in wire

        # bob comes back with another key: refused (exit 77) until alice trusts it.
        stop_gently(bob)
        shutil.rmtree(Path(b.env["XDG_STATE_HOME"]) / "xmppll" / "bob@h2" / "tls")
        bob, out, err = start_bob(b)
        new = wait_until(lambda: (p := peer_on(a, "bob@h2")) and p["tls"] != bob_peer["tls"]
                         and p["tls"], 10, "alice to see bob's new key")
        wait_until(lambda: (p := peer_on(b, "alice@h1")) and p["tls"], 10,
                   "bob to see alice again")
        refused = a.xmppll("send", "bob@h2", "after the change")
        assert refused.returncode == 77, refused.stderr
        assert "xmppll trust bob@h2" in refused.stderr and "changed" in refused.stderr
        trusted = a.xmppll("trust", "bob@h2", "--json")
        assert trusted.returncode == 0, trusted.stderr
        assert new in trusted.stdout
        done = a.xmppll("send", "bob@h2", f"{secret} again")
        assert done.returncode == 0, done.stderr
        record = out.wait_json(lambda r: f"{secret} again" == r.get("body"), 15)
        assert (record["verified"], record["secure"]) == (True, "tls")
        assert not [line for line in alice.err.lines if "Traceback" in line]
    finally:
        sniffer.stop()
        stop_gently(bob)
        stop_gently(alice.proc)


def test_a_one_shot_send_proves_the_key_its_agent_advertised(lan: Lan) -> None:
    """carol's agent once sent to dave, so dave knows carol's key. With her agent gone,
    a one-shot `send` from carol is refused at first (dave runs --verify strict and
    carol is not published), publishes a transient presence with the key her agent
    made, and proves it on the stream: delivered, verified. A keyless presence and
    stream were, to dave, a downgrade of a name he knows: refused again and again."""
    a, b = lan.hosts
    dave, out, err = listen(b, "dave@h2", "--verify", "strict")
    err.wait_for("announced", 15)
    carol = start_agent(a, "carol@h1")
    try:
        wait_until(lambda: (p := peer_on(a, "dave@h2")) and p["tls"], 10,
                   "carol to see dave's key")
        wait_until(lambda: (p := peer_on(b, "carol@h1")) and p["tls"], 10,
                   "dave to see carol's key")
        done = a.xmppll("send", "--from", "carol@h1", "dave@h2", "from the agent")
        assert done.returncode == 0, done.stderr
        out.wait_json(lambda r: r.get("body") == "from the agent", 15)
        stop_gently(carol.proc)
        wait_until(lambda: peer_on(b, "carol@h1") is None, 10, "dave to see carol leave")
        done = a.xmppll("send", "--from", "carol@h1", "dave@h2", "one shot")
        assert done.returncode == 0, done.stderr
        record = out.wait_json(lambda r: r.get("body") == "one shot", 15)
        assert (record["from"], record["verified"], record["secure"]) == (
            "carol@h1", True, "tls")
    finally:
        stop_gently(dave)
        stop_gently(carol.proc)


def flows(records: list[dict[str, Any]]) -> dict[tuple, bytes]:
    """Each captured TCP direction's payload, in sequence order, duplicates dropped. A
    retransmission may start at a seq already seen with less data (a loaded machine's
    veth drops a large segment, TCP resends it cut differently): the longest wins."""
    segments: dict[tuple, dict[int, bytes]] = {}
    for r in records:
        if r.get("proto") == "tcp" and r["data"]:
            key = (r["src"], r["sport"], r["dst"], r["dport"])
            data, seen = bytes.fromhex(r["data"]), segments.setdefault(key, {})
            if len(data) > len(seen.get(r["seq"], b"")):
                seen[r["seq"]] = data
    return {key: b"".join(data for _, data in sorted(segs.items()))
            for key, segs in segments.items()}


@pytest.mark.parametrize("method", ["si", "oob"])
def test_files_between_xmppll_peers_cross_the_link_only_encrypted(
        lan: Lan, tmp_path: Path, method: str) -> None:
    """Two agents with pinned keys; bob sends alice a file holding a known marker many
    times over: the capture on alice's link holds all of the transfer's bytes, and not
    one marker, nor any slice of the file, in clear."""
    a, b = lan.hosts
    alice = start_agent(a, f"alice-{method}@h1", "--accept-files", "always",
                        "--download-dir", str(a.home / "dl"))
    bob = start_agent(b, f"bob-{method}@h2")
    sniffer = Sniffer(a, tmp_path / "capture.jsonl")
    try:
        wait_until(lambda: (p := peer_on(b, f"alice-{method}@h1")) and p["tls"], 10,
                   "bob to see alice's key")
        wait_until(lambda: (p := peer_on(a, f"bob-{method}@h2")) and p["tls"], 10,
                   "alice to see bob's key")
        marker = b"FILE-MARKER-" + secrets.token_hex(8).encode()
        noise = secrets.token_bytes(1 << 20)
        data = b"".join(marker + noise[i:i + 65536] for i in range(0, len(noise), 65536))
        path = b.home / f"secret-{method}.bin"
        path.write_bytes(data)
        done = b.xmppll("send", "--from", f"bob-{method}@h2", f"alice-{method}@h1",
                        "--file", str(path), "--method", method, timeout=60)
        assert done.returncode == 0, done.stderr
        got = wait_until(lambda: [p for p in (a.home / "dl").rglob(path.name)], 20,
                         "the file in alice's folder")
        assert got[0].read_bytes() == data
        inbox = Path(a.env["XDG_STATE_HOME"]) / "xmppll" / f"alice-{method}@h1" / "inbox.jsonl"
        offered = [r for r in map(json.loads, inbox.read_text().splitlines())
                   if r.get("kind") == "file" and r["state"] == "offered"]
        assert offered[-1]["tls"] is True and offered[-1]["method"] == method
        sniffer.stop()
        captured = flows(sniffer.records())
        assert sum(map(len, captured.values())) > len(data), "the transfer was captured"
        for wire in captured.values():
            assert marker not in wire, "file bytes crossed the link in clear"
            assert noise[4096:4160] not in wire
    finally:
        sniffer.stop()
        stop_gently(bob.proc)
        stop_gently(alice.proc)
