"""IP addresses as peers present them: one spelling per address, so a sender is
matched to what it advertises however the socket family or the record showed it."""

from __future__ import annotations

import ipaddress

Address = tuple[str, str | None]  # (address without scope, IPv6 link-local scope)


def normalize(address: str) -> Address:
    """(address, scope) with IPv4-mapped IPv6 turned back into IPv4, so one peer is
    one address however the socket family presented it."""
    text, _, scope = address.partition("%")
    addr = ipaddress.ip_address(text)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped), None
    return str(addr), (scope or None) if addr.version == 6 and addr.is_link_local else None


def same_address(a: Address, b: Address) -> bool:
    """Equal addresses; a link-local one must also be on the same interface."""
    if a[0] != b[0]:
        return False
    return a[1] is None or b[1] is None or a[1] == b[1]


def advertises(addresses: list[str], address: Address) -> bool:
    """Whether `address` is one of `addresses` (as a peer record lists them)."""
    return any(same_address(normalize(a), address) for a in addresses)
