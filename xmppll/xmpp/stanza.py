"""Stanzas as xmppll builds, answers and prints them: messages, receipts (XEP-0184),
IQ replies and disco#info (XEP-0030), and the JSON record every command shares.

Messages follow what every link-local peer reads: `type='chat'`, a plain `<body>` and
an `id`, and never an `<id/>` inside jabber:x:event, which makes libpurple drop the
whole message as a typing notification.
"""

from __future__ import annotations

import functools
import secrets
import xml.etree.ElementTree as ET
from typing import Any

from xmppll.errors import DataError
from xmppll.xmpp.caps import CAPS_NODE, FEATURES, IDENTITY, caps_ver
from xmppll.xmpp.stream import CLIENT_NS, split_tag

RECEIPTS_NS = "urn:xmpp:receipts"
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"
DISCO_INFO_NS = "http://jabber.org/protocol/disco#info"
MESSAGE_TYPES = ("chat", "normal", "headline", "groupchat", "error")


def _client(local: str) -> str:
    return f"{{{CLIENT_NS}}}{local}"


def new_id() -> str:
    """A stanza id: unique enough to match a receipt or an IQ reply to its request."""
    return secrets.token_hex(5)


def _stanza(local: str, attrs: dict[str, str | None]) -> ET.Element:
    """A jabber:client stanza; attributes left None are omitted, in the order given."""
    return ET.Element(_client(local), {k: v for k, v in attrs.items() if v is not None})


_TEXT_FIELDS = ("body", "subject", "thread")


@functools.lru_cache(maxsize=16)  # bounded: the namespace is the peer's to choose
def _text_fields(ns: str | None) -> dict[str, str]:
    """`{ns}body` -> "body", ...: the children whose text the record carries, in the
    stanza's own namespace, so a stream that forgot xmlns='jabber:client' still reads;
    a nested `<html><body>` never matches."""
    return {(f"{{{ns}}}{local}" if ns else local): local for local in _TEXT_FIELDS}


def to_json(element: ET.Element, xml_text: str) -> dict[str, Any]:
    """The shared Stanza record (DESIGN.md) without the network fields (`peer`,
    `verified`, `received`), which only the receiving session knows. One pass over
    the children (the first of each kind counts, as with find): every stored stanza
    comes through here."""
    ns, kind = split_tag(element.tag)
    get = element.get
    record: dict[str, Any] = {"kind": kind, "from": get("from"), "to": get("to"),
                              "type": get("type"), "id": get("id"),
                              "body": None, "subject": None, "thread": None}
    fields = _text_fields(ns)
    for child in element:
        local = fields.get(child.tag)
        if local is not None and record[local] is None:
            record[local] = child.text or ""
    if kind == "iq":
        record["query"] = split_tag(element[0].tag)[0] if len(element) else None
    record["xml"] = xml_text
    return record


def build_message(
    *,
    to: str,
    from_: str,
    body: str,
    type_: str = "chat",
    id_: str | None = None,
    subject: str | None = None,
    thread: str | None = None,
    receipt: bool = False,
) -> ET.Element:
    """A message every link-local client displays. Characters XML cannot carry are
    refused later, by `stream.serialize`, the one place all outgoing text passes."""
    message = _stanza("message", {"from": from_, "to": to, "type": type_, "id": id_ or new_id()})
    for local, text in (("body", body), ("subject", subject), ("thread", thread)):
        if text is not None:
            ET.SubElement(message, _client(local)).text = text
    if receipt:
        ET.SubElement(message, f"{{{RECEIPTS_NS}}}request")
    return message


def message_from_json(record: dict[str, Any], *, from_: str, receipt: bool = False) -> ET.Element:
    """A message from one `send --json` line, such as a `listen` line passed through jq.
    Its `from` is ignored: a stanza whose `from` is not the name published for our
    address is misattributed by libpurple, and can crash it (real-peers.md)."""
    if not isinstance(record, dict):
        raise DataError("JSON record must be an object")
    if record.get("kind", "message") != "message":
        raise DataError(f"JSON record has kind {record['kind']!r}: only messages can be sent")
    type_ = record.get("type") or "chat"
    if type_ not in MESSAGE_TYPES:
        raise DataError(
            f"JSON record: 'type' must be one of {', '.join(MESSAGE_TYPES)}, not {type_!r}"
        )
    return build_message(
        to=_required(record, "to"),
        from_=from_,
        body=_required(record, "body"),
        type_=type_,
        id_=_optional(record, "id"),
        subject=_optional(record, "subject"),
        thread=_optional(record, "thread"),
        receipt=receipt,
    )


