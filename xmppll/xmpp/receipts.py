"""XEP-0184 message receipts: the handler that completes our sends when a receipt
comes back (on any connection), and the answer we give once a message is stored."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from xmppll.xmpp import stanza as st
from xmppll.xmpp.dispatch import Dispatcher

if TYPE_CHECKING:
    from xmppll.xmpp.connection import Connection


class Receipts:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.me = dispatcher.me
        self.waiting: dict[str, asyncio.Future] = {}
        dispatcher.on_message(st.RECEIPTS_NS, self._received)
        dispatcher.after_store(st.RECEIPTS_NS, self._answer)

    def expect(self, msg_id: str) -> asyncio.Future:
        """A future that completes when the receipt for `msg_id` arrives."""
        future = self.waiting.get(msg_id)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            self.waiting[msg_id] = future
        return future

    def forget(self, msg_id: str) -> None:
        self.waiting.pop(msg_id, None)

    def _received(self, conn: Connection, element: ET.Element) -> bool:
        """A bare receipt completes that send and is not stored as if someone had
        written to us; one riding on a message with a body is stored too."""
        ack = st.receipt_ack_id(element)
        if ack is None:
            return False
        future = self.waiting.get(ack)
        if future is not None and not future.done():
            future.set_result(None)
        return st.to_json(element, "")["body"] is None

    def _answer(self, conn: Connection, element: ET.Element) -> ET.Element | None:
        receipt_id = st.receipt_request_id(element)
        if not receipt_id or not element.get("from"):
            return None
        return st.build_receipt(element.get("from") or "", self.me(), receipt_id)
