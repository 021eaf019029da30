"""The inbox on disk: JSON Lines segments, found by seq without reading what precedes.

    STATE/inbox.jsonl                   the segment being appended to (the newest)
    STATE/inbox.d/<first seq>.jsonl     sealed segments, oldest first, never written again
    STATE/inbox.d/<first seq>.meta.json a sealed segment's summary (count, peers, times):
                                        a cache, rebuilt from the segment when missing,
                                        stale or unreadable
    STATE/inbox.d/pruned                the last seq retention ever dropped

Every line is one record and lines are in seq order, so the line holding a given seq is
found by bisecting the bytes of one file: O(log size), no index to keep in step, nothing
that can be lost or corrupted and make a message unreadable. Segment names give the file
to bisect. An inbox.jsonl from before segments is just a large newest segment: it is
bisected the same way, and sealed into inbox.d/ at the first write once it is too big.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Stored = dict[str, Any]
ACTIVE = "inbox.jsonl"
SEALED = "inbox.d"
BLOCK = 65536  # bisect down to this many bytes, then read lines forward
_SEQ = re.compile(rb'\{"seq": (\d+)[,}]')
META_VERSION = 1


def active_path(state: Path) -> Path:
    return state / ACTIVE


def sealed_dir(state: Path) -> Path:
    return state / SEALED


def sealed_path(state: Path, first: int) -> Path:
    return sealed_dir(state) / f"{first:020d}.jsonl"


def meta_path(segment: Path) -> Path:
    return segment.with_name(segment.name[:-len(".jsonl")] + ".meta.json")


def sealed(state: Path) -> list[tuple[int, Path]]:
    """(first seq, path) of each sealed segment, oldest first."""
    try:
        names = os.listdir(sealed_dir(state))
    except FileNotFoundError:
        return []
    found = [(int(n[:20]), sealed_dir(state) / n) for n in names
             if len(n) == 26 and n.endswith(".jsonl") and n[:20].isdigit()]
    return sorted(found)


def files(state: Path) -> list[Path]:
    """Every segment, oldest first, the active one last (it may not exist)."""
    return [path for _, path in sealed(state)] + [active_path(state)]


def line_seq(line: bytes) -> int | None:
    """The seq of one line, None for a line that is not a record."""
    match = _SEQ.match(line)
    if match:
        return int(match.group(1))
    try:
        value = json.loads(line)
    except ValueError:
        return None
    seq = value.get("seq") if isinstance(value, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def pruned_through(state: Path) -> int:
    try:
        raw = (sealed_dir(state) / "pruned").read_text().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return 0
    return int(raw) if raw.isdigit() else 0


def fsync_dir(path: Path) -> None:
    """Make a rename, create or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- one file -------------------------------------------------------------------------

def _line_at(fh: Any, start: int) -> bytes | None:
    """The complete line starting at `start` (newline included), None at a torn end."""
    fh.seek(start)
    line = fh.readline()
    return line if line.endswith(b"\n") else None


def _next_start(fh: Any, pos: int) -> int:
    """The first line start at or after `pos`."""
    if pos == 0:
        return 0
    fh.seek(pos - 1)
    while True:
        chunk = fh.read(BLOCK)
        if not chunk:
            return fh.tell()
        nl = chunk.find(b"\n")
        if nl >= 0:
            return fh.tell() - len(chunk) + nl + 1
        pos += len(chunk)


def _probe(fh: Any, pos: int, hi: int) -> tuple[int, int, int] | None:
    """(start, end, seq) of the first record line starting in [pos, hi)."""
    start = _next_start(fh, pos)
    while start < hi:
        line = _line_at(fh, start)
        if line is None:
            return None
        seq = line_seq(line)
        if seq is not None:
            return start, start + len(line), seq
        start += len(line)
    return None


def offset_after(fh: Any, after: int) -> int:
    """Offset of the first line whose seq is above `after`: a bisection over the bytes
    (records are in seq order), then a short forward read."""
    size = fh.seek(0, os.SEEK_END)
    lo, hi = 0, size  # lines starting before lo are <= after; the line at hi is > after
    while hi - lo > BLOCK:
        found = _probe(fh, (lo + hi) // 2, hi)
        if found is None:
            break
        start, end, seq = found
        if seq > after:
            hi = start
        else:
            lo = end
    fh.seek(lo)
    pos = lo
    for line in iter(fh.readline, b""):
        if not line.endswith(b"\n"):
            break
        seq = line_seq(line)
        if seq is not None and seq > after:
            return pos
        pos += len(line)
    return pos


def records_after(fh: Any, after: int) -> Iterator[Stored]:
    """The file's records with seq > after, in order (a torn last line is not one)."""
    fh.seek(offset_after(fh, after))
    for line in fh:
        if not line.endswith(b"\n"):
            return
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("seq"), int) \
                and record["seq"] > after:
            yield record


def lines_backwards(path: Path) -> Iterator[bytes]:
    """Complete lines of a file, newest first, read from the end in blocks."""
    try:
        with open(path, "rb") as fh:
            yield from _backwards(fh)
    except FileNotFoundError:
        return