def _required(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise DataError(f"JSON record: {key!r} is required and must be a string")
    return value


def _optional(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise DataError(f"JSON record: {key!r} must be a string or null")
    return value


def receipt_request_id(element: ET.Element) -> str | None:
    """The id to acknowledge, if this message asks for a receipt. XEP-0184 forbids
    receipts for error messages (they could loop) and needs the id to echo."""
    if split_tag(element.tag)[1] != "message" or element.get("type") == "error":
        return None
    if element.find(f"{{{RECEIPTS_NS}}}request") is None:
        return None
    return element.get("id")


def build_receipt(to: str, from_: str, id_: str) -> ET.Element:
    """The XEP-0184 receipt for message `id_`; it carries an id of its own, like any
    stanza we send."""
    message = _stanza("message", {"from": from_, "to": to, "id": new_id()})
    ET.SubElement(message, f"{{{RECEIPTS_NS}}}received", {"id": id_})
    return message


def receipt_ack_id(element: ET.Element) -> str | None:
    """The id of the message that this stanza confirms, if it is a receipt."""
    received = element.find(f"{{{RECEIPTS_NS}}}received")
    return None if received is None else received.get("id")


def is_iq_request(element: ET.Element) -> bool:
    """A get or set, which RFC 6120 obliges us to answer; results and errors are not."""
    return split_tag(element.tag)[1] == "iq" and element.get("type") in ("get", "set")


def _iq_response(request: ET.Element, from_: str, type_: str) -> ET.Element:
    attrs = {"from": from_, "to": request.get("from"), "type": type_, "id": request.get("id")}
    return _stanza("iq", attrs)


def iq_reply(element: ET.Element, *, from_: str, payload: ET.Element | None = None) -> ET.Element:
    """The result for an IQ request, addressed back to its sender with the same id."""
    reply = _iq_response(element, from_, "result")
    if payload is not None:
        reply.append(payload)
    return reply


def iq_error(
    element: ET.Element,
    *,
    from_: str,
    condition: str = "service-unavailable",
    type_: str = "cancel",
) -> ET.Element:
    """An RFC 6120 §8.3 error reply, so a requester need not wait for its timeout."""
    reply = _iq_response(element, from_, "error")
    error = ET.SubElement(reply, _client("error"), {"type": type_})
    ET.SubElement(error, f"{{{STANZAS_NS}}}{condition}")
    return reply


def disco_info_result(request_element: ET.Element, *, from_: str) -> ET.Element:
    """Our identity and features, for a disco#info get without a node or with the node
    our caps advertise (`CAPS_NODE#ver`); any other node is item-not-found."""
    query = request_element.find(f"{{{DISCO_INFO_NS}}}query")
    node = None if query is None else query.get("node")
    if node not in (None, f"{CAPS_NODE}#{caps_ver()}"):
        return iq_error(request_element, from_=from_, condition="item-not-found")
    payload = ET.Element(f"{{{DISCO_INFO_NS}}}query", {"node": node} if node else {})
    category, type_, name = IDENTITY
    ET.SubElement(
        payload,
        f"{{{DISCO_INFO_NS}}}identity",
        {"category": category, "type": type_, "name": name},
    )
    for feature in FEATURES:
        ET.SubElement(payload, f"{{{DISCO_INFO_NS}}}feature", {"var": feature})
    return iq_reply(request_element, from_=from_, payload=payload)


def iq_response(element: ET.Element, *, from_: str) -> ET.Element | None:
    """What to send back for an incoming IQ: disco#info answered, any other request
    service-unavailable, and nothing for results and errors (answering those loops)."""
    if not is_iq_request(element):
        return None
    if element.get("type") == "get" and element.find(f"{{{DISCO_INFO_NS}}}query") is not None:
        return disco_info_result(element, from_=from_)
    return iq_error(element, from_=from_)
