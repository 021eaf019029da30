"""End-to-end messaging: `send`, `listen`, the agent's inbox and its defences, each
command a real subprocess on a host of the virtual LAN.

One LAN serves the whole module (its agents take ~1 s each to probe their names):

- h1 runs the agent `tester@h1`: its `send` goes through the agent, as a published name;
- h2 runs the receiving agents: `tester@h2` (shared by the tests that only look for their
  own messages; a 1.5 s header timeout for the silent-peer test), and `bot@h2`,
  `tail@h2`, `exec@h2`, one per test whose listener cursor must start fresh;
- h3 runs no agent: its `send` is standalone, as the unpublished `tester@h3`;
- h4 runs no xmppll at all: fake publications (a ghost port, a peer that never
  answers) made with tests/helpers/raw_peer.py.

Every test marks its messages with a token of its own and looks only for those.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import lan_missing, require
from lan import Host, Lan, Lines, wait_until

RAW_PEER = str(Path(__file__).parent / "helpers" / "raw_peer.py")
PY = sys.executable
HEADER_TIMEOUT = 1.5  # XMPPLL_HEADER_TIMEOUT of the tester@h2 agent
RECEIVED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
RECORD_KEYS = {"seq", "kind", "from", "to", "type", "id", "body", "subject", "thread", "xml",
               "peer", "verified", "secure", "received"}
RECEIVERS = ("tester@h2", "bot@h2", "tail@h2", "exec@h2")

pytestmark = pytest.mark.lan


@dataclass
class Proc:
    """A background command and its output, read line by line."""

    popen: subprocess.Popen[Any]
    out: Lines
    err: Lines

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


@dataclass
class Net:
    lan: Lan
    a: Host
    b: Host
    c: Host
    d: Host
    agents: dict[str, Proc]
    ports: dict[str, int]
    started: list[Proc] = field(default_factory=list)

    def start(self, host: Host, *args: str, **kw: Any) -> Proc:
        """`xmppll ARGS` in the background; stopped at the end of the test."""
        return self._track(host.xmppll_popen(*args, **kw))

    def start_raw(self, host: Host, *args: str) -> Proc:
        return self._track(host.popen([PY, RAW_PEER, *args]))

    def start_sh(self, host: Host, script: str) -> Proc:
        """A shell pipeline in its own process group, so teardown stops all of it."""
        return self._track(host.popen(["sh", "-c", script], start_new_session=True))

    def _track(self, popen: subprocess.Popen[Any]) -> Proc:
        proc = Proc(popen, Lines(popen.stdout), Lines(popen.stderr))
        self.started.append(proc)
        return proc

    def stop_started(self) -> None:
        for proc in self.started:
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.popen.pid, signal.SIGTERM)
            proc.stop()
        self.started.clear()


def xmppll_cmd(*args: str) -> str:
    """`python -m xmppll ARGS` quoted for a shell script run on a host."""
    return shlex.join([PY, "-m", "xmppll", *args])


def inbox(host: Host, name: str) -> list[dict[str, Any]]:
    path = Path(host.env["XDG_STATE_HOME"]) / "xmppll" / name / "inbox.jsonl"
    try:
        return [json.loads(line) for line in path.read_text().splitlines()]
    except FileNotFoundError:
        return []


def mine(records: list[dict[str, Any]], token: str) -> list[dict[str, Any]]:
    """The records carrying `token` in body or subject."""
    return [r for r in records
            if token in (r.get("body") or "") or token in (r.get("subject") or "")]


def printed(proc: Proc, token: str) -> list[dict[str, Any]]:
    out = []
    for line in list(proc.out.lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return mine(out, token)


def wait_printed(proc: Proc, token: str, count: int, timeout: float = 15) -> list[dict]:
    return wait_until(lambda: (lambda got: got if len(got) >= count else None)(
        printed(proc, token)), timeout, f"{count} lines with {token} from listen "
                                        f"(stderr: {proc.err.lines[-5:]})")


def agent_peers(host: Host, agent: str) -> list[str]:
    """Names in the peer cache of `agent` (asked over its control socket)."""
    code = ("import json, sys; from xmppll.agent import control; "
            "print(json.dumps([p['name'] for p in control.request(sys.argv[1], 'peers')"
            "['peers']]))")
    done = host.run([PY, "-c", code, agent], timeout=10)
    return json.loads(done.stdout) if done.returncode == 0 else []


def send(host: Host, *args: str, input: str | None = None,
         timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return host.xmppll("send", *args, input=input, timeout=timeout)


def sent_ok(host: Host, *args: str, input: str | None = None) -> None:
    done = send(host, *args, input=input)
    assert done.returncode == 0, f"send {args}: exit {done.returncode}: {done.stderr}"


def attack(net: Net, kind: str, port: int, *extra: str) -> dict[str, Any]:
    done = net.c.run([PY, RAW_PEER, "attack", net.b.ipv4, str(port), kind, "--wait", "8",
                      *extra], timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def check_record(record: dict[str, Any], *, from_: str, to: str, body: str,
                 verified: bool | None, address: str, subject: str | None = None) -> None:
    """The exact shape of a received message (DESIGN.md, "Stanza")."""
    assert set(record) == RECORD_KEYS, record
    assert record["kind"] == "message"
    assert record["from"] == from_
    assert record["to"] == to
    assert record["type"] == "chat"
    assert record["body"] == body
    assert record["subject"] == subject
    assert record["thread"] is None
    assert isinstance(record["id"], str) and record["id"]
    assert record["verified"] is verified
    assert record["peer"]["address"] == address
    assert record["peer"]["name"] == from_
    assert isinstance(record["peer"]["port"], int)
    assert RECEIVED.fullmatch(record["received"]), record["received"]
    assert isinstance(record["seq"], int) and record["seq"] > 0
    element = ET.fromstring(record["xml"])  # jabber:client is the stream's: not repeated
    assert element.tag == "message"
    assert element.get("id") == record["id"]
    assert (element.findtext("body") or "") == body


@pytest.fixture(scope="module")
def net_module() -> Iterator[Net]:
    missing = lan_missing()
    require(missing is None, f"virtual LAN support: {missing}")
    with Lan(4) as lan:
        a, b, c, d = lan.hosts
        short = {**b.env, "XMPPLL_HEADER_TIMEOUT": str(HEADER_TIMEOUT)}
        specs = [(a, "tester@h1", None), *((b, name, short) for name in RECEIVERS)]
        agents: dict[str, Proc] = {}
        for host, name, env in specs:
            popen = host.xmppll_popen("announce", name, env=env)
            agents[name] = Proc(popen, Lines(popen.stdout), Lines(popen.stderr))
        ports = {}
        for name, proc in agents.items():
            event = proc.out.wait_json(lambda r: r["event"] == "announced", 20)
            assert event["name"] == name
            ports[name] = event["port"]
        # Verification and agent-side sending work from the agents' peer caches.
        wait_until(lambda: "tester@h1" in agent_peers(b, "tester@h2"), 10,
                   "tester@h2 to see tester@h1")
        wait_until(lambda: set(RECEIVERS) <= set(agent_peers(a, "tester@h1")), 10,
                   "tester@h1 to see the receivers on h2")
        yield Net(lan, a, b, c, d, agents, ports)


@pytest.fixture
def net(net_module: Net) -> Iterator[Net]:
    yield net_module
    net_module.stop_started()
    for name, proc in net_module.agents.items():
        assert proc.popen.poll() is None, f"the agent {name} died: {proc.err.lines[-10:]}"


def token() -> str:
    return "t" + secrets.token_hex(4)


# --- send -> listen ---------------------------------------------------------------------

BODIES = {
    "plain": "hello {tok}",
    "unicode": "{tok} héllo wörld — 日本語 🎉 עברית\nline two\ttab & <b>not markup</b> 'q' \"qq\"",
    "500KB": "{tok} " + "".join(chr(0x61 + i % 26) for i in range(500 * 1024)),
    "empty": "",
}


@pytest.mark.parametrize("path", ["agent", "standalone"])
def test_send_listen_exact_record(net: Net, path: str) -> None:
    """From h1 the agent delivers as the published tester@h1 (verified); from h3 a
    standalone send arrives as the unpublished tester@h3 (not verified)."""
    sender, me, verified = ((net.a, "tester@h1", True) if path == "agent"
                            else (net.c, "tester@h3", False))
    tok = token()
    listener = net.start(net.b, "listen", "tester@h2", "--backlog")
    for kind, template in BODIES.items():
        body = template.format(tok=tok)
        if kind == "empty":  # no body to carry the token: the subject does
            sent_ok(sender, "tester@h2", "--subject", f"{tok} empty", "")
        elif kind == "500KB":  # beyond one argv string: stdin is the message
            sent_ok(sender, "tester@h2", input=body + "\n")
        else:
            sent_ok(sender, "tester@h2", body)
    lines = wait_printed(listener, tok, len(BODIES))
    stored = mine(inbox(net.b, "tester@h2"), tok)
    assert lines == stored, "listen prints exactly the inbox records"
    assert len(stored) == len(BODIES)
    for (kind, template), record in zip(BODIES.items(), stored, strict=True):
        subject = f"{tok} empty" if kind == "empty" else None
        check_record(record, from_=me, to="tester@h2", body=template.format(tok=tok),
                     verified=verified, address=sender.ipv4, subject=subject)
    assert len({r["id"] for r in stored}) == len(stored)
    assert [r["seq"] for r in stored] == sorted(r["seq"] for r in stored)


def test_thousand_messages_from_ten_concurrent_senders(net: Net) -> None:
    """10 senders x 100 lines: 3 through h1's agent, 2 standalone on h1 under other
    names, 5 standalone on h3. Each of the 1000 arrives exactly once, on disk and on
    listen's stdout."""
    tok = token()
    listener = net.start(net.b, "listen", "tester@h2", "--backlog")
    senders = ([(net.a, []) for _ in range(3)]
               + [(net.a, ["--from", f"s{i}@h1"]) for i in range(2)]
               + [(net.c, ["--from", f"s{i}@h3"]) for i in range(5)])
    procs = []
    expected = set()
    for n, (host, extra) in enumerate(senders):
        lines = [f"{tok} {n}-{j}" for j in range(100)]
        expected.update(lines)
        popen = host.xmppll_popen("send", "--lines", *extra, "tester@h2",
                                  stdin=subprocess.PIPE)
        procs.append((popen, "\n".join(lines) + "\n"))
    for popen, text in procs:
        popen.stdin.write(text)
        popen.stdin.close()
    for popen, _ in procs:
        assert popen.wait(60) == 0, popen.stderr.read()
    stored = mine(inbox(net.b, "tester@h2"), tok)
    bodies = [r["body"] for r in stored]
    assert len(bodies) == 1000 and set(bodies) == expected, "each message stored once"
    assert len({r["id"] for r in stored}) == 1000
    assert [r["seq"] for r in stored] == sorted({r["seq"] for r in stored})
    shown = wait_printed(listener, tok, 1000, timeout=30)
    time.sleep(0.3)  # a duplicate would be printed right behind
    shown = printed(listener, tok)
    assert sorted(r["body"] for r in shown) == sorted(bodies)
    assert shown == stored


