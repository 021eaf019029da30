"""What the agent sent: one JSON line per message a peer took, so that a conversation's
history (`xmppll chat`) shows both sides.

The agent keeps it, not `chat`: every message leaves through the agent (`send` and
`chat` alike, and any script using the control socket), so the history is the same
whichever command wrote to that peer. It is a log for people, not a delivery record:
appended after the peer took the message, no fsync, and bounded: past MAX_BYTES the
older half is dropped (the inbox's retention rules are for what we received).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from xmppll import timestamps
from xmppll.agent import segments

SENT_FILE = "sent.jsonl"
MAX_BYTES = 4 << 20


def sent_path(state: Path) -> Path:
    return state / SENT_FILE


class SentLog:
    def __init__(self, state: Path, max_bytes: int = MAX_BYTES) -> None:
        self.path = sent_path(state)
        self.max_bytes = max_bytes

    def append(self, message: dict[str, Any], *, id_: str, to: str) -> dict[str, Any]:
        record = {"kind": "message", "direction": "out", "to": to, "id": id_,
                  "type": message.get("type") or "chat", "body": message.get("body"),
                  "sent": timestamps.now()}
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > self.max_bytes:
            self._halve()
        return record

    def _halve(self) -> None:
        data = self.path.read_bytes()
        cut = data.find(b"\n", len(data) // 2) + 1
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(data[cut:])
        tmp.replace(self.path)


def last_to(state: Path, peer: str, n: int) -> list[dict[str, Any]]:
    """The last `n` messages sent to `peer`, oldest first, read from the end."""
    path = sent_path(state)
    if n <= 0 or not path.exists():
        return []
    needle = json.dumps(peer, ensure_ascii=False)[1:-1].encode().lower()
    found: list[dict[str, Any]] = []
    for line in segments.lines_backwards(path):
        if needle not in line.lower():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and str(record.get("to", "")).lower() == peer.lower():
            found.append(record)
            if len(found) == n:
                break
    return found[::-1]
