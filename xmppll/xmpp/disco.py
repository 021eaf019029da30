"""XEP-0030 service discovery: we answer disco#info with the identity and features
our caps (XEP-0115) advertise, and ask peers theirs, remembering the answer per caps
`ver` so that a peer is asked once, not once per message."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

from xmppll.errors import XmpplError
from xmppll.xmpp import stanza as st
from xmppll.xmpp.caps import CAPS_NODE, FEATURES, caps_ver
from xmppll.xmpp.dispatch import Dispatcher

if TYPE_CHECKING:
    from xmppll.xmpp.connection import Connection

QUERY_TIMEOUT = 2.0
# What every xmppll that publishes our caps node has had.
BASE_FEATURES = frozenset({"http://jabber.org/protocol/caps",
                           "http://jabber.org/protocol/disco#info", st.RECEIPTS_NS})


class Disco:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.known: dict[str, frozenset[str]] = {}  # caps ver -> features
        dispatcher.on_iq("get", st.DISCO_INFO_NS, self._info)

    async def _info(self, conn: Connection, element: ET.Element) -> ET.Element:
        return st.disco_info_result(element, from_=self.dispatcher.me())

    def cached(self, caps: dict[str, Any] | None) -> frozenset[str] | None:
        """What a peer's caps say it supports, without asking: ours are known, a
        hashed `ver` once someone with it answered; None when unknown."""
        if not caps:
            return None
        known = self.known.get(caps.get("ver") or "")
        if caps.get("node") == CAPS_NODE and known is None:
            # Another version of xmppll may lack a feature added since: all have
            # receipts, the rest is asked (see `Delivery.send` for chat states).
            return frozenset(FEATURES) if caps.get("ver") == caps_ver() else BASE_FEATURES
        return known

    async def features(self, conn: Connection, caps: dict[str, Any] | None
                       ) -> frozenset[str]:
        """The peer's features, asked over `conn` when its caps carry a hash (real
        XEP-0115); a peer without one (libpurple's `ver` is a version string and it
        never answers IQs) gets the empty set rather than a timeout."""
        known = self.cached(caps)
        if known is not None:
            return known
        if not caps or not caps.get("hash") or not caps.get("ver"):
            return frozenset()
        try:
            return await self.ask(conn, caps, QUERY_TIMEOUT)
        except XmpplError:
            return frozenset()

    async def ask(self, conn: Connection, caps: dict[str, Any] | None,
                  timeout: float) -> frozenset[str]:
        """Ask the peer's disco#info over `conn` and wait for the answer (an error
        answer too: either says the peer has read everything sent before it)."""
        caps = caps or {}
        attrs = {"node": f"{caps['node']}#{caps['ver']}"} if caps.get("node") and \
            caps.get("ver") else {}
        iq = ET.Element("{jabber:client}iq", {"type": "get", "to": conn.peer or "",
                                                "from": self.dispatcher.me()})
        ET.SubElement(iq, f"{{{st.DISCO_INFO_NS}}}query", attrs)
        reply = await self.dispatcher.request(conn, iq, timeout)
        found = frozenset(
            f.get("var", "") for f in reply.iter(f"{{{st.DISCO_INFO_NS}}}feature"))
        if reply.get("type") == "result" and caps.get("ver"):
            self.known[caps["ver"]] = found
        return found
