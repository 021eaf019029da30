from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xmppll.errors import DataError
from xmppll.xmpp.caps import CAPS_NODE, FEATURES, caps_ver
from xmppll.xmpp.stanza import (
    MESSAGE_TYPES,
    build_message,
    build_receipt,
    disco_info_result,
    iq_error,
    iq_reply,
    iq_response,
    is_iq_request,
    message_from_json,
    new_id,
    receipt_ack_id,
    receipt_request_id,
    to_json,
)
from xmppll.xmpp.stream import Stanza, StreamParser, header, serialize

FIXTURES = Path(__file__).parent / "fixtures" / "libpurple"
HEADER = header(from_="romeo@forza", to="juliet@pronto")
DISCO = "http://jabber.org/protocol/disco#info"


def stanzas(data: bytes) -> list[Stanza]:
    return [event for event in StreamParser().feed(data) if isinstance(event, Stanza)]


def parse(xml: str) -> Stanza:
    """A stanza as it arrives: through the stream reader, inside our stream header."""
    (only,) = stanzas(HEADER + xml.encode())
    return only


def received(element) -> dict:
    """What a peer's `listen` prints for an element we send."""
    arrived = parse(serialize(element))
    return to_json(arrived.element, arrived.xml)


def test_libpurple_message_body_is_the_plain_text_only():
    first, second = stanzas((FIXTURES / "purple-initiator.xml").read_bytes())
    assert to_json(first.element, first.xml) == {
        "kind": "message",
        "from": "romeo@h3",
        "to": "juliet@capulet",
        "type": "chat",
        "id": None,
        "body": "first message",
        "subject": None,
        "thread": None,
        "xml": first.xml,
    }
    assert "<html xmlns='http://www.w3.org/1999/xhtml'>" in first.xml
    assert to_json(second.element, second.xml)["body"] == 'second: a < b & "c"'


def test_jabber_x_event_stays_out_of_the_body():
    event_message, _ = stanzas((FIXTURES / "raw-to-purple-xevent-id.xml").read_bytes())
    record = to_json(event_message.element, event_message.xml)
    assert record["body"] == "R8 typing-notification id"
    assert "<id>m1</id>" in record["xml"]


def test_to_json_reads_a_stream_without_default_namespace():
    data = (
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>"
        b"<message from='a'><body>plain</body><subject/></message>"
    )
    (message,) = stanzas(data)
    record = to_json(message.element, message.xml)
    assert (record["kind"], record["body"], record["subject"]) == ("message", "plain", "")


def test_to_json_of_iq_names_its_query():
    iq = parse(f"<iq type='get' id='q1' from='a'><query xmlns='{DISCO}'/></iq>")
    record = to_json(iq.element, iq.xml)
    assert (record["kind"], record["type"], record["id"], record["query"]) == (
        "iq",
        "get",
        "q1",
        DISCO,
    )
    assert record["body"] is None
    empty = parse("<iq type='result' id='q1'/>")
    assert to_json(empty.element, empty.xml)["query"] is None


def test_build_message_is_what_every_peer_reads():
    message = build_message(to="juliet@pronto", from_="romeo@forza", body="hi", id_="m1")
    assert serialize(message) == (
        "<message from='romeo@forza' to='juliet@pronto' type='chat' id='m1'>"
        "<body>hi</body></message>"
    )


def test_build_message_with_everything():
    message = build_message(
        to="b",
        from_="a",
        body="hi",
        type_="headline",
        id_="m1",
        subject="s",
        thread="t",
        receipt=True,
    )
    assert serialize(message) == (
        "<message from='a' to='b' type='headline' id='m1'><body>hi</body>"
        "<subject>s</subject><thread>t</thread><request xmlns='urn:xmpp:receipts'/></message>"
    )


def test_build_message_always_has_an_id_and_never_an_event_id():
    ids = {build_message(to="b", from_="a", body="x").get("id") for _ in range(50)}
    assert len(ids) == 50 and all(ids)
    assert "jabber:x:event" not in serialize(build_message(to="b", from_="a", body="x"))


def test_new_id_is_short_and_attribute_safe():
    assert new_id().isalnum() and 6 <= len(new_id()) <= 16