def _backwards(fh: Any) -> Iterator[bytes]:
    pos = fh.seek(0, os.SEEK_END)
    rest = b""
    torn = True  # the bytes after the last newline are not a line
    while pos > 0:
        step = min(BLOCK, pos)
        pos -= step
        fh.seek(pos)
        rest = fh.read(step) + rest
        parts = rest.split(b"\n")
        rest = parts[0]
        tail = parts[1:]
        if torn and tail:
            tail = tail[:-1]
            torn = False
        for line in reversed(tail):
            if line.strip():
                yield line + b"\n"
    if rest.strip() and not torn:
        yield rest + b"\n"


def last_record(path: Path) -> Stored | None:
    for line in lines_backwards(path):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("seq"), int):
            return record
    return None


def first_record(path: Path) -> Stored | None:
    try:
        with open(path, "rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    return None
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("seq"), int):
                    return record
    except FileNotFoundError:
        pass
    return None


def last_seq(path: Path) -> int:
    record = last_record(path)
    return record["seq"] if record else 0


def drop_torn_tail(path: Path) -> None:
    """Cut a last line left half-written by a crash (reading back to its start only)."""
    try:
        with open(path, "rb+") as fh:
            end = fh.seek(0, os.SEEK_END)
            pos = end
            while pos > 0:
                step = min(BLOCK, pos)
                pos -= step
                fh.seek(pos)
                chunk = fh.read(step)
                if pos + step == end and chunk.endswith(b"\n"):
                    return
                nl = chunk.rfind(b"\n")
                if nl >= 0:
                    fh.truncate(pos + nl + 1)
                    return
            fh.truncate(0)
    except FileNotFoundError:
        return


# --- the whole inbox ------------------------------------------------------------------

def _from(state: Path, after: int) -> list[Path]:
    """The files that can hold seq after+1 and later: the sealed segment whose range
    holds it, every later one, and the active one."""
    segs = sealed(state)
    start = 0
    for i, (first, _) in enumerate(segs):
        if first <= after + 1:
            start = i
    return [path for _, path in segs[start:]] + [active_path(state)]


def read_after(state: Path, after: int) -> Iterator[Stored]:
    """Records with seq > after, oldest first. Costs a bisection per file it opens,
    whatever the inbox holds before `after`. A segment sealed or pruned while this
    reads is handled: it goes over the files again until a pass finds nothing new."""
    last = after
    while True:
        before = last
        for path in _from(state, last):
            try:
                with open(path, "rb") as fh:
                    for record in records_after(fh, last):
                        if record["seq"] > last:
                            last = record["seq"]
                            yield record
            except FileNotFoundError:  # pruned meanwhile: nothing unread was in it
                continue
        if last == before:
            return


def count_after(path: Path, after: int) -> int:
    """How many lines of one file hold a seq above `after`."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset_after(fh, after))
            total = 0
            while chunk := fh.read(1 << 20):
                total += chunk.count(b"\n")
            return total
    except FileNotFoundError:
        return 0


# --- summaries of sealed segments -----------------------------------------------------

def peer_names(record: Stored) -> set[str]:
    """The names a record is filed under: the sender's verified instance name and the
    bare address it claimed."""
    names = set()
    peer = record.get("peer")
    if isinstance(peer, dict) and isinstance(peer.get("name"), str):
        names.add(peer["name"])
    sender = record.get("from")
    if isinstance(sender, str):
        names.add(sender.split("/", 1)[0])
    return names


def build_summary(path: Path) -> dict[str, Any]:
    count, first, last, oldest, newest = 0, None, None, None, None
    peers: dict[str, int] = {}
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        for line in fh:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
                continue
            count += 1
            first = record["seq"] if first is None else first
            last = record["seq"]
            oldest = oldest or record.get("received")
            newest = record.get("received") or newest
            for name in peer_names(record):
                peers[name] = peers.get(name, 0) + 1
    return {"version": META_VERSION, "bytes": size, "count": count, "first": first,
            "last": last, "oldest": oldest, "newest": newest, "peers": peers}


def write_summary(segment: Path, summary: dict[str, Any]) -> None:
    """Best effort, atomically (a crash leaves the old file or none, never half)."""
    target = meta_path(segment)
    tmp = target.with_name(target.name + ".tmp")
    try:
        tmp.write_text(json.dumps(summary, ensure_ascii=False))
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)


def summary(segment: Path) -> dict[str, Any] | None:
    """A sealed segment's summary: from its meta file when that matches the segment,
    otherwise rebuilt from the segment (and saved). None if the segment is gone."""
    try:
        size = segment.stat().st_size
    except FileNotFoundError:
        return None
    try:
        meta = json.loads(meta_path(segment).read_text())
        if isinstance(meta, dict) and meta.get("version") == META_VERSION \
                and meta.get("bytes") == size and isinstance(meta.get("count"), int) \
                and isinstance(meta.get("peers"), dict):
            return meta
    except (OSError, ValueError):
        pass
    try:
        meta = build_summary(segment)
    except FileNotFoundError:
        return None
    write_summary(segment, meta)
    return meta
