"""Retention: how much read history the inbox keeps, and dropping the rest.

Only whole sealed segments go, oldest first, and only those whose every record is at or
below the listeners' cursor (what `listen` has printed, written to --output and fsync'd,
or handed to --exec): what no listener has read yet stays, whatever its age. The newest
segment (at most SEGMENT_BYTES) is never dropped.

A prune is a few durable steps: record the last seq it drops (so seqs are never reused,
even with every segment gone), then unlink segments oldest first. A crash between any
two leaves a suffix of the log, every unread record in it once, and a readable inbox;
the next prune finishes the job. The agent runs it on a worker thread after each sealed
segment and hourly, so delivery never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from xmppll.agent import segments
from xmppll.agent.inbox import Inbox
from xmppll.agent.policy import Policy
from xmppll.agent.segments import fsync_dir

log = logging.getLogger("xmppll")
EVERY = 3600.0  # seconds between the agent's prunes when no segment was sealed
KILL_AFTER = "XMPPLL_TEST_PRUNE_KILL_AFTER"  # tests: SIGKILL ourselves after step N


def read_mark(state: Path) -> int:
    """The listeners' cursor: every seq at or below it has been read."""
    try:
        raw = (state / "cursor").read_bytes().strip()
    except FileNotFoundError:
        return 0
    return int(raw) if raw.isdigit() else 0


def _epoch(stamp: Any) -> float | None:
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def plan(state: Path, policy: Policy, now: float | None = None) -> list[tuple[int, Path]]:
    """The sealed segments to drop, oldest first: a prefix of those wholly read."""
    now = time.time() if now is None else now
    read = read_mark(state)
    done: list[tuple[int, Path, int, float | None]] = []
    for first, path in segments.sealed(state):
        last = segments.last_record(path)
        if last is None or last["seq"] > read:
            break
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        done.append((first, path, size, _epoch(last.get("received"))))
    cut, kept = 0, 0
    for i in range(len(done) - 1, -1, -1):
        _, _, size, newest = done[i]
        kept += size
        too_old = newest is not None and newest < now - policy.keep_days * 86400
        if kept > policy.keep_bytes or too_old:
            cut = i + 1
            break
    return [(first, path) for first, path, _, _ in done[:cut]]


class _Steps:
    """Counts durable steps; under the test hook, dies without cleanup after step N."""

    def __init__(self) -> None:
        raw = os.environ.get(KILL_AFTER, "")
        self.kill_after = int(raw) if raw.isdigit() else 0
        self.n = 0

    def __call__(self) -> None:
        self.n += 1
        if self.n == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)


def prune(state: Path, policy: Policy, now: float | None = None) -> dict[str, Any]:
    """Apply the policy now; returns what went. One prune at a time per inbox (a lock
    file), safe beside a writing agent: it never touches the newest segment."""
    folder = segments.sealed_dir(state)
    if not folder.is_dir():
        return {"segments": 0, "bytes": 0, "through": segments.pruned_through(state)}
    step = _Steps()
    with open(folder / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        drop = plan(state, policy, now)
        if not drop:
            return {"segments": 0, "bytes": 0, "through": segments.pruned_through(state)}
        through = max(segments.last_seq(drop[-1][1]), segments.pruned_through(state))
        _write_floor(folder, through)
        step()
        freed = 0
        for _, path in drop:
            with contextlib.suppress(FileNotFoundError):
                segments.meta_path(path).unlink()
            with contextlib.suppress(FileNotFoundError):
                freed += path.stat().st_size
                path.unlink()
            step()
        fsync_dir(folder)
        step()
    return {"segments": len(drop), "bytes": freed, "through": through}


def _write_floor(folder: Path, seq: int) -> None:
    tmp = folder / "pruned.tmp"
    with open(tmp, "w") as fh:
        fh.write(f"{seq}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / "pruned")
    fsync_dir(folder)


async def keep(inbox: Inbox, policy: Policy, every: float = EVERY) -> None:
    """The agent's retention: prune on a worker thread at start, after each sealed
    segment and every `every` seconds. A failure is logged and retried later."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    inbox.on_seal = lambda: loop.call_soon_threadsafe(wake.set)
    while True:
        wake.clear()
        try:
            done = await loop.run_in_executor(None, prune, inbox.state, policy)
            if done["segments"]:
                log.info("inbox retention dropped %d segments (%d bytes) through seq %d",
                         done["segments"], done["bytes"], done["through"])
        except OSError as exc:
            log.warning("inbox retention failed: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), every)