def test_ipv6_link_local_delivery(net: Net) -> None:
    """A peer that advertises only its fe80:: address is reached over IPv6 (the scope
    must survive to connect()), standalone and through the agent."""
    pub = net.start_raw(net.b, "publish", "v6@h2", "--port", str(net.ports["tester@h2"]),
                        "--family", "6", "--server", "h2v6")
    pub.out.wait_for("ready", 10)
    tok = token()
    sent_ok(net.c, "v6@h2", f"{tok} standalone")
    sent_ok(net.a, "v6@h2", f"{tok} agent")
    stored = mine(inbox(net.b, "tester@h2"), tok)
    assert [r["body"] for r in stored] == [f"{tok} standalone", f"{tok} agent"]
    assert [r["peer"]["address"] for r in stored] == [net.c.ipv6_ll, net.a.ipv6_ll]
    assert all(r["to"] == "v6@h2" for r in stored)


# --- the inbox: backlog and crash-restart ------------------------------------------------

def test_backlog_and_listener_killed_and_restarted(net: Net) -> None:
    tok = token()
    first = [f"{tok} {i}" for i in range(1, 4)]
    second = [f"{tok} {i}" for i in range(4, 7)]
    for body in first:  # no listener runs: the agent alone keeps them
        sent_ok(net.a, "bot@h2", body)
    one = net.start(net.b, "listen", "bot@h2", "--backlog")
    assert [r["body"] for r in wait_printed(one, tok, 3)] == first
    time.sleep(0.3)
    one.popen.send_signal(signal.SIGKILL)
    one.popen.wait(5)
    for body in second:
        sent_ok(net.a, "bot@h2", body)
    two = net.start(net.b, "listen", "bot@h2", "--backlog")
    wait_printed(two, tok, 3)
    time.sleep(0.5)  # anything printed twice would come first, and fast
    again = [r["body"] for r in printed(two, tok)]
    assert again == second, "the restarted listener resumes right after the last line"
    assert [r["body"] for r in printed(one, tok)] + again == first + second
    assert [r["body"] for r in mine(inbox(net.b, "bot@h2"), tok)] == first + second


