"""XMPPLL_TRACEMALLOC=FILE: the agent traces its allocations, and each SIGUSR2 appends
to FILE what grew since the previous one (top 25 by size, 8 frames each): how the soak
(bench/soak.py, issue 14) finds where memory goes."""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable

TOP = 25


def start(path: str) -> Callable[[], None]:
    tracemalloc.start(8)
    last: list[tracemalloc.Snapshot] = []

    def dump() -> None:
        gc.collect()
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)])
        with open(path, "a", encoding="utf-8") as out:
            out.write(f"=== {time.strftime('%H:%M:%S')} traced "
                      f"{tracemalloc.get_traced_memory()[0] / 1e6:.2f} MB\n")
            if last:
                for stat in snap.compare_to(last[0], "traceback")[:TOP]:
                    out.write(f"{stat}\n")
                    for line in stat.traceback.format()[-8:]:
                        out.write(f"    {line}\n")
        last[:] = [snap]

    return dump
