import itertools
import tracemalloc
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from defusedxml import DTDForbidden, EntitiesForbidden
from defusedxml.ElementTree import DefusedXMLParser
from hypothesis import given
from hypothesis import strategies as st

from xmppll.errors import DataError, ProtocolFailure
from xmppll.xmpp.stream import (
    CLOSE,
    FEATURES_EMPTY,
    Stanza,
    StreamClose,
    StreamError,
    StreamOpen,
    StreamParser,
    header,
    serialize,
)

FIXTURES = Path(__file__).parent / "fixtures" / "libpurple"
STREAM_START = (
    "<?xml version='1.0' encoding='UTF-8'?>\n"
    "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
    " from='romeo@forza' to='juliet@pronto' version='1.0' xml:lang='fr' id='s1'>"
)
HEADER = STREAM_START.encode()
MESSAGE = (
    "<message from='romeo@forza' to='juliet@pronto' type='chat' id='m1'>"
    "<body>Café 🎉 a &lt; b &amp;&amp; c &gt; d <![CDATA[<raw> & ]]></body>"
    "<!-- comments are dropped -->"
    "<html xmlns='http://www.w3.org/1999/xhtml'><body><p>Café</p></body></html>"
    "</message>"
)
SAMPLE = (
    STREAM_START
    + "<stream:features/>\n \t"
    + MESSAGE
    + " <!-- between -->"
    + "<iq type='get' id='q1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    + "</stream:stream>"
).encode()


def stanza(xml: str) -> Stanza:
    """An expected Stanza event: events compare by their canonical text."""
    return Stanza(ET.fromstring("<unused/>"), xml)


SAMPLE_EVENTS = [
    StreamOpen(
        {
            "from": "romeo@forza",
            "to": "juliet@pronto",
            "version": "1.0",
            "xml:lang": "fr",
            "id": "s1",
        },
        "jabber:client",
    ),
    stanza("<features xmlns='http://etherx.jabber.org/streams'/>"),
    stanza(
        "<message from='romeo@forza' to='juliet@pronto' type='chat' id='m1'>"
        "<body>Café 🎉 a &lt; b &amp;&amp; c &gt; d &lt;raw&gt; &amp; </body>"
        "<html xmlns='http://www.w3.org/1999/xhtml'><body><p>Café</p></body></html>"
        "</message>"
    ),
    stanza("<iq type='get' id='q1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"),
    StreamClose(),
]


def feed_all(chunks, **limits):
    parser = StreamParser(**limits)
    return [event for chunk in chunks for event in parser.feed(chunk)]


def outcome(chunks, **limits):
    """Every event the parser completed, then the reason it failed (None if it did not)."""
    parser = StreamParser(**limits)
    events = []
    try:
        for chunk in chunks:
            events += parser.feed(chunk)
    except StreamError as exc:
        return events + exc.events, exc.reason
    return events, None


def split(data: bytes, cuts) -> list[bytes]:
    return [data[a:b] for a, b in itertools.pairwise(sorted({0, len(data), *cuts}))]


def test_sample_stream_gives_open_stanzas_close():
    assert feed_all([SAMPLE]) == SAMPLE_EVENTS


def test_stanza_elements_keep_their_namespaces():
    message = feed_all([SAMPLE])[2].element
    assert message.tag == "{jabber:client}message"
    assert message.find("{jabber:client}body").text.startswith("Café 🎉 a < b && c > d <raw> & ")
    assert message.find("{http://www.w3.org/1999/xhtml}html") is not None


@pytest.mark.parametrize("offset", range(len(SAMPLE) + 1))
def test_every_two_chunk_split_gives_the_same_events(offset):
    assert feed_all([SAMPLE[:offset], SAMPLE[offset:]]) == SAMPLE_EVENTS


@given(st.lists(st.integers(min_value=0, max_value=len(SAMPLE)), max_size=40))
def test_any_chunking_gives_the_same_events(cuts):
    assert feed_all(split(SAMPLE, cuts)) == SAMPLE_EVENTS


def test_one_byte_at_a_time():
    assert feed_all(SAMPLE[i : i + 1] for i in range(len(SAMPLE))) == SAMPLE_EVENTS


@pytest.mark.parametrize("char", ["é", "€", "🎉"])
def test_multibyte_character_split_across_feeds(char):
    encoded = char.encode()
    data = HEADER + b"<message><body>" + encoded + b"</body></message>"
    for cut in range(1, len(encoded)):
        at = data.index(encoded) + cut
        events = feed_all([data[:at], data[at:]])
        assert events[1].element.find("{jabber:client}body").text == char


