"""Reading the inbox for people: what it holds (`xmppll inbox`) and the last messages
with one peer (a conversation's history), each without reading every record.

Sealed segments are known by their summaries (segments.summary: count, times, the
peers in them), so only the newest segment and the one holding the cursor are read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from xmppll.agent import segments
from xmppll.agent.retention import read_mark
from xmppll.agent.segments import Stored


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            total = 0
            while chunk := fh.read(1 << 20):
                total += chunk.count(b"\n")
            return total
    except FileNotFoundError:
        return 0


def _disk(path: Path) -> tuple[int, int]:
    """(bytes, bytes on disk) of the files in `path` or of the file `path`."""
    try:
        entries = [path / n for n in os.listdir(path)] if path.is_dir() else [path]
    except FileNotFoundError:
        return 0, 0
    size = used = 0
    for entry in entries:
        try:
            st = entry.stat()
        except FileNotFoundError:
            continue
        size += st.st_size
        used += st.st_blocks * 512
    return size, used


def stats(state: Path) -> dict[str, Any]:
    """Where the inbox is, how many messages and how much disk, the oldest and newest,
    and how many no listener has read (seq above the cursor)."""
    active = segments.active_path(state)
    sealed = segments.sealed(state)
    cursor = read_mark(state)
    count = unread = 0
    for _, path in sealed:
        meta = segments.summary(path)
        if meta is None:
            continue
        count += meta["count"]
        if meta["first"] is not None and meta["first"] > cursor:
            unread += meta["count"]
        elif meta["last"] is not None and meta["last"] > cursor:
            unread += segments.count_after(path, cursor)
    newest_lines = _lines(active)
    count += newest_lines
    first_active = segments.first_record(active)
    if first_active is not None and first_active["seq"] > cursor:
        unread += newest_lines
    else:
        unread += segments.count_after(active, cursor)
    oldest = next((r for r in (segments.first_record(p) for p in segments.files(state)) if r),
                  None)
    newest = next((r for r in (segments.last_record(p)
                               for p in reversed(segments.files(state))) if r), None)
    a_size, a_used = _disk(active)
    s_size, s_used = _disk(segments.sealed_dir(state))
    return {
        "path": str(state), "messages": count, "unread": unread, "cursor": cursor,
        "first_seq": oldest["seq"] if oldest else None,
        "last_seq": newest["seq"] if newest else None,
        "oldest": oldest.get("received") if oldest else None,
        "newest": newest.get("received") if newest else None,
        "segments": len(sealed) + (1 if active.exists() else 0),
        "bytes": a_size + s_size, "disk": a_used + s_used,
        "pruned_through": segments.pruned_through(state),
    }


def last_with(state: Path, peer: str, n: int) -> list[Stored]:
    """The last `n` records from `peer` (its instance name or bare address), oldest
    first. Reads backwards from the newest record and skips every sealed segment whose
    summary does not name the peer: the cost is what lies after its Nth last message."""
    if n <= 0:
        return []
    needle = json.dumps(peer, ensure_ascii=False)[1:-1].encode()
    found: list[Stored] = []
    for path in reversed(segments.files(state)):
        if path.parent.name == segments.SEALED:
            meta = segments.summary(path)
            if meta is None or peer not in meta["peers"]:
                continue
        for line in segments.lines_backwards(path):
            if needle not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and peer in segments.peer_names(record):
                found.append(record)
                if len(found) == n:
                    return found[::-1]
    return found[::-1]
