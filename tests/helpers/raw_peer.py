"""A raw XEP-0174 test peer: hostile streams, spoofed senders, fake publications, floods.

Run inside a host of the virtual LAN (never in the machine's own namespace):

    python tests/helpers/raw_peer.py attack HOST PORT KIND [--from NAME] [--to NAME]
                                     [--body TEXT] [--wait S]
    python tests/helpers/raw_peer.py publish NAME (--port P | --mute | --echo) [--family 4|6]
                                     [--server LABEL]
    python tests/helpers/raw_peer.py flood HOST PORT --count N [--streams S]

`attack` connects to HOST:PORT, sends the bytes of KIND (see ATTACKS; `spoof` is a
well-formed stream whose header and message claim --from), then reads until the peer
closes or --wait passes, and prints one JSON line: what it sent, what it received, and
whether the peer closed the connection.

`publish` registers NAME over mDNS (python-zeroconf, no probing) with this host's
addresses and prints `ready PORT`. With --port, the SRV points at that port, whoever
listens there (nobody: a ghost). With --mute it listens on a free port itself and accepts
connections without ever saying a word (a peer that hangs). With --echo it is a
responder-only bot: it answers every message it is sent with `echo BODY`, on the stream
it was sent (it never opens a connection of its own), then closes when the other side
does. --family advertises only IPv4 or IPv6 addresses, under the SRV target --server.
Stays until SIGTERM/SIGINT.

`flood` opens S streams (default 1) and sends N messages in all over them, closes each,
and waits for the peer's closing tag: xmppll's agent sends it only once everything it
read is fsync'd in its inbox. Prints one JSON line with the wall time from the first
connect to the last closing tag.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import sys
import time

from lanpeer import SERVICE_TYPE, addresses, host_label, register_all, txt_rdata, until_signal

STREAM_NS = "http://etherx.jabber.org/streams"
CLOSE = b"</stream:stream>"


def header(from_: str | None, to: str | None) -> bytes:
    attrs = "".join(f" {k}='{v}'" for k, v in (("from", from_), ("to", to)) if v)
    return (f"<?xml version='1.0' encoding='UTF-8'?><stream:stream xmlns='jabber:client' "
            f"xmlns:stream='{STREAM_NS}'{attrs} version='1.0'>").encode()


def message(from_: str | None, to: str | None, body: str, id_: str = "raw1") -> bytes:
    attrs = "".join(f" {k}='{v}'" for k, v in (("from", from_), ("to", to)) if v)
    return f"<message{attrs} type='chat' id='{id_}'><body>{body}</body></message>".encode()


def _laughs(f: str | None, t: str | None) -> bytes:
    ents = ["<!ENTITY lol0 'lol'>"] + [
        f"<!ENTITY lol{i} '{f'&lol{i - 1};' * 10}'>" for i in range(1, 10)
    ]
    return (b"<?xml version='1.0'?><!DOCTYPE stream:stream [" + "".join(ents).encode()
            + b"]>" + header(f, t)[len("<?xml version='1.0' encoding='UTF-8'?>"):]
            + message(f, t, "&lol9;") + CLOSE)


def _xxe(f: str | None, t: str | None) -> bytes:
    return (b"<?xml version='1.0'?><!DOCTYPE stream:stream "
            b"[<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]>"
            + header(f, t)[len("<?xml version='1.0' encoding='UTF-8'?>"):]
            + message(f, t, "&xxe;") + CLOSE)


def _xxe_no_dtd(f: str | None, t: str | None) -> bytes:
    # An entity reference with no declaration: must not be resolved from anywhere.
    return header(f, t) + message(f, t, "&xxe;") + CLOSE


def _dtd(f: str | None, t: str | None) -> bytes:
    return (b"<?xml version='1.0'?><!DOCTYPE stream:stream SYSTEM 'http://10.0.0.1/x.dtd'>"
            + header(f, t)[len("<?xml version='1.0' encoding='UTF-8'?>"):]
            + message(f, t, "dtd") + CLOSE)


def _huge(f: str | None, t: str | None) -> bytes:
    return header(f, t) + message(f, t, "a" * (10 * 1024 * 1024)) + CLOSE


def _deep(f: str | None, t: str | None) -> bytes:
    depth = 10000
    return (header(f, t) + b"<message type='chat'><body>deep</body>"
            + b"<x>" * depth + b"</x>" * depth + b"</message>" + CLOSE)


def _bad_utf8(f: str | None, t: str | None) -> bytes:
    return header(f, t) + message(f, t, "ok").replace(b"ok", b"o\xff\xfe\xc3(k") + CLOSE


def _garbage(f: str | None, t: str | None) -> bytes:
    # What a TLS client or a port scanner sends: binary from the first byte.
    return b"\x16\x03\x01\x02\x00\x01" + random.Random(174).randbytes(4096)


def _spoof(f: str | None, t: str | None, body: str = "spoofed") -> bytes:
    return header(f, t) + message(f, t, body, id_="spoof1") + CLOSE


ATTACKS = {
    "laughs": _laughs,
    "xxe": _xxe,
    "xxe-no-dtd": _xxe_no_dtd,
    "dtd": _dtd,
    "huge": _huge,
    "deep": _deep,
    "bad-utf8": _bad_utf8,
    "garbage": _garbage,
    "silent": lambda f, t: b"",
    "spoof": _spoof,
}


def _connect(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)[0][4])
    return sock


def attack(args: argparse.Namespace) -> None:
    make = ATTACKS[args.kind]
    data = make(args.from_, args.to, args.body) if args.kind == "spoof" and args.body \
        else make(args.from_, args.to)
    sock = _connect(args.host, args.port)
    result: dict = {"kind": args.kind, "sent": 0, "closed": False, "error": None}
    start = time.monotonic()
    try:
        if args.kind != "spoof":
            sock.sendall(data)
            result["sent"] = len(data)
        else:  # as a real client does: header, wait for the answer, then the stanza
            head, rest = data.split(b"<message", 1)
            sock.sendall(head)
            result["sent"] += len(head)
            time.sleep(0.2)
            sock.sendall(b"<message" + rest)
            result["sent"] += len(rest) + 8
    except OSError as exc:  # the peer may close while a huge write is under way
        result["error"] = f"send: {exc}"
    received = b""
    deadline = start + args.wait
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                result["closed"] = True
                break
            received += chunk
    except TimeoutError:
        pass
    except OSError as exc:  # a reset counts as closed: unread data makes the kernel RST
        result["closed"] = True
        result["error"] = (result["error"] or "") + f" recv: {exc}"
    sock.close()
    result["seconds"] = round(time.monotonic() - start, 3)
    result["received"] = received.decode("utf-8", "replace")[:4000]
    print(json.dumps(result), flush=True)


def _txt(port: int) -> bytes:
    return txt_rdata([b"txtvers=1", b"status=avail", f"port.p2pj={port}".encode()])


async def publish(args: argparse.Namespace) -> None:
    from zeroconf import IPVersion, ServiceInfo
    from zeroconf.asyncio import AsyncZeroconf

    accepted: list[asyncio.StreamWriter] = []

    async def hang(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # keep it open, never answer

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _echo(args.name, reader, writer)

    server = None
    port = args.port
    if args.mute or args.echo:
        sock = socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True)
        server = await asyncio.start_server(echo if args.echo else hang, sock=sock)
        port = sock.getsockname()[1]
    azc = AsyncZeroconf(ip_version=IPVersion.All)
    server_name = f"{args.server or host_label()}.local."
    info = ServiceInfo(SERVICE_TYPE, f"{args.name}.{SERVICE_TYPE}",
                       port=port, properties=_txt(port), server=server_name,
                       parsed_addresses=[a for a in addresses()
                                         if args.family in (None, 6 if ":" in a else 4)])
    await register_all(azc, [info])
    print(f"ready {port}", flush=True)
    await until_signal()
    await azc.async_unregister_all_services()
    await azc.async_close()
    if server is not None:
        server.close()


async def _echo(name: str, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter) -> None:
    """One stream of the echo bot: header in a write of its own, then an answer to
    each message on this very stream, then our close after the sender's."""
    import xml.etree.ElementTree as ET

    data = b""
    while b">" not in data.partition(b"<stream:stream")[2]:
        chunk = await reader.read(65536)
        if not chunk:
            return
        data += chunk
    writer.write(header(name, None))
    await writer.drain()
    pending = data.partition(b"<stream:stream")[2].partition(b">")[2]
    while True:
        while b"</message>" in pending:
            raw, _, pending = pending.partition(b"</message>")
            raw = raw[raw.find(b"<message"):] + b"</message>"
            element = ET.fromstring(raw.replace(b"<message", b"<message xmlns='jabber:client'",
                                                1))
            sender = element.get("from")
            body = element.findtext("{jabber:client}body")
            if body is not None:
                writer.write(message(name, sender, f"echo {body}",
                                     id_=f"echo-{element.get('id')}"))
                await writer.drain()
        if CLOSE in pending:
            writer.write(CLOSE)
            await writer.drain()
            writer.close()
            return
        chunk = await reader.read(65536)
        if not chunk:
            writer.close()
            return
        pending += chunk


