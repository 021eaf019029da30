"""Noticing that the agent was asleep: a suspended laptop, or a stopped process.

The event loop keeps time with CLOCK_MONOTONIC, which stands still while the machine
is suspended; CLOCK_BOOTTIME does not. A tick every TICK seconds that finds BOOTTIME
advanced by much more than TICK means the agent missed that much of the link's life
(a suspend, or SIGSTOP: the same for us). Meanwhile every record it had may have
expired, and another host may have taken its name, so the caller re-probes,
re-announces and re-checks its peers (RFC 6762 §8: "wakes up from sleep").

`asleep()` answers at once, before the tick that would report the wake has run: on
resume the event loop first handles the packets queued during the sleep, and a
conflict among them must not be fought as if we had been on the link all along.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

TICK = 1.0  # seconds between clock readings
GAP = 3.0  # seconds beyond the tick that count as a sleep
GRACE = 5.0  # seconds after a wake during which `asleep()` still says so

_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def boottime() -> float:
    return time.clock_gettime(_CLOCK)


class WakeClock:
    """Calls `on_wake(seconds asleep)` after the process missed more than GAP s."""

    def __init__(self, on_wake: Callable[[float], None]) -> None:
        self.on_wake = on_wake
        self._last = boottime()
        self._woke = -GRACE
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._last = boottime()
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def asleep(self) -> bool:
        """Whether the clock shows a sleep that no tick has reported yet, or one
        reported less than GRACE seconds ago (its consequences still arriving)."""
        now = boottime()
        return now - self._last > TICK + GAP or now - self._woke < GRACE

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = boottime()
            missed = now - self._last - TICK
            self._last = now
            if missed > GAP:
                self._woke = now
                self.on_wake(missed)
