"""Moving the bytes: what is sent (a Source), what is received (a Sink: a .part file,
fsync'd and renamed only when complete), the counters a progress bar reads, and the
threads the copying runs on.

The copying is blocking code on threads of its own pool (not the default executor,
which the inbox's fsyncs use): sendfile on the sending side, recv_into a 1 MiB buffer
and write on the receiving side. The SHA-256 of a received file is computed once it
is stored and the sender has its answer, by reading it back (from the page cache):
hashing in the receive loop, or on a thread beside it, cost about as much CPU as the
copy itself and, with two busy cores, halved the throughput bench/files.py measures.
Memory stays flat whatever the size, and a slow or stalled peer holds a thread, never
the event loop that delivers messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mimetypes
import os
import secrets
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from xmppll.errors import IOFailure, ProtocolFailure, TimeoutFailure
from xmppll.xmpp.files import sockets
from xmppll.xmpp.files.names import PART, unique_path

CHUNK = 1 << 20  # receive buffer
SEND_CHUNK = 8 << 20  # one sendfile call, between two progress updates
TLS_CHUNK = 4 << 20  # one buffered read and TLS write (sendfile cannot encrypt)
STALL_ENV = "XMPPLL_FILE_STALL"
STALL = 30.0  # s without a byte moving before a transfer fails
EXTRA_WAIT = 1.0  # s a receiver waits, after `size` bytes, for the sender's close
_POOL = ThreadPoolExecutor(max_workers=64, thread_name_prefix="xmppll-file")


def stall_timeout() -> float:
    """STALL, or a positive number of seconds from $XMPPLL_FILE_STALL (tests)."""
    try:
        value = float(os.environ.get(STALL_ENV, ""))
    except ValueError:
        return STALL
    return value if value > 0 else STALL


async def run_blocking(fn: Any, *args: Any) -> Any:
    """fn(*args) on a file thread."""
    return await asyncio.get_running_loop().run_in_executor(_POOL, fn, *args)


@dataclass
class Progress:
    """Bytes moved so far, written by a file thread and read by whoever shows it."""

    total: int | None = None
    done: int = 0
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0


@dataclass
class Source:
    """A file to send: an open file (a regular one, so sendfile can read it)."""

    name: str
    size: int
    file: IO[bytes]
    mime: str = "application/octet-stream"
    path: str | None = None
    desc: str | None = None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()


def guess_mime(name: str) -> str:
    return mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"


def send_file(sock: socket.socket, source: Source, progress: Progress, stall: float) -> None:
    """The whole file on `sock`, then our end closed for writing; returns once the
    receiver has read every byte and closed its side (a reset, or bytes of ours still
    unread when it closed, is a failure)."""
    sock.settimeout(stall)
    offset = 0
    encrypted = isinstance(sock, ssl.SSLSocket)
    buf = bytearray(TLS_CHUNK if encrypted else 0)
    try:
        while offset < source.size:
            want = min(SEND_CHUNK, source.size - offset)
            if encrypted:
                # One buffer, read and encrypted in large writes: memory stays flat.
                n = os.preadv(source.file.fileno(), [memoryview(buf)[:min(want, len(buf))]],
                              offset)
                if n:
                    sock.sendall(memoryview(buf)[:n])
                sent = n
            else:
                sent = sock.sendfile(source.file, offset, want)
            if not sent:
                raise ProtocolFailure(f"{source.name} shrank while being sent")
            offset += sent
            progress.done = offset
        # (On a TLS socket this ends TLS without a close_notify and closes TCP for
        # writing: the receiver knows the size, so an early end is still a failure.)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass  # a receiver that writes back is odd but harmless
    except TimeoutError:
        raise TimeoutFailure(f"the transfer of {source.name} stalled: nothing moved for "
                             f"{stall:g} s ({offset} of {source.size} bytes sent)") from None
    except (ConnectionError, OSError) as exc:
        raise IOFailure(f"the receiver of {source.name} dropped the connection after "
                        f"{offset} of {source.size} bytes: {exc}") from None
    confirm_read(sock, source.name)


def confirm_read(sock: socket.socket, name: str, wait: float = 5.0) -> None:
    """After the receiver's close: every byte we sent must have been acknowledged."""
    deadline = time.monotonic() + wait
    while True:
        left = sockets.unread(sock)
        if left is None or left == 0:
            return
        if left < 0:
            raise IOFailure(f"the receiver of {name} reset the connection: not all was read")
        if time.monotonic() > deadline:
            raise IOFailure(f"the receiver of {name} closed with {left} bytes unread")
        time.sleep(0.01)


