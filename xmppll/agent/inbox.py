"""The inbox: every stanza the agent received, in a durable append-only JSON Lines log
(in segments, see segments.py; retention.py drops old read ones).

A stanza counts as received only once it is on disk (fsync'd): receipts and the
stream close that tells a sender "delivered" wait for that. Writes are batched into
one fsync per batch (group commit), which is what makes thousands of stanzas a second
possible without acknowledging anything early.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from xmppll.agent import segments
from xmppll.agent.segments import Stored
from xmppll.errors import IOFailure

log = logging.getLogger("xmppll")
SEGMENT_BYTES = 16 << 20  # the newest segment is sealed into inbox.d/ past this size
# One encoder for every record: json.dumps builds a new one per call when given any
# option (here ensure_ascii), a measurable share of a flood's per-stanza cost.
_encode = json.JSONEncoder(ensure_ascii=False).encode


def inbox_path(state: Path) -> Path:
    """The newest segment (the one being appended to); see segments.py for the rest."""
    return segments.active_path(state)


class Inbox:
    """The writer side, owned by the agent's event loop."""

    def __init__(self, state: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        state.mkdir(parents=True, exist_ok=True)
        self.state = state
        self.path = inbox_path(state)
        self.segment_bytes = segment_bytes
        segments.drop_torn_tail(self.path)
        # The newest seq ever stored, even if retention dropped it or a crash came
        # between sealing a segment and the next write: seqs are never reused.
        newest_sealed = segments.sealed(state)[-1:]
        self.seq = max(segments.last_seq(self.path),
                       *(segments.last_seq(path) for _, path in newest_sealed),
                       segments.pruned_through(state))
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._pending: list[tuple[str, Stored, asyncio.Future]] = []
        self._flushing: asyncio.Task | None = None
        self.subscribers: set[asyncio.Queue] = set()
        self.unstored = 0  # submitted, not yet on disk: what a flood costs in memory
        self.on_seal: Callable[[], None] | None = None  # called on the writer thread
        self._fd_lock = threading.Lock()

    def submit(self, record: Stored) -> asyncio.Future:
        """Queue one stanza for the next group commit; the future resolves to the
        record with its `seq` once it is on disk, or fails with IOFailure (disk full):
        the caller must not acknowledge the stanza then. Order of calls is log order."""
        self.seq += 1
        record = {"seq": self.seq, **record}
        stored = asyncio.get_running_loop().create_future()
        self._pending.append((_encode(record) + "\n", record, stored))
        self.unstored += 1
        if self._flushing is None:
            self._flushing = asyncio.ensure_future(self._flush())
        return stored

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                self.unstored -= len(batch)
                data = "".join(line for line, _, _ in batch).encode()
                try:
                    await loop.run_in_executor(None, self._write, data)
                except OSError as exc:
                    error = IOFailure(f"cannot store in the inbox {self.path}: {exc.strerror}")
                    for _, _, stored in batch:
                        stored.set_exception(error)
                    continue
                # Listeners see a record only once it is on disk, in log order, before
                # anyone acknowledges it.
                subscribers = list(self.subscribers)
                for _, record, stored in batch:
                    for queue in subscribers:
                        queue.put_nowait(record)
                    stored.set_result(record)
        finally:
            self._flushing = None

    def _write(self, data: bytes) -> None:
        with self._fd_lock:
            size = os.fstat(self._fd).st_size
            if size >= self.segment_bytes and self._seal():
                size = 0
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
                os.fsync(self._fd)
            except OSError:
                os.ftruncate(self._fd, size)  # leave no half-written batch behind
                raise

    def _seal(self) -> bool:
        """Move the full newest segment into inbox.d/ under its first seq and start an
        empty one. Every step is a rename or a create, each durable before the next:
        a crash anywhere leaves each record in exactly one segment."""
        first = segments.first_record(self.path)
        if first is None:
            return False
        target = segments.sealed_path(self.state, first["seq"])
        try:
            target.parent.mkdir(exist_ok=True)
            if target.exists():
                return False
            os.rename(self.path, target)
            segments.fsync_dir(target.parent)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            segments.fsync_dir(self.state)
        except OSError as exc:
            log.warning("cannot seal the inbox segment %s: %s", self.path, exc)
            return False
        os.close(self._fd)
        self._fd = fd
        if self.on_seal is not None:
            self.on_seal()
        return True

    def close(self) -> None:
        with self._fd_lock:
            os.close(self._fd)


read_after = segments.read_after  # records with seq > after, oldest first


async def catch_up(state: Path, after: int, batch: int = 512) -> AsyncIterator[Stored]:
    """`read_after` for the event loop: the file reads run on a worker thread, `batch`
    records at a time, so a listener catching up never stalls the agent."""
    loop = asyncio.get_running_loop()
    records = read_after(state, after)
    try:
        while chunk := await loop.run_in_executor(None, _take, records, batch):
            for record in chunk:
                yield record
    finally:
        with contextlib.suppress(ValueError):  # still running on the worker thread
            records.close()


def _take(records: Iterator[Stored], n: int) -> list[Stored]:
    return [record for _, record in zip(range(n), records, strict=False)]
