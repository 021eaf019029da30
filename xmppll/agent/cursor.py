"""A listener's place in the inbox. Apart from the inbox itself, which needs asyncio:
`listen` through a running agent reads and moves the cursor without loading it."""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path


class Cursor:
    """The seq of the last stanza a listener printed, so `listen --backlog` after a
    crash starts right after it: nothing lost, nothing printed twice."""

    WIDTH = 20

    def __init__(self, state: str | Path) -> None:
        os.makedirs(state, exist_ok=True)
        self.path = os.path.join(state, "cursor")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def get(self) -> int:
        raw = os.pread(self._fd, self.WIDTH, 0).strip()
        return int(raw) if raw.isdigit() else 0

    def set(self, seq: int) -> None:
        os.pwrite(self._fd, str(seq).rjust(self.WIDTH).encode(), 0)

    def close(self) -> None:
        os.close(self._fd)
