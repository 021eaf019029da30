"""The XML stream of XEP-0174: an incremental reader that turns TCP bytes into stream
events, and the writer for our side of the stream.

The reader feeds defusedxml's expat-based parser with a target of ours, not a DOM or SAX
layer, because a stream never ends while a conversation lasts: each top-level child must
come out the moment its end tag arrives, and must then be forgotten. Peers on the link
are unauthenticated, so defusedxml refuses DTDs, entity declarations and external
references, the target refuses processing instructions, and the reader bounds what one
stanza and its nesting may cost before anything is buffered in full.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import NoReturn
from xml.parsers import expat

from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
from defusedxml.ElementTree import DefusedXMLParser

from xmppll.errors import DataError, ProtocolFailure

STREAM_NS = "http://etherx.jabber.org/streams"
CLIENT_NS = "jabber:client"
XML_NS = "http://www.w3.org/XML/1998/namespace"

MAX_STANZA_BYTES = 1024 * 1024
MAX_DEPTH = 64
# Enforced by the network code, which owns the clock; kept here beside the other limits.
HEADER_TIMEOUT = 10.0
IDLE_TIMEOUT = 300.0

FEATURES_EMPTY: bytes = b"<stream:features/>"
CLOSE: bytes = b"</stream:stream>"

# expat parses what it is given in one go; slicing bounds how far past a limit it can
# run before the limit is checked.
_SLICE = 64 * 1024
# Everything outside XML 1.0's Char production: no escape can carry these.
_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_XML_SPACE = " \t\r\n"
# \r in text and \t \n \r in attributes must be character references, or the reader's
# end-of-line and attribute-value normalisation would change them.
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_ATTR_ESCAPES = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        "'": "&apos;",
        '"': "&quot;",
        "\t": "&#9;",
        "\n": "&#10;",
        "\r": "&#13;",
    }
)


class StreamError(ProtocolFailure):
    """The peer broke the stream; `reason` is short enough for a log line or a
    `<stream:error>` text. `events` holds what the same feed completed before the
    failure, so a valid message that preceded the violation is not lost."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"XML stream: {reason}")
        self.reason = reason
        self.events: list[StreamEvent] = []


@dataclass(frozen=True)
class StreamOpen:
    """The peer's stream header. Attribute names are plain (`from`, `to`, `version`,
    `id`, `xml:lang`): nothing in the header is namespaced in practice."""

    attrs: dict[str, str]
    default_ns: str | None = None


@dataclass(frozen=True)
class Stanza:
    """One complete top-level child of the stream. Equality is on `xml`, the canonical
    text, since Elements compare by identity."""

    element: ET.Element = field(compare=False, repr=False)
    xml: str


@dataclass(frozen=True)
class StreamClose:
    """The peer sent `</stream:stream>`."""


StreamEvent = StreamOpen | Stanza | StreamClose


# What defusedxml raises, as our short reasons. The DTD refusal alone stops every entity
# attack, since declarations and external references can only come from a DTD; the
# others keep the defence from hinging on it.
_REFUSALS: dict[type[Exception], str] = {
    DTDForbidden: "DTD not allowed",
    EntitiesForbidden: "entity declarations not allowed",
    ExternalReferenceForbidden: "external entities not allowed",
}


def split_tag(tag: str) -> tuple[str | None, str]:
    """`{ns}local` -> (ns, local); a tag in no namespace -> (None, tag)."""
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return None, tag


