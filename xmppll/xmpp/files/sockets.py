"""Every socket that carries file bytes (SOCKS5 bytestreams, OOB over HTTP) is opened
here, and nowhere else: the one place where a later STARTTLS-protected bytestream
wraps them (`wrap`, applied to each stream socket once connected or accepted).

These are blocking sockets, used from the file threads (transfer.run_blocking): the
bytes go through the kernel with sendfile and large recv_into buffers, and the event
loop that serves messages never waits on a disk or a slow peer.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import struct
import termios
import time
from collections.abc import Callable

from xmppll.addresses import normalize

# A hook for STARTTLS between two xmppll peers: (socket, server_side) -> socket.
Wrap = Callable[[socket.socket, bool], socket.socket]
wrap: Wrap | None = None
BUFFER = 4 << 20  # socket buffers asked for: the kernel caps them at its own maximum


def _tune(sock: socket.socket) -> socket.socket:
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, BUFFER)
    return sock


def _wrapped(sock: socket.socket, server_side: bool) -> socket.socket:
    return wrap(sock, server_side) if wrap is not None else sock


def listener() -> socket.socket:
    """A listening socket on every address, IPv6 and IPv4, on a port the kernel picks;
    accept() on it times out after the timeout set by the caller."""
    try:
        sock = socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True,
                                    backlog=16)
    except OSError:
        sock = socket.create_server(("0.0.0.0", 0), backlog=16)
    return sock


def accept(sock: socket.socket, deadline: float) -> socket.socket:
    """The next connection before `deadline` (time.monotonic); TimeoutError after."""
    sock.settimeout(max(0.001, deadline - time.monotonic()))
    conn, _ = sock.accept()
    conn.settimeout(None)
    return _wrapped(_tune(conn), True)


def connect(host: str, port: int, scope: str | None, timeout: float) -> socket.socket:
    """A TCP connection to host:port (a link-local IPv6 host with its scope)."""
    address, own_scope = normalize(host)
    scope = own_scope or scope
    if ":" in address:
        target = f"{address}%{scope}" if scope and address.lower().startswith("fe80") \
            else address
        info = socket.getaddrinfo(target, port, socket.AF_INET6, socket.SOCK_STREAM)
        family, addr = socket.AF_INET6, info[0][4]
    else:
        family, addr = socket.AF_INET, (address, port)
    sock = _tune(socket.socket(family, socket.SOCK_STREAM))
    sock.settimeout(timeout)
    try:
        sock.connect(addr)
    except BaseException:
        sock.close()
        raise
    return _wrapped(sock, False)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly n bytes (a handshake field); ConnectionError at an early close."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the peer closed the connection mid-handshake")
        data += chunk
    return data


def unread(sock: socket.socket) -> int | None:
    """Bytes we sent that the peer's kernel has not acknowledged; -1 when the
    connection was reset (what we sent was thrown away); None when unknown. (After a
    close we started, the socket is in TCP_CLOSE whether it ended well or not: the
    pending error, ECONNRESET, is what tells a reset.)"""
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            return -1
        outq = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4)
    except (OSError, ValueError):
        return None
    return struct.unpack("i", outq)[0]
