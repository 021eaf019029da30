"""Hostile stream clients for issue 7's list, against an agent's port. Run inside a host of
the virtual LAN (never in the machine's own namespace):

    python tests/helpers/attack.py CASE HOST PORT

Prints one JSON line: whether the agent closed the stream, after how many seconds, how
many bytes we managed to send, and the start of what it answered. Every case is bounded
in bytes and time and stops by itself.
"""

from __future__ import annotations

import json
import socket
import sys
import time

HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' from='eve@raw' to='x' "
          b"version='1.0'>")
LIMIT_SECONDS = 30.0


def _chunks(case: str) -> tuple[list[bytes], float]:
    """What to send (in pieces) and the pause between pieces."""
    if case == "quadratic":
        big = b"A" * 50_000
        return [b"<?xml version='1.0'?><!DOCTYPE q [<!ENTITY a '" + big + b"'>]>" + HEADER
                + b"<message><body>" + b"&a;" * 50_000 + b"</body></message>"], 0
    if case == "pi":
        return [HEADER + b"<?evil do-something?><message><body>x</body></message>"], 0
    if case == "huge100":  # 100 MB offered; the agent must stop us at its 1 MiB limit
        return [HEADER + b"<message><body>"] + [b"x" * 1_048_576] * 100, 0
    if case == "deep100k":
        return [HEADER + b"<message>" + b"<a>" * 100_000], 0
    if case == "nul":
        return [HEADER + b"<message><body>a\x00b</body></message>"], 0
    if case == "otherns":
        return [b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                b"xmlns:stream='urn:not-xmpp'>"], 0
    if case == "before-header":
        return [b"<message to='x'><body>early</body></message>" + HEADER], 0
    if case == "slowloris":  # one byte a second, never finishing the header
        return [bytes([b]) for b in HEADER], 1.0
    raise SystemExit(f"unknown case {case}")


def attack(case: str, host: str, port: int) -> dict:
    chunks, pause = _chunks(case)
    sock = socket.create_connection((host, port), timeout=LIMIT_SECONDS)
    start = time.monotonic()
    sent = 0
    answer = b""
    closed = False
    try:
        for chunk in chunks:
            sock.sendall(chunk)
            sent += len(chunk)
            if pause:
                time.sleep(pause)
            if time.monotonic() - start > LIMIT_SECONDS:
                break
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        closed = True  # the agent closed on us while we were still sending
    sock.settimeout(max(1.0, LIMIT_SECONDS - (time.monotonic() - start)))
    try:
        while data := sock.recv(65536):
            answer += data
        closed = True
    except OSError:
        closed = True
    return {"case": case, "closed": closed, "seconds": round(time.monotonic() - start, 3),
            "sent": sent, "answer": answer[:600].decode("utf-8", "replace")}


def idle(host: str, port: int, count: int) -> dict:
    """Open `count` connections that say nothing; report how many the agent closed
    (at its header timeout) within LIMIT_SECONDS."""
    socks = []
    for _ in range(count):
        s = socket.create_connection((host, port), timeout=5)
        s.setblocking(False)
        socks.append(s)
    print(json.dumps({"opened": len(socks)}), flush=True)
    start = time.monotonic()
    open_ = set(range(len(socks)))
    while open_ and time.monotonic() - start < LIMIT_SECONDS:
        for i in list(open_):
            try:
                if socks[i].recv(65536) == b"":
                    open_.discard(i)
            except BlockingIOError:
                continue
            except OSError:
                open_.discard(i)
        time.sleep(0.05)
    return {"case": "idle", "opened": count, "closed_by_agent": count - len(open_),
            "seconds": round(time.monotonic() - start, 3)}


def flood(host: str, port: int, count: int) -> dict:
    """Connect and close at once, `count` times, as fast as we can."""
    start = time.monotonic()
    done = 0
    for _ in range(count):
        try:
            socket.create_connection((host, port), timeout=5).close()
            done += 1
        except OSError:
            continue
    return {"case": "flood", "connects": done, "seconds": round(time.monotonic() - start, 3)}


def main() -> None:
    case, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if case == "idle":
        result = idle(host, port, int(sys.argv[4]))
    elif case == "flood":
        result = flood(host, port, int(sys.argv[4]))
    else:
        result = attack(case, host, port)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