class StreamParser:
    """Incremental reader of one inbound XML stream.

    Feed it whatever `recv()` returned; it yields events as soon as they are complete,
    whatever the chunking (a UTF-8 character may be split across feeds). After a
    StreamError the stream is dead: every later feed raises the same error.
    """

    def __init__(
        self, *, max_stanza_bytes: int = MAX_STANZA_BYTES, max_depth: int = MAX_DEPTH
    ) -> None:
        self._target = _Target(max_stanza_bytes, max_depth)
        # The encoding argument overrides any declared encoding: XMPP is UTF-8 only.
        self._xml = DefusedXMLParser(
            target=self._target,
            encoding="UTF-8",
            forbid_dtd=True,
            forbid_entities=True,
            forbid_external=True,
        )
        expat_parser = self._xml.parser
        self._target.expat = expat_parser
        # ElementTree buffers text until the next event or the end of a feed, when
        # CurrentByteIndex no longer points at the text; a whitespace keepalive must be
        # placed where it is to move the stanza mark past it.
        expat_parser.buffer_text = False
        # expat >= 2.6 may hold back a finished token until more bytes arrive; on a
        # conversation that would leave the last message undelivered.
        if hasattr(expat_parser, "SetReparseDeferralEnabled"):
            expat_parser.SetReparseDeferralEnabled(False)
        self._error: StreamError | None = None
        self._started = False
        self._fed = 0

    def feed(self, data: bytes) -> list[StreamEvent]:
        """Parse the next bytes of the stream; return the events they completed."""
        if self._error is not None:
            raise self._error
        target = self._target
        try:
            self._check_start(data)
            for start in range(0, len(data), _SLICE):
                piece = data[start : start + _SLICE]
                self._xml.feed(piece)
                self._fed += len(piece)
                target.check_size(self._fed)
        except ET.ParseError as exc:
            self._fail(_not_well_formed(exc), exc)
        except (DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden) as exc:
            self._fail(StreamError(_REFUSALS[type(exc)]), exc)
        except StreamError as exc:
            self._fail(exc)
        events, target.events = target.events, []
        return events

    def _fail(self, error: StreamError, cause: Exception | None = None) -> NoReturn:
        error.events, self._target.events = self._target.events, []
        self._error = error
        raise error from cause

    def _check_start(self, data: bytes) -> None:
        """expat calls leading text an "invalid token"; a peer that speaks HTTP or TLS
        to the port deserves a plainer reason."""
        if self._started:
            return
        head = data.lstrip(_XML_SPACE.encode())
        if head:
            self._started = True
            if head[:1] not in (b"<", b"\xef"):  # \xef: a UTF-8 byte order mark
                raise StreamError("text before stream header")


class _Target:
    """The parser target: ElementTree's XMLParser calls it with `{ns}local` names.
    It opens the stream, builds each top-level child in a TreeBuilder of its own and
    hands it over whole, and enforces the per-stanza limits as it goes."""

    def __init__(self, max_stanza_bytes: int, max_depth: int) -> None:
        self._max_stanza_bytes = max_stanza_bytes
        self._max_depth = max_depth
        self.expat: expat.XMLParserType | None = None  # set once the parser exists
        self.events: list[StreamEvent] = []
        self._builder: ET.TreeBuilder | None = None
        self._depth = 0
        self._default_ns: str | None = None
        # Byte index where the current stanza, or the last stream-level item, began:
        # everything fed past it is held by expat or the tree builder, hence the limit.
        self._mark = 0

    def check_size(self, end: int) -> None:
        if end - self._mark > self._max_stanza_bytes:
            raise StreamError("stanza too large" if self._depth else "stream header too large")

    def start_ns(self, prefix: str, uri: str) -> None:
        if self._depth == 0 and not prefix:
            self._default_ns = uri or None

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        self._depth += 1
        if self._depth > self._max_depth:
            raise StreamError("too deeply nested")
        if self._depth == 1:
            self._open(tag, attrs)
            return
        if self._depth == 2:
            self._mark = self.expat.CurrentByteIndex
            self._builder = ET.TreeBuilder()
        self._builder.start(tag, attrs)

    def _open(self, tag: str, attrs: dict[str, str]) -> None:
        ns, local = split_tag(tag)
        if local != "stream":
            raise StreamError(f"stanza before stream header: {tag}")
        if ns != STREAM_NS:
            raise StreamError(f"not an XMPP stream: root element is {tag}")
        plain = {_header_attr_name(key): value for key, value in attrs.items()}
        self.events.append(StreamOpen(plain, self._default_ns))

    def end(self, tag: str) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.events.append(StreamClose())
            return
        self._builder.end(tag)
        if self._depth == 1:
            self.check_size(self.expat.CurrentByteIndex)
            self._mark = self.expat.CurrentByteIndex
            element = self._builder.close()
            self._builder = None
            self.events.append(Stanza(element, serialize(element)))

    def data(self, text: str) -> None:
        if self._depth >= 2:
            self._builder.data(text)
        elif text.strip(_XML_SPACE):
            raise StreamError("text outside stanzas")
        else:
            self._mark = self.expat.CurrentByteIndex

    def pi(self, _target: str, _data: str) -> NoReturn:
        raise StreamError("processing instruction not allowed")

    # No comment(): XMLParser then leaves comments to its default handler, which
    # drops them, as XMPP expects of a reader.


