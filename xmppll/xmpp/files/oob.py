"""XEP-0066 jabber:iq:oob, the way telepathy-salut and iChat use it: the sender
offers a URL on a small HTTP server of its own, the receiver GETs it and answers the
offer's iq with a result once it has the whole body (or an error: 406 declined, 404
could not fetch).

The server serves one file at one path, GET only (501 otherwise, 404 for another
path), with Content-Length and sendfile. The client reads Content-Length bodies,
chunked ones (salut sends both headers: chunked wins) and bodies ended by the close.
Between two xmppll peers whose stream proved both pinned keys, the URL is https://
and the server is TLS with our key, requiring the receiver's (sockets.secure); the
receiver checks ours against our pin. Others only ever get http:// URLs.
Blocking code on the file threads; sockets come from files.sockets.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from xmppll.errors import DataError, ProtocolFailure
from xmppll.xmpp.files import sockets
from xmppll.xmpp.files.namespaces import OOB_NS
from xmppll.xmpp.files.si import error
from xmppll.xmpp.files.transfer import Progress, Reader, Sink, Source, receive, send_file

CLIENT_NS = "jabber:client"
MAX_HEADERS = 100
REQUEST_TIMEOUT = 10.0


@dataclass
class Offered:
    url: str
    host: str
    port: int
    path: str
    name: str
    size: int | None
    mime: str
    desc: str | None
    tls: bool = False  # https://: only between xmppll peers with pinned keys


def url_host(address: str) -> str:
    """An address as the host part of a URL: IPv6 bracketed, without its scope (which
    means nothing on the other side)."""
    address = address.partition("%")[0]
    return f"[{address}]" if ":" in address else address


def offer(*, to: str, from_: str, id_: str, url: str, size: int, mime: str,
          desc: str | None = None) -> ET.Element:
    iq = ET.Element(f"{{{CLIENT_NS}}}iq", {"type": "set", "id": id_, "to": to, "from": from_})
    q = ET.SubElement(iq, f"{{{OOB_NS}}}query")
    attrs = {"type": "file", "mimeType": mime}
    if size:
        attrs["size"] = str(size)  # salut leaves it out when 0
    ET.SubElement(q, f"{{{OOB_NS}}}url", attrs).text = url
    ET.SubElement(q, f"{{{OOB_NS}}}desc").text = desc or ""
    return iq


def parse_offer(iq: ET.Element) -> Offered:
    """What an OOB offer says; DataError when it is not a file over http(s)://."""
    url_el = iq.find(f"{{{OOB_NS}}}query/{{{OOB_NS}}}url")
    if url_el is None or not (url_el.text or "").strip():
        raise DataError("oob offer without a URL")
    if url_el.get("type") not in (None, "file"):
        raise DataError("oob offer of something else than a file")
    url = (url_el.text or "").strip()  # iChat prefixes a newline
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DataError("oob offer whose URL is not http://HOST/...")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise DataError("oob offer with a bad port") from None
    size: int | None = None
    if url_el.get("size"):
        try:
            size = int(url_el.get("size") or "")
        except ValueError:
            raise DataError("oob offer with a bad size") from None
        if size < 0:
            raise DataError("oob offer with a negative size")
    desc = iq.find(f"{{{OOB_NS}}}query/{{{OOB_NS}}}desc")
    name = urllib.parse.unquote(parts.path.rsplit("/", 1)[-1])
    return Offered(url, parts.hostname, port, parts.path or "/", name, size,
                   url_el.get("mimeType") or "application/octet-stream",
                   None if desc is None else desc.text, parts.scheme == "https")


def _payload(request: ET.Element) -> ET.Element:
    q = ET.Element(f"{{{OOB_NS}}}query")
    url = request.find(f"{{{OOB_NS}}}query/{{{OOB_NS}}}url")
    ET.SubElement(q, f"{{{OOB_NS}}}url").text = "" if url is None else url.text
    return q


def decline(request: ET.Element, *, from_: str, reason: str) -> ET.Element:
    return error(request, from_=from_, condition="not-acceptable", type_="modify",
                 code="406", text=reason, payload=_payload(request))


def failed(request: ET.Element, *, from_: str, reason: str) -> ET.Element:
    return error(request, from_=from_, condition="item-not-found", type_="cancel",
                 code="404", text=reason, payload=_payload(request))


