"""`xmppll trust`: accept a peer's key after a change was refused (trust on first use,
like ssh's known_hosts; xmppll.xmpp.tls.KnownPeers)."""

from __future__ import annotations

import re
from typing import Any

from xmppll import identity
from xmppll.errors import NoPeerError, UsageError
from xmppll.xmpp.tls import KnownPeers

PIN = re.compile(r"^sha256:[A-Za-z0-9_-]{43}$")


def trust(name: str, *, fingerprint: str | None, forget: bool,
          peers: Any = None) -> dict[str, Any]:
    """Record `fingerprint` (or, with neither it nor `forget`, the key `name` advertises
    now, from `peers()`, the peers on the link) as `name`'s key; `forget` drops it, so
    the next contact is a first use again. Returns what changed."""
    if fingerprint is not None and not PIN.match(fingerprint):
        raise UsageError(f"invalid --fingerprint {fingerprint!r}: expected sha256: and 43 "
                         "base64url characters, as browse shows in \"tls\"")
    known = KnownPeers(identity.known_peers_path())
    if forget:
        old = known.set(name, None)
        return {"name": name, "tls": None, "was": old}
    if fingerprint is None:
        found = [p for p in (peers() if peers else []) if p["name"].lower() == name.lower()]
        if not found:
            raise NoPeerError(f"no peer named {name} on the link (give its key with "
                              "--fingerprint, or --forget it)")
        fingerprint = found[0].get("tls")
        if not fingerprint:
            raise NoPeerError(f"{found[0]['name']} advertises no TLS key (use --forget to "
                              "accept that it no longer encrypts)")
        name = found[0]["name"]
    old = known.set(name, fingerprint)
    return {"name": name, "tls": fingerprint, "was": old}
