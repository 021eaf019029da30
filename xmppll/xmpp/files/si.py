"""XEP-0096 SI file transfer: the offer (name, size, the stream methods we can use),
its answers (the method chosen, or a decline), and the errors the two real families
read. The bytes then move over XEP-0065 (socks5.py): it is the only method libpurple
offers and accepts, and the only one we offer.

libpurple quirks (shared/reference/file-transfer-facts.md): it matches our answer to
its offer by the iq id, which equals its sid; so we answer with the offer's id, and
our own offers use the sid as the iq id too.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from xmppll.errors import DataError
from xmppll.xmpp.files.namespaces import BYTESTREAMS_NS, SI_NS

FT_NS = "http://jabber.org/protocol/si/profile/file-transfer"
FEATURE_NEG_NS = "http://jabber.org/protocol/feature-neg"
XDATA_NS = "jabber:x:data"
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"
CLIENT_NS = "jabber:client"
# Between xmppll peers whose stream proved both pinned keys, the offer says the
# bytestream will go inside TLS (<tls/> in the <si/>); only they ever see it.
TLS_NS = "urn:xmppll:files-tls:0"
MAX_NAME = 4096  # characters of a name we look at; the rest is noise


def _iq(type_: str, **attrs: str | None) -> ET.Element:
    return ET.Element(f"{{{CLIENT_NS}}}iq",
                      {"type": type_, **{k: v for k, v in attrs.items() if v is not None}})


def _form(type_: str) -> tuple[ET.Element, ET.Element]:
    feature = ET.Element(f"{{{FEATURE_NEG_NS}}}feature")
    x = ET.SubElement(feature, f"{{{XDATA_NS}}}x", {"type": type_})
    return feature, x


@dataclass
class Offered:
    sid: str
    name: str
    size: int
    mime: str
    desc: str | None
    methods: list[str]
    tls: bool = False


def offer(*, to: str, from_: str, sid: str, name: str, size: int, mime: str,
          desc: str | None = None, tls: bool = False) -> ET.Element:
    iq = _iq("set", to=to, **{"from": from_}, id=sid)
    si = ET.SubElement(iq, f"{{{SI_NS}}}si", {"id": sid, "profile": FT_NS, "mime-type": mime})
    f = ET.SubElement(si, f"{{{FT_NS}}}file", {"name": name, "size": str(size)})
    if desc:
        ET.SubElement(f, f"{{{FT_NS}}}desc").text = desc
    feature, x = _form("form")
    field = ET.SubElement(x, f"{{{XDATA_NS}}}field", {"var": "stream-method",
                                                       "type": "list-single"})
    option = ET.SubElement(field, f"{{{XDATA_NS}}}option")
    ET.SubElement(option, f"{{{XDATA_NS}}}value").text = BYTESTREAMS_NS
    si.append(feature)
    if tls:
        ET.SubElement(si, f"{{{TLS_NS}}}tls")
    return iq


def parse_offer(iq: ET.Element) -> Offered:
    """What an SI file offer says; DataError when it is not one we can take."""
    si = iq.find(f"{{{SI_NS}}}si")
    if si is None or si.get("profile") != FT_NS:
        raise DataError("not a file-transfer offer")
    f = si.find(f"{{{FT_NS}}}file")
    if f is None or f.get("name") is None or not si.get("id"):
        raise DataError("file offer without a name or sid")
    try:
        size = int(f.get("size") or "")
    except ValueError:
        raise DataError("file offer without a valid size") from None
    if size < 0:
        raise DataError("file offer with a negative size")
    desc = f.find(f"{{{FT_NS}}}desc")
    methods = [v.text or "" for v in si.iter(f"{{{XDATA_NS}}}value")]
    return Offered(si.get("id") or "", (f.get("name") or "")[:MAX_NAME], size,
                   si.get("mime-type") or "application/octet-stream",
                   None if desc is None else (desc.text or "")[:MAX_NAME], methods,
                   si.find(f"{{{TLS_NS}}}tls") is not None)


def accept(request: ET.Element, *, from_: str) -> ET.Element:
    """We take it over SOCKS5 bytestreams (libpurple's only method)."""
    iq = _iq("result", id=request.get("id") or "", to=request.get("from"), **{"from": from_})
    si = ET.SubElement(iq, f"{{{SI_NS}}}si")
    feature, x = _form("submit")
    field = ET.SubElement(x, f"{{{XDATA_NS}}}field", {"var": "stream-method"})
    ET.SubElement(field, f"{{{XDATA_NS}}}value").text = BYTESTREAMS_NS
    si.append(feature)
    return iq


def chosen_method(result: ET.Element) -> str | None:
    for field in result.iter(f"{{{XDATA_NS}}}field"):
        if field.get("var") == "stream-method":
            value = field.find(f"{{{XDATA_NS}}}value")
            return None if value is None else (value.text or "").strip()
    return None


def error(request: ET.Element, *, from_: str, condition: str, type_: str, code: str,
          text: str | None = None, payload: ET.Element | None = None) -> ET.Element:
    """An iq error with the legacy `code` too (libpurple and salut read it)."""
    iq = _iq("error", id=request.get("id") or "", to=request.get("from"), **{"from": from_})
    if payload is not None:
        iq.append(payload)
    err = ET.SubElement(iq, f"{{{CLIENT_NS}}}error", {"type": type_, "code": code})
    ET.SubElement(err, f"{{{STANZAS_NS}}}{condition}")
    if text:
        ET.SubElement(err, f"{{{STANZAS_NS}}}text").text = text
    return iq


def decline(request: ET.Element, *, from_: str, reason: str) -> ET.Element:
    """libpurple's own decline: 403 forbidden, "Offer Declined" (plus why)."""
    return error(request, from_=from_, condition="forbidden", type_="cancel", code="403",
                 text=f"Offer Declined: {reason}")


def error_of(reply: ET.Element) -> tuple[str, str, str]:
    """(condition, code, text) of an iq error; iChat puts the code in `type`."""
    err = reply.find(f"{{{CLIENT_NS}}}error")
    if err is None:
        err = next((c for c in reply if c.tag.endswith("}error") or c.tag == "error"), None)
    if err is None:
        return "undefined-condition", "", ""
    code = err.get("code") or ""
    if not code and (err.get("type") or "").isdigit():
        code = err.get("type") or ""
    condition, text = "undefined-condition", ""
    for child in err:
        local = child.tag.rsplit("}", 1)[-1]
        if local == "text":
            text = child.text or ""
        else:
            condition = local
    return condition, code, text


def declined(reply: ET.Element) -> bool:
    """An error that means "no, thanks" rather than "could not" (403 or 406)."""
    condition, code, _ = error_of(reply)
    return code in ("403", "406") or condition in ("forbidden", "not-acceptable")