async def _one_stream(host: str, port: int, count: int, offset: int, body: str,
                      run: str) -> int:
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    writer.write(header("flood@raw", None))
    batch: list[bytes] = []
    for i in range(offset, offset + count):
        # Ids unique to this run: a receiver stores a repeated (sender, id) only once.
        batch.append(message("flood@raw", None, f"{body} {i}", id_=f"f{run}-{i}"))
        if len(batch) == 500:
            writer.write(b"".join(batch))
            batch = []
            await writer.drain()
    writer.write(b"".join(batch) + CLOSE)
    await writer.drain()
    received = b""
    while CLOSE not in received:
        chunk = await reader.read(65536)
        if not chunk:
            break
        received = received[-64:] + chunk  # only the tail matters
    writer.close()
    if CLOSE not in received:
        raise RuntimeError("the peer dropped the stream without its closing tag")
    return count


async def flood(args: argparse.Namespace) -> None:
    per = [args.count // args.streams + (i < args.count % args.streams)
           for i in range(args.streams)]
    offsets = [sum(per[:i]) for i in range(args.streams)]
    run = f"{random.randrange(16**8):08x}"
    start = time.monotonic()
    done = await asyncio.gather(*(_one_stream(args.host, args.port, n, off, args.body, run)
                                  for n, off in zip(per, offsets, strict=True)))
    seconds = time.monotonic() - start
    print(json.dumps({"messages": sum(done), "streams": args.streams,
                      "seconds": round(seconds, 4)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("attack")
    a.add_argument("host")
    a.add_argument("port", type=int)
    a.add_argument("kind", choices=sorted(ATTACKS))
    a.add_argument("--from", dest="from_", default="mallory@h3")
    a.add_argument("--to", default=None)
    a.add_argument("--body", default=None)
    a.add_argument("--wait", type=float, default=15.0)
    p = sub.add_parser("publish")
    p.add_argument("name")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--mute", action="store_true")
    p.add_argument("--echo", action="store_true")
    p.add_argument("--family", type=int, choices=(4, 6), default=None,
                   help="advertise only this host's IPv4 or IPv6 addresses")
    p.add_argument("--server", default=None,
                   help="SRV target label (default: this host's); give another one with "
                        "--family, or the host's other address records would merge in")
    f = sub.add_parser("flood")
    f.add_argument("host")
    f.add_argument("port", type=int)
    f.add_argument("--count", type=int, required=True)
    f.add_argument("--streams", type=int, default=1)
    f.add_argument("--body", default="flood")
    args = parser.parse_args()
    if args.cmd == "attack":
        attack(args)
    elif args.cmd == "publish":
        if not (args.mute or args.echo or args.port):
            parser.error("publish needs --port, --mute or --echo")
        asyncio.run(publish(args))
    else:
        asyncio.run(flood(args))


if __name__ == "__main__":
    sys.exit(main())