def test_listen_into_closed_pipe_exits_74_and_keeps_the_rest(net: Net) -> None:
    """`listen | head -1`: the second message cannot be printed, so listen fails with
    74 and one error line, and the message waits in the inbox for the next listener."""
    tok = token()
    # After head exits, the subshell closes its copy of the pipe before saying so: from
    # `head exited` on, nobody can read what listen writes.
    script = (f"{{ {xmppll_cmd('listen', 'tail@h2', '--backlog')}; "
              "echo \"listen exit $?\" >&2; } | "
              "(head -1; exec 0<&-; echo 'head exited' >&2; sleep 30)")
    pipe = net.start_sh(net.b, script)
    sent_ok(net.a, "tail@h2", f"{tok} one")
    first = json.loads(pipe.out.wait_for(tok, 10))
    assert first["body"] == f"{tok} one"
    pipe.err.wait_for("head exited", 10)
    sent_ok(net.a, "tail@h2", f"{tok} two")
    exit_line = pipe.err.wait_for("listen exit", 10)
    assert exit_line == "listen exit 74"
    errors = [line for line in pipe.err.lines if line.startswith("xmppll:")]
    assert len(errors) == 1 and errors[0].startswith("xmppll: error: "), pipe.err.lines
    assert "pipe" in errors[0]
    assert not any("Traceback" in line for line in pipe.err.lines)
    assert [r["body"] for r in mine(inbox(net.b, "tail@h2"), tok)] == [f"{tok} one",
                                                                         f"{tok} two"]
    later = net.start(net.b, "listen", "tail@h2", "--backlog")
    assert [r["body"] for r in wait_printed(later, tok, 1)] == [f"{tok} two"]
    time.sleep(0.3)
    assert [r["body"] for r in printed(later, tok)] == [f"{tok} two"]


