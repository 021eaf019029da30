"""Hostile mDNS on the virtual LAN: records no well-behaved peer sends, and a flood.

A hand-built responder (tests/helpers/hostile_responder.py) publishes names and TXT
records made of any bytes: dots, quotes, newlines, terminal escape sequences (clear
screen, window title), a right-to-left override, emoji, NUL, invalid UTF-8, duplicate
keys, 255-byte strings, an 8 KB TXT record, a 9000-byte one (past RFC 6762's 9000-byte
packet limit once headers count), malformed TXT rdata. Every way of listing peers
(one-shot browse, `--follow`, the agent's cache, as JSON and as text) must list them
without crashing: JSON stays valid and one record per line, and text for a terminal
carries no raw control character.

A flood of 1000 names appearing then leaving at once (python-zeroconf publishing from
one process) must reach both a standalone `browse --follow` and an agent's followers
completely, and leave both working.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from lan import Host, Lan, Lines

from xmppll.discovery.presence import decode_txt, peer_fields

HELPERS = Path(__file__).parent / "helpers"
HOSTILE = str(HELPERS / "hostile_responder.py")
ZC_PEERS = str(HELPERS / "zc_peers.py")
PY = sys.executable

pytestmark = pytest.mark.lan

# Characters that must never reach a terminal raw: C0 (newline included: one record is
# one line), DEL, C1, bidi embeddings/overrides/isolates, Unicode line separators.
FORBIDDEN = {*range(0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A),
             0x2028, 0x2029}

H = "@hostile"


def fill(prefix: str, size: int) -> str:
    """`prefix` padded with z to exactly `size` bytes of UTF-8."""
    return prefix + "z" * (size - len(prefix.encode()))


def strings_of(total: int) -> list[str]:
    """TXT strings (txtvers=1 first) whose rdata is exactly `total` bytes."""
    out = ["txtvers=1"]
    used = 10
    i = 0
    while used < total:
        room = min(256, total - used)
        out.append(fill(f"k{i:02d}=", room - 1))
        used += room
        i += 1
    return out


BASIC = ["txtvers=1", "status=avail", "msg=plain"]
SPECS: list[dict[str, Any]] = [
    {"name": "j.doe" + H, "txt": BASIC},
    {"name": "o\"brien 'q' `b` \\ $x" + H, "txt": BASIC},
    {"name": "line1\nline2\rline3\u2028ls" + H, "txt": [*BASIC[:2], "msg=two\nlines"]},
    {"name": "\x1b[2J\x1b[Hclear" + H, "txt": [*BASIC[:2], "msg=\x1b[2J\x1b[3J"]},
    {"name": "\x1b]0;pwned\x07title" + H, "txt": [*BASIC[:2], "msg=\x1b]2;owned\x1b\\"]},
    {"name": "\u202eevil\u202c" + H, "txt": [*BASIC[:2], "msg=\u202edesrever\u2066x"]},
    {"name": "🎉 party 日本 👨\u200d👩\u200d👧" + H, "txt": [*BASIC[:2], "msg=🎉🎉"]},
    {"name": "nul\x00del\x7fc1\x85\x9b" + H, "txt": BASIC},
    {"name": "bad\udcff\udcfeutf8" + H, "txt": BASIC},
    {"name": "garbage-txt" + H, "txt": [
        "txtvers=1", "status=\udcff", "msg=\udcff\udcfe bad \udcc3(", "nick=\x1b[31mred\x1b[0m",
        "k\udcffey=v", "1st=\u202eevil", "last=new\nline", "email=\x00nul", "jid=\x9b2J"]},
    {"name": "dupkeys" + H, "txt": [
        "txtvers=1", "status=away", "STATUS=dnd", "msg=first", "MSG=second", "msg=third",
        "nick", "nick=later", "=novalue", "", "txtvers=2"]},
    {"name": "long255" + H, "txt": [
        "txtvers=1", fill("msg=", 255), "x" * 255, "nick=" + "é" * 125, fill("1st=", 255)]},
    {"name": "txt8k" + H, "txt": strings_of(7946)},
    {"name": "truncated" + H, "txt_hex": (b"\x09txtvers=1\x0bstatus=away\xc8msg=short").hex()},
    {"name": "evilhost" + H, "host": "\x1b]0;evil\x07host", "txt": BASIC},
    {"name": "m" * 55 + H, "txt": BASIC},  # 63 bytes: the longest label there is
]
# Past what an mDNS packet may carry (RFC 6762 §17: 9000 bytes with IP and UDP
# headers). python-zeroconf drops packets over 8966 bytes; xmppll parses those itself
# (avatar.py: a picture rides in such packets), so this peer may be listed: if it is,
# its record must be exact like the others.
TOO_BIG = {"name": "txt9k" + H, "txt": strings_of(9000)}


def raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def rdata(spec: dict[str, Any]) -> bytes:
    if "txt_hex" in spec:
        return bytes.fromhex(spec["txt_hex"])
    return b"".join(bytes((len(raw(s)),)) + raw(s) for s in spec["txt"])


def shown_name(spec: dict[str, Any]) -> str:
    """The instance name as a receiver decodes it (invalid UTF-8 as U+FFFD)."""
    return raw(spec["name"]).decode("utf-8", "replace")


EXPECTED = {shown_name(s): s for s in SPECS}


def jsonl(text: str) -> list[dict[str, Any]]:
    """Records of JSON Lines output; each line must be one whole JSON object."""
    records = []
    for line in text.split("\n"):
        if line:
            record = json.loads(line)
            assert isinstance(record, dict), line
            records.append(record)
    return records


def hostile(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in records if r["name"].endswith(H)}


def check_terminal_safe(text: str) -> None:
    bad = sorted({f"U+{ord(ch):04X}" for ch in text if ord(ch) in FORBIDDEN - {0x0A}})
    assert not bad, f"raw control characters reach the terminal: {bad}\n{text!r}"


def check_records(found: dict[str, dict[str, Any]], host: Host) -> None:
    """Every hostile peer listed, each exactly as published (TXT decoded leniently)."""
    big = TOO_BIG["name"]
    assert set(found) - {big} == set(EXPECTED), (set(EXPECTED) ^ (set(found) - {big}))
    for name, spec in [*EXPECTED.items(), *([(big, TOO_BIG)] if big in found else [])]:
        peer = found[name]
        want = peer_fields(decode_txt(rdata(spec)))
        for key, value in want.items():
            assert peer[key] == value, (name, key, peer[key], value)
        server = raw(spec.get("host", host.name)).decode("utf-8", "replace")
        assert peer["host"] == f"{server}.local", (name, peer["host"])
        assert host.ipv4 in peer["addresses"]
    assert found["dupkeys" + H]["status"] == "away"
    assert found["dupkeys" + H]["msg"] == "first"
    assert found["dupkeys" + H]["txt"]["nick"] is None
    assert found["dupkeys" + H]["txt"]["txtvers"] == "1"
    assert found["garbage-txt" + H]["msg"] == "\\xff\\xfe bad \\xc3("
    assert found["garbage-txt" + H]["status"] == "avail"
    assert found["long255" + H]["msg"] == fill("msg=", 255)[4:]
    assert found["long255" + H]["nick"] == "é" * 125
    assert found["truncated" + H]["msg"] == "short"
    assert len(found["txt8k" + H]["txt"]) == 31 + 1


def check_table(text: str, count: int) -> None:
    check_terminal_safe(text)
    lines = text.rstrip("\n").split("\n")
    assert lines[0].split() == ["NAME", "STATUS", "ADDRESS", "PORT", "TLS", "MESSAGE"]
    rows = [line for line in lines[1:] if not line.startswith(TOO_BIG["name"])]  # may be
    assert len(rows) == count, text
    for needle in ("\\x1b[2J", "\\x1b]0;pwned\\x07title", "\\u202eevil", "line1\\x0aline2",
                   "nul\\x00del\\x7fc1\\x85", "🎉 party", "j.doe@hostile", "\ufffd"):
        assert needle in text, (needle, text)


def check_event_lines(lines: list[str]) -> None:
    for line in lines:
        check_terminal_safe(line)
        assert line[:2] in ("+ ", "~ ", "- "), line


def follow(host: Host, *args: str) -> tuple[subprocess.Popen[str], Lines]:
    proc = host.xmppll_popen("browse", "--follow", *args)
    return proc, Lines(proc.stdout)


def wait_names(lines: Lines, event: str, want: set[str], timeout: float,
               parse: Callable[[str], str | None] | None = None) -> float:
    """Wait until every name in `want` had `event` on a JSON follower; seconds taken."""
    start = time.monotonic()
    while True:
        seen = set()
        for line in list(lines.lines):
            record = json.loads(line)  # every line of --json output is JSON
            if record.get("event") == event:
                seen.add(record["name"])
        if want <= seen:
            return time.monotonic() - start
        if time.monotonic() - start > timeout or lines.closed():
            missing = sorted(want - seen)
            raise AssertionError(f"{len(missing)} of {len(want)} {event!r} never came: "
                                 f"{missing[:5]}")
        time.sleep(0.1)


def start_agent(host: Host, *args: str) -> tuple[subprocess.Popen[str], Lines, Lines]:
    proc = host.xmppll_popen("announce", "--json", *args)
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    try:
        out.wait_json(lambda r: r["event"] == "announced", 15)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nstderr: {err.lines}") from None
    return proc, out, err


def browse(host: Host, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    done = host.xmppll("browse", *args, timeout=timeout)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done


def wait_cache(host: Host, want: Callable[[list[dict[str, Any]]], bool],
               timeout: float) -> list[dict[str, Any]]:
    """`browse --json` through the host's agent until `want(records)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        records = jsonl(browse(host, "--json").stdout)
        if want(records):
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"the agent on {host.name} never got there: "
                                 f"{sorted(r['name'] for r in records)[:20]}")
        time.sleep(0.3)


