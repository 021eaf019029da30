"""Every socket that carries file bytes (SOCKS5 bytestreams, OOB over HTTP) is opened
here, and nowhere else, and here it gets TLS when both ends are xmppll peers whose
stream proved their pinned keys (`pinned`, then `secure` once the SOCKS5 handshake is
done or the HTTP connection accepted): the side that listens (the sender, streamhost
or HTTP server) is the TLS server and requires exactly the certificate the receiver
proved on the stream; the receiver checks the sender's certificate against its pin.
Peers without a pin (libpurple, salut) never get TLS and keep plain transfers.

These are blocking sockets, used from the file threads (transfer.run_blocking): the
bytes go through the kernel with sendfile and large recv_into buffers, and the event
loop that serves messages never waits on a disk or a slow peer.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import ssl
import struct
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xmppll.addresses import normalize
from xmppll.errors import SecurityError

TLS_HANDSHAKE_TIMEOUT = 10.0
BUFFER = 4 << 20  # socket buffers asked for: the kernel caps them at its own maximum


def _tune(sock: socket.socket) -> socket.socket:
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, BUFFER)
    return sock


@dataclass(frozen=True)
class Tls:
    """How one transfer's sockets are encrypted: the context, our side of the
    handshake, and the check of the certificate the other end presented."""

    context: ssl.SSLContext
    server_side: bool
    check: Callable[[bytes | None], None]


def pinned(hub_tls: Any, conn: Any, *, server_side: bool) -> Tls | None:
    """TLS for a transfer offered on `conn`, or None for a plain one: only when the
    stream is encrypted, the peer proved the key it pins (conn.peer_der) and we have a
    key to prove ours (both ends then come to the same answer)."""
    if (hub_tls is None or hub_tls.creds is None or not conn.secure
            or conn.peer_der is None or conn.proven is None):
        return None
    name, pin, der = conn.peer or str(conn.remote), conn.proven, conn.peer_der
    context = hub_tls.server_context(der) if server_side else hub_tls.client_context()
    return Tls(context, server_side, lambda shown: hub_tls.check(name, pin, shown))


def secure(sock: socket.socket, tls: Tls | None,
           timeout: float = TLS_HANDSHAKE_TIMEOUT) -> socket.socket:
    """`sock` inside TLS (TLS 1.3, the pinned keys), or `sock` itself without `tls`;
    SecurityError (and `sock` closed) when the other end holds another key."""
    if tls is None:
        return sock
    sock.settimeout(timeout)
    try:
        wrapped = tls.context.wrap_socket(sock, server_side=tls.server_side)
        try:
            tls.check(wrapped.getpeercert(binary_form=True))
        except BaseException:
            wrapped.close()
            raise
    except (ssl.SSLError, ConnectionError) as exc:
        sock.close()
        raise SecurityError(f"TLS for the file transfer failed: "
                            f"{getattr(exc, 'reason', None) or exc}") from None
    except BaseException:
        sock.close()
        raise
    return wrapped


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
    return _tune(conn)


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
    return sock


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
