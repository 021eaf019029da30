"""Output: JSON Lines for programs, aligned text for people, one-line errors.

Every string that came from the network is escaped before it reaches a terminal: a
peer name or status message must not be able to move the cursor or retitle a window.
"""

from __future__ import annotations

import os
import sys
import time

from xmppll import quickjson
from xmppll.errors import IOFailure

TYPE_CHECKING = False  # typing costs ~2.5 ms to import: commands through the agent skip it
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any, TextIO

_STATUS_MARK = {"avail": "avail", "away": "away", "dnd": "dnd"}
# SGR colours for a terminal: green, yellow, red (the usual traffic-light reading).
_STATUS_SGR = {"avail": "32", "away": "33", "dnd": "31"}
COLOR_MODES = ("auto", "always", "never")
_color_mode = "auto"


def set_color(mode: str) -> None:
    """--color: `always` wins over NO_COLOR (a flag is more specific than the
    environment, as no-color.org asks); `auto` colours a terminal only."""
    global _color_mode
    _color_mode = mode


def use_color(stream: TextIO | None = None) -> bool:
    if _color_mode != "auto":
        return _color_mode == "always"
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return (stream or sys.stdout).isatty()


def paint(text: str, sgr: str | None, color: bool) -> str:
    return f"\x1b[{sgr}m{text}\x1b[0m" if color and sgr else text


def width(text: str) -> int:
    """Columns a string takes on a terminal: wide (CJK) characters count two,
    combining marks none."""
    import unicodedata  # only for a table or a line for a person

    return sum(0 if unicodedata.combining(ch) else
               2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, columns: int) -> str:
    return text + " " * max(0, columns - width(text))


def _clip(text: str, columns: int) -> str:
    if columns <= 0 or width(text) <= columns:
        return text
    out = ""
    for ch in text:
        if width(out + ch) > columns - 1:
            break
        out += ch
    return out + "\u2026"


def table(rows: list[tuple[str, ...]], *, colors: list[tuple[str | None, ...]] | None = None,
          color: bool = False, max_width: int | None = None) -> list[str]:
    """Aligned columns two spaces apart, header first; the last column is not padded
    and is clipped to `max_width` (a terminal's width) when given."""
    ncols = len(rows[0])
    widths = [max(width(r[i]) for r in rows) for i in range(ncols - 1)]
    lines = []
    for n, row in enumerate(rows):
        cells = []
        for i, cell in enumerate(row):
            sgr = colors[n][i] if colors and n < len(colors) else None
            if i < ncols - 1:
                cells.append(paint(cell, sgr, color) + " " * max(0, widths[i] - width(cell)))
            else:
                used = sum(widths) + 2 * (ncols - 1)
                text = _clip(cell, max_width - used) if max_width else cell
                cells.append(paint(text, sgr, color))
        lines.append("  ".join(cells).rstrip())
    return lines


def terminal_width(stream: TextIO | None = None) -> int | None:
    """The terminal's width when writing to one, else None (a pipe is never clipped)."""
    out = stream or sys.stdout
    if not out.isatty():
        return None
    try:
        return os.get_terminal_size(out.fileno()).columns
    except (OSError, ValueError):
        return None


def status_word(status: str | None, color: bool) -> str:
    word = _STATUS_MARK.get(status or "", "?")
    return paint(word, _STATUS_SGR.get(word), color)


def wants_json(flag: bool | None, stream: TextIO | None = None) -> bool:
    """JSON when asked, or when stdout is not a terminal (a pipe, a file)."""
    if flag is not None:
        return flag
    return not (stream or sys.stdout).isatty()


def safe(text: Any) -> str:
    """Terminal-safe text: control characters (C0, DEL, C1, bidi overrides) escaped,
    and the Unicode line and paragraph separators (U+2028/9), which editors, pagers and
    splitlines() break lines at: one record stays one line."""
    out = []
    for ch in str(text):
        code = ord(ch)
        if code < 0x20 or 0x7F <= code < 0xA0 or 0x202A <= code <= 0x202E \
                or 0x2066 <= code <= 0x2069 or code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}" if code > 0xFF else f"\\x{code:02x}")
        else:
            out.append(ch)
    return "".join(out)


def write_line(line: str, stream: TextIO | None = None) -> None:
    """One line, flushed at once (a bot reading a pipe must not wait for a buffer);
    a closed pipe is an error the caller reports, never a silent drop."""
    out = stream or sys.stdout
    try:
        out.write(line + "\n")
        out.flush()
    except BrokenPipeError as exc:
        raise IOFailure("output closed (broken pipe)") from exc


def write_json(obj: dict[str, Any], stream: TextIO | None = None) -> None:
    write_line(quickjson.dumps(obj, ensure_ascii=False), stream)


def _address(peer: dict[str, Any]) -> str:
    addrs = peer.get("addresses") or []
    v4 = [a for a in addrs if ":" not in a]
    return (v4 or addrs or ["-"])[0]


