"""A published XEP-0174 peer that dies in the middle of an incoming stream.

Run inside a host of the virtual LAN (never in the machine's own namespace):

    python tests/helpers/dying_peer.py NAME [--after BYTES | --read-all] [--close] [--port P]

Publishes NAME over mDNS (python-zeroconf, no probing) with this host's addresses and a
TXT record, listens on --port (default: a free one), and prints `ready PORT`. On the
first connection it reads the initiator's stream header, answers with its own (and
empty features), reads --after more bytes (0: none), prints `dying after N bytes` and
kills itself with SIGKILL: no stream close, no goodbye, the kernel resets the
connection because what the sender still sends is never read. With --close it keeps
a small receive window (so most of a big message waits on the sender's side), answers
like libpurple (no version: a peer that may close TCP without a closing tag), closes
its sending side (the sender sees a FIN, as from a peer that is done) and is killed a
second later with the rest of the message unread. A sender that reports success after
either has lied. With --read-all it reads everything up to the sender's closing tag,
closes without sending its own and dies: an agent killed after reading a message and
before storing it. It then publishes xmppll's caps, as that agent would, so a sender
waits for a receipt instead of a close, and it dies once the message is read.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import time

from lanpeer import SERVICE_TYPE, addresses, host_label, txt_rdata
from zeroconf import IPVersion, ServiceInfo, Zeroconf

from xmppll.xmpp.caps import CAPS_NODE, caps_ver

HEADER = (b"<?xml version='1.0' encoding='UTF-8'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
FEATURES = b"<stream:features/>"
# libpurple's header: no version, so no closing tag can be expected from it.
OLD_HEADER = HEADER.replace(b"' version='1.0'>", b"'>")


def txt(port: int, xmppll: bool) -> bytes:
    caps = [b"node=" + CAPS_NODE.encode(), b"hash=sha-1", b"ver=" + caps_ver().encode()]
    return txt_rdata([b"txtvers=1", b"status=avail", f"port.p2pj={port}".encode(),
                      b"1st=Dying", b"last=Peer", *(caps if xmppll else [])])


def read_header(conn: socket.socket) -> bytes:
    """Bytes up to the end of the `<stream:stream ...>` tag, and what came after it."""
    data = b""
    while True:
        chunk = conn.recv(4096)
        if not chunk:
            raise SystemExit("closed before its header")
        data += chunk
        start = data.find(b"<stream:stream")
        end = data.find(b">", start) if start >= 0 else -1
        if end >= 0:
            return data[end + 1:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--after", type=int, default=0, help="bytes to read after the header")
    parser.add_argument("--close", action="store_true",
                        help="close our side (FIN) a second before dying")
    parser.add_argument("--read-all", action="store_true",
                        help="read up to the sender's </stream:stream>, close, die")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if args.close:  # set before listen(): accepted sockets inherit it
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server.bind(("", args.port))
    server.listen()
    port = server.getsockname()[1]
    zc = Zeroconf(ip_version=IPVersion.All)
    zc.register_service(ServiceInfo(
        SERVICE_TYPE, f"{args.name}.{SERVICE_TYPE}", port=port, properties=txt(port, args.read_all),
        server=f"{host_label()}.local.", parsed_addresses=addresses()),
        cooperating_responders=True)
    print(f"ready {port}", flush=True)
    conn, _ = server.accept()
    rest = read_header(conn)
    got = len(rest)
    if args.close:
        conn.sendall(OLD_HEADER)
    else:
        conn.sendall(HEADER)
        conn.sendall(FEATURES)
    if args.read_all:
        while not any(end in rest[-64:] for end in (b"</message>", b"</stream:stream>")):
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += len(chunk)
            rest = rest[-64:] + chunk
        conn.close()
    while got < args.after:
        chunk = conn.recv(min(65536, args.after - got))
        if not chunk:
            break
        got += len(chunk)
    if args.close:
        conn.shutdown(socket.SHUT_WR)
        print(f"closed after {got} bytes", flush=True)
        time.sleep(1.0)
    print(f"dying after {got} bytes", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main()