def _header_attr_name(key: str) -> str:
    ns, local = split_tag(key)
    if ns is None:
        return local
    return f"xml:{local}" if ns == XML_NS else key


def _not_well_formed(exc: ET.ParseError) -> StreamError:
    text = expat.errors.messages[exc.code]
    line, col = exc.position
    return StreamError(f"invalid UTF-8 / not well-formed XML: {text} (line {line} col {col})")


def header(
    *, from_: str | None, to: str | None, version: str | None = "1.0", id_: str | None = None
) -> bytes:
    """Our stream header. The literal `stream:` prefix and the jabber:client default
    namespace are spelled out because Adium and iChat match them as text."""
    attrs = {"from": from_, "to": to, "version": version, "id": id_}
    text = "".join(
        f" {name}={_attr_value(value, name, 'stream')}"
        for name, value in attrs.items()
        if value is not None
    )
    return (
        "<?xml version='1.0' encoding='UTF-8'?>"
        f"<stream:stream xmlns='{CLIENT_NS}' xmlns:stream='{STREAM_NS}'{text}>"
    ).encode()


def serialize(element: ET.Element) -> str:
    """The element as it goes on the wire inside our stream: jabber:client is inherited,
    another namespace is declared as a default `xmlns` on the element that enters it,
    never as an `ns0:` prefix, which non-namespace-aware peers (Adium, iChat) cannot read.
    Raises DataError for text XML cannot carry rather than produce a broken stream."""
    out: list[str] = []
    _write(element, CLIENT_NS, out)
    return "".join(out)


def _write(element: ET.Element, inherited_ns: str, out: list[str]) -> None:
    ns, local = split_tag(element.tag)
    ns = ns or ""
    out.append("<" + local)
    if ns != inherited_ns:
        out.append(f" xmlns={_attr_value(ns, 'xmlns', local)}")
    if element.attrib:
        _attributes(element, local, out)
    text = element.text
    if not text and not len(element):
        out.append("/>")
        return
    out.append(">")
    if text:
        out.append(_text(text, local))
    for child in element:
        _write(child, ns, out)
        if child.tail:
            out.append(_text(child.tail, local))
    out.append(f"</{local}>")


def _attributes(element: ET.Element, local: str, out: list[str]) -> None:
    """Attribute text; a namespaced attribute other than xml:* gets a prefix declared
    on the same element, since only elements can use the default namespace."""
    prefixes: dict[str, str] = {}
    for key, value in element.attrib.items():
        name = key
        if key.startswith("{"):
            ns, name = split_tag(key)
            if ns == XML_NS:
                name = f"xml:{name}"
            else:
                if ns not in prefixes:
                    prefixes[ns] = f"a{len(prefixes)}"
                    out.append(f" xmlns:{prefixes[ns]}={_attr_value(ns, 'xmlns', local)}")
                name = f"{prefixes[ns]}:{name}"
        out.append(f" {name}={_attr_value(value, name, local)}")


# The where of a refusal is spelled out only when there is one: these run for every
# attribute and text of every stanza that goes out or is stored.
def _text(text: str, where: str) -> str:
    if _ILLEGAL.search(text):
        _refuse(text, where)
    return text.translate(_TEXT_ESCAPES)


def _attr_value(value: str, name: str, element: str) -> str:
    if _ILLEGAL.search(value):
        _refuse(value, f"attribute {name!r} of <{element}>")
    return "'" + value.translate(_ATTR_ESCAPES) + "'"


def _refuse(text: str, where: str) -> NoReturn:
    bad = _ILLEGAL.search(text)
    raise DataError(f"{where} contains a character XML cannot carry (U+{ord(bad[0]):04X})")