class Reader:
    """A socket with what was read past a header kept for the body (HTTP, SOCKS5)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = b""

    def readline(self, limit: int = 8192) -> bytes:
        while b"\n" not in self.pending:
            if len(self.pending) > limit:
                raise ProtocolFailure("a header line is too long")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ProtocolFailure("the connection closed in the middle of a header")
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return line + b"\n"

    def recv_into(self, view: memoryview, n: int) -> int:
        if self.pending:
            k = min(n, len(self.pending))
            view[:k] = self.pending[:k]
            self.pending = self.pending[k:]
            return k
        return self.sock.recv_into(view, n)


class Sink:
    """Received bytes written to `NAME.<token>.part` in `folder` (never a name that
    looks complete); `finish` fsyncs and links it to its final name, which is never an
    existing file's; `hash` then reads it back for its SHA-256."""

    def __init__(self, folder: Path, name: str, size: int | None, limit: int) -> None:
        self.folder = folder
        self.name = name
        self.size = size
        self.limit = size if size is not None else limit
        self.received = 0
        self.digest = ""
        self.path: Path | None = None
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.part = folder / f"{name}.{secrets.token_hex(4)}{PART}"
            self.fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                              0o600)
        except OSError as exc:
            raise IOFailure(f"cannot write in {folder}: {exc.strerror}") from None

    def write(self, data: memoryview) -> None:
        if self.received + len(data) > self.limit:
            what = "announced" if self.size is not None else "allowed (max_file_size)"
            raise ProtocolFailure(f"the sender sent more than the {self.limit} bytes "
                                  f"{what}")
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError as exc:
            raise IOFailure(f"cannot write {self.part}: {exc.strerror}") from None

    def add(self, view: memoryview) -> None:
        self.write(view)
        self.received += len(view)

    def finish(self) -> Path:
        """The complete file under its final name."""
        if self.size is not None and self.received != self.size:
            raise ProtocolFailure(f"the sender sent {self.received} of the {self.size} "
                                  "bytes it announced")
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            while True:
                final = unique_path(self.folder, self.name)
                try:
                    os.link(self.part, final)  # refuses an existing name, unlike rename
                    break
                except FileExistsError:
                    continue
            os.unlink(self.part)
            dir_fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            self.discard()
            raise IOFailure(f"cannot store {self.name} in {self.folder}: {exc.strerror}") \
                from None
        self.path = final
        return final

    def hash(self) -> str:
        """The SHA-256 of the stored file (after `finish`), read back in CHUNKs."""
        assert self.path is not None, "hash() before finish()"
        sha = hashlib.sha256()
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        try:
            with open(self.path, "rb", buffering=0) as fh:
                while n := fh.readinto(buf):
                    sha.update(view[:n])
        except OSError as exc:
            raise IOFailure(f"cannot read back {self.path}: {exc.strerror}") from None
        self.digest = sha.hexdigest()
        return self.digest

    def discard(self) -> None:
        """A failed transfer leaves nothing behind."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self.part)

    def result(self) -> dict[str, Any]:
        return {"path": str(self.path), "size": self.received, "sha256": self.digest}


def receive(reader: Reader, sink: Sink, progress: Progress, stall: float,
            length: int | None, *, until_close: bool = False) -> None:
    """`length` bytes (to the close when None) from `reader` into `sink`. With
    `until_close`, what follows them must be the sender's close: more bytes are a
    failure (a bytestream carries one file)."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    encrypted = isinstance(reader.sock, ssl.SSLSocket)
    reader.sock.settimeout(stall)
    try:
        while length is None or sink.received < length:
            want = CHUNK if length is None else min(CHUNK, length - sink.received)
            n = reader.recv_into(view, want)
            if not n:
                if length is None:
                    break
                raise ProtocolFailure(f"the sender closed after {sink.received} of the "
                                      f"{length} bytes it announced")
            while encrypted and n < want:
                # A TLS read gives one 16 KiB record: gather a full buffer, then write
                # it in one call (64 times fewer writes).
                k = reader.recv_into(view[n:], want - n)
                if not k:
                    break
                n += k
            sink.add(view[:n])
            progress.done = sink.received
        if until_close:
            reader.sock.settimeout(EXTRA_WAIT)
            try:
                extra = reader.recv_into(view, CHUNK)
            except TimeoutError:
                extra = 0  # the sender keeps its end open: the size says we are done
            if extra:
                raise ProtocolFailure(f"the sender sent more than the {length} bytes it "
                                      "announced")
    except TimeoutError:
        raise TimeoutFailure(f"the transfer stalled: nothing came for {stall:g} s "
                             f"({sink.received} bytes received)") from None
    except (ConnectionError, ssl.SSLError) as exc:
        raise IOFailure(f"the sender dropped the connection after {sink.received} "
                        f"bytes: {exc}") from None


def open_source(path: str, name: str | None = None) -> Source:
    """A file to send, opened now: NoInputError (exit 66) when it cannot be read.
    A pipe or terminal (`-` is stdin) is first spooled to an unlinked temporary file:
    SI must announce the size before the first byte, and sendfile needs a file."""
    import shutil
    import stat
    import sys
    import tempfile

    from xmppll.errors import NoInputError

    try:
        fh = (os.fdopen(os.dup(sys.stdin.fileno()), "rb") if path == "-"
              else open(path, "rb"))  # noqa: SIM115 (closed by Source.close)
        info = os.fstat(fh.fileno())
    except OSError as exc:
        raise NoInputError(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        fh.close()
        raise NoInputError(f"cannot send {path}: it is a directory")
    if not stat.S_ISREG(info.st_mode):
        spool = tempfile.TemporaryFile(prefix="xmppll-send-")  # noqa: SIM115
        try:
            shutil.copyfileobj(fh, spool, CHUNK)
        except OSError as exc:
            spool.close()
            raise NoInputError(f"cannot read {path}: {exc.strerror}") from None
        finally:
            fh.close()
        spool.seek(0)
        fh = spool  # type: ignore[assignment]
    size = os.fstat(fh.fileno()).st_size
    shown = name or ("stdin" if path == "-" else os.path.basename(path))
    return Source(shown, size, fh, guess_mime(shown), path)