# --- the sender's HTTP server ---------------------------------------------------------


class Server:
    """Serves `source` at `path` on `listener` until stopped; `served` is set once a
    GET got the whole body."""

    def __init__(self, listener: socket.socket, path: str, source: Source,
                 progress: Progress, stall: float, tls: sockets.Tls | None = None) -> None:
        self.listener = listener
        self.tls = tls
        self.path = path
        self.source = source
        self.progress = progress
        self.stall = stall
        self.requested = threading.Event()
        self.served = threading.Event()
        self.failure: BaseException | None = None
        self.stopped = False

    def run(self) -> None:
        """Until `stopped` is set (checked twice a second) or the body was served."""
        while not self.stopped and not self.served.is_set():
            try:
                conn = sockets.accept(self.listener, time.monotonic() + 0.5)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                conn = sockets.secure(conn, self.tls, REQUEST_TIMEOUT)
                self._one(conn)
            except BaseException as exc:  # noqa: BLE001 (reported to the sender)
                self.failure = exc
            finally:
                conn.close()

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(REQUEST_TIMEOUT)
        reader = Reader(conn)
        request = reader.readline().decode("latin-1").split()
        for _ in range(MAX_HEADERS):
            if reader.readline() in (b"\r\n", b"\n"):
                break
        else:
            conn.sendall(b"HTTP/1.1 431 Too Many Headers\r\nContent-Length: 0\r\n\r\n")
            return
        if len(request) < 2 or request[0] != "GET":
            conn.sendall(b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
            return
        if urllib.parse.unquote(request[1]) != urllib.parse.unquote(self.path):
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
            return
        self.requested.set()
        conn.sendall((f"HTTP/1.1 200 OK\r\nContent-Type: {self.source.mime}\r\n"
                      f"Content-Length: {self.source.size}\r\nConnection: close\r\n\r\n"
                      ).encode("latin-1", "replace"))
        send_file(conn, self.source, self.progress, self.stall)
        self.served.set()


# --- the receiver's HTTP client -------------------------------------------------------


def fetch(offered: Offered, scope: str | None, sink: Sink, progress: Progress,
          stall: float, tls: sockets.Tls | None = None) -> None:
    """GET the offered URL into `sink` (which enforces the size); https:// with `tls`."""
    sock = sockets.connect(offered.host, offered.port, scope, REQUEST_TIMEOUT)
    sock = sockets.secure(sock, tls, REQUEST_TIMEOUT)
    try:
        sock.settimeout(REQUEST_TIMEOUT)
        default = 443 if offered.tls else 80
        host = url_host(offered.host) + (f":{offered.port}" if offered.port != default
                                         else "")
        path = urllib.parse.urlsplit(offered.url)
        target = path.path + (f"?{path.query}" if path.query else "")
        sock.sendall(f"GET {target or '/'} HTTP/1.1\r\nHost: {host}\r\n"
                     "Connection: close\r\n\r\n".encode("ascii", "replace"))
        reader = Reader(sock)
        status = reader.readline().decode("latin-1").split()
        if len(status) < 2 or not status[0].startswith("HTTP/"):
            raise ProtocolFailure("the sender's HTTP server sent no status line")
        if status[1] != "200":
            raise ProtocolFailure(f"the sender's HTTP server answered {' '.join(status[1:])}")
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS):
            line = reader.readline().decode("latin-1")
            if line in ("\r\n", "\n"):
                break
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        else:
            raise ProtocolFailure("too many HTTP headers")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            _chunked(reader, sink, progress, stall)
            return
        length: int | None = None
        if "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise ProtocolFailure("a bad Content-Length") from None
            if offered.size is not None and length != offered.size:
                raise ProtocolFailure(f"the sender offered {offered.size} bytes but serves "
                                      f"{length}")
        receive(reader, sink, progress, stall, length)
    finally:
        sock.close()


def _chunked(reader: Reader, sink: Sink, progress: Progress, stall: float) -> None:
    reader.sock.settimeout(stall)
    while True:
        try:
            size = int(reader.readline().split(b";")[0].strip(), 16)
        except (ValueError, TimeoutError) as exc:
            raise ProtocolFailure(f"a bad chunk header: {exc}") from None
        if size == 0:
            return
        receive(reader, sink, progress, stall, sink.received + size)
        reader.readline()  # the CRLF after the chunk

