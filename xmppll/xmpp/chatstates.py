"""Typing notices: XEP-0085 chat states, and the older jabber:x:event form (XEP-0022)
that the iChat family sends and reads.

Received: a message that carries a state and no text is a notice, not a message: it
is consumed here (never stored in the inbox) and handed to `on_state` as a record of
its own kind, `{"kind": "chatstate", "state": "composing", "from": ...}`. A message
with text is stored as usual, whatever state rides with it.

Sent: only to peers known to read them. libpurple's Bonjour code drops typing
notices and never sends one (it asks for jabber:x:event in every message, and throws
away what answers it); telepathy-salut 0.8.1 drops a message that holds only a state
(faces-facts.md). So a notice goes out alone only to a peer whose disco#info lists
XEP-0085, or, in the x:event form, to a peer that asked for composing events and is
not libpurple. `Delivery.send` enforces it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from xmppll.xmpp import stanza as st
from xmppll.xmpp.dispatch import Dispatcher
from xmppll.xmpp.stream import serialize, split_tag

if TYPE_CHECKING:
    from xmppll.xmpp.connection import Connection

CHATSTATES_NS = "http://jabber.org/protocol/chatstates"
EVENT_NS = "jabber:x:event"
STATES = ("active", "composing", "paused", "inactive", "gone")
LIBPURPLE_NODE = "libpurple"

OnState = Callable[[dict[str, Any]], None]


def check_state(word: str) -> str:
    from xmppll.errors import UsageError

    state = word.strip().lower()
    if state not in STATES:
        raise UsageError(f"invalid chat state {word!r}: use one of {', '.join(STATES)}")
    return state


def state_of(element: ET.Element) -> str | None:
    """The XEP-0085 state a message carries, else the x:event notice's (composing, or
    paused for "stopped"), else None. An x:event without `<id/>` is a request for
    events, not a notice."""
    for child in element:
        ns, local = split_tag(child.tag)
        if ns == CHATSTATES_NS and local in STATES:
            return local
    event = element.find(f"{{{EVENT_NS}}}x")
    if event is not None and event.find(f"{{{EVENT_NS}}}id") is not None:
        return "composing" if event.find(f"{{{EVENT_NS}}}composing") is not None else "paused"
    return None


def has_text(element: ET.Element) -> bool:
    """A body with something in it: iChat's notices carry an empty one."""
    body = element.find(f"{{{split_tag(element.tag)[0]}}}body") \
        if split_tag(element.tag)[0] else element.find("body")
    return body is not None and bool((body.text or "").strip())


def asks_for_events(element: ET.Element) -> bool:
    """A message with text asking to be told when we type (jabber:x:event request)."""
    event = element.find(f"{{{EVENT_NS}}}x")
    return (event is not None and event.find(f"{{{EVENT_NS}}}composing") is not None
            and event.find(f"{{{EVENT_NS}}}id") is None)


def add_state(message: ET.Element, state: str) -> ET.Element:
    """`<state xmlns=chatstates/>` on a message (with text: to XEP-0085 peers only)."""
    ET.SubElement(message, f"{{{CHATSTATES_NS}}}{state}")
    return message


def notice(to: str, from_: str, state: str, *, form: str = "xep-0085",
           ref: str | None = None) -> ET.Element:
    """A notice without text. `form` "x-event": iChat's shape, an empty body with
    `<x xmlns='jabber:x:event'><composing/><id/></x>` (`<id/>` alone: stopped)."""
    message = ET.Element(f"{{{st.CLIENT_NS}}}message",
                         {"from": from_, "to": to, "type": "chat", "id": st.new_id()})
    if form == "x-event":
        ET.SubElement(message, f"{{{st.CLIENT_NS}}}body")
        event = ET.SubElement(message, f"{{{EVENT_NS}}}x")
        if state == "composing":
            ET.SubElement(event, f"{{{EVENT_NS}}}composing")
        ET.SubElement(event, f"{{{EVENT_NS}}}id").text = ref or None
        return message
    return add_state(message, state)


class ChatStates:
    """The dispatcher handler for both forms; remembers who asked for x:event."""

    def __init__(self, dispatcher: Dispatcher, on_state: OnState) -> None:
        self.dispatcher = dispatcher
        self.on_state = on_state
        self.asked: dict[str, str] = {}  # peer (lower) -> id of its last message asking
        self._last: tuple[ET.Element, bool] | None = None
        dispatcher.on_message(CHATSTATES_NS, self._message)
        dispatcher.on_message(EVENT_NS, self._message)

    def _message(self, conn: Connection, element: ET.Element) -> bool:
        # Called once per child namespace: a message with both forms is one notice.
        # (The element itself is kept, not its id(), which a later one may reuse.)
        if self._last is not None and self._last[0] is element:
            return self._last[1]
        consumed = self._handle(conn, element)
        self._last = (element, consumed)
        return consumed

    def _handle(self, conn: Connection, element: ET.Element) -> bool:
        sender = conn.peer or element.get("from") or ""
        if has_text(element):
            if asks_for_events(element) and element.get("id"):
                self.asked[sender.lower()] = element.get("id") or ""
            return False
        state = state_of(element)
        if state is None:
            return False
        record = self.dispatcher.record(conn, element, serialize(element))
        self.on_state({"kind": "chatstate", "state": state,
                       **{k: record.get(k) for k in ("from", "to", "id", "peer",
                                                     "verified", "received")}})
        return True

    def wants_events(self, peer: str, caps: dict[str, Any] | None) -> str | None:
        """The id to refer to when `peer` takes x:event notices, else None (libpurple
        asks for them but drops every one)."""
        if (caps or {}).get("node") == LIBPURPLE_NODE:
            return None
        return self.asked.get(peer.lower())
