"""XEP-0065 SOCKS5 bytestreams, direct connections only (no proxy, as libpurple):
the sender listens and offers its own addresses as streamhosts, the receiver connects
to one of them and asks, in the CONNECT request, for the domain
SHA1(sid + initiator + target); the sender checks that hash, so a connection from
someone else never gets the file. Between two xmppll peers with pinned keys the
bytestream then goes inside TLS (sockets.secure): the streamhost is the TLS server.

Blocking code, run on the file threads; sockets come from files.sockets.
"""

from __future__ import annotations

import hashlib
import socket
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from xmppll.errors import DataError, ProtocolFailure
from xmppll.xmpp.files import sockets
from xmppll.xmpp.files.namespaces import BYTESTREAMS_NS
from xmppll.xmpp.files.sockets import recv_exact

CLIENT_NS = "jabber:client"
HANDSHAKE_TIMEOUT = 10.0


def dst_addr(sid: str, initiator: str, target: str) -> bytes:
    """The DST.ADDR both ends expect: hex SHA1(sid + initiator JID + target JID)."""
    text = f"{sid}{initiator}{target}".encode()
    return hashlib.sha1(text, usedforsecurity=False).hexdigest().encode("ascii")


# --- the streamhosts iq -------------------------------------------------------------


@dataclass
class Streamhost:
    jid: str
    host: str
    port: int


def query(*, to: str, from_: str, sid: str, hosts: list[Streamhost]) -> ET.Element:
    iq = ET.Element(f"{{{CLIENT_NS}}}iq", {"type": "set", "to": to, "from": from_})
    q = ET.SubElement(iq, f"{{{BYTESTREAMS_NS}}}query", {"sid": sid, "mode": "tcp"})
    for h in hosts:
        ET.SubElement(q, f"{{{BYTESTREAMS_NS}}}streamhost",
                      {"jid": h.jid, "host": h.host, "port": str(h.port)})
    return iq


def parse_query(iq: ET.Element) -> tuple[str, list[Streamhost]]:
    """(sid, streamhosts) of a bytestreams set; DataError when malformed."""
    q = iq.find(f"{{{BYTESTREAMS_NS}}}query")
    if q is None or not q.get("sid"):
        raise DataError("bytestreams query without a sid")
    if q.get("mode", "tcp") != "tcp":
        raise DataError("bytestreams mode is not tcp")
    hosts = []
    for el in q.findall(f"{{{BYTESTREAMS_NS}}}streamhost"):
        try:
            port = int(el.get("port") or "1080")
        except ValueError:
            continue
        if el.get("host") and 0 < port < 65536:
            hosts.append(Streamhost(el.get("jid") or "", el.get("host") or "", port))
    return q.get("sid") or "", hosts


def used(request: ET.Element, *, from_: str, jid: str) -> ET.Element:
    iq = ET.Element(f"{{{CLIENT_NS}}}iq", {"type": "result", "id": request.get("id") or "",
                                            "from": from_})
    if request.get("from"):
        iq.set("to", request.get("from") or "")
    q = ET.SubElement(iq, f"{{{BYTESTREAMS_NS}}}query")
    ET.SubElement(q, f"{{{BYTESTREAMS_NS}}}streamhost-used", {"jid": jid})
    return iq


# --- the SOCKS5 handshakes ----------------------------------------------------------


def serve(listener: socket.socket, expected: bytes, deadline: float,
          tls: sockets.Tls | None = None) -> socket.socket:
    """The sender: accept connections until one asks for `expected` (others are
    answered with a failure and closed); TimeoutError at the deadline. With `tls`,
    that connection then goes inside TLS (SecurityError for another key)."""
    while True:
        conn = sockets.accept(listener, deadline)
        try:
            conn.settimeout(HANDSHAKE_TIMEOUT)
            done = _server_handshake(conn, expected)
        except (OSError, ProtocolFailure):
            done = False
        if done:
            conn = sockets.secure(conn, tls)
            conn.settimeout(None)
            return conn
        conn.close()
        if time.monotonic() >= deadline:
            raise TimeoutError


def _server_handshake(conn: socket.socket, expected: bytes) -> bool:
    version, count = recv_exact(conn, 2)
    methods = recv_exact(conn, count)
    if version != 5 or 0 not in methods:
        conn.sendall(b"\x05\xff")
        return False
    conn.sendall(b"\x05\x00")
    version, command, _, atyp = recv_exact(conn, 4)
    if atyp == 3:
        addr = recv_exact(conn, recv_exact(conn, 1)[0])
    elif atyp == 1:
        addr = recv_exact(conn, 4)
    elif atyp == 4:
        addr = recv_exact(conn, 16)
    else:
        raise ProtocolFailure("SOCKS5: unknown address type")
    recv_exact(conn, 2)
    if version != 5 or command != 1 or addr != expected:
        conn.sendall(b"\x05\x02\x00\x03" + bytes([len(expected)]) + expected + b"\0\0")
        return False
    conn.sendall(b"\x05\x00\x00\x03" + bytes([len(expected)]) + expected + b"\0\0")
    return True


def connect(host: Streamhost, scope: str | None, dst: bytes,
            timeout: float = HANDSHAKE_TIMEOUT, tls: sockets.Tls | None = None
            ) -> socket.socket:
    """The receiver: a connection to the streamhost, through the handshake (then
    TLS, with `tls`)."""
    sock = sockets.connect(host.host, host.port, scope, timeout)
    try:
        sock.settimeout(timeout)
        sock.sendall(b"\x05\x01\x00")
        if recv_exact(sock, 2) != b"\x05\x00":
            raise ProtocolFailure("SOCKS5: the streamhost refused our method")
        sock.sendall(b"\x05\x01\x00\x03" + bytes([len(dst)]) + dst + b"\0\0")
        version, status, _, atyp = recv_exact(sock, 4)
        if version != 5 or status != 0:
            raise ProtocolFailure(f"SOCKS5: the streamhost refused the connect ({status})")
        # BND.ADDR: libpurple puts our own address there; only its length matters.
        if atyp == 3:
            recv_exact(sock, recv_exact(sock, 1)[0])
        elif atyp in (1, 4):
            recv_exact(sock, 4 if atyp == 1 else 16)
        else:
            raise ProtocolFailure("SOCKS5: unknown address type in the reply")
        recv_exact(sock, 2)
    except BaseException:
        sock.close()
        raise
    sock = sockets.secure(sock, tls, timeout)
    sock.settimeout(None)
    return sock
