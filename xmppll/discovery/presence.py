"""The presence record: what XEP-0174 puts in the TXT record, and the Peer JSON shape.

Encoding is strict (we only publish what every peer can read: `txtvers=1` first, every
string within 255 bytes, the whole record within 400); decoding is lenient (real peers
reorder keys, repeat them, change their case and send bytes that are not UTF-8).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from xmppll.defaults import STATUSES
from xmppll.errors import DataError, UsageError

MAX_STRING = 255  # RFC 6763 §6.1: one length byte
MAX_RECORD = 400  # RFC 6763 §6.2: still fits a 512-byte DNS message
_PERSONAL = ("1st", "last", "nick", "email", "jid")
TLS_KEY = "x-xmppll-tls"  # the STARTTLS key fingerprint (xmppll.xmpp.tls.TXT_KEY)


class TruncatedWarning(UserWarning):
    """The status message was cut to fit the TXT record."""


@dataclass
class Presence:
    """What we publish about ourselves; `port` is the SRV port, mirrored in `port.p2pj`."""

    port: int
    status: str = "avail"
    msg: str | None = None
    nick: str | None = None
    first: str | None = None
    last: str | None = None
    email: str | None = None
    jid: str | None = None
    extra: list[tuple[str, str | None]] = field(default_factory=list)
    personal: bool = True
    avatar: str | None = None  # SHA-1 (hex) of our picture: TXT `phsh`

    def __post_init__(self) -> None:
        self.status = check_status(self.status)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "msg": self.msg,
            "nick": self.nick,
            "first": self.first,
            "last": self.last,
            "email": self.email,
            "jid": self.jid,
            "avatar": self.avatar,
            "port": self.port,
        }


def check_status(word: str) -> str:
    status = word.strip().lower()
    if status not in STATUSES:
        raise UsageError(f"invalid status {word!r}: use one of {', '.join(STATUSES)}")
    return status


def parse_txt_option(text: str) -> tuple[str, str | None]:
    """`KEY=VALUE` (or a bare `KEY`, a boolean attribute in RFC 6763 §6.4)."""
    key, sep, value = text.partition("=")
    if not key or not all(0x20 < ord(c) < 0x7F for c in key):
        raise UsageError(
            f"invalid --txt {text!r}: expected KEY=VALUE with a printable ASCII key"
        )
    if key.lower() in _reserved_keys():
        raise UsageError(f"invalid --txt {text!r}: {key!r} is set by its own option")
    return key, (value if sep else None)


def _reserved_keys() -> set[str]:
    return {"txtvers", "status", "port.p2pj", "msg", "node", "hash", "ver", TLS_KEY, "phsh",
            *_PERSONAL}


def _entry(key: str, value: str | None) -> bytes:
    return key.encode("ascii") if value is None else f"{key}={value}".encode()


def _cut_utf8(data: bytes, limit: int) -> bytes:
    """Cut to at most `limit` bytes without splitting a UTF-8 character."""
    return data[:limit].decode("utf-8", "ignore").encode("utf-8")


def encode_txt(presence: Presence, caps: tuple[str, str, str] | None = None) -> bytes:
    """The TXT rdata for `presence`, in the order real peers expect (txtvers first).

    `caps` is (node, hash, ver) as XEP-0115 computes them. A value that does not fit
    is an error naming it, except `msg`, which is cut (with a warning) because a long
    status message is the one thing users type freely. `1st` and `last` are always
    present (maybe empty) unless personal data is off: old Gaim required them.
    """
    head = [_entry("txtvers", "1"), _entry("status", presence.status),
            _entry("port.p2pj", str(presence.port))]
    if presence.avatar:
        head.append(_entry("phsh", presence.avatar))
    personal: list[bytes] = []
    if presence.personal:
        personal = [_entry("1st", presence.first or ""), _entry("last", presence.last or "")]
        personal += [_entry("nick", presence.nick)] if presence.nick is not None else []
    tail = [
        _entry(key, value)
        for key, value in (("email", presence.email), ("jid", presence.jid))
        if presence.personal and value is not None
    ]
    if caps:
        tail += [_entry("node", caps[0]), _entry("hash", caps[1]), _entry("ver", caps[2])]
    tail += [_entry(key, value) for key, value in presence.extra]
    strings = head + personal + tail
    for data in strings:
        if len(data) > MAX_STRING:
            key = data.split(b"=", 1)[0].decode()
            raise DataError(
                f"TXT value for {key!r} is {len(data)} bytes with its key; "
                f"the limit is {MAX_STRING}"
            )
    if presence.msg is not None:
        used = sum(len(s) + 1 for s in strings)
        strings = head + personal + [_fit_msg(presence.msg, used)] + tail
    record = b"".join(bytes((len(s),)) + s for s in strings)
    if len(record) > MAX_RECORD:
        raise DataError(
            f"TXT record is {len(record)} bytes; the limit is {MAX_RECORD} "
            "(shorten the names or --txt values, or use --no-personal)"
        )
    return record


def _fit_msg(msg: str, used: int) -> bytes:
    whole = f"msg={msg}".encode()
    room = min(MAX_STRING, MAX_RECORD - used - 1)
    if len(whole) <= room:
        return whole
    if room < len(b"msg="):
        raise DataError(
            f"no room left for the status message in the {MAX_RECORD}-byte TXT record "
            "(shorten the other fields or --txt values, or use --no-personal)"
        )
    cut = _cut_utf8(whole, room)
    warnings.warn(
        f"status message cut to {len(cut) - 4} bytes to fit the TXT record",
        TruncatedWarning,
        stacklevel=3,
    )
    return cut


def split_txt(rdata: bytes) -> list[bytes]:
    """The character-strings of a TXT rdata; a truncated last string is kept as far as
    it goes rather than dropping the record."""
    strings: list[bytes] = []
    pos = 0
    while pos < len(rdata):
        length = rdata[pos]
        strings.append(rdata[pos + 1 : pos + 1 + length])
        pos += 1 + length
    return strings


def decode_txt(rdata: bytes) -> dict[str, str | None]:
    """Lenient decode (RFC 6763 §6.4): keys lower-cased, first occurrence wins, a
    string starting with '=' ignored, `key` (None) kept apart from `key=` (""), and
    bytes that are not UTF-8 shown as \\xNN escapes instead of failing."""
    txt: dict[str, str | None] = {}
    for string in split_txt(rdata):
        key, sep, value = string.partition(b"=")
        if not key:
            continue
        name = key.decode("utf-8", "backslashreplace").lower()
        if name not in txt:
            txt[name] = value.decode("utf-8", "backslashreplace") if sep else None
    return txt


def peer_fields(txt: dict[str, str | None]) -> dict[str, Any]:
    """The Peer JSON fields that come from TXT: a missing or unknown status is avail."""
    status = (txt.get("status") or "avail").lower()
    caps = None
    if txt.get("node") or txt.get("ver"):
        caps = {"node": txt.get("node"), "hash": txt.get("hash"), "ver": txt.get("ver")}
    return {
        "status": status if status in STATUSES else "avail",
        "msg": txt.get("msg"),
        "nick": txt.get("nick"),
        "first": txt.get("1st"),
        "last": txt.get("last"),
        "email": txt.get("email"),
        "jid": txt.get("jid"),
        "caps": caps,
        # The key it encrypts with: its presence says it speaks STARTTLS (an empty
        # value still does, and matches no certificate).
        "tls": (txt[TLS_KEY] or "sha256:") if TLS_KEY in txt else None,
        "avatar": _phsh(txt.get("phsh")),
        "txt": txt,
    }


def _phsh(value: str | None) -> str | None:
    """The picture's SHA-1 (lower-case hex), or None when there is none or it is not
    a SHA-1 at all."""
    value = (value or "").strip().lower()
    return value if len(value) == 40 and all(c in "0123456789abcdef" for c in value) else None