# --- hostile records ---------------------------------------------------------------------


def test_hostile_records_are_listed_valid_and_terminal_safe(lan: Lan) -> None:
    a, b, c = lan.hosts
    for spec in [*SPECS, TOO_BIG]:
        assert 0 < len(raw(spec["name"])) <= 63, spec["name"]
    agent, _, agent_err = start_agent(c)
    json_follower, json_lines = follow(a, "--json")  # standalone: no agent on h1
    text_follower, text_lines = follow(a, "--table")
    spec_file = b.home / "hostile.json"
    spec_file.write_text(json.dumps({"instances": [
        {"port": 6000 + i, **spec} for i, spec in enumerate([*SPECS, TOO_BIG])]}))
    responder = b.popen([PY, HOSTILE, str(spec_file)])
    responder_out = Lines(responder.stdout)
    responder_out.wait_for(f"ready {len(SPECS) + 1}", 10)

    # browse --follow (standalone): every peer added, each line one JSON object.
    wait_names(json_lines, "added", set(EXPECTED), 15)
    # The text follower prints one line per event, escaped.
    deadline = time.monotonic() + 10
    while sum(line.startswith("+ ") and H in line for line in text_lines.lines) < len(SPECS):
        assert time.monotonic() < deadline, text_lines.lines
        time.sleep(0.1)
    check_event_lines(list(text_lines.lines))

    # One-shot browse on the link; the 9000-byte peer may or may not complete in time,
    # so the browse waits for it at most until its --timeout.
    done = browse(a, "--json", "--no-agent", "--timeout", "4")
    found = hostile(jsonl(done.stdout))
    check_records(found, b)
    assert not any(line.startswith("send failed") for line in responder_out.lines), \
        "the 9000-byte record never went out"
    table = browse(a, "--table", "--no-agent", "--timeout", "4").stdout
    check_table(table, len(SPECS) + 1)  # and the agent on h3

    # The agent's cache: the same records, through `browse` as JSON and as a table,
    # and a follower of the agent gets them all as `added`.
    records = wait_cache(c, lambda rs: set(EXPECTED) <= set(hostile(rs)), 15)
    cached = hostile(records)
    check_records(cached, b)
    for name in EXPECTED:
        assert cached[name] == found[name], name
    check_table(browse(c, "--table").stdout, len(SPECS))
    agent_follower, agent_lines = follow(c, "--json")
    wait_names(agent_lines, "added", set(EXPECTED), 10)
    agent_text, agent_text_lines = follow(c, "--table")
    deadline = time.monotonic() + 10
    while sum(H in line for line in agent_text_lines.lines) < len(SPECS):
        assert time.monotonic() < deadline, agent_text_lines.lines
        time.sleep(0.1)
    check_event_lines(list(agent_text_lines.lines))

    # Goodbyes: every hostile peer removed, everywhere.
    responder.send_signal(signal.SIGTERM)
    responder_out.wait_for("goodbye", 10)
    wait_names(json_lines, "removed", set(EXPECTED), 10)
    wait_names(agent_lines, "removed", set(EXPECTED), 10)
    wait_cache(c, lambda rs: not hostile(rs), 10)
    for proc in (json_follower, text_follower, agent_follower, agent_text, agent):
        assert proc.poll() is None, "a browser or the agent died"
    assert not any("Traceback" in line for line in agent_err.lines), agent_err.lines
    # Still working: the agent answers, and sees a new peer.
    assert c.xmppll("status", "--json").returncode == 0
    start_agent(b)
    wait_cache(c, lambda rs: "tester@h2" in {r["name"] for r in rs}, 10)


