"""File transfers between two xmppll peers whose stream proved both pinned keys
(issue #13 over issue #11), in-process over loopback: the SOCKS5 bytestream and the
OOB URL go inside TLS with the same keys, and a peer presenting another key during
the file handshake is refused and leaves no file. Plain peers are test_files.py's.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
from test_connections import run, wait_for
from test_files import make_file
from test_tls import PinNames, TlsSide

from xmppll.agent.downloads import DownloadConfig, Downloads
from xmppll.errors import XmpplError
from xmppll.xmpp import tls
from xmppll.xmpp.files import sockets
from xmppll.xmpp.files.send import FileSender
from xmppll.xmpp.files.transfer import Source, guess_mime


class TlsFileSide(TlsSide):
    def __init__(self, name: str, names: PinNames, state: Path) -> None:
        super().__init__(name, names, state)
        self.folder = state / "downloads"
        self.downloads = Downloads(DownloadConfig("always", self.folder, 1 << 30),
                                   self.dispatcher, self.hub, self.store)
        self.sender = FileSender(self.delivery, lambda: None)

    def files(self, state: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.stored()
                if r.get("kind") == "file" and (state is None or r["state"] == state)]

    async def send_file(self, to: str, path: Path, *, method: str, timeout: float = 10.0
                        ) -> Any:
        fh = open(path, "rb")  # noqa: SIM115 (closed by Source.close)
        source = Source(path.name, os.fstat(fh.fileno()).st_size, fh, guess_mime(path.name))
        try:
            return await self.sender.send(to, source, timeout=timeout, method=method)
        finally:
            source.close()

    def swap_key(self, tmp: Path) -> None:
        """From now on, present another key than the one the stream proved."""
        self.tls.creds = tls.Credentials.load_or_create(tmp / "other-key", self.name)
        self.tls._client = None
        self.tls._servers.clear()


@pytest.fixture
def names() -> PinNames:
    return PinNames()


@pytest.fixture
def secured(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, str]]:
    """(server_side, TLS version) of every file socket that went inside TLS."""
    seen: list[tuple[bool, str]] = []
    real = sockets.secure

    def spy(sock: Any, how: Any, *args: Any) -> Any:
        out = real(sock, how, *args)
        if how is not None:
            assert isinstance(out, ssl.SSLSocket)
            seen.append((how.server_side, out.version() or ""))
        return out

    monkeypatch.setattr(sockets, "secure", spy)
    return seen


async def pair(names: PinNames, tmp: Path) -> tuple[TlsFileSide, TlsFileSide]:
    a = await TlsFileSide("alice@h1", names, tmp / "a").start()
    b = await TlsFileSide("bob@h2", names, tmp / "b").start()
    await a.send("bob@h2", "hello")  # the stream, over TLS with both keys proven
    conn = a.hub.usable("bob@h2")
    assert conn is not None and conn.secure and conn.peer_der == b.creds.der
    return a, b


@pytest.mark.parametrize("method", ["si", "oob"])
@run
async def test_both_methods_go_inside_tls_byte_identical(
        names: PinNames, tmp_path: Path, secured: list[tuple[bool, str]],
        method: str) -> None:
    a, b = await pair(names, tmp_path)
    try:
        src = tmp_path / "secret.bin"
        digest = make_file(src, 5_000_000 + 3)
        sent = await a.send_file("bob@h2", src, method=method)
        assert sent.method == method
        got = await wait_for(lambda: b.files("received"))
        assert got[0]["sha256"] == digest and got[0]["size"] == 5_000_003
        assert hashlib.sha256(Path(got[0]["path"]).read_bytes()).hexdigest() == digest
        assert b.files("offered")[0]["tls"] is True
        assert sorted(secured) == [(False, "TLSv1.3"), (True, "TLSv1.3")]
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("method", ["si", "oob"])
@pytest.mark.parametrize("impostor", ["sender", "receiver"])
@run
async def test_another_key_in_the_file_handshake_is_refused_and_no_file_is_kept(
        names: PinNames, tmp_path: Path, method: str, impostor: str) -> None:
    """The stream proved both keys; whoever then answers the file connection holds
    another key (the sender's streamhost or HTTP server, or the receiver)."""
    a, b = await pair(names, tmp_path)
    try:
        (a if impostor == "sender" else b).swap_key(tmp_path / impostor)
        src = tmp_path / "secret.bin"
        make_file(src, 2_000_000)
        with pytest.raises(XmpplError) as refused:
            await a.send_file("bob@h2", src, method=method, timeout=5)
        failed = await wait_for(lambda: b.files("failed"))
        if impostor == "sender":  # the receiver checks the sender's key against its pin
            assert "not the one it advertises" in failed[0]["reason"]
        else:  # the sender's TLS server requires exactly the key the stream proved
            # (its TLS server's verdict; or, when the receiver's error came first, what
            # the receiver saw of it: the alert, or the connection closed on it)
            assert any(why in str(refused.value) for why in (
                "CERTIFICATE_VERIFY_FAILED", "unknown ca", "EOF occurred in violation"))
        assert failed and not b.files("received")
        assert not [p for p in b.folder.rglob("*") if p.is_file()], "no file, no .part"
    finally:
        await a.close()
        await b.close()


@run
async def test_a_plain_url_on_an_encrypted_stream_is_refused(
        names: PinNames, tmp_path: Path) -> None:
    """Both ends decide alike: an xmppll peer with proven keys never offers plain."""
    a, b = await pair(names, tmp_path)
    try:
        src = tmp_path / "x.bin"
        make_file(src, 1000)
        real = sockets.pinned
        sockets.pinned = lambda *args, server_side: None if server_side else real(
            *args, server_side=server_side)
        try:
            with pytest.raises(XmpplError, match="plain text on an encrypted stream"):
                await a.send_file("bob@h2", src, method="oob", timeout=5)
        finally:
            sockets.pinned = real
        assert not b.files("received")
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("method", ["si", "oob"])
@run
async def test_100_mb_over_tls_with_flat_memory(names: PinNames, tmp_path: Path,
                                                method: str) -> None:
    """sendfile cannot encrypt: the TLS path reads and writes through one buffer."""
    import resource

    a, b = await pair(names, tmp_path)
    try:
        src = tmp_path / "big.bin"
        digest = make_file(src, 100 << 20)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        await a.send_file("bob@h2", src, method=method, timeout=30)
        got = await wait_for(lambda: b.files("received"), 30)
        assert got[0]["sha256"] == digest and got[0]["size"] == 100 << 20
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        assert grown < 30 * 1024, f"max RSS grew {grown} kB"
    finally:
        await a.close()
        await b.close()