def test_events_come_out_as_soon_as_complete():
    parser = StreamParser()
    assert parser.feed(HEADER) == SAMPLE_EVENTS[:1]
    assert parser.feed(b"<iq type='get' id='q1'><query xmlns='http://jabber.org/") == []
    assert parser.feed(b"protocol/disco#info'/></iq>") == [SAMPLE_EVENTS[3]]
    assert parser.feed(CLOSE) == [StreamClose()]


def test_header_without_optional_attributes():
    data = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    assert feed_all([data]) == [StreamOpen({}, "jabber:client")]


def test_whitespace_keepalives_do_not_count_towards_the_stanza_limit():
    parser = StreamParser(max_stanza_bytes=1000)
    parser.feed(HEADER)
    for _ in range(100):
        assert parser.feed(b" \n" * 200) == []
    assert parser.feed(CLOSE) == [StreamClose()]


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_libpurple_initiator_stream():
    data = fixture("purple-initiator.xml")
    events = feed_all([data])
    assert events[0] == StreamOpen({"from": "romeo@h3", "to": "juliet@capulet"}, "jabber:client")
    assert [type(event) for event in events] == [StreamOpen, Stanza, Stanza, StreamClose]
    first = events[1].xml
    assert first.encode() in data  # libpurple's form is already our canonical form
    assert first.startswith("<message to='juliet@capulet' from='romeo@h3' type='chat'>")
    assert events[2].element.find("{jabber:client}body").text == 'second: a < b & "c"'


def test_libpurple_streams_under_every_split():
    for name in ("purple-initiator.xml", "purple-responder.xml", "raw-to-purple-xevent-id.xml"):
        data = fixture(name)
        whole = feed_all([data])
        for offset in range(len(data) + 1):
            assert feed_all([data[:offset], data[offset:]]) == whole


def test_libpurple_responder_and_waiting_initiator():
    opened = StreamOpen({"from": "romeo@h3", "to": "juliet@capulet"}, "jabber:client")
    assert feed_all([fixture("purple-responder.xml")]) == [opened, StreamClose()]
    assert feed_all([fixture("purple-initiator-noheader.xml")]) == [opened]
    assert len(feed_all([fixture("purple-initiator-we-close.xml")])) == 3


def test_our_stream_to_libpurple_parses():
    events = feed_all([fixture("raw-to-purple-xevent-id.xml")])
    assert events[0].attrs == {"from": "juliet@capulet", "to": "romeo@h3"}
    assert [event.element.get("id") for event in events[1:3]] == [None, "raw1"]
    assert events[-1] == StreamClose()


LAUGHS = "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
HOSTILE = {
    "billion laughs": (
        f'<?xml version="1.0"?><!DOCTYPE s [<!ENTITY lol0 "lol">{LAUGHS}]>'
        + STREAM_START.split("\n")[1]
        + "<message><body>&lol9;</body></message>",
        "DTD not allowed",
    ),
    "quadratic blowup": (
        f'<!DOCTYPE s [<!ENTITY a "{"a" * 50_000}">]>'
        + STREAM_START.split("\n")[1]
        + "<message><body>"
        + "&a;" * 50_000
        + "</body></message>",
        "DTD not allowed",
    ),
    "external entity": (
        '<!DOCTYPE s [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        + STREAM_START.split("\n")[1]
        + "<message><body>&xxe;</body></message>",
        "DTD not allowed",
    ),
    "external DTD": (
        '<!DOCTYPE s SYSTEM "http://example.invalid/s.dtd">' + STREAM_START.split("\n")[1],
        "DTD not allowed",
    ),
    "entity without DTD": (
        STREAM_START + "<message><body>&xxe;</body></message>",
        "invalid UTF-8 / not well-formed XML: undefined entity (line 2 col",
    ),
    "processing instruction before header": (
        "<?xml version='1.0'?><?evil x?>" + STREAM_START.split("\n")[1],
        "processing instruction not allowed",
    ),
    "processing instruction in stanza": (
        STREAM_START + "<message><?evil x?></message>",
        "processing instruction not allowed",
    ),
    "deep nesting": (STREAM_START + "<a>" * 10_000, "too deeply nested"),
    "text before header": ("GET / HTTP/1.1\r\n\r\n", "text before stream header"),
    "TLS hello": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "text before stream header"),
    "stanza before header": (
        "<message to='x'><body>hi</body></message>",
        "stanza before stream header: message",
    ),
    "header in another namespace": (
        "<stream:stream xmlns:stream='urn:evil'>",
        "not an XMPP stream: root element is {urn:evil}stream",
    ),
    "text between stanzas": (STREAM_START + "hello", "text outside stanzas"),
    "invalid UTF-8": (
        HEADER + b"<message><body>\xff\xfe</body></message>",
        "invalid UTF-8 / not well-formed XML: not well-formed (invalid token) (line 2 col",
    ),
    "overlong UTF-8": (
        HEADER + b"<message><body>\xc0\xaf</body></message>",
        "invalid UTF-8 / not well-formed XML",
    ),
    "NUL byte": (
        HEADER + b"<message><body>a\x00b</body></message>",
        "invalid UTF-8 / not well-formed XML",
    ),
    "garbage after header": (HEADER + b"\x01\x02\xff\xfe", "invalid UTF-8 / not well-formed XML"),
    "mismatched tag": (
        STREAM_START + "<message></iq>",
        "invalid UTF-8 / not well-formed XML: mismatched tag",
    ),
    "undeclared prefix": (
        "<stream:stream xmlns='jabber:client'>",
        "invalid UTF-8 / not well-formed XML: unbound prefix",
    ),
}


