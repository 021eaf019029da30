"""The inbox as the stream code's Store: each received stanza once.

A sender whose stream broke after it wrote a message but before our receipt reached
it sends the message again, with the same id. The (sender, id) of the last WINDOW
messages, of the last WINDOW_AGE seconds at most, is kept here and rebuilt from the
inbox's tail at start, so a repeat is answered (its receipt goes out once the first
copy is on disk) but stored only once, across restarts too. The inbox is the only
truth: nothing else is written.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from typing import Any

from xmppll.agent.inbox import Inbox, read_after

WINDOW = 10000  # messages remembered; a retry comes seconds, not days, after the first
# ...and for this long at most: a sender retries within its --timeout (10 s by default).
# Without it the window of a steadily busy agent filled for WINDOW messages (17 min at
# 10/s, ~2 MB) and read as growth in the soak; with it it is flat after 5 minutes.
WINDOW_AGE = 300.0


def message_key(record: dict[str, Any]) -> tuple[str, str] | None:
    sender = (record.get("peer") or {}).get("name") or record.get("from")
    if record.get("kind") != "message" or not sender or not record.get("id"):
        return None
    return sender.lower(), record["id"]


class InboxStore:
    def __init__(self, inbox: Inbox, window: int = WINDOW, age: float = WINDOW_AGE,
                 clock: Any = time.monotonic) -> None:
        self.inbox = inbox
        self.window = window
        self.age, self.clock = age, clock
        self.recent: OrderedDict[tuple[str, str], asyncio.Future | None] = OrderedDict()
        self._since: dict[tuple[str, str], float] = {}  # when each was remembered
        self.repeats = 0
        self._unsettled: deque[tuple[tuple[str, str], asyncio.Future]] = deque()
        for record in read_after(inbox.path.parent, max(0, inbox.seq - window)):
            key = message_key(record)
            if key is not None:
                self._remember(key, None)

    def _remember(self, key: tuple[str, str], stored: asyncio.Future | None) -> None:
        now = self.clock()
        self.recent[key] = stored
        self.recent.move_to_end(key)
        self._since[key] = now
        recent, since = self.recent, self._since
        while recent and (len(recent) > self.window
                          or since[next(iter(recent))] < now - self.age):
            old, _ = recent.popitem(last=False)
            del since[old]

    def submit(self, record: dict[str, Any], key: tuple[str, str] | None) -> asyncio.Future:
        self._settle()
        if key is not None and key in self.recent:
            self.repeats += 1
            first = self.recent[key]
            if first is not None and not (first.done() and first.exception() is not None):
                return first
            if first is None:
                done = asyncio.get_running_loop().create_future()
                done.set_result(None)
                return done
        stored = self.inbox.submit(record)
        if key is not None:
            self._remember(key, stored)
            self._unsettled.append((key, stored))
        return stored

    def _settle(self) -> None:
        """Once on disk a future is not needed (it holds its record); one that failed
        is forgotten, so the sender's retry is stored. Futures finish in the order
        they were submitted, so the done ones are at the front: swept here, at the next
        submit, rather than by a callback for each message (a flood's hot path)."""
        unsettled, recent = self._unsettled, self.recent
        while unsettled and unsettled[0][1].done():
            key, stored = unsettled.popleft()
            if recent.get(key) is not stored:
                continue
            if stored.cancelled() or stored.exception() is not None:
                del recent[key]
                del self._since[key]
            else:
                recent[key] = None

    def unstored(self) -> int:
        return self.inbox.unstored
