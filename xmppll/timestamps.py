"""The one time format of every record xmppll writes: UTC to the millisecond, with Z.

`datetime.isoformat` costs about a microsecond, and a flood stores thousands of stanzas
in the same millisecond, so the text is made once per millisecond.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

_last: tuple[int, str] = (-1, "")


def now() -> str:
    global _last
    ms = time.time_ns() // 1_000_000
    if ms != _last[0]:
        seconds, millis = divmod(ms, 1000)
        moment = datetime.fromtimestamp(seconds, UTC).replace(microsecond=millis * 1000)
        _last = (ms, moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
    return _last[1]