def test_exec_and_output(net: Net) -> None:
    """--exec gets each stanza's JSON on stdin; a failing command is logged and the
    listener goes on. --output appends the same lines to a file."""
    tok = token()
    ran = net.b.home / f"exec-{tok}.jsonl"
    out = net.b.home / f"output-{tok}.jsonl"
    out.write_text("an earlier line\n")
    command = (f'line=$(cat); printf "%s\\n" "$line" >> {ran}; '
               'case "$line" in *FAILME*) exit 3;; esac')
    listener = net.start(net.b, "listen", "exec@h2", "--backlog", "--exec", command,
                         "--output", str(out))
    bodies = [f"{tok} a", f"{tok} FAILME b", f"{tok} c"]
    for body in bodies:
        sent_ok(net.a, "exec@h2", body)
    listener.err.wait_for("exited 3", 10)
    sent_ok(net.a, "exec@h2", f"{tok} d")  # after the failure
    bodies.append(f"{tok} d")
    shown = wait_printed(listener, tok, 4)
    assert [r["body"] for r in shown] == bodies
    assert listener.popen.poll() is None, "a failing --exec never stops the listener"
    failures = [line for line in listener.err.lines if "exited 3" in line]
    assert len(failures) == 1 and "--exec" in failures[0], listener.err.lines
    wait_until(lambda: ran.exists() and len(ran.read_text().splitlines()) == 4, 10,
               "four --exec runs")
    assert sorted(json.loads(line)["body"] for line in ran.read_text().splitlines()) \
        == sorted(bodies)
    lines = out.read_text().splitlines()
    assert lines[0] == "an earlier line"
    assert [json.loads(line) for line in lines[1:]] == shown
    stdout_lines = [line for line in listener.out.lines if tok in line]
    assert lines[1:] == stdout_lines, "the file gets the very lines stdout gets"


