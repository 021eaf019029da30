"""A user-space Ethernet hub joining TAP devices, with delay, loss, duplication,
reordering and partitions: the impaired link the kernel here cannot give us (no
netem, no prio/ingress qdiscs).

Run it inside a namespace of the virtual LAN (tests/netimpair.py does, in the LAN's
bridge namespace), never in the machine's own:

    python tests/nethub.py TAP... [--delay S] [--jitter S] [--loss P] [--dup P]
                                  [--reorder P] [--max-pending N] [--max-seconds S]

It creates one TAP device per name (non-persistent: they vanish when it exits), prints
`ready`, then forwards every frame read from one TAP to every other, each copy delayed,
dropped, duplicated or reordered on its own, as a hub with a bad cable on each port
would. Ports are numbered 1..N in argument order.

stdin takes one JSON object per line, answered with one JSON line on stdout:
  {"delay": 0.2, "loss": 0.2, ...}       change settings, answered {"ok": {settings}}
  {"partition": [[1, 2], [3]]}           only ports in one group hear each other
  {"partition": null}                    heal
  {"stats": true}                        counters so far, answered {"stats": {...}}

Bounded in every way: at most --max-pending frames wait in the delay line (more are
dropped and counted), and it exits on EOF on stdin, SIGTERM/SIGINT, or after
--max-seconds.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import heapq
import json
import os
import random
import selectors
import signal
import struct
import sys
import time
from collections import Counter
from typing import Any

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
SETTINGS = ("delay", "jitter", "loss", "dup", "reorder")
READ_BURST = 256  # frames read from one port before looking at the others


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


class Hub:
    def __init__(self, names: list[str], settings: dict[str, float], max_pending: int) -> None:
        self.fds = [open_tap(name) for name in names]
        self.settings = dict(settings)
        self.groups: dict[int, int] | None = None  # port -> partition group
        self.max_pending = max_pending
        self.line: list[tuple[float, int, int, bytes]] = []  # (due, seq, port, frame)
        self.seq = 0
        self.stats: Counter[str] = Counter()
        self.stop = False

    # --- settings ------------------------------------------------------------------
    def command(self, text: str) -> dict[str, Any]:
        try:
            req = json.loads(text)
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            return {"error": f"bad command: {exc}"}
        if req.get("stats"):
            return {"stats": {**self.stats, "pending": len(self.line)}}
        if "partition" in req:
            groups = req["partition"]
            self.groups = None if groups is None else {
                port: n for n, group in enumerate(groups) for port in group
            }
        for key in SETTINGS:
            if key in req:
                self.settings[key] = float(req[key])
        return {"ok": {**self.settings, "partition": req.get("partition")}}

    def apart(self, src: int, dst: int) -> bool:
        if self.groups is None:
            return False
        return self.groups.get(src + 1, -1) != self.groups.get(dst + 1, -2)

    # --- frames --------------------------------------------------------------------
    def forward(self, src: int, frame: bytes, now: float) -> None:
        s = self.settings
        self.stats["frames"] += 1
        for dst in range(len(self.fds)):
            if dst == src:
                continue
            if self.apart(src, dst):
                self.stats["partitioned"] += 1
                continue
            if s["loss"] and random.random() < s["loss"]:
                self.stats["lost"] += 1
                continue
            copies = 2 if s["dup"] and random.random() < s["dup"] else 1
            self.stats["duplicated"] += copies - 1
            for _ in range(copies):
                wait = s["delay"] + (random.uniform(0, s["jitter"]) if s["jitter"] else 0)
                if s["reorder"] and random.random() < s["reorder"]:
                    # Held back long enough for the frames behind it to overtake.
                    wait += max(s["delay"], 0.02) + random.uniform(0, 0.02)
                    self.stats["reordered"] += 1
                if wait <= 0 and not self.line:
                    self.write(dst, frame)
                elif len(self.line) >= self.max_pending:
                    self.stats["overflow"] += 1
                else:
                    self.seq += 1
                    heapq.heappush(self.line, (now + wait, self.seq, dst, frame))

    def write(self, dst: int, frame: bytes) -> None:
        try:
            os.write(self.fds[dst], frame)
            self.stats["delivered"] += 1
        except OSError as exc:
            # EIO: that port's interface is down; EAGAIN: its queue is full. A hub
            # drops the frame either way.
            if exc.errno not in (errno.EIO, errno.EAGAIN):
                raise
            self.stats["undeliverable"] += 1

    def due(self, now: float) -> None:
        while self.line and self.line[0][0] <= now:
            _, _, dst, frame = heapq.heappop(self.line)
            self.write(dst, frame)

    def read(self, port: int, now: float) -> None:
        fd = self.fds[port]
        for _ in range(READ_BURST):
            try:
                frame = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EIO:
                    return
                raise
            self.forward(port, frame, now)

    # --- loop ----------------------------------------------------------------------
    def run(self, max_seconds: float) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: setattr(self, "stop", True))
        sel = selectors.DefaultSelector()
        for port, fd in enumerate(self.fds):
            sel.register(fd, selectors.EVENT_READ, port)
        os.set_blocking(sys.stdin.fileno(), True)
        sel.register(sys.stdin, selectors.EVENT_READ, None)
        end = time.monotonic() + max_seconds
        print("ready", flush=True)
        while not self.stop and time.monotonic() < end:
            now = time.monotonic()
            wait = min(0.2, max(0.0, self.line[0][0] - now)) if self.line else 0.2
            for key, _ in sel.select(wait):
                now = time.monotonic()
                if key.data is None:
                    text = sys.stdin.readline()
                    if not text:  # whoever drives us is gone
                        self.stop = True
                        break
                    print(json.dumps(self.command(text)), flush=True)
                else:
                    self.read(key.data, now)
            self.due(time.monotonic())
        for fd in self.fds:
            os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("taps", nargs="+")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds, each way")
    parser.add_argument("--jitter", type=float, default=0.0, help="extra 0..S seconds")
    parser.add_argument("--loss", type=float, default=0.0, help="probability per copy")
    parser.add_argument("--dup", type=float, default=0.0, help="probability per copy")
    parser.add_argument("--reorder", type=float, default=0.0, help="probability per copy")
    parser.add_argument("--max-pending", type=int, default=50000)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    args = parser.parse_args()
    settings = {key: getattr(args, key) for key in SETTINGS}
    Hub(args.taps, settings, args.max_pending).run(args.max_seconds)


if __name__ == "__main__":
    main()
