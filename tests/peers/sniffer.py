"""A packet capture of one host's eth0, so a test run leaves the raw XML of every stream
both ways for review, and the byte order of a TXT record on the wire can be checked.
No tcpdump needed: the capture loop is tests/helpers/sniff.py, run inside the host.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from lan import Host, Lines

from peers.common import _terminate

SNIFF = Path(__file__).resolve().parent.parent / "helpers" / "sniff.py"


# --- packet capture -------------------------------------------------------------------

class Sniffer:
    """Captures a host's eth0 into a JSON Lines file: every TCP segment (with payload,
    hex) and every mDNS TXT record (strings in wire order). Runs in the host, as
    `python tests/helpers/sniff.py OUT`."""

    def __init__(self, host: Host, out: Path) -> None:
        self.host = host
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = host.popen([sys.executable, str(SNIFF), str(out)])
        Lines(self.proc.stdout).wait_for("ready", 10)

    def records(self) -> list[dict[str, Any]]:
        try:
            text = self.out.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def txt_records(self, instance: str) -> list[list[str]]:
        """The TXT strings (wire order) of every mDNS record seen for `instance`."""
        key = instance.lower()
        return [r["txt"] for r in self.records()
                if r.get("proto") == "mdns" and r["name"].lower().startswith(key + ".")]

    def stop(self) -> None:
        """Waits for the capture to write what it still holds (sniff.DRAIN)."""
        _terminate(self.proc, grace=15)


def tcp_transcripts(records: list[dict[str, Any]], names: dict[str, str]) -> list[dict[str, Any]]:
    """Group captured TCP segments into connections, in the form of the reference
    transcripts: `+S.mmm C>S b'...'` lines, retransmissions dropped.

    `names` maps an address (no scope) to a label for the header line."""
    conns: dict[tuple, dict[str, Any]] = {}
    order: list[tuple] = []
    for r in records:
        if r.get("proto") != "tcp":
            continue
        a, b = (r["src"], r["sport"]), (r["dst"], r["dport"])
        key = (a, b) if (a, b) in conns else (b, a) if (b, a) in conns else None
        if key is None:
            if "S" not in r["flags"] or "A" in r["flags"]:
                continue  # a connection whose start we missed
            key = (a, b)
            conns[key] = {"client": a, "server": b, "t0": r["t"], "lines": [], "seen": set(),
                          "data": {"C": b"", "S": b""}}
            order.append(key)
        conn = conns[key]
        way = "C" if (r["src"], r["sport"]) == conn["client"] else "S"
        arrow = "C>S" if way == "C" else "S>C"
        rel = f"+{r['t'] - conn['t0']:.3f}"
        payload = bytes.fromhex(r["data"])
        if payload:
            mark = (way, r["seq"], len(payload))
            if mark in conn["seen"]:
                continue
            conn["seen"].add(mark)
            conn["data"][way] += payload
            conn["lines"].append(f"{rel} {arrow} {payload!r}")
        for flag, word in (("S", "SYN"), ("F", "FIN"), ("R", "RST")):
            if flag in r["flags"]:
                conn["lines"].append(f"{rel} {arrow} {word}")
    result = []
    for key in order:
        conn = conns[key]
        c, s = conn["client"], conn["server"]

        def label(addr: tuple[str, int]) -> str:
            return f"{names.get(addr[0].partition('%')[0], '?')} [{addr[0]}]:{addr[1]}"

        header = f"# {label(c)} -> {label(s)}  (C = initiator, S = responder)"
        result.append({"client": c, "server": s, "text": "\n".join([header, *conn["lines"]]),
                       "client_bytes": conn["data"]["C"], "server_bytes": conn["data"]["S"]})
    return result