def test_markup_and_quotes_survive():
    body = "a <b>x</b> & y ]]> 'single' \"double\" &amp; <![CDATA[z]]>"
    record = received(build_message(to="b'\"<&>", from_="a", body=body, subject=body))
    assert record["body"] == body
    assert record["subject"] == body
    assert record["to"] == "b'\"<&>"


XML_TEXT = st.text(
    alphabet=st.characters(
        codec="utf-8",
        exclude_categories=["Cs"],
        exclude_characters=[chr(c) for c in range(0x20) if chr(c) not in "\t\n\r"]
        + ["\ufffe", "\uffff"],
    )
)
NOT_XML = st.sampled_from([chr(c) for c in range(0x20) if chr(c) not in "\t\n\r"] + ["\ufffe"])


@given(
    to=XML_TEXT,
    from_=XML_TEXT,
    body=XML_TEXT,
    type_=st.sampled_from(MESSAGE_TYPES),
    id_=XML_TEXT.filter(bool),
    subject=st.none() | XML_TEXT,
    thread=st.none() | XML_TEXT,
)
def test_message_round_trip(to, from_, body, type_, id_, subject, thread):
    message = build_message(
        to=to, from_=from_, body=body, type_=type_, id_=id_, subject=subject, thread=thread
    )
    record = received(message)
    assert record == {
        "kind": "message",
        "from": from_,
        "to": to,
        "type": type_,
        "id": id_,
        "body": body,
        "subject": subject,
        "thread": thread,
        "xml": serialize(message),
    }


@given(before=XML_TEXT, bad=NOT_XML, after=XML_TEXT)
def test_body_xml_cannot_carry_is_refused(before, bad, after):
    message = build_message(to="b", from_="a", body=before + bad + after)
    with pytest.raises(DataError, match=rf"^body contains .* \(U\+{ord(bad):04X}\)$"):
        serialize(message)


def test_message_from_json_takes_a_listen_line():
    line = {
        "kind": "message",
        "from": "mallory@evil",
        "to": "juliet@capulet",
        "type": "chat",
        "id": "a1b2",
        "body": "hi",
        "subject": None,
        "thread": "t1",
        "peer": {"address": "10.0.0.6", "port": 51234},
        "verified": True,
        "received": "2026-11-24T12:00:00.123Z",
        "xml": "<message/>",
    }
    message = message_from_json(line, from_="romeo@montague")
    assert serialize(message) == (
        "<message from='romeo@montague' to='juliet@capulet' type='chat' id='a1b2'>"
        "<body>hi</body><thread>t1</thread></message>"
    )


def test_message_from_json_minimal_and_with_receipt():
    message = message_from_json({"to": "b", "body": ""}, from_="a", receipt=True)
    assert message.get("type") == "chat" and message.get("id")
    assert receipt_request_id(message) == message.get("id")


@pytest.mark.parametrize(
    ("record", "error"),
    [
        ({"body": "hi"}, "'to' is required and must be a string"),
        ({"to": "b"}, "'body' is required and must be a string"),
        ({"to": "b", "body": 5}, "'body' is required and must be a string"),
        ({"to": ["b"], "body": "x"}, "'to' is required and must be a string"),
        ({"to": "b", "body": "x", "type": "shout"}, "'type' must be one of chat, normal"),
        ({"to": "b", "body": "x", "subject": 1}, "'subject' must be a string or null"),
        ({"to": "b", "body": "x", "id": True}, "'id' must be a string or null"),
        ({"kind": "iq", "to": "b", "body": "x"}, "kind 'iq': only messages"),
        (["b", "x"], "must be an object"),
    ],
)
def test_message_from_json_refuses_bad_records(record, error):
    with pytest.raises(DataError, match=error) as caught:
        message_from_json(record, from_="a")
    assert caught.value.exit_code == 65


def test_receipt_request_and_answer():
    asked = parse(serialize(build_message(to="b", from_="a", body="x", id_="m1", receipt=True)))
    assert receipt_request_id(asked.element) == "m1"
    receipt = build_receipt("a", "b", "m1")
    text = serialize(receipt)
    assert text.startswith("<message from='b' to='a' id='")
    assert text.endswith("'><received xmlns='urn:xmpp:receipts' id='m1'/></message>")
    assert receipt_ack_id(parse(text).element) == "m1"


