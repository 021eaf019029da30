"""The retention settings: how much read history the inbox keeps (stdlib only, so the
command line can show the defaults without importing the agent).

Defaults: 30 days and 256 MiB of read history. A month covers "what did the build bot
say last week" and a conversation's scroll-back, and 256 MiB (about half a million
messages of typical size) lets the age limit govern everyday use while a flood of
notifications cannot fill the disk. Unread messages are kept beyond both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from xmppll.errors import UsageError

DEFAULT_KEEP_DAYS = 30
DEFAULT_KEEP_SIZE = "256M"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str | int) -> int:
    """Bytes from '256M', '1.5G', '500K', '0' (binary units, an optional B or iB)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.I)
    if not match:
        raise UsageError(f"invalid size {text!r}: use a number with K, M, G or T (256M)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


@dataclass(frozen=True)
class Policy:
    """Read history older than keep_days, or beyond keep_bytes in all, may go."""

    keep_days: float = DEFAULT_KEEP_DAYS
    keep_bytes: int = parse_size(DEFAULT_KEEP_SIZE)

    @classmethod
    def of(cls, keep_days: float | None = None, keep_size: str | int | None = None
           ) -> Policy:
        days = DEFAULT_KEEP_DAYS if keep_days is None else float(keep_days)
        if days < 0:
            raise UsageError(f"invalid keep_days {keep_days}: use 0 or more")
        return cls(days, parse_size(DEFAULT_KEEP_SIZE if keep_size is None else keep_size))