def test_echo_pipe_from_the_design(net: Net) -> None:
    """listen | jq | send --json on h2 echoes what h1 sends.

    jq block-buffers its output into a pipe, so the echo bot needs --unbuffered (without
    it, the echo waits until 4 KB of replies have piled up or listen ends)."""
    tok = token()
    back = net.start(net.a, "listen", "tester@h1", "--backlog")
    jq = "jq --unbuffered -c '{to: .from, body: (\"echo: \" + .body)}'"
    bot = net.start_sh(net.b, f"{xmppll_cmd('listen')} | {jq} | "
                              f"{xmppll_cmd('send', '--json')}")
    time.sleep(1.0)  # `listen` prints from when it attaches; give it time to
    for attempt in range(3):
        sent_ok(net.a, "tester@h2", f"hi {tok} {attempt}")
        try:
            echoed = back.out.wait_json(lambda r, t=tok: t in r["body"], 5)
            break
        except AssertionError:
            continue
    else:
        raise AssertionError(f"no echo; bot stderr: {bot.err.lines}")
    assert echoed["body"].startswith(f"echo: hi {tok} ")
    assert echoed["from"] == "tester@h2" and echoed["verified"] is True
    assert bot.popen.poll() is None, bot.err.lines


# --- hostile peers --------------------------------------------------------------------

