"""Faces with the real peers (issue 15): pictures both ways with libpurple (finch) and
telepathy-salut, changes seen by all, and no typing notice ever sent alone to either.

| host | runs |
| --- | --- |
| h1 | avahi-daemon, finch `romeo@h1` with its own picture |
| h2 | `xmppll announce --avatar` |
| h3 | avahi-daemon, telepathy-salut `alice@h3` |

Debug logs land in tests/artifacts/interop-faces/.
"""

from __future__ import annotations

import random
import shutil
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import lan_missing, require
from lan import Host, Lan
from peers import ARTIFACTS, AvahiDaemon, Finch, missing_avahi, missing_finch
from peers.salut import Salut, missing_salut
from xmppll_side import Agent, start_agent, wait_until, xmppll_json

from xmppll.discovery.mdns.avatar import sha1_hex

OUT = ARTIFACTS / "interop-faces"
pytestmark = pytest.mark.lan


def png(seed: int, side: int = 64) -> bytes:
    """A real PNG of noise (~12 KB for 64x64: bigger than an Ethernet frame and than
    the 8966-byte packets python-zeroconf takes)."""
    rng = random.Random(seed)
    rows = b"".join(b"\0" + rng.randbytes(side * 3) for _ in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack("!I", len(data)) + kind + data
                + struct.pack("!I", zlib.crc32(kind + data)))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack("!IIBBBBB", side, side, 8, 2,
                                                               0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


@dataclass
class World:
    lan: Lan
    finch: Finch | None
    salut: Salut | None
    agent: Agent
    pictures: dict[str, bytes]
    files: dict[str, Path]

    @property
    def h2(self) -> Host:
        return self.lan[1]

    def purple(self) -> Finch:
        require(self.finch is not None, f"libpurple Bonjour peer: {missing_finch()}")
        assert self.finch is not None and self.finch.alive()
        return self.finch

    def telepathy(self) -> Salut:
        require(self.salut is not None, f"telepathy-salut peer: {missing_salut()}")
        assert self.salut is not None and self.salut.alive()
        return self.salut


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    missing = lan_missing()
    require(missing is None, f"virtual LAN support: {missing}")
    require(missing_avahi() is None, f"avahi peer: {missing_avahi()}")
    shutil.rmtree(OUT, ignore_errors=True)
    lan = Lan(3)
    stops = []
    w: World | None = None
    try:
        h1, h2, h3 = lan.hosts
        pictures = {name: png(i) for i, name in enumerate(("finch", "ours", "ours2", "salut",
                                                           "salut2"))}
        files = {}
        for name, data in pictures.items():
            files[name] = lan.tmp / f"{name}.png"
            files[name].write_bytes(data)
        finch = salut = None
        if missing_finch() is None:
            avahi1 = AvahiDaemon(h1)
            stops.append(avahi1.stop)
            finch = Finch(h1, avahi1, icon=pictures["finch"])
            stops.append(finch.stop)
        if missing_salut() is None:
            avahi3 = AvahiDaemon(h3)
            stops.append(avahi3.stop)
            salut = Salut(h3, avahi3)
            stops.append(salut.stop)
        agent = start_agent(h2, "--avatar", str(files["ours"]))
        w = World(lan, finch, salut, agent, pictures, files)
        yield w
        assert not agent.problems(), agent.err.lines
    finally:
        OUT.mkdir(parents=True, exist_ok=True)
        if w is not None:
            (OUT / "agent-h2.stderr").write_text("\n".join(w.agent.err.lines) + "\n")
            if w.finch is not None:
                w.finch.save_debug_log(OUT)
            if w.salut is not None:
                w.salut.save_debug_log(OUT)
        for stop in reversed(stops):
            try:
                stop()
            except Exception as exc:
                print(f"teardown: {exc!r}")
        lan.close()


def _peer(host: Host, name: str) -> dict | None:
    return next((p for p in xmppll_json(host, "browse", "--json") if p["name"] == name), None)


def _fetch(host: Host, name: str, out: Path) -> bytes:
    done = host.xmppll("avatar", name, "-o", str(out), "--timeout", "8")
    assert done.returncode == 0, done.stderr
    return out.read_bytes()


def _set_ours(w: World, key: str) -> None:
    done = w.h2.xmppll("status", "--avatar", str(w.files[key]))
    assert done.returncode == 0, done.stderr


# --- libpurple -----------------------------------------------------------------------------

def test_libpurple_holds_the_picture_we_published(world: World) -> None:
    purple = world.purple()
    name = world.agent.name
    purple.wait_buddy_online(name, 15)
    wait_until(lambda: purple.buddy_icon(name) == world.pictures["ours"], 15,
               "finch to hold our picture, byte-identical")


def test_xmppll_fetches_the_libpurple_picture(world: World) -> None:
    purple = world.purple()
    sha = sha1_hex(world.pictures["finch"])
    peer = wait_until(lambda: (p := _peer(world.h2, purple.name)) and p["avatar"] and p, 15,
                      f"{purple.name} with its phsh in browse")
    assert peer["avatar"] == sha
    assert _fetch(world.h2, purple.name, world.lan.tmp / "from-finch.png") == \
        world.pictures["finch"]


# --- telepathy-salut -------------------------------------------------------------------------

def test_salut_holds_the_picture_we_published(world: World) -> None:
    salut = world.telepathy()
    name = world.agent.name
    _set_ours(world, "ours")
    salut.wait_presence(name, timeout=15)
    sha = sha1_hex(world.pictures["ours"])
    wait_until(lambda: salut.avatar_token(name) == sha, 15, "salut to know our phsh")
    assert salut.avatar_of(name, sha) == world.pictures["ours"]


def test_xmppll_fetches_salut_pictures_and_their_change_at_once(world: World) -> None:
    """avahi's goodbye for a changed picture carries the new data, so caches keep the
    old one (another salut showed it for ~110 s): xmppll picks by phsh, at once."""
    salut = world.telepathy()
    for key in ("salut", "salut2"):
        salut.set_avatar(world.pictures[key])
        sha = sha1_hex(world.pictures[key])
        wait_until(lambda sha=sha: (_peer(world.h2, salut.name) or {}).get("avatar") == sha,
                   10, f"salut's phsh {key} in browse")
        assert _fetch(world.h2, salut.name, world.lan.tmp / f"{key}.png") == \
            world.pictures[key]
        # One-shot too, on a host with no agent (its cache is fresh: no help there).
        assert _fetch(world.lan[0], salut.name, world.lan.tmp / f"{key}-h1.png") == \
            world.pictures[key]


# --- our change, seen by both --------------------------------------------------------------

def test_our_changed_picture_is_seen_by_both(world: World) -> None:
    name = world.agent.name
    _set_ours(world, "ours2")
    new = world.pictures["ours2"]
    if world.finch is not None:
        purple = world.purple()
        wait_until(lambda: purple.buddy_icon(name) == new, 15, "finch to hold the new picture")
    salut = world.telepathy()
    sha = sha1_hex(new)
    wait_until(lambda: salut.avatar_token(name) == sha, 15, "salut to know the new phsh")
    assert salut.avatar_of(name, sha) == new
    _set_ours(world, "ours")


# --- typing notices ---------------------------------------------------------------------------

def test_no_typing_notice_alone_to_libpurple_or_salut(world: World) -> None:
    """Refused before anything is sent; messages with a state riding on them still
    all arrive (salut drops a message that holds only a state)."""
    h2 = world.h2
    peers = [p for p in (world.finch, world.salut) if p is not None]
    require(bool(peers), "libpurple or salut")
    for peer in peers:
        done = h2.xmppll("send", "--chatstate", "composing", peer.name)
        assert done.returncode == 69 and "chat states" in done.stderr, done.stderr
    salut = world.telepathy()
    texts = [f"typing test {i}" for i in range(3)]
    for i, text in enumerate(texts):
        args = ("--chatstate", "active") if i % 2 == 0 else ()
        done = h2.xmppll("send", *args, salut.name, text)
        assert done.returncode == 0, done.stderr
    for text in texts:
        salut.wait_message(lambda m, text=text: m["text"] == text, 10)
    assert "without a body" not in salut.debug_text().lower()
    if world.finch is not None:
        done = h2.xmppll("send", "--chatstate", "active", world.finch.name, "to finch")
        assert done.returncode == 0, done.stderr
        world.finch.wait_received(lambda s, m: "to finch" in m, 10)
