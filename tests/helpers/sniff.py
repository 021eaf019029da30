"""Capture one interface into a JSON Lines file: every TCP segment (flags, seq, payload
as hex) and every mDNS TXT record (strings in wire order). Used by tests/peers/sniffer.py.

Run inside a host of the virtual LAN, as root (never in the machine's own namespace):

    python tests/helpers/sniff.py OUT [IFNAME]

Prints `ready` once the socket is bound; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import struct
import sys
import time

# A veth delivers GRO aggregates up to 64 KiB of payload (more with BIG TCP) plus
# headers: a 64 KiB read cut the largest ones short on a loaded machine.
FRAME_MAX = 1 << 18
DRAIN = 10.0  # s


def _sniff(out_path: str, ifname: str = "eth0") -> None:
    """The capture loop (run inside a namespace host, as root)."""
    from zeroconf import DNSIncoming, DNSText  # the venv has it: xmppll depends on it

    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, 33, 8 * 1024 * 1024)  # SO_RCVBUFFORCE
    sock.bind((ifname, 0))
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sock.settimeout(0.2)
    print("ready", flush=True)
    drained_by = None
    with open(out_path, "a", buffering=1) as fh:
        while True:
            # Asked to stop, a loaded capture may still have frames queued in the socket:
            # they are read until it is quiet for 0.2 s (at most DRAIN seconds).
            if not running:
                drained_by = drained_by or time.monotonic() + DRAIN
                if time.monotonic() > drained_by:
                    break
            try:
                frame, _addr = sock.recvfrom(FRAME_MAX)
            except TimeoutError:
                if not running:
                    break
                continue
            except InterruptedError:
                continue
            now = time.time()
            ethertype = struct.unpack("!H", frame[12:14])[0]
            if ethertype == 0x0800:
                ihl = (frame[14] & 0x0F) * 4
                proto = frame[14 + 9]
                # 0 in a GRO/BIG TCP aggregate larger than 64 KiB: the frame's own size
                total = struct.unpack("!H", frame[16:18])[0] or len(frame) - 14
                src = socket.inet_ntop(socket.AF_INET, frame[26:30])
                dst = socket.inet_ntop(socket.AF_INET, frame[30:34])
                l4 = frame[14 + ihl:14 + total]
            elif ethertype == 0x86DD:
                proto = frame[14 + 6]
                plen = struct.unpack("!H", frame[18:20])[0] or len(frame) - 54
                src = socket.inet_ntop(socket.AF_INET6, frame[22:38])
                dst = socket.inet_ntop(socket.AF_INET6, frame[38:54])
                l4 = frame[54:54 + plen]
            else:
                continue
            if proto == 6 and len(l4) >= 20:
                sport, dport, seq = struct.unpack("!HHI", l4[:8])
                offset = (l4[12] >> 4) * 4
                bits = l4[13]
                flags = "".join(f for f, bit in (("F", 1), ("S", 2), ("R", 4), ("P", 8),
                                                 ("A", 16)) if bits & bit)
                fh.write(json.dumps({"t": now, "proto": "tcp", "src": src, "sport": sport,
                                     "dst": dst, "dport": dport, "seq": seq, "flags": flags,
                                     "data": l4[offset:].hex()}) + "\n")
            elif proto == 17 and len(l4) >= 8:
                sport, dport = struct.unpack("!HH", l4[:4])
                if 5353 not in (sport, dport):
                    continue
                try:
                    msg = DNSIncoming(l4[8:])
                    answers = msg.answers()
                except Exception:
                    continue
                for rec in answers:
                    if isinstance(rec, DNSText):
                        raw, strings, i = rec.text, [], 0
                        while i < len(raw):
                            n = raw[i]
                            strings.append(raw[i + 1:i + 1 + n].decode("utf-8", "replace"))
                            i += 1 + n
                        fh.write(json.dumps({"t": now, "proto": "mdns", "src": src,
                                             "name": rec.name, "ttl": rec.ttl,
                                             "txt": strings}) + "\n")


if __name__ == "__main__":
    if len(sys.argv) >= 2:
        _sniff(sys.argv[1], *(sys.argv[2:3]))
    else:
        sys.exit("usage: sniff.py OUT [IFNAME]")
