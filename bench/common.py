"""What the benchmarks in this folder share: timestamped output lines, polling, and the
plain-text table. Imported by the bench scripts (their folder is on sys.path when they
run); tests/ is put on sys.path here, for tests/lan.py.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

import lan  # noqa: E402


class StampedLines:
    """Lines of a stream with the monotonic time each was read."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._eof = False
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            stamp = time.monotonic()
            with self._cond:
                self.lines.append((stamp, line.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def find(self, test: Callable[[str], bool], timeout: float, start: int = 0
             ) -> tuple[float, str, int]:
        """(stamp, line, index) of the first line from `start` on that passes `test`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self.lines):
                    stamp, line = self.lines[i]
                    if test(line):
                        return stamp, line, i
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    tail = [line for _, line in self.lines[-5:]]
                    raise TimeoutError(f"no matching line in {timeout} s; last: {tail}")
                self._cond.wait(left)

    def find_json(self, test: Callable[[dict[str, Any]], bool], timeout: float,
                  start: int = 0) -> tuple[float, dict[str, Any], int]:
        """Like `find`, for lines that are JSON, returned read."""
        stamp, line, i = self.find(json_test(test), timeout, start)
        return stamp, json.loads(line), i


def json_test(test: Callable[[dict[str, Any]], bool]) -> Callable[[str], bool]:
    """`test` on a line read as JSON; false for a line that is not JSON or lacks a key."""
    def ok(line: str) -> bool:
        try:
            return bool(test(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            return False

    return ok


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """What `check()` returns once it is true, polled every 0.2 s; RuntimeError after
    `timeout` s."""
    return lan.wait_until(check, timeout, what, interval=0.2, error=RuntimeError)


def cpu_ticks(pid: int) -> int:
    """utime + stime of `pid`, in clock ticks (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wait_idle(pid: int, still: float = 0.3, timeout: float = 10.0) -> None:
    """Until `pid` has used no CPU for `still` seconds: an agent done starting, in the
    state of one that has been running a while (RuntimeError after `timeout`)."""
    deadline = time.monotonic() + timeout
    last, since = cpu_ticks(pid), time.monotonic()
    while time.monotonic() - since < still:
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} still busy after {timeout} s")
        time.sleep(0.05)
        now = cpu_ticks(pid)
        if now != last:
            last, since = now, time.monotonic()


def print_table(header: Sequence[str], rows: Sequence[Any]) -> None:
    """`header` and each row's `cells()` as aligned columns, a rule under the header."""
    table = [list(header), *(r.cells() for r in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for n, r in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