HOSTILE = {
    "laughs": "DTD not allowed",
    "xxe": "DTD not allowed",
    "dtd": "DTD not allowed",
    "xxe-no-dtd": "undefined entity",
    "huge": "stanza too large",
    "deep": "too deeply nested",
    "bad-utf8": "invalid UTF-8",
    "garbage": "text before stream header",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_stream_is_closed_and_logged(net: Net, kind: str) -> None:
    """Each attack closes that stream with a stream error and a logged reason; nothing
    of it is stored, and the agent serves the next sender as before."""
    before = len(inbox(net.b, "tester@h2"))
    result = attack(net, kind, net.ports["tester@h2"])
    assert result["closed"], result
    assert result["seconds"] < 5, result
    log = net.agents["tester@h2"].err.wait_for(
        lambda line: f"stream from {net.c.ipv4}:" in line and "closed" in line, 10)
    assert HOSTILE[kind] in log
    if kind != "huge":  # a reset may beat the error text to a sender still writing
        assert "<stream:error><not-well-formed" in result["received"], result
        assert HOSTILE[kind] in result["received"]
    assert "root:" not in json.dumps(inbox(net.b, "tester@h2"))  # no /etc/passwd
    assert len(inbox(net.b, "tester@h2")) == before, "nothing of the attack is stored"
    tok = token()
    sent_ok(net.a, "tester@h2", f"{tok} after {kind}")
    assert [r["body"] for r in mine(inbox(net.b, "tester@h2"), tok)] == [f"{tok} after {kind}"]


def test_silent_peer_times_out_while_others_are_served(net: Net) -> None:
    silent = net.start_raw(net.c, "attack", net.b.ipv4, str(net.ports["tester@h2"]),
                           "silent", "--wait", "10")
    time.sleep(0.3)
    tok = token()
    sent_ok(net.c, "tester@h2", f"{tok} beside a silent peer")
    assert mine(inbox(net.b, "tester@h2"), tok)
    result = json.loads(silent.out.wait_for("silent", 15))
    assert result["closed"] and HEADER_TIMEOUT - 0.2 < result["seconds"] < HEADER_TIMEOUT + 3
    assert "connection-timeout" in result["received"]
    net.agents["tester@h2"].err.wait_for(
        lambda line: f"stream from {net.c.ipv4}:" in line and "no stream header timeout"
        in line, 5)


# --- who sent it: spoofing and --verify strict -----------------------------------------

def test_spoofed_sender_is_marked_then_refused_under_strict(net: Net) -> None:
    tok = token()
    # h3 claims to be tester@h1, which h1's agent publishes with h1's addresses.
    result = attack(net, "spoof", net.ports["tester@h2"], "--from", "tester@h1",
                    "--to", "tester@h2", "--body", f"{tok} spoof")
    assert result["closed"] and "</stream:stream>" in result["received"]
    [stored] = mine(inbox(net.b, "tester@h2"), tok)
    assert stored["from"] == "tester@h1"
    assert stored["verified"] is False
    assert stored["peer"]["address"] == net.c.ipv4

    judge = net.start(net.b, "listen", "judge@h2", "--verify", "strict", "--backlog")
    announced = judge.err.wait_for("announced judge@h2", 15)
    port = int(re.search(r" port (\d+)", announced)[1])
    result = attack(net, "spoof", port, "--from", "tester@h1", "--to", "judge@h2",
                    "--body", f"{tok} strict spoof")
    assert "not-authorized" in result["received"] and result["closed"], result
    assert mine(inbox(net.b, "judge@h2"), tok) == []

    # A real sender on h3, unpublished: refused once, publishes itself, is accepted.
    done = send(net.c, "-v", "judge@h2", f"{tok} legit")
    assert done.returncode == 0, done.stderr
    assert "transient presence" in done.stderr
    [shown] = wait_printed(judge, tok, 1)
    check_record(shown, from_="tester@h3", to="judge@h2", body=f"{tok} legit",
                 verified=True, address=net.c.ipv4)
    time.sleep(0.3)
    assert printed(judge, tok) == [shown], "the refused spoof never reached the listener"
    assert mine(inbox(net.b, "judge@h2"), tok) == [shown]


# --- failures: documented exit codes, within the timeout ------------------------------

@pytest.fixture(scope="module")
def fakes(net_module: Net) -> Iterator[dict[str, int]]:
    """On h4: `ghost@h4` published on a port nobody listens on, `mute@h4` on one that
    accepts and never answers."""
    d = net_module.d
    procs = [d.popen([PY, RAW_PEER, "publish", "ghost@h4", "--port", "4444"]),
             d.popen([PY, RAW_PEER, "publish", "mute@h4", "--mute"])]
    ports = {}
    for name, popen in zip(("ghost@h4", "mute@h4"), procs, strict=True):
        ports[name] = int(Lines(popen.stdout).wait_for("ready", 10).split()[1])
    yield ports
    for popen in procs:
        popen.terminate()
        popen.wait(5)


@pytest.mark.parametrize("path", ["agent", "standalone"])
def test_send_failures_have_documented_exit_codes(net: Net, fakes: dict[str, int],
                                                  path: str) -> None:
    sender = net.a if path == "agent" else net.c
    cases = [  # (args, exit code, longest run in seconds, in the error)
        (["nobody@h9", "x"], 68, 5, "nobody@h9"),
        (["ghost@h4", "x"], 69, 5, "refused"),
        (["--timeout", "2", "mute@h4", "x"], 75, 5, "mute@h4"),
    ]
    running = []
    for args, *_ in cases:  # at once: each waits on its own clock
        running.append((time.monotonic(), sender.xmppll_popen("send", *args)))
    for (args, code, longest, needle), (start, popen) in zip(cases, running, strict=True):
        out, err = popen.communicate(timeout=30)
        took = time.monotonic() - start
        assert popen.returncode == code, f"send {args}: {err}"
        assert took < longest, f"send {args} took {took:.1f} s"
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("xmppll: error: "), err
        assert needle in lines[0]
        assert out == ""


@pytest.mark.parametrize("path", ["agent", "standalone"])
def test_send_json_bad_third_line(net: Net, path: str) -> None:
    sender = net.a if path == "agent" else net.c
    tok = token()
    text = (json.dumps({"to": "tester@h2", "body": f"{tok} 1"}) + "\n"
            + json.dumps({"to": "tester@h2", "body": f"{tok} 2", "subject": "s"}) + "\n"
            + '{"to": "tester@h2", "body": \n'
            + json.dumps({"to": "tester@h2", "body": f"{tok} 4"}) + "\n")
    done = send(sender, "--json", input=text)
    assert done.returncode == 65, done.stderr
    assert done.stderr.startswith("xmppll: error: line 3")
    assert "2 sent before it" in done.stderr
    stored = mine(inbox(net.b, "tester@h2"), tok)
    assert [r["body"] for r in stored] == [f"{tok} 1", f"{tok} 2"]
    assert stored[1]["subject"] == "s"


# --- both ways on one connection; exactly once across retries (issue 10) ----------------

def test_a_reply_on_the_stream_we_opened_reaches_listen_once(net: Net) -> None:
    """A responder-only bot (it never dials) answers on the stream our agent opened:
    the answer is in `listen` exactly once, and the send still exits 0."""
    bot = net.start_raw(net.d, "publish", "echo@h4", "--echo")
    bot.out.wait_for("ready", 10)
    tok = token()
    back = net.start(net.a, "listen", "tester@h1")
    time.sleep(0.5)  # `listen` prints from when it attaches
    sent_ok(net.a, "--wait", "5", "echo@h4", f"{tok} hi bot")
    echoed = back.out.wait_json(lambda r: tok in (r.get("body") or ""), 10)
    assert echoed["body"] == f"echo {tok} hi bot" and echoed["from"] == "echo@h4"
    assert echoed["verified"] is True
    records = mine(inbox(net.a, "tester@h1"), tok)
    assert [r["body"] for r in records] == [f"echo {tok} hi bot"], records


def test_a_connection_cut_before_the_receipt_is_retried_and_stored_once(net: Net) -> None:
    """The receiver stores the message, its receipt never reaches the sender, and the
    sender's connection is then cut: send retries once on a new connection with the same
    id, exits 0, and the receiver's inbox holds the message once. The same
    `send --id` run again does not double it."""
    port = net.ports["tester@h2"]
    sent_ok(net.a, "tester@h2", f"{token()} warm-up")  # the agent's stream stays open
    msg_id = f"cut-{token()}"
    tok = token()
    # On h2, the agent's data on that port is dropped (its receipt never leaves).
    table = f"xmppllcut{tok}"
    rules = (f"table inet {table} {{\n chain out {{\n"
             f"  type filter hook output priority 0;\n"
             f"  tcp sport {port} meta length > 100 drop\n }}\n}}\n")
    net.b.run(["nft", "-f", "-"], input=rules, timeout=10, check=True)
    try:
        sender = net.start(net.a, "send", "--id", msg_id, "tester@h2", f"{tok} once")
        wait_until(lambda: mine(inbox(net.b, "tester@h2"), tok), 10, "the message stored")
        # Cut the sender's connection: it sees the stream end with no receipt.
        net.a.run(["ss", "-K", "dst", net.b.ipv4, "dport", "=", str(port)], timeout=10)
    finally:
        net.b.run(["nft", "delete", "table", "inet", table], timeout=10, check=True)
    assert sender.popen.wait(30) == 0, sender.err.lines
    net.agents["tester@h1"].err.wait_for(lambda line: f"sending {msg_id} again" in line, 5)
    records = mine(inbox(net.b, "tester@h2"), tok)
    assert [(r["body"], r["id"]) for r in records] == [(f"{tok} once", msg_id)], records
    sent_ok(net.a, "--id", msg_id, "tester@h2", f"{tok} once")
    assert len(mine(inbox(net.b, "tester@h2"), tok)) == 1, "a retry with --id was stored"
