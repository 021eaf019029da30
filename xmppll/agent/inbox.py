"""The inbox: every stanza the agent received, in a durable append-only JSON Lines log.

A stanza counts as received only once it is on disk (fsync'd): receipts and the
stream close that tells a sender "delivered" wait for that. Writes are batched into
one fsync per batch (group commit), which is what makes thousands of stanzas a second
possible without acknowledging anything early.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xmppll.errors import IOFailure

Record = dict[str, Any]


def inbox_path(state: Path) -> Path:
    return state / "inbox.jsonl"


def _last_seq(path: Path) -> int:
    """The sequence number of the last complete line (a torn last line from a crash
    mid-write is cut off, so the log stays valid JSON Lines)."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            pos = size
            tail = b""
            while pos > 0:
                step = min(65536, pos)
                pos -= step
                fh.seek(pos)
                tail = fh.read(step) + tail
                lines = tail.split(b"\n")
                complete = lines[:-1] if not tail.endswith(b"\n") else lines
                for line in reversed([x for x in complete if x.strip()]):
                    try:
                        return int(json.loads(line)["seq"])
                    except (ValueError, KeyError, TypeError):
                        continue
            return 0
    except FileNotFoundError:
        return 0


def _drop_torn_tail(path: Path) -> None:
    try:
        with open(path, "rb+") as fh:
            data_end = fh.seek(0, os.SEEK_END)
            if data_end == 0:
                return
            fh.seek(max(0, data_end - 1))
            if fh.read(1) == b"\n":
                return
            fh.seek(0)
            content = fh.read()
            fh.truncate(content.rfind(b"\n") + 1)
    except FileNotFoundError:
        return


class Inbox:
    """The writer side, owned by the agent's event loop."""

    def __init__(self, state: Path) -> None:
        state.mkdir(parents=True, exist_ok=True)
        self.path = inbox_path(state)
        _drop_torn_tail(self.path)
        self.seq = _last_seq(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._pending: list[tuple[bytes, asyncio.Future]] = []
        self._flushing: asyncio.Task | None = None
        self.subscribers: set[asyncio.Queue] = set()
        self.unstored = 0  # submitted, not yet on disk: what a flood costs in memory

    def submit(self, record: Record) -> asyncio.Future:
        """Queue one stanza for the next group commit; the future resolves to the
        record with its `seq` once it is on disk, or fails with IOFailure (disk full):
        the caller must not acknowledge the stanza then. Order of calls is log order."""
        self.seq += 1
        record = {"seq": self.seq, **record}
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        loop = asyncio.get_running_loop()
        stored = loop.create_future()
        self._pending.append((line, stored))
        self.unstored += 1
        if self._flushing is None:
            self._flushing = asyncio.ensure_future(self._flush())
        done = loop.create_future()

        def published(fut: asyncio.Future) -> None:
            if fut.exception() is not None:
                done.set_exception(fut.exception())
                return
            for queue in list(self.subscribers):
                queue.put_nowait(record)
            done.set_result(record)

        stored.add_done_callback(published)
        return done

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                self.unstored -= len(batch)
                data = b"".join(line for line, _ in batch)
                try:
                    await loop.run_in_executor(None, self._write, data)
                except OSError as exc:
                    error = IOFailure(f"cannot store in the inbox {self.path}: {exc.strerror}")
                    for _, future in batch:
                        future.set_exception(error)
                    continue
                for _, future in batch:
                    future.set_result(None)
        finally:
            self._flushing = None

    def _write(self, data: bytes) -> None:
        size = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError:
            os.ftruncate(self._fd, size)  # leave no half-written batch behind
            raise

    def close(self) -> None:
        os.close(self._fd)


def read_after(state: Path, after: int) -> Iterator[Record]:
    """Records with seq > after, oldest first (for backlog and catch-up)."""
    try:
        with open(inbox_path(state), "rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    return
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("seq", 0) > after:
                    yield record
    except FileNotFoundError:
        return


class Cursor:
    """The seq of the last stanza a listener printed, so `listen --backlog` after a
    crash starts right after it: nothing lost, nothing printed twice."""

    WIDTH = 20

    def __init__(self, state: Path) -> None:
        state.mkdir(parents=True, exist_ok=True)
        self.path = state / "cursor"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def get(self) -> int:
        raw = os.pread(self._fd, self.WIDTH, 0).strip()
        return int(raw) if raw.isdigit() else 0

    def set(self, seq: int) -> None:
        os.pwrite(self._fd, str(seq).rjust(self.WIDTH).encode(), 0)

    def close(self) -> None:
        os.close(self._fd)
