"""Exceptions that carry their exit code (sysexits.h), so every layer can fail precisely
and only the CLI decides how to print it."""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~2.5 ms to import: commands through the agent skip it
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any


class XmpplError(Exception):
    """Base class: a message a user can act on, and the process exit code it maps to."""

    exit_code = 70  # EX_SOFTWARE: a bug, not a condition the user caused

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(XmpplError):
    exit_code = 64  # EX_USAGE


class DataError(XmpplError):
    exit_code = 65  # EX_DATAERR


class NoInputError(XmpplError):
    exit_code = 66  # EX_NOINPUT: a file to send cannot be read


class NoPeerError(XmpplError):
    exit_code = 68  # EX_NOHOST


class UnavailableError(XmpplError):
    exit_code = 69  # EX_UNAVAILABLE: peer refused, or no agent running


class IOFailure(XmpplError):
    exit_code = 74  # EX_IOERR


class TimeoutFailure(XmpplError):
    exit_code = 75  # EX_TEMPFAIL


class ProtocolFailure(XmpplError):
    exit_code = 76  # EX_PROTOCOL


class PermissionFailure(XmpplError):
    exit_code = 77  # EX_NOPERM: a DNS server refused our UPDATE


class ConfigError(XmpplError):
    exit_code = 78  # EX_CONFIG: a TSIG key file that is unreadable, malformed or exposed


class SecurityError(XmpplError):
    """A stream refused for its security (STARTTLS, issue #13): the peer's key is not the
    one it advertises, it advertises one but offers no STARTTLS (a downgrade), its key
    changed since first use, or `tls = require` meets a peer that cannot encrypt."""

    exit_code = 77  # EX_NOPERM


def at_line(exc: XmpplError, lineno: int, sent: int) -> XmpplError:
    """The same failure, saying which input line it was and what went out before it
    (a script must know whether to resend the earlier lines)."""
    where = f"line {lineno}: " if lineno else ""
    before = f" ({sent} sent before it)" if sent else ""
    return type(exc)(f"{where}{exc}{before}", exc.exit_code)


class Tally:
    """Counts messages sent from an input of (line number, record) pairs, so that any
    failure, in reading the input (a bad JSON line) or in sending, says where it
    happened and how many went out before it."""

    def __init__(self) -> None:
        self.sent = 0

    def read(self, records: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
        try:
            yield from records
        except XmpplError as exc:
            raise at_line(exc, 0, self.sent) from None

    def failed(self, exc: XmpplError, lineno: int) -> XmpplError:
        return at_line(exc, lineno, self.sent)


EXIT_CODES: dict[int, str] = {
    0: "success (message delivered, command done)",
    1: "internal error: a bug (a Python traceback says where)",
    64: "usage error: bad option, argument or status word",
    65: "bad input data: invalid name, TXT value, JSON line or message",
    66: "a file to send cannot be read",
    68: "no such peer on the link",
    69: "unavailable: peer refused the stream or declined the file, no agent is running, "
        "or the DNS server cannot be reached",
    70: "internal software error reported by the agent",
    74: "I/O error: socket, disk or closed output pipe",
    75: "timeout: the peer, the link or the DNS server did not answer in time",
    76: "protocol error: the peer broke the XML stream protocol",
    77: "refused: the DNS server refused the update (unsigned, wrong key, or the key "
        "may not update that zone); or for security: the peer's key does not match its "
        "pin, it offers no STARTTLS although it advertises a key (a downgrade), its key "
        "changed (see xmppll trust), or tls = require and the peer cannot encrypt",
    78: "configuration error: the TSIG key file is unreadable, malformed or readable "
        "by others",
    130: "interrupted (Ctrl-C)",
}
