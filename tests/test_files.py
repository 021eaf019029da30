"""File transfer between two xmppll sides in-process over loopback (no mDNS, no root):
SI + SOCKS5 bytestreams and OOB over HTTP, the receive policy, and every hostile case
of issue #11 that needs no link. Real peers (finch, salut) are in test_files_lan.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from test_connections import LOOP, Names, Side, run, wait_for

from xmppll.agent.downloads import DownloadConfig, Downloads, parse_size
from xmppll.errors import TimeoutFailure, UnavailableError, XmpplError
from xmppll.xmpp import stanza as st
from xmppll.xmpp.files import oob, si, socks5
from xmppll.xmpp.files.names import safe_name, unique_path
from xmppll.xmpp.files.send import FileSender
from xmppll.xmpp.files.transfer import Progress, Source, guess_mime


class FileSide(Side):
    """A Side with the file sender and the downloads of the agent."""

    def __init__(self, name: str, names: Names, state: Path, policy: str = "always",
                 max_size: int = 1 << 30) -> None:
        super().__init__(name, names, state)
        self.folder = state / "downloads"
        self.downloads = Downloads(DownloadConfig(policy, self.folder, max_size),
                                   self.dispatcher, self.hub, self.store)
        self.sender = FileSender(self.delivery, lambda: None)

    def files(self, state: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.stored()
                if r.get("kind") == "file" and (state is None or r["state"] == state)]

    async def send_file(self, to: str, path: Path, *, method: str = "auto",
                        timeout: float = 5.0, name: str | None = None) -> Any:
        fh = open(path, "rb")  # noqa: SIM115 (closed by Source.close)
        source = Source(name or path.name, os.fstat(fh.fileno()).st_size, fh,
                        guess_mime(path.name))
        try:
            return await self.sender.send(to, source, timeout=timeout, method=method)
        finally:
            source.close()


def make_file(path: Path, size: int) -> str:
    """A file of `size` pseudo-random bytes; returns its sha256."""
    sha = hashlib.sha256()
    block = os.urandom(1 << 20)
    with open(path, "wb") as fh:
        left = size
        while left:
            chunk = block[: min(left, len(block))]
            fh.write(chunk)
            sha.update(chunk)
            left -= len(chunk)
    return sha.hexdigest()


@pytest.fixture
def names() -> Names:
    return Names()


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


async def pair(names: Names, tmp: Path, policy: str = "always",
               **kw: Any) -> tuple[FileSide, FileSide]:
    a = await FileSide("alice@a", names, tmp / "a").start()
    b = await FileSide("bob@b", names, tmp / "b", policy, **kw).start()
    return a, b


# --- names -------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "safe"), [
    ("report.pdf", "report.pdf"),
    ("../../etc/passwd", "passwd"),
    ("/abs/path/x.txt", "x.txt"),
    ("..", "file"),
    (".bashrc", "bashrc"),
    ("...hidden", "hidden"),
    ("a\x00b\x1b[31mred\x07.txt", "ab[31mred.txt"),
    ("dir\\win.exe", "win.exe"),
    ("", "file"),
    ("\u202etxt.exe", "txt.exe"),
])
def test_hostile_names_are_made_safe(given: str, safe: str) -> None:
    assert safe_name(given) == safe


def test_a_long_name_fits_name_max_and_keeps_its_extension() -> None:
    name = safe_name("x" * 1000 + ".tar.gz")
    assert len(name.encode()) <= 240 and name.endswith(".gz")


def test_an_existing_name_gets_a_number(tmp: Path) -> None:
    (tmp / "a.txt").write_text("1")
    (tmp / "a (1).txt").write_text("2")
    assert unique_path(tmp, "a.txt").name == "a (2).txt"
    (tmp / "noext").write_text("")
    assert unique_path(tmp, "noext").name == "noext (1)"


def test_sizes_parse() -> None:
    assert parse_size("1G") == 1 << 30 and parse_size("500M") == 500 << 20
    assert parse_size(1234) == 1234


# --- xmppll <-> xmppll, each method ------------------------------------------------


@pytest.mark.parametrize("method", ["si", "oob"])
@run
async def test_a_file_arrives_byte_identical(names: Names, tmp: Path, method: str) -> None:
    a, b = await pair(names, tmp)
    try:
        src = tmp / "hello world.bin"
        digest = make_file(src, 3_000_000 + 17)
        sent = await a.send_file("bob@b", src, method=method)
        assert sent.method == method and sent.size == 3_000_017
        got = await wait_for(lambda: b.files("received"))
        assert got[0]["sha256"] == digest and got[0]["size"] == 3_000_017
        path = Path(got[0]["path"])
        assert path == b.folder / "alice@a" / "hello world.bin"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        offered = b.files("offered")[0]
        assert offered["id"] == got[0]["id"] and offered["name"] == "hello world.bin"
        assert offered["size"] == 3_000_017 and offered["from"] == "alice@a"
        assert offered["method"] == method and "verified" in offered
        assert not list(path.parent.glob("*.part"))
    finally:
        await a.close()
        await b.close()


@run
async def test_auto_picks_si_between_xmppll_peers_and_names_never_overwrite(
        names: Names, tmp: Path) -> None:
    a, b = await pair(names, tmp)
    try:
        src = tmp / "same.txt"
        src.write_bytes(b"one")
        assert (await a.send_file("bob@b", src)).method == "si"
        src.write_bytes(b"two!")
        await a.send_file("bob@b", src, method="oob")
        got = await wait_for(lambda: len(b.files("received")) == 2 and b.files("received"))
        paths = sorted(Path(r["path"]).name for r in got)
        assert paths == ["same (1).txt", "same.txt"]
        assert (b.folder / "alice@a" / "same.txt").read_bytes() == b"one"
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("method", ["si", "oob"])
@run
async def test_an_empty_file(names: Names, tmp: Path, method: str) -> None:
    a, b = await pair(names, tmp)
    try:
        src = tmp / "empty"
        src.write_bytes(b"")
        await a.send_file("bob@b", src, method=method)
        got = await wait_for(lambda: b.files("received"))
        assert got[0]["size"] == 0 and Path(got[0]["path"]).read_bytes() == b""
    finally:
        await a.close()
        await b.close()


# --- the policy ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["si", "oob"])
@run
async def test_declined_is_unavailable(names: Names, tmp: Path, method: str) -> None:
    a, b = await pair(names, tmp, policy="ask")
    try:
        src = tmp / "x.bin"
        make_file(src, 1000)
        sending = asyncio.ensure_future(a.send_file("bob@b", src, method=method))
        offer = await wait_for(lambda: b.files("offered"))
        await b.downloads.decline(offer[0]["id"], None)
        with pytest.raises(UnavailableError, match="declined") as exc:
            await sending
        assert exc.value.exit_code == 69
        assert b.files("declined")[0]["id"] == offer[0]["id"]
        assert not (b.folder / "alice@a").exists()
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("method", ["si", "oob"])
@run
async def test_no_answer_within_the_timeout_is_75(names: Names, tmp: Path,
                                                   method: str) -> None:
    a, b = await pair(names, tmp, policy="ask")
    try:
        src = tmp / "x.bin"
        make_file(src, 1000)
        with pytest.raises(TimeoutFailure) as exc:
            await a.send_file("bob@b", src, method=method, timeout=0.5)
        assert exc.value.exit_code == 75
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("method", ["si", "oob"])
@run
async def test_ask_then_accept_into_a_folder(names: Names, tmp: Path, method: str) -> None:
    a, b = await pair(names, tmp, policy="ask")
    try:
        src = tmp / "x.bin"
        digest = make_file(src, 200_000)
        sending = asyncio.ensure_future(a.send_file("bob@b", src, method=method))
        offer = await wait_for(lambda: b.files("offered"))
        assert not b.files("received")
        result = await b.downloads.accept(offer[0]["id"], str(tmp / "chosen"))
        await sending
        assert result["path"] == str(tmp / "chosen" / "x.bin")
        assert result["sha256"] == digest and result["state"] == "received"
        with pytest.raises(XmpplError, match="no pending"):
            await b.downloads.accept(offer[0]["id"], None)
    finally:
        await a.close()
        await b.close()


@run
async def test_never_declines_and_verified_asks_the_unverified(names: Names,
                                                                tmp: Path) -> None:
    a, b = await pair(names, tmp, policy="never")
    try:
        src = tmp / "x.bin"
        make_file(src, 10)
        with pytest.raises(UnavailableError, match="does not accept files"):
            await a.send_file("bob@b", src)
        b.downloads.config.policy = "verified"
        await a.send_file("bob@b", src)  # alice@a advertises 127.0.0.1: verified
        assert (await wait_for(lambda: b.files("received")))[0]["verified"] is True
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("method", ["si", "oob"])
@run
async def test_an_offer_above_max_file_size_is_declined_with_the_reason(
        names: Names, tmp: Path, method: str) -> None:
    a, b = await pair(names, tmp, max_size=1000)
    try:
        src = tmp / "big.bin"
        make_file(src, 1001)
        with pytest.raises(UnavailableError, match="max_file_size"):
            await a.send_file("bob@b", src, method=method)
        declined = await wait_for(lambda: b.files("declined"))
        assert "max_file_size" in declined[0]["reason"]
    finally:
        await a.close()
        await b.close()


@run
async def test_an_offer_above_the_free_space_is_declined(names: Names, tmp: Path) -> None:
    a, b = await pair(names, tmp, max_size=1 << 62)
    try:
        src = tmp / "sparse.bin"
        with open(src, "wb") as fh:
            fh.truncate(1 << 43)  # a sparse 8 TiB: offered, never read
        with pytest.raises(UnavailableError, match="free space"):
            await a.send_file("bob@b", src)
    finally:
        await a.close()
        await b.close()


# --- hostile senders, hand-written -----------------------------------------------------


class Hostile:
    """Plays the sender's side of the wire by hand over a real stream of `a`: sends
    what it likes, reads `b`'s answers."""

    def __init__(self, a: FileSide, b: FileSide) -> None:
        self.a, self.b = a, b

    async def conn(self) -> Any:
        peer = await self.a.delivery.peer("bob@b", 1)
        return await self.a.delivery.connection(peer, asyncio.get_running_loop().time() + 5)

    async def si_offer(self, size: int, sid: str = "sid1") -> Any:
        conn = await self.conn()
        offer = si.offer(to="bob@b", from_="alice@a", sid=sid, name="f.bin", size=size,
                         mime="application/octet-stream")
        reply = await self.a.dispatcher.request(conn, offer, 5)
        assert reply.get("type") == "result", ET.tostring(reply)
        return conn

    async def streamhosts(self, conn: Any, hosts: list[socks5.Streamhost],
                          sid: str = "sid1") -> ET.Element:
        return await self.a.dispatcher.request(
            conn, socks5.query(to="bob@b", from_="alice@a", sid=sid, hosts=hosts), 5)