@pytest.mark.parametrize(
    "xml",
    [
        "<message id='m1'><body>x</body></message>",
        "<message type='error' id='m1'><request xmlns='urn:xmpp:receipts'/></message>",
        "<message><request xmlns='urn:xmpp:receipts'/></message>",
        "<iq type='get' id='m1'><request xmlns='urn:xmpp:receipts'/></iq>",
    ],
    ids=["no request", "error message", "no id", "not a message"],
)
def test_no_receipt_is_owed(xml):
    assert receipt_request_id(parse(xml).element) is None


def test_an_ordinary_message_is_no_receipt():
    assert receipt_ack_id(parse("<message id='m1'><body>x</body></message>").element) is None


@pytest.mark.parametrize(
    ("kind", "type_", "expected"),
    [
        ("iq", "get", True),
        ("iq", "set", True),
        ("iq", "result", False),
        ("iq", "error", False),
        ("iq", None, False),
        ("message", "get", False),
    ],
)
def test_is_iq_request(kind, type_, expected):
    attrs = f" type='{type_}'" if type_ else ""
    assert is_iq_request(parse(f"<{kind}{attrs} id='q1'/>").element) is expected


GET = "<iq from='romeo@forza' type='get' id='q1'><query xmlns='urn:unknown'/></iq>"


def test_iq_reply_goes_back_to_the_sender_with_the_same_id():
    request = parse(GET).element
    assert serialize(iq_reply(request, from_="juliet@pronto")) == (
        "<iq from='juliet@pronto' to='romeo@forza' type='result' id='q1'/>"
    )
    payload = parse("<iq><x xmlns='urn:x'/></iq>").element[0]
    reply = serialize(iq_reply(request, from_="juliet@pronto", payload=payload))
    assert reply.endswith("type='result' id='q1'><x xmlns='urn:x'/></iq>")


def test_iq_error_is_rfc6120_shaped():
    request = parse(GET).element
    assert serialize(iq_error(request, from_="juliet@pronto")) == (
        "<iq from='juliet@pronto' to='romeo@forza' type='error' id='q1'><error type='cancel'>"
        "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    )
    modify = iq_error(request, from_="j", condition="bad-request", type_="modify")
    assert "<error type='modify'><bad-request xmlns=" in serialize(modify)


def disco_get(node: str | None) -> Stanza:
    attr = f" node='{node}'" if node else ""
    return parse(f"<iq from='romeo@forza' type='get' id='d1'><query xmlns='{DISCO}'{attr}/></iq>")


def ver_from_answer(answer) -> str:
    """Recompute the caps hash from a disco#info answer, as a caching peer does."""
    query = answer.find(f"{{{DISCO}}}query")
    identities = [
        (i.get("category"), i.get("type"), i.get("name"))
        for i in query.findall(f"{{{DISCO}}}identity")
    ]
    features = [f.get("var") for f in query.findall(f"{{{DISCO}}}feature")]
    return caps_ver(identities, features)


@pytest.mark.parametrize("node", [None, f"{CAPS_NODE}#{caps_ver()}"])
def test_disco_info_answers_with_what_caps_advertise(node):
    answer = parse(serialize(disco_info_result(disco_get(node).element, from_="juliet@pronto")))
    record = to_json(answer.element, answer.xml)
    assert (record["type"], record["id"], record["to"], record["query"]) == (
        "result",
        "d1",
        "romeo@forza",
        DISCO,
    )
    assert answer.element[0].get("node") == node
    assert ver_from_answer(answer.element) == caps_ver()
    assert "<identity category='client' type='pc' name='xmppll'/>" in answer.xml
    assert answer.xml.count("<feature var=") == len(FEATURES)


def test_disco_info_for_another_node_is_item_not_found():
    answer = serialize(disco_info_result(disco_get("urn:other#x").element, from_="j"))
    assert "type='error' id='d1'" in answer and "<item-not-found " in answer


def test_iq_response_answers_requests_only():
    assert iq_response(disco_get(None).element, from_="j").get("type") == "result"
    unknown = serialize(iq_response(parse(GET).element, from_="j"))
    assert "<service-unavailable " in unknown
    disco_set = parse(f"<iq type='set' id='s1'><query xmlns='{DISCO}'/></iq>").element
    assert "<service-unavailable " in serialize(iq_response(disco_set, from_="j"))
    for type_ in ("result", "error"):
        assert iq_response(parse(f"<iq type='{type_}' id='q1'/>").element, from_="j") is None
    assert iq_response(parse("<message id='m1'/>").element, from_="j") is None
