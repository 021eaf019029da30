"""One conversation: what was said with one peer (both sides), and what happens with
that peer now (its messages, typing, presence), through the agent. No terminal code:
`xmppll chat` (cli/chat.py) draws this; a test or another front end can drive it.

History: received messages come from the inbox (history.last_with), sent ones from
the agent's sent log (sentlog.py), merged by time. Live: the agent's `conversation`
op streams every record concerning the peer, normalized here into events:

    {"kind": "message", "direction": "in"|"out", "body", "time", ...}
    {"kind": "chatstate", "state": "composing"|"paused"|"active"|"inactive"|"gone"}
    {"kind": "presence", "online": bool, "status", "msg", ...}
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from xmppll import identity
from xmppll.agent import control, history, segments, sentlog
from xmppll.defaults import FILE_TIMEOUT
from xmppll.errors import UnavailableError, XmpplError

Event = dict[str, Any]
PAUSED_AFTER = 5.0  # s without a key press before "composing" becomes "paused"
SEND_TIMEOUT = 10.0


def concerns(record: dict[str, Any], peer: str) -> bool:
    """Whether a record the agent handles belongs to the conversation with `peer`:
    a stanza or chat state from it, a message we sent it, an event about it."""
    lower = peer.lower()
    if record.get("direction") == "out":
        return str(record.get("to", "")).lower() == lower
    if "event" in record:
        return str(record.get("name", "")).lower() == lower
    return lower in {n.lower() for n in segments.peer_names(record)}


def _entry(record: dict[str, Any]) -> Event | None:
    """A message record (stored, or from the sent log) as a conversation event."""
    if record.get("kind") != "message" or record.get("body") is None:
        return None
    if record.get("direction") == "out":
        return {"kind": "message", "direction": "out", "body": record["body"],
                "time": record.get("sent"), "id": record.get("id")}
    return {"kind": "message", "direction": "in", "body": record["body"],
            "time": record.get("received"), "id": record.get("id"),
            "from": record.get("from"), "verified": record.get("verified")}


def past(state: Path, peer: str, n: int) -> list[Event]:
    """The last `n` messages exchanged with `peer`, both sides, oldest first."""
    received = [e for e in map(_entry, history.last_with(state, peer, n)) if e]
    sent = [e for e in map(_entry, sentlog.last_to(state, peer, n)) if e]
    merged = sorted(received + sent, key=lambda e: e.get("time") or "")
    return merged[-n:] if n > 0 else []


def event_of(record: dict[str, Any]) -> Event | None:
    """A streamed record as a conversation event (None: nothing to show)."""
    if "event" in record:
        online = record["event"] != "removed"
        return {"kind": "presence", "online": online,
                **{k: record.get(k) for k in ("name", "status", "msg", "nick", "avatar")}}
    if record.get("kind") == "chatstate":
        return {"kind": "chatstate", "state": record.get("state")}
    return _entry(record)


class Conversation:
    """The conversation of the agent `agent` with `peer`, over the control socket.

    `say` and `typing` return at once: requests go out in order on one worker thread
    (a message, then the notices after it), so a slow peer never blocks typing."""

    def __init__(self, agent: str, peer: str) -> None:
        self.agent = agent
        self.peer = peer
        self.state = identity.state_dir(agent)
        self.presence: Event | None = None
        self.typing_notices = True  # off once the peer turns out not to read them
        self._sent_state: str | None = None
        self._last_key = 0.0
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="xmppll-chat")
        self._lock = threading.Lock()
        self.errors: list[str] = []

    def history(self, n: int = 20) -> list[Event]:
        return past(self.state, self.peer, n)

    def events(self) -> Iterator[Event]:
        """Live events until the agent goes away."""
        for record in control.stream(self.agent, "conversation", peer=self.peer):
            event = event_of(record)
            if event is not None:
                if event["kind"] == "presence":
                    self.presence = event
                yield event

    def presence_now(self) -> Event:
        """The peer's presence from the agent's cache (online False when absent)."""
        reply = control.request(self.agent, "peers")
        for peer in reply["peers"]:
            if peer["name"].lower() == self.peer.lower():
                self.presence = {"kind": "presence", "online": True,
                                 **{k: peer.get(k) for k in ("name", "status", "msg",
                                                            "nick", "avatar")}}
                return self.presence
        self.presence = {"kind": "presence", "online": False, "name": self.peer}
        return self.presence

    # -- what we say
    def say(self, text: str) -> None:
        """Send one message (it carries `active` to a peer that reads chat states);
        a failure is reported in `errors`, and as an event by the caller."""
        with self._lock:
            self._sent_state = "active"
        self._worker.submit(self._send, {"to": self.peer, "body": text,
                                         "chatstate": "active"})

    def key_pressed(self) -> None:
        """Typing: `composing` once, `paused` after PAUSED_AFTER s of quiet."""
        self._last_key = time.monotonic()
        self._state("composing")

    def tick(self) -> None:
        """Call now and then (the UI does it every second)."""
        if self._sent_state == "composing" and \
                time.monotonic() - self._last_key >= PAUSED_AFTER:
            self._state("paused")

    def input_cleared(self) -> None:
        """The line was emptied without sending it."""
        if self._sent_state == "composing":
            self._state("active")

    def leave(self) -> None:
        """`gone`, then wait for what is queued (a few seconds at most)."""
        if self._sent_state is not None:
            self._state("gone")
        self._worker.shutdown(wait=True, cancel_futures=False)

    def _state(self, state: str) -> None:
        with self._lock:
            if not self.typing_notices or self._sent_state == state:
                return
            self._sent_state = state
        self._worker.submit(self._send, {"to": self.peer, "chatstate": state})

    def _send(self, message: dict[str, Any]) -> None:
        notice = message.get("body") is None
        try:
            control.request(self.agent, "send", message=message,
                            timeout=SEND_TIMEOUT + 5, send_timeout=SEND_TIMEOUT)
        except XmpplError as exc:
            if not notice:
                self.errors.append(str(exc))
            elif exc.exit_code == UnavailableError.exit_code:
                # The peer reads no chat states (libpurple, salut): never again.
                self.typing_notices = False

    def send_file(self, path: str) -> str:
        """`/file PATH`: offered through the agent like `send --file`; returns the line
        the conversation shows once the peer has every byte (or why not)."""
        from xmppll.agent import client

        try:
            results = client.send_files([str(Path(path).expanduser())], [None],
                                        agent=self.agent, me=self.agent, to=self.peer,
                                        everyone=False, timeout=FILE_TIMEOUT, wait=0.0,
                                        method="auto", interfaces=None)
        except XmpplError as exc:
            return f"file not sent: {exc}"
        size = results[0].get("size") if results else None
        return f"sent {path}" + (f" ({size} bytes)" if size is not None else "")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._worker.shutdown(wait=False, cancel_futures=True)