# --- a flood of names --------------------------------------------------------------------


def test_flood_of_1000_peers_appearing_and_leaving_misses_no_event(lan: Lan) -> None:
    a, b, c = lan.hosts
    agent, _, agent_err = start_agent(a)
    via_agent, agent_lines = follow(a, "--json")
    standalone, lines = follow(b, "--json")  # no agent on h2
    time.sleep(0.5)  # both followers have sent their first query
    flood = c.popen([PY, ZC_PEERS, "1000", "--prefix", "flood"])
    flood_out = Lines(flood.stdout)
    flood_out.wait_for("ready 1000", 30)
    names = {f"flood{i:03d}@h3" for i in range(1000)}
    start = time.monotonic()
    wait_names(agent_lines, "added", names, 60)
    wait_names(lines, "added", names, 60 - (time.monotonic() - start))
    added = time.monotonic() - start
    cached = wait_cache(a, lambda rs: names <= {r["name"] for r in rs}, 10)
    assert len([r for r in cached if r["name"].startswith("flood")]) == 1000

    flood.send_signal(signal.SIGTERM)
    flood_out.wait_for("withdrawn 1000", 30)
    start = time.monotonic()
    wait_names(agent_lines, "removed", names, 60)
    wait_names(lines, "removed", names, 60 - (time.monotonic() - start))
    removed = time.monotonic() - start
    print(f"\nflood of 1000: all added on both followers {added:.1f} s after `ready`, "
          f"all removed {removed:.1f} s after `withdrawn`")
    wait_cache(a, lambda rs: not any(r["name"].startswith("flood") for r in rs), 10)

    # Everyone still works: a new peer reaches both followers and both kinds of browse.
    for proc in (agent, via_agent, standalone):
        assert proc.poll() is None, "a follower or the agent died in the flood"
    start_agent(c)
    wait_names(agent_lines, "added", {"tester@h3"}, 10)
    wait_names(lines, "added", {"tester@h3"}, 10)
    wait_cache(a, lambda rs: "tester@h3" in {r["name"] for r in rs}, 10)
    listed = {r["name"] for r in jsonl(browse(b, "--json", "--no-agent").stdout)}
    assert listed == {"tester@h1", "tester@h3"}
    assert not any("Traceback" in line for line in agent_err.lines), agent_err.lines
