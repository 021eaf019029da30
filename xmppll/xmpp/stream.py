"""The XML stream of XEP-0174: an incremental reader that turns TCP bytes into stream
events, and the writer for our side of the stream.

The reader drives expat directly, not a DOM or SAX layer, because a stream never ends
while a conversation lasts: each top-level child must come out the moment its end tag
arrives, and must then be forgotten. Peers on the link are unauthenticated, so the reader
refuses what defusedxml refuses (DTDs, entity declarations, external references) and
bounds what one stanza and its nesting may cost before anything is buffered in full.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn
from xml.parsers import expat

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
        self.events: list[Event] = []


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


Event = StreamOpen | Stanza | StreamClose


def _refuse(reason: str) -> Callable[..., NoReturn]:
    def handler(*_args: object) -> NoReturn:
        raise StreamError(reason)

    return handler


# The DTD refusal alone stops every entity attack, since declarations and external
# references can only come from a DTD; the others keep the defence from hinging on it.
_REFUSALS = {
    "StartDoctypeDeclHandler": "DTD not allowed",
    "EntityDeclHandler": "entity declarations not allowed",
    "UnparsedEntityDeclHandler": "entity declarations not allowed",
    "ExternalEntityRefHandler": "external entities not allowed",
    "ProcessingInstructionHandler": "processing instruction not allowed",
}


def _clark(name: str) -> str:
    """expat reports `uri}local`; ElementTree wants `{uri}local`."""
    return "{" + name if "}" in name else name


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
        self._max_stanza_bytes = max_stanza_bytes
        self._max_depth = max_depth
        self._parser = self._make_expat()
        self._events: list[Event] = []
        self._builder: ET.TreeBuilder | None = None
        self._depth = 0
        self._default_ns: str | None = None
        self._started = False
        self._error: StreamError | None = None
        self._fed = 0
        # Byte index where the current stanza, or the last stream-level item, began:
        # everything fed past it is held by expat or the tree builder, hence the limit.
        self._mark = 0

    def _make_expat(self) -> expat.XMLParserType:
        # The encoding argument overrides any declared encoding: XMPP is UTF-8 only.
        parser = expat.ParserCreate(encoding="UTF-8", namespace_separator="}")
        for handler, reason in _REFUSALS.items():
            setattr(parser, handler, _refuse(reason))
        parser.StartNamespaceDeclHandler = self._on_namespace
        parser.StartElementHandler = self._on_start
        parser.EndElementHandler = self._on_end
        parser.CharacterDataHandler = self._on_text
        # expat >= 2.6 may hold back a finished token until more bytes arrive; on a
        # conversation that would leave the last message undelivered.
        if hasattr(parser, "SetReparseDeferralEnabled"):
            parser.SetReparseDeferralEnabled(False)
        return parser

    def feed(self, data: bytes) -> list[Event]:
        """Parse the next bytes of the stream; return the events they completed."""
        if self._error is not None:
            raise self._error
        try:
            self._check_start(data)
            for start in range(0, len(data), _SLICE):
                piece = data[start : start + _SLICE]
                self._parser.Parse(piece, False)
                self._fed += len(piece)
                self._check_size(self._fed)
        except expat.ExpatError as exc:
            self._fail(_not_well_formed(exc))
        except StreamError as exc:
            self._fail(exc)
        events, self._events = self._events, []
        return events

    def _fail(self, error: StreamError) -> NoReturn:
        error.events, self._events = self._events, []
        self._error = error
        raise error from None

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

    def _check_size(self, end: int) -> None:
        if end - self._mark > self._max_stanza_bytes:
            raise StreamError("stanza too large" if self._depth else "stream header too large")

    def _on_namespace(self, prefix: str | None, uri: str) -> None:
        if self._depth == 0 and prefix is None:
            self._default_ns = uri

    def _on_start(self, name: str, attrs: dict[str, str]) -> None:
        self._depth += 1
        if self._depth > self._max_depth:
            raise StreamError("too deeply nested")
        tag = _clark(name)
        if self._depth == 1:
            self._open(tag, attrs)
            return
        if self._depth == 2:
            self._mark = self._parser.CurrentByteIndex
            self._builder = ET.TreeBuilder()
        self._builder.start(tag, {_clark(key): value for key, value in attrs.items()})

    def _open(self, tag: str, attrs: dict[str, str]) -> None:
        ns, local = split_tag(tag)
        if local != "stream":
            raise StreamError(f"stanza before stream header: {tag}")
        if ns != STREAM_NS:
            raise StreamError(f"not an XMPP stream: root element is {tag}")
        plain = {_header_attr_name(key): value for key, value in attrs.items()}
        self._events.append(StreamOpen(plain, self._default_ns))

    def _on_end(self, name: str) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._events.append(StreamClose())
            return
        self._builder.end(_clark(name))
        if self._depth == 1:
            self._check_size(self._parser.CurrentByteIndex)
            self._mark = self._parser.CurrentByteIndex
            element = self._builder.close()
            self._builder = None
            self._events.append(Stanza(element, serialize(element)))

    def _on_text(self, data: str) -> None:
        if self._depth >= 2:
            self._builder.data(data)
        elif data.strip(_XML_SPACE):
            raise StreamError("text outside stanzas")
        else:
            self._mark = self._parser.CurrentByteIndex


def _header_attr_name(key: str) -> str:
    ns, _, local = key.rpartition("}")
    if not ns:
        return local
    return f"xml:{local}" if ns == XML_NS else _clark(key)


def _not_well_formed(exc: expat.ExpatError) -> StreamError:
    text = expat.errors.messages[exc.code]
    return StreamError(
        f"invalid UTF-8 / not well-formed XML: {text} (line {exc.lineno} col {exc.offset})"
    )


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
    out.append(f"<{local}")
    if ns != inherited_ns:
        out.append(f" xmlns={_attr_value(ns, 'xmlns', local)}")
    out.extend(_attributes(element, local))
    if not element.text and not len(element):
        out.append("/>")
        return
    out.append(">")
    out.append(_text(element.text, local))
    for child in element:
        _write(child, ns, out)
        out.append(_text(child.tail, local))
    out.append(f"</{local}>")


def _attributes(element: ET.Element, local: str) -> list[str]:
    """Attribute text; a namespaced attribute other than xml:* gets a prefix declared
    on the same element, since only elements can use the default namespace."""
    prefixes: dict[str, str] = {}
    out: list[str] = []
    for key, value in element.attrib.items():
        ns, name = split_tag(key)
        if ns == XML_NS:
            name = f"xml:{name}"
        elif ns is not None:
            if ns not in prefixes:
                prefixes[ns] = f"a{len(prefixes)}"
                out.append(f" xmlns:{prefixes[ns]}={_attr_value(ns, 'xmlns', local)}")
            name = f"{prefixes[ns]}:{name}"
        out.append(f" {name}={_attr_value(value, name, local)}")
    return out


def _text(text: str | None, where: str) -> str:
    if not text:
        return ""
    _check_chars(text, where)
    return text.translate(_TEXT_ESCAPES)


def _attr_value(value: str, name: str, element: str) -> str:
    _check_chars(value, f"attribute {name!r} of <{element}>")
    return "'" + value.translate(_ATTR_ESCAPES) + "'"


def _check_chars(text: str, where: str) -> None:
    bad = _ILLEGAL.search(text)
    if bad:
        raise DataError(f"{where} contains a character XML cannot carry (U+{ord(bad[0]):04X})")
