"""Output: JSON Lines for programs, aligned text for people, one-line errors.

Every string that came from the network is escaped before it reaches a terminal: a
peer name or status message must not be able to move the cursor or retitle a window.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from xmppll.errors import IOFailure

_STATUS_MARK = {"avail": "avail", "away": "away", "dnd": "dnd"}


def wants_json(flag: bool | None, stream: TextIO | None = None) -> bool:
    """JSON when asked, or when stdout is not a terminal (a pipe, a file)."""
    if flag is not None:
        return flag
    return not (stream or sys.stdout).isatty()


def safe(text: Any) -> str:
    """Terminal-safe text: control characters (C0, DEL, C1, bidi overrides) escaped."""
    out = []
    for ch in str(text):
        code = ord(ch)
        if code < 0x20 or 0x7F <= code < 0xA0 or 0x202A <= code <= 0x202E \
                or 0x2066 <= code <= 0x2069:
            out.append(f"\\u{code:04x}" if code > 0xFF else f"\\x{code:02x}")
        else:
            out.append(ch)
    return "".join(out)


def write_line(line: str, stream: TextIO | None = None) -> None:
    """One line, flushed at once (a bot reading a pipe must not wait for a buffer);
    a closed pipe is an error the caller reports, never a silent drop."""
    out = stream or sys.stdout
    try:
        out.write(line + "\n")
        out.flush()
    except BrokenPipeError as exc:
        raise IOFailure("output closed (broken pipe)") from exc


def write_json(obj: dict[str, Any], stream: TextIO | None = None) -> None:
    write_line(json.dumps(obj, ensure_ascii=False), stream)


def _address(peer: dict[str, Any]) -> str:
    addrs = peer.get("addresses") or []
    v4 = [a for a in addrs if ":" not in a]
    return (v4 or addrs or ["-"])[0]


def peer_table(peers: Iterable[dict[str, Any]]) -> list[str]:
    rows = [("NAME", "STATUS", "ADDRESS", "PORT", "MESSAGE")]
    for p in peers:
        rows.append((safe(p["name"]), _STATUS_MARK.get(p.get("status"), "?"),
                     safe(_address(p)), str(p.get("port", "")), safe(p.get("msg") or "")))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
            for r in rows]


def peer_event_line(event: dict[str, Any]) -> str:
    mark = {"added": "+", "updated": "~", "removed": "-"}.get(event.get("event"), "?")
    text = f"{mark} {safe(event['name'])}  {event.get('status', '')}  " \
           f"{safe(_address(event))}:{event.get('port', '')}"
    if event.get("msg"):
        text += f"  {safe(event['msg'])}"
    return text


def agent_event_line(event: dict[str, Any]) -> str:
    kind = event.get("event")
    name = safe(event.get("name", ""))
    if kind == "announced":
        addrs = ", ".join(event.get("addresses") or []) or "addresses by the host's responder"
        return f"announced {name} on {safe(event['host'])} port {event['port']} " \
               f"({event.get('status')}; {addrs})"
    if kind == "renamed":
        return f"renamed {safe(event['from'])} -> {name} (the name was taken)"
    if kind == "conflict":
        return f"conflict: {name} is taken by another peer"
    if kind == "status":
        msg = f": {safe(event['msg'])}" if event.get("msg") else ""
        return f"status {name} {event.get('status')}{msg}"
    if kind == "withdrawn":
        reason = f" ({safe(event['reason'])})" if event.get("reason") else ""
        return f"withdrawn {name}{reason}"
    return safe(json.dumps(event, ensure_ascii=False))


def stanza_line(record: dict[str, Any]) -> str:
    """A received stanza for a person: time, sender (? when unverified), text."""
    when = (record.get("received") or "")[11:19]
    mark = "" if record.get("verified") else " (unverified)"
    sender = record.get("from") or (record.get("peer") or {}).get("name") or "?"
    if record.get("kind") == "message" and record.get("body") is not None:
        text = record["body"]
    else:
        text = f"<{record.get('kind')}> {record.get('xml', '')}"
    return f"[{when}] {safe(sender)}{mark}: {safe(text)}"


def error(message: str) -> None:
    sys.stderr.write(f"xmppll: error: {safe(message)}\n")
    sys.stderr.flush()


def warn(message: str) -> None:
    sys.stderr.write(f"xmppll: warning: {safe(message)}\n")
    sys.stderr.flush()
