"""Peer names offered at TAB, as both completion paths show them: the click-free one
(fast.py) and click's (completion.py). Plain functions, no imports: every TAB pays
for this module."""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~2.5 ms to import: TAB skips it
if TYPE_CHECKING:
    from typing import Any

HARD_CAP = 1.0  # seconds: past this the shell gets what we have (maybe nothing)


def peer_items(peers: list[dict[str, Any]], incomplete: str) -> list[tuple[str, str]]:
    """(name, description) of the peers whose name starts with `incomplete`
    (case-insensitive), sorted."""
    low = incomplete.lower()
    return [(p["name"], _describe(p)) for p in sorted(peers, key=lambda p: p["name"].lower())
            if p["name"].lower().startswith(low)]


def _describe(peer: dict[str, Any]) -> str:
    msg = peer.get("msg")
    return f"{peer.get('status') or 'avail'}: {msg}" if msg else (peer.get("status") or "")


def readline_prefix(incomplete: str, breaks: str) -> str:
    """The part of `incomplete` that readline keeps (bash splits words at
    COMP_WORDBREAKS, '@' and ':' by default); completion.Bash strips it too."""
    cut = max((incomplete.rfind(ch) for ch in breaks if ch not in " \t\n\"'"), default=-1)
    # readline keeps a break character that is also one of bash's "special
    # prefixes" ('@', '$') in the text it replaces; other breaks it drops.
    keep = cut >= 0 and incomplete[cut] in "@$"
    return incomplete[: cut if keep else cut + 1]