def as_bytes(data) -> bytes:
    return data if isinstance(data, bytes) else data.encode()


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_input_is_refused(case):
    data, reason = HOSTILE[case]
    with pytest.raises(StreamError) as caught:
        feed_all([as_bytes(data)])
    assert caught.value.reason.startswith(reason)
    assert isinstance(caught.value, ProtocolFailure)
    assert caught.value.exit_code == 76


@pytest.mark.parametrize("case", ["invalid UTF-8", "deep nesting", "stanza before header"])
def test_hostile_input_fails_the_same_under_every_split(case):
    data = as_bytes(HOSTILE[case][0])[:2000]
    whole = outcome([data])
    assert whole[1] is not None
    for offset in range(len(data) + 1):
        assert outcome([data[:offset], data[offset:]]) == whole


def test_defusedxml_is_the_parser():
    assert isinstance(StreamParser()._xml, DefusedXMLParser)


def test_defusedxml_refusal_surfaces_as_stream_error():
    with pytest.raises(StreamError) as caught:
        feed_all([as_bytes(HOSTILE["external DTD"][0])])
    assert caught.value.reason == "DTD not allowed"
    assert isinstance(caught.value.__cause__, DTDForbidden)


def test_entity_refusal_holds_without_the_dtd_refusal():
    """The second line of defence is defusedxml's too, and maps to its own reason."""
    parser = StreamParser()
    parser._xml.parser.StartDoctypeDeclHandler = None
    with pytest.raises(StreamError) as caught:
        parser.feed(b"<!DOCTYPE s [<!ENTITY a 'b'>]>" + STREAM_START.split("\n")[1].encode())
    assert caught.value.reason == "entity declarations not allowed"
    assert isinstance(caught.value.__cause__, EntitiesForbidden)


def test_stanzas_before_the_failure_are_kept():
    data = HEADER + b"<message><body>ok</body></message><message>\xff"
    events, reason = outcome([data])
    assert [type(event) for event in events] == [StreamOpen, Stanza]
    assert reason.startswith("invalid UTF-8")


def test_a_failed_stream_stays_failed():
    parser = StreamParser()
    with pytest.raises(StreamError) as first:
        parser.feed(b"<message/>")
    with pytest.raises(StreamError) as again:
        parser.feed(HEADER)
    assert again.value is first.value