def peer_table(peers: Iterable[dict[str, Any]], *, color: bool = False,
               max_width: int | None = None) -> list[str]:
    """The peers for a person: aligned columns, status as one coloured word."""
    rows: list[tuple[str, ...]] = [("NAME", "STATUS", "ADDRESS", "PORT", "TLS", "MESSAGE")]
    colors: list[tuple[str | None, ...]] = [("1",) * 6]
    for p in peers:
        status = _STATUS_MARK.get(p.get("status") or "", "?")
        rows.append((safe(p["name"]), status, safe(_address(p)), str(p.get("port", "")),
                     "yes" if p.get("tls") else "-", safe(p.get("msg") or "")))
        colors.append((None, _STATUS_SGR.get(status), None, None, None, None))
    return table(rows, colors=colors, color=color, max_width=max_width)


def peer_event_line(event: dict[str, Any], *, color: bool = False) -> str:
    mark = {"added": "+", "updated": "~", "removed": "-"}.get(event.get("event"), "?")
    status = status_word(event.get("status"), color) if event.get("event") != "removed" else ""
    text = f"{mark} {safe(event['name'])}  {status}  " \
           f"{safe(_address(event))}:{event.get('port', '')}"
    if event.get("msg"):
        text += f"  {safe(event['msg'])}"
    return text


def agent_event_line(event: dict[str, Any]) -> str:
    kind = event.get("event")
    name = safe(event.get("name", ""))
    if kind == "announced":
        addrs = ", ".join(event.get("addresses") or []) or "addresses by the host's responder"
        return f"announced {name} on {safe(event['host'])} port {event['port']} " \
               f"({event.get('status')}; {addrs})"
    if kind == "renamed":
        return f"renamed {safe(event['from'])} -> {name} (the name was taken)"
    if kind == "conflict":
        return f"conflict: {name} is taken by another peer"
    if kind == "status":
        msg = f": {safe(event['msg'])}" if event.get("msg") else ""
        return f"status {name} {event.get('status')}{msg}"
    if kind == "withdrawn":
        reason = f" ({safe(event['reason'])})" if event.get("reason") else ""
        return f"withdrawn {name}{reason}"
    return safe(quickjson.dumps(event, ensure_ascii=False))


def stanza_line(record: dict[str, Any], *, color: bool = False) -> str:
    """A received stanza for a person: time, sender (? when unverified), text."""
    when = (record.get("received") or "")[11:19]
    mark = "" if record.get("verified") else paint(" (unverified)", "33", color)
    sender = record.get("from") or (record.get("peer") or {}).get("name") or "?"
    if record.get("kind") == "message" and record.get("body") is not None:
        text = record["body"]
    elif record.get("kind") == "file":
        text = file_text(record)
    elif record.get("kind") == "chatstate":
        text = paint(f"({record.get('state')})", "2", color)
    else:
        text = f"<{record.get('kind')}> {record.get('xml', '')}"
    return f"[{when}] {paint(safe(sender), '1', color)}{mark}: {safe(text)}"


def file_text(record: dict[str, Any]) -> str:
    """A file record for a person: what happened to which file, and what to do."""
    state, name = record.get("state"), record.get("name")
    size = f" ({record['size']} bytes)" if record.get("size") is not None else ""
    if state == "offered":
        return (f"offers {name}{size}: xmppll accept {record.get('id')} "
                f"(or decline {record.get('id')})")
    if state == "received":
        return f"sent {name}{size}, saved as {record.get('path')}"
    return f"{name}{size} {state}: {record.get('reason', '')}"


def error(message: str) -> None:
    sys.stderr.write(f"xmppll: error: {safe(message)}\n")
    sys.stderr.flush()


def warn(message: str) -> None:
    sys.stderr.write(f"xmppll: warning: {safe(message)}\n")
    sys.stderr.flush()


class progress:  # noqa: N801 - used as `with render.progress(...)`, like a function
    """A line on stderr saying what we wait for and for how long, only on a terminal
    (never in a pipe or a log) and only once the wait lasts longer than `delay`;
    erased when the wait ends, so the terminal is left as it was. A class, not a
    contextlib generator: contextlib is 0.4 ms of every command's start (issue 14)."""

    def __init__(self, message: str, *, enabled: bool = True, delay: float = 0.4,
                 stream: TextIO | None = None) -> None:
        self.message, self.delay = message, delay
        self.out = stream or sys.stderr
        self.enabled = enabled
        self._done: Any = None
        self._thread: Any = None

    def __enter__(self) -> None:
        if not self.enabled or not self.out.isatty():
            return
        import threading  # only on a terminal: not in every pipe's start-up

        self._done = threading.Event()
        self._thread = threading.Thread(target=self._tick, args=(time.monotonic(),),
                                        name="xmppll-progress", daemon=True)
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._done.set()
            self._thread.join(1.0)

    def _tick(self, start: float) -> None:
        out, done = self.out, self._done
        if done.wait(self.delay):
            return
        while True:
            try:
                out.write(f"\r\x1b[K{safe(self.message)} {time.monotonic() - start:.1f}s")
                out.flush()
            except (OSError, ValueError):
                return
            if done.wait(0.1):
                break
        try:
            out.write("\r\x1b[K")
            out.flush()
        except (OSError, ValueError):
            pass
