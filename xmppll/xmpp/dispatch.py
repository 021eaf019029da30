"""Where each stanza read on any connection goes.

Features register handlers here instead of being threaded through the stream code:
message handlers by the namespace of a child element (receipts, chat states, ...),
IQ request handlers by the namespace of the query, and `after_store` hooks that
answer a stored stanza (a receipt is sent only once the message is on disk). IQs we
send wait here for their result or error, with a timeout: libpurple never answers.

Whatever no handler consumes is stored, so nothing received is ever dropped.
"""

from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from xmppll import timestamps
from xmppll.errors import TimeoutFailure
from xmppll.xmpp import stanza as st
from xmppll.xmpp.stream import serialize, split_tag

if TYPE_CHECKING:
    from xmppll.xmpp.connection import Connection

log = logging.getLogger("xmppll")

# (connection, message) -> True when the handler consumed it (it is not stored)
MessageHandler = Callable[["Connection", ET.Element], bool]
# (connection, IQ get/set) -> the reply to send, or None when the handler answers it
# later itself (a file offer waits for `xmppll accept`; an OOB result follows the GET)
IqHandler = Callable[["Connection", ET.Element], Awaitable[ET.Element | None]]
# (connection, stored stanza) -> an answer to send once it is on disk, or None; asked
# only for stanzas with a child in the namespace it was registered for
AfterStore = Callable[["Connection", ET.Element], ET.Element | None]


class Store(Protocol):
    """Where stanzas that no handler consumed go: the agent's inbox. `submit` returns
    a future that resolves once the record is durable; `key` identifies a message
    (sender, id) so that a repeat is stored once and still answered."""

    def submit(self, record: dict[str, Any],
               key: tuple[str, str] | None) -> asyncio.Future: ...

    def unstored(self) -> int: ...


class Dispatcher:
    def __init__(self, store: Store, me: Callable[[], str]) -> None:
        self.store = store
        self.me = me
        self._message: dict[str, MessageHandler] = {}
        self._iq: dict[tuple[str, str], IqHandler] = {}
        self._after: dict[str, AfterStore] = {}
        self._waiting: dict[str, asyncio.Future] = {}

    def on_message(self, namespace: str, handler: MessageHandler) -> None:
        self._message[namespace] = handler

    def on_iq(self, type_: str, namespace: str, handler: IqHandler) -> None:
        self._iq[(type_, namespace)] = handler

    def iq_handler(self, type_: str, namespace: str) -> IqHandler | None:
        return self._iq.get((type_, namespace))

    def after_store(self, namespace: str, hook: AfterStore) -> None:
        self._after[namespace] = hook

    def unstored(self) -> int:
        return self.store.unstored()

    async def dispatch(self, conn: Connection, element: ET.Element,
                       xml: str) -> asyncio.Future | None:
        """Hand one stanza on; returns the future of its storing, if it is stored."""
        kind = split_tag(element.tag)[1]
        # The namespaces of its children, once: handlers and hooks are chosen by them.
        namespaces = {split_tag(child.tag)[0] or "" for child in element}
        if kind == "message" and self._consumed(conn, element, namespaces):
            return None
        if kind == "iq":
            answered = await self._iq_stanza(conn, element)
            if answered:
                return None
        key = _key(conn, element) if kind == "message" else None
        stored = self.store.submit(self._record(conn, element, xml), key)
        for namespace in namespaces & self._after.keys():
            answer = self._after[namespace](conn, element)
            if answer is not None:
                conn.write_when(stored, serialize(answer).encode())
        if kind == "iq" and st.is_iq_request(element):
            # Nobody here handles it: service-unavailable, so the requester need not
            # wait for its timeout (RFC 6120 §8.4); sent once it is stored.
            conn.write_when(stored, serialize(st.iq_error(element, from_=self.me())).encode())
        return stored

    def _consumed(self, conn: Connection, element: ET.Element, namespaces: set[str]) -> bool:
        consumed = False
        for namespace in namespaces & self._message.keys():
            if self._message[namespace](conn, element):
                consumed = True
        return consumed

    async def _iq_stanza(self, conn: Connection, element: ET.Element) -> bool:
        """True when the IQ was taken care of here (a known request, or the answer to
        one of ours)."""
        type_ = element.get("type")
        if type_ in ("result", "error"):
            waiter = self._waiting.pop(element.get("id") or "", None)
            if waiter is not None and not waiter.done():
                waiter.set_result(element)
                return True
            return False
        query_ns = split_tag(element[0].tag)[0] if len(element) else None
        handler = self._iq.get((type_ or "", query_ns or ""))
        if handler is None:
            return False
        reply = await handler(conn, element)
        if reply is not None:
            await conn.send([reply])
        return True

    async def request(self, conn: Connection, iq: ET.Element, timeout: float) -> ET.Element:
        """Send an IQ get/set and wait for its result or error; TimeoutFailure when
        none comes (libpurple never answers an IQ it does not know)."""
        iq_id = iq.get("id") or st.new_id()
        iq.set("id", iq_id)
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[iq_id] = waiter
        ended = asyncio.ensure_future(conn.done.wait())
        try:
            await conn.send([iq])
            done, _ = await asyncio.wait({waiter, ended}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if waiter in done:
                return waiter.result()
            conn.raise_if_failed()
            raise TimeoutFailure(f"{conn.peer} did not answer our query within {timeout:g} s")
        finally:
            ended.cancel()
            self._waiting.pop(iq_id, None)

    def record(self, conn: Connection, element: ET.Element, xml: str) -> dict[str, Any]:
        """The Stanza record of `element` as it would be stored (handlers that consume
        a stanza make their own record kinds from it)."""
        return self._record(conn, element, xml)

    def _record(self, conn: Connection, element: ET.Element, xml: str) -> dict[str, Any]:
        record = st.to_json(element, xml)
        peer: dict[str, Any] = {"address": conn.remote.address, "port": conn.remote.port,
                                "name": conn.peer}
        if conn.remote.scope:
            peer["scope"] = conn.remote.scope
        record["peer"] = peer
        record["verified"] = conn.verified
        record["secure"] = "tls" if conn.secure else None
        record["received"] = timestamps.now()
        return record


def _key(conn: Connection, element: ET.Element) -> tuple[str, str] | None:
    """What makes a message (and only a message) the same message when a sender
    retries it: who sent it and its id."""
    sender = conn.peer or element.get("from")
    msg_id = element.get("id")
    if not sender or not msg_id:
        return None
    return sender.lower(), msg_id