def fed_until_refused(start: bytes, total: int) -> int:
    """Feed the header and `start`, then filler in 64 KiB chunks up to `total` bytes;
    return how many bytes the parser took before refusing the stanza."""
    parser = StreamParser()
    chunks = itertools.chain([HEADER + start], itertools.repeat(b"x" * 65536, total // 65536))
    fed = 0
    with pytest.raises(StreamError, match="stanza too large"):
        for chunk in chunks:
            parser.feed(chunk)
            fed += len(chunk)
    return fed


@pytest.mark.parametrize(
    "start",
    [b"<message><body>", b"<message to='"],
    ids=["huge text", "huge start tag"],
)
def test_huge_stanza_is_refused_without_buffering_it(start):
    tracemalloc.start()
    try:
        fed = fed_until_refused(start, 10 * 1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fed < 2 * 1024 * 1024
    assert peak < 4 * 1024 * 1024


def test_huge_header_is_refused():
    with pytest.raises(StreamError, match="stream header too large"):
        feed_all([b"<stream:stream from='" + b"x" * 2000], max_stanza_bytes=1000)


def test_stanza_limit_holds_when_the_stanza_arrives_in_one_piece():
    body = "x" * 200
    data = HEADER + f"<message><body>{body}</body></message>".encode()
    with pytest.raises(StreamError, match="stanza too large"):
        feed_all([data], max_stanza_bytes=100)
    assert len(feed_all([data], max_stanza_bytes=300)) == 2


def test_depth_limit_counts_the_stream_element():
    within = HEADER + b"<message><body/></message>"
    assert len(feed_all([within], max_depth=3)) == 2
    with pytest.raises(StreamError, match="too deeply nested"):
        feed_all([within + b"<message><a><b/></a></message>"], max_depth=3)


def test_declared_encoding_is_ignored_for_utf8():
    data = (
        "<?xml version='1.0' encoding='ISO-8859-1'?>"
        + STREAM_START.split("\n")[1]
        + "<message><body>é</body></message>"
    ).encode()
    assert feed_all([data])[1].element.find("{jabber:client}body").text == "é"


# Writer


def test_header_is_byte_exact():
    assert header(from_="juliet@capulet", to="romeo@h3") == (
        b"<?xml version='1.0' encoding='UTF-8'?><stream:stream xmlns='jabber:client'"
        b" xmlns:stream='http://etherx.jabber.org/streams'"
        b" from='juliet@capulet' to='romeo@h3' version='1.0'>"
    )


def test_header_omits_missing_attributes():
    assert header(from_=None, to=None, version=None, id_="s1") == (
        b"<?xml version='1.0' encoding='UTF-8'?><stream:stream xmlns='jabber:client'"
        b" xmlns:stream='http://etherx.jabber.org/streams' id='s1'>"
    )


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"])))
def test_header_escapes_attributes(name):
    events = feed_all([header(from_=name, to="b'<&\">", id_="x")])
    assert events == [
        StreamOpen({"from": name, "to": "b'<&\">", "version": "1.0", "id": "x"}, "jabber:client")
    ]


def test_header_refuses_what_xml_cannot_carry():
    with pytest.raises(DataError, match=r"attribute 'from' .* \(U\+0001\)"):
        header(from_="a\x01", to=None)


def test_constants():
    assert feed_all([HEADER + FEATURES_EMPTY + CLOSE])[1:] == [
        stanza("<features xmlns='http://etherx.jabber.org/streams'/>"),
        StreamClose(),
    ]


def test_serialize_declares_foreign_namespaces_once_as_default():
    message = ET.Element("{jabber:client}message", {"to": "a", "from": "b"})
    x = ET.SubElement(message, "{jabber:x:event}x")
    ET.SubElement(x, "{jabber:x:event}composing")
    ET.SubElement(message, "{jabber:client}body").text = "hi"
    assert serialize(message) == (
        "<message to='a' from='b'><x xmlns='jabber:x:event'><composing/></x>"
        "<body>hi</body></message>"
    )


def test_serialize_attributes_in_namespaces():
    element = ET.Element(
        "{jabber:client}message",
        {"{http://www.w3.org/XML/1998/namespace}lang": "en", "{urn:a}b": "1", "{urn:a}c": "2"},
    )
    text = serialize(element)
    assert text == "<message xml:lang='en' xmlns:a0='urn:a' a0:b='1' a0:c='2'/>"
    assert feed_all([HEADER + text.encode()])[1].element.attrib == element.attrib


def test_serialize_element_in_no_namespace():
    element = ET.Element("message")
    ET.SubElement(element, "body").text = "x"
    text = serialize(element)
    assert text == "<message xmlns=''><body>x</body></message>"
    assert feed_all([HEADER + text.encode()])[1].element.find("body").text == "x"


def test_serialize_never_emits_generated_prefixes():
    element = ET.Element("{urn:one}a")
    ET.SubElement(ET.SubElement(element, "{urn:two}b"), "{urn:one}c")
    text = serialize(element)
    assert "ns0" not in text and "ns1" not in text
    assert text == "<a xmlns='urn:one'><b xmlns='urn:two'><c xmlns='urn:one'/></b></a>"


@pytest.mark.parametrize("char", ["\x00", "\x08", "\x0b", "\x1f", "\ud800", "\ufffe", "\uffff"])
def test_serialize_refuses_characters_xml_cannot_carry(char):
    element = ET.Element("{jabber:client}message")
    ET.SubElement(element, "{jabber:client}body").text = f"a{char}b"
    with pytest.raises(DataError) as caught:
        serialize(element)
    assert str(caught.value) == f"body contains a character XML cannot carry (U+{ord(char):04X})"


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"])))
def test_serialized_text_parses_back_or_is_refused(text):
    element = ET.Element("{jabber:client}message", {"id": text})
    ET.SubElement(element, "{jabber:client}body").text = text
    ET.SubElement(element, "{urn:x}x").tail = text
    try:
        xml = serialize(element)
    except DataError:
        assert any(c < " " and c not in "\t\n\r" or c in "\ufffe\uffff" for c in text)
        return
    parsed = feed_all([HEADER + xml.encode()])[1]
    assert parsed.xml == xml
    assert parsed.element.get("id") == text
    assert parsed.element.find("{jabber:client}body").text == (text or None)
    assert parsed.element.find("{urn:x}x").tail == (text or None)
