"""Human output: aligned tables, colour only where asked or on a terminal, progress on
a terminal's stderr only. Pure functions and fake streams; no network."""

from __future__ import annotations

import io
import re
import time

import pytest

from xmppll.cli import render

PEERS = [
    {"name": "juliet@capulet", "status": "away", "addresses": ["fe80::1%eth0", "10.0.0.5"],
     "port": 5298, "msg": "balcony"},
    {"name": "李@host", "status": "dnd", "addresses": ["10.0.0.6"], "port": 40000, "msg": None},
    {"name": "romeo@montague", "status": "avail", "addresses": [], "port": 5298,
     "msg": "\x1b]0;pwned\x07"},
]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def auto_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    render.set_color("auto")


def test_table_columns_line_up_by_display_width() -> None:
    lines = render.peer_table(PEERS)
    assert lines[0].split() == ["NAME", "STATUS", "ADDRESS", "PORT", "TLS", "MESSAGE"]
    starts = {line_start for line_start in
              (render.width(ln[:ln.index(col)]) for ln, col in
               zip(lines, ["STATUS", "away", "dnd", "avail"], strict=True))}
    assert len(starts) == 1, lines  # the wide name takes two columns per character


def test_table_prefers_ipv4_and_escapes_what_peers_send() -> None:
    lines = render.peer_table(PEERS)
    assert "10.0.0.5" in lines[1]
    assert "\x1b" not in "".join(lines) and "\\x1b]0;pwned\\x07" in lines[3]


def test_status_colours_only_when_asked() -> None:
    plain = render.peer_table(PEERS)
    colored = render.peer_table(PEERS, color=True)
    assert not any(ANSI.search(ln) for ln in plain)
    assert "\x1b[33maway\x1b[0m" in colored[1] and "\x1b[31mdnd\x1b[0m" in colored[2]
    assert "\x1b[32mavail\x1b[0m" in colored[3]
    assert [ANSI.sub("", ln) for ln in colored] == plain


def test_the_last_column_is_clipped_to_the_terminal() -> None:
    lines = render.peer_table(PEERS, max_width=50)
    assert all(render.width(ln) <= 50 for ln in lines)


@pytest.mark.parametrize(("mode", "no_color", "tty", "expected"), [
    ("auto", None, True, True),
    ("auto", None, False, False),
    ("auto", "1", True, False),
    ("always", "1", False, True),  # the flag is more specific than the environment
    ("never", None, True, False),
])
def test_use_color(monkeypatch: pytest.MonkeyPatch, mode: str, no_color: str | None,
                   tty: bool, expected: bool) -> None:
    if no_color:
        monkeypatch.setenv("NO_COLOR", no_color)
    render.set_color(mode)
    assert render.use_color(Tty() if tty else io.StringIO()) is expected


def test_dumb_terminal_gets_no_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "dumb")
    assert not render.use_color(Tty())


def test_progress_shows_on_a_terminal_and_erases_itself() -> None:
    err = Tty()
    with render.progress("waiting for juliet@capulet...", delay=0.05, stream=err):
        time.sleep(0.3)
    text = err.getvalue()
    assert "waiting for juliet@capulet..." in text and "s" in text
    assert text.endswith("\r\x1b[K")


def test_progress_never_writes_to_a_pipe_or_when_disabled() -> None:
    pipe = io.StringIO()
    with render.progress("waiting...", delay=0.0, stream=pipe):
        time.sleep(0.2)
    tty = Tty()
    with render.progress("waiting...", delay=0.0, stream=tty, enabled=False):
        time.sleep(0.2)
    assert pipe.getvalue() == "" and tty.getvalue() == ""


def test_progress_stays_silent_for_a_short_wait() -> None:
    err = Tty()
    with render.progress("waiting...", delay=0.5, stream=err):
        time.sleep(0.05)
    assert err.getvalue() == ""
