"""`listen`: follow the agent's inbox and hand each stanza on: stdout, a file, a
command. A line counts as printed only once it is flushed; the cursor then moves past
it, so a listener killed at any moment and restarted with `--backlog` resumes right
after the last line it delivered. With --exec, the cursor moves past a stanza only
once its command has finished (and every earlier one's): the cursor is also what the
inbox's retention may drop, so it must never run ahead of what was handled.
"""

from __future__ import annotations

import os

from xmppll.errors import IOFailure

# A listener through the agent starts with none of logging, subprocess, threading or
# typing (issue 14): --exec brings them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    from xmppll.agent.cursor import Cursor

EXEC_CONCURRENCY = 4


class Runner:
    """Runs CMD once per stanza with its JSON on stdin, at most EXEC_CONCURRENCY at a
    time; a failing command is logged and never stops the listener."""

    def __init__(self, command: str) -> None:
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self.command = command
        self.pool = ThreadPoolExecutor(EXEC_CONCURRENCY)
        self.slots = threading.BoundedSemaphore(EXEC_CONCURRENCY * 2)
        self.running: set[int] = set()
        self.lock = threading.Lock()
        self.cursor_lock = threading.Lock()  # the main loop and the pool both move it
        self.on_done: Callable[[], None] | None = None

    def submit(self, line: str, seq: int) -> None:
        self.slots.acquire()
        with self.lock:
            self.running.add(seq)
        future = self.pool.submit(self._run, line, seq)
        future.add_done_callback(lambda _: self._finished(seq))

    def _finished(self, seq: int) -> None:
        with self.lock:
            self.running.discard(seq)
        self.slots.release()
        if self.on_done is not None:
            self.on_done()

    def handled_through(self, passed: int) -> int:
        """The last seq with every stanza up to it handled, given that all up to
        `passed` have been submitted."""
        with self.lock:
            return min(self.running) - 1 if self.running else passed

    def _run(self, line: str, seq: int) -> None:
        import logging
        import subprocess

        log = logging.getLogger("xmppll")
        try:
            done = subprocess.run(self.command, shell=True, input=line + "\n", text=True,
                                  check=False)
        except OSError as exc:
            log.error("--exec %r for stanza %d failed to start: %s", self.command, seq, exc)
            return
        if done.returncode != 0:
            log.warning("--exec %r exited %d for stanza %d", self.command, done.returncode,
                        seq)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class FileOutput:
    """--output FILE: appended and fsync'd line by line (it is a log of record)."""

    def __init__(self, path: str) -> None:
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise IOFailure(f"cannot open {path}: {exc.strerror}") from exc
        self.path = path

    def write(self, line: str) -> None:
        try:
            os.write(self.fd, (line + "\n").encode())
            os.fsync(self.fd)
        except OSError as exc:
            raise IOFailure(f"cannot write {self.path}: {exc.strerror}") from exc

    def close(self) -> None:
        os.close(self.fd)


def consume(records: Iterable[dict[str, Any]], *, cursor: Cursor,
            show: Callable[[dict[str, Any]], None],
            output: FileOutput | None = None, runner: Runner | None = None,
            to_json: Callable[[dict[str, Any]], str]) -> None:
    """Deliver each record everywhere asked, then advance the cursor past it (past
    what --exec has finished, when it runs behind)."""
    passed = 0
    moved = [0]

    def move() -> None:
        mark = runner.handled_through(passed) if runner is not None else passed
        if mark > moved[0]:
            cursor.set(mark)
            moved[0] = mark

    advance = move
    if runner is not None:
        def advance() -> None:
            with runner.cursor_lock:
                move()

        runner.on_done = advance
    for record in records:
        line = to_json(record)
        if output is not None:
            output.write(line)
        show(record)
        if "seq" not in record:  # a chat state: shown, never stored, no cursor to move
            continue
        if runner is not None:
            runner.submit(line, record["seq"])
        passed = record["seq"]
        advance()