def serve_s5b(body: bytes, *, close: bool = True, stall: float = 0.0
              ) -> tuple[socket.socket, asyncio.Future]:
    """A SOCKS5 streamhost on loopback that sends `body` (then stalls/closes)."""
    listener = socket.create_server((LOOP, 0))
    expected = socks5.dst_addr("sid1", "alice@a", "bob@b")

    def run() -> None:
        import time

        conn = socks5.serve(listener, expected, time.monotonic() + 5)
        conn.sendall(body)
        if stall:
            time.sleep(stall)
        with contextlib.suppress(OSError):  # a receiver that refuses more resets
            if close:
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)
        conn.close()

    loop = asyncio.get_running_loop()
    return listener, loop.run_in_executor(None, run)


@pytest.mark.parametrize(("body", "why"), [
    (b"x" * 1500, "more than"),
    (b"x" * 500, "500 of the 1000"),
])
@run
async def test_s5b_more_or_fewer_bytes_than_announced_fail(
        names: Names, tmp: Path, body: bytes, why: str) -> None:
    a, b = await pair(names, tmp)
    try:
        h = Hostile(a, b)
        conn = await h.si_offer(1000)
        listener, served = serve_s5b(body)
        port = listener.getsockname()[1]
        reply = await h.streamhosts(conn, [socks5.Streamhost("alice@a", LOOP, port)])
        assert reply.get("type") == "result"
        failed = await wait_for(lambda: b.files("failed"))
        assert why in failed[0]["reason"]
        await served
        listener.close()
        assert not b.files("received")
        assert list((b.folder / "alice@a").iterdir()) == []
    finally:
        await a.close()
        await b.close()


