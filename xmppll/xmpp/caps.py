"""Who we say we are to other clients (XEP-0115 entity capabilities).

The TXT record publishes `node`, `hash` and `ver`, and disco#info answers with the same
identity and features, so both read them from here. Only hashlib and base64 are
imported: the TXT code runs in commands that must not load the XML stack.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable

CAPS_NODE = "https://github.com/xmppll/xmppll"
CAPS_HASH = "sha-1"
IDENTITY: tuple[str, str, str] = ("client", "pc", "xmppll")  # category, type, name
FEATURES: tuple[str, ...] = (
    "http://jabber.org/protocol/bytestreams",  # XEP-0065, files (xmpp/files/)
    "http://jabber.org/protocol/caps",
    "http://jabber.org/protocol/chatstates",
    "http://jabber.org/protocol/disco#info",
    "http://jabber.org/protocol/si",  # XEP-0095/0096 file offers
    "http://jabber.org/protocol/si/profile/file-transfer",
    "jabber:iq:oob",  # XEP-0066, files over HTTP (salut, iChat)
    "urn:xmpp:receipts",
)


def caps_ver(
    identities: Iterable[tuple[str, str, str]] = (IDENTITY,),
    features: Iterable[str] = FEATURES,
) -> str:
    """The XEP-0115 §5.1 verification string, hashed: peers that cache capabilities
    (Salut, Gajim) recompute it from our disco#info answer and distrust a mismatch.
    Identities carry no xml:lang, so that field of the string stays empty."""
    text = "".join(f"{category}/{type_}//{name}<" for category, type_, name in sorted(identities))
    text += "".join(f"{feature}<" for feature in sorted(features))
    digest = hashlib.sha1(text.encode(), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")