@run
async def test_s5b_a_stalled_sender_fails_and_leaves_nothing(
        names: Names, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XMPPLL_FILE_STALL", "0.5")
    a, b = await pair(names, tmp)
    try:
        h = Hostile(a, b)
        conn = await h.si_offer(1000)
        listener, served = serve_s5b(b"x" * 100, stall=2.0)
        port = listener.getsockname()[1]
        await h.streamhosts(conn, [socks5.Streamhost("alice@a", LOOP, port)])
        failed = await wait_for(lambda: b.files("failed"))
        assert "stalled" in failed[0]["reason"]
        assert list((b.folder / "alice@a").iterdir()) == []
        await served
        listener.close()
    finally:
        await a.close()
        await b.close()


@run
async def test_s5b_a_streamhost_that_is_not_the_peers_is_refused(names: Names,
                                                                  tmp: Path) -> None:
    a, b = await pair(names, tmp)
    try:
        h = Hostile(a, b)
        conn = await h.si_offer(1000)
        # 127.0.0.2 is loopback too (it would connect), but alice@a advertises 127.0.0.1.
        reply = await h.streamhosts(conn, [socks5.Streamhost("x", "127.0.0.2", 9),
                                           socks5.Streamhost("x", "evil.example", 80)])
        assert reply.get("type") == "error"
        failed = await wait_for(lambda: b.files("failed"))
        assert "not an address of the sender" in failed[0]["reason"] or \
            "no streamhost is an address" in failed[0]["reason"]
    finally:
        await a.close()
        await b.close()


@run
async def test_s5b_streamhosts_for_an_unknown_sid_get_item_not_found(
        names: Names, tmp: Path) -> None:
    a, b = await pair(names, tmp)
    try:
        h = Hostile(a, b)
        reply = await h.streamhosts(await h.conn(), [socks5.Streamhost("x", LOOP, 9)],
                                    sid="never-offered")
        assert reply.get("type") == "error" and si.error_of(reply)[0] == "item-not-found"
    finally:
        await a.close()
        await b.close()


class HttpOnce:
    """An HTTP server on loopback answering one GET with `head` + `body`."""

    def __init__(self, head: bytes, body: bytes, stall: float = 0.0,
                 host: str = LOOP, wait: float = 5.0) -> None:
        self.wait = wait
        self.listener = socket.create_server((host, 0))
        self.port = self.listener.getsockname()[1]
        self.head, self.body, self.stall = head, body, stall
        self.gets = 0

    def run(self) -> None:
        import time

        self.listener.settimeout(self.wait)
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        self.gets += 1
        conn.recv(65536)
        conn.sendall(self.head + self.body)
        if self.stall:
            time.sleep(self.stall)
        conn.close()


async def oob_offer(a: FileSide, url: str, size: int | None) -> ET.Element:
    peer = await a.delivery.peer("bob@b", 1)
    conn = await a.delivery.connection(peer, asyncio.get_running_loop().time() + 5)
    iq = oob.offer(to="bob@b", from_="alice@a", id_=st.new_id(), url=url, size=size or 0,
                   mime="text/plain")
    return await a.dispatcher.request(conn, iq, 5)


@pytest.mark.parametrize(("head", "body", "size", "why"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1500\r\n\r\n", b"y" * 1500, 1000, "offered 1000"),
    (b"HTTP/1.1 200 OK\r\n\r\n", b"y" * 1500, 1000, "more than"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", b"y" * 400, 1000, "400 of the"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"10\r\n" + b"z" * 16 +
     b"\r\n0\r\n\r\n", 1000, "16 of the 1000"),
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", b"", 1000, "404"),
])
@run
async def test_oob_wrong_sizes_and_errors_fail_and_leave_nothing(
        names: Names, tmp: Path, head: bytes, body: bytes, size: int, why: str) -> None:
    a, b = await pair(names, tmp)
    try:
        server = HttpOnce(head, body)
        serving = asyncio.get_running_loop().run_in_executor(None, server.run)
        reply = await oob_offer(a, f"http://{LOOP}:{server.port}/t/f.txt", size)
        assert reply.get("type") == "error" and si.error_of(reply)[1] == "404"
        failed = await wait_for(lambda: b.files("failed"))
        assert why in failed[0]["reason"], failed[0]["reason"]
        assert list((b.folder / "alice@a").iterdir()) == []
        await serving
    finally:
        await a.close()
        await b.close()


@run
async def test_oob_a_stalled_sender_fails(names: Names, tmp: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XMPPLL_FILE_STALL", "0.5")
    a, b = await pair(names, tmp)
    try:
        server = HttpOnce(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", b"q" * 10,
                          stall=2.0)
        serving = asyncio.get_running_loop().run_in_executor(None, server.run)
        reply = await oob_offer(a, f"http://{LOOP}:{server.port}/t/f.txt", 1000)
        assert reply.get("type") == "error"
        assert "stalled" in (await wait_for(lambda: b.files("failed")))[0]["reason"]
        assert list((b.folder / "alice@a").iterdir()) == []
        await serving
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("host", ["127.0.0.2", "evil.example", "[::1]"])
@run
async def test_oob_a_url_on_a_third_host_is_refused_without_a_fetch(
        names: Names, tmp: Path, host: str) -> None:
    a, b = await pair(names, tmp)
    try:
        server = HttpOnce(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", b"abc",
                          host="127.0.0.2", wait=0.5)
        serving = asyncio.get_running_loop().run_in_executor(None, server.run)
        reply = await oob_offer(a, f"http://{host}:{server.port}/t/f.txt", 3)
        assert reply.get("type") == "error"
        failed = await wait_for(lambda: b.files("failed"))
        assert "is not an address of alice@a" in failed[0]["reason"]
        await serving
        server.listener.close()
        assert server.gets == 0
    finally:
        await a.close()
        await b.close()


@run
async def test_oob_an_offer_without_size_stops_at_max_file_size(names: Names,
                                                                 tmp: Path) -> None:
    a, b = await pair(names, tmp, max_size=1000)
    try:
        server = HttpOnce(b"HTTP/1.1 200 OK\r\n\r\n", b"w" * 5000)
        serving = asyncio.get_running_loop().run_in_executor(None, server.run)
        reply = await oob_offer(a, f"http://{LOOP}:{server.port}/t/f.txt", None)
        assert reply.get("type") == "error"
        assert "max_file_size" in (await wait_for(lambda: b.files("failed")))[0]["reason"]
        await serving
    finally:
        await a.close()
        await b.close()


# --- the agent keeps delivering messages ------------------------------------------------


@run
async def test_ten_offers_and_a_slow_transfer_do_not_stop_messages(
        names: Names, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XMPPLL_FILE_STALL", "3")
    a, b = await pair(names, tmp, policy="ask")
    try:
        src = tmp / "x.bin"
        make_file(src, 1000)
        offers = [asyncio.ensure_future(a.send_file("bob@b", src, timeout=20))
                  for _ in range(10)]
        await wait_for(lambda: len(b.files("offered")) == 10)
        # And one accepted transfer from a sender that stalls on its streamhost.
        h = Hostile(a, b)
        b.downloads.config.policy = "always"
        conn = await h.si_offer(1000)
        listener, served = serve_s5b(b"x" * 10, stall=2.5)
        await h.streamhosts(conn, [socks5.Streamhost("alice@a", LOOP,
                                                     listener.getsockname()[1])])
        loop = asyncio.get_running_loop()
        for n in range(5):
            started = loop.time()
            await a.send("bob@b", f"still here {n}", receipt=True)
            assert loop.time() - started < 0.5
        bodies = [r.get("body") for r in b.stored() if r.get("kind") == "message"]
        assert bodies == [f"still here {n}" for n in range(5)]
        for fut in offers:
            fut.cancel()
        await served
        listener.close()
    finally:
        await a.close()
        await b.close()


# --- sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["si", "oob"])
@run
async def test_100_mb_with_flat_memory(names: Names, tmp: Path, method: str) -> None:
    import resource

    a, b = await pair(names, tmp)
    try:
        src = tmp / "big.bin"
        digest = make_file(src, 100 << 20)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        await a.send_file("bob@b", src, method=method, timeout=30)
        got = await wait_for(lambda: b.files("received"), 30)
        assert got[0]["sha256"] == digest and got[0]["size"] == 100 << 20
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        assert grown < 30 * 1024, f"max RSS grew {grown} kB"
        os.unlink(got[0]["path"])
    finally:
        await a.close()
        await b.close()


def test_progress_counts() -> None:
    p = Progress(10)
    p.done = 5
    assert p.rate() >= 0
    assert tempfile.gettempdir()


def test_an_idle_agent_loads_no_file_transfer() -> None:
    """Issue 14: receiving files is loaded with the first offer (agent/downloads.py);
    the LAN tests send every offer to agents that start without it."""
    code = ("import sys, xmppll.agent.agent; "
            "print(' '.join(sorted(m for m in sys.modules if '.files' in m)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.split() == ["xmppll.xmpp.files", "xmppll.xmpp.files.names",
                                   "xmppll.xmpp.files.namespaces"]
