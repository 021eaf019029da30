"""The agent as a warm cache (issue 4), end to end on the virtual LAN.

One-shot commands are clients of a running agent: `browse` answers from its cache,
`send` is delivered by it over a reused stream, and neither imports the mDNS or XML
stacks. The agent keeps its cache true (dead peers leave when their SRV/A expire, a
burst loses no event) and survives hostile or broken clients on its control socket.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess, Popen
from typing import Any

import pytest
from lan import Host, Lan, Lines, ensure_user
from xmppll_side import wait_until

ZC_PEERS = str(Path(__file__).parent / "helpers" / "zc_peers.py")
OTHER_USER = "xmppll-other"

# A raw control-socket client: sends each request (stdin: a JSON list of the raw bytes
# in hex) and prints
# the reply line as JSON ({"eof": true} when the agent closed, {"raw": ...} when the
# reply is not JSON, {"oserror": ...} when it could not even connect).
CONTROL_CLIENT = r"""
import json, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(path)
except OSError as exc:
    print(json.dumps({"oserror": type(exc).__name__, "errno": exc.errno}), flush=True)
    sys.exit(0)
f = s.makefile("rb")
for request in json.load(sys.stdin):
    try:
        s.sendall(bytes.fromhex(request))
    except OSError:
        pass  # the agent may have answered and hung up already: read that answer
    try:
        line = f.readline()
    except OSError as exc:
        print(json.dumps({"oserror": type(exc).__name__}), flush=True)
        break
    if not line:
        print(json.dumps({"eof": True}), flush=True)
        break
    try:
        print(json.dumps(json.loads(line)), flush=True)
    except ValueError:
        print(json.dumps({"raw": line.decode("latin-1")}), flush=True)
"""

# Two rude clients on one agent: one connects and says nothing, one asks to `follow`
# and never reads. Prints "ready", then how many bytes wait unread in the follower's
# socket (SIOCINQ) every 0.2 s, so a test can see the agent's side fill up.
RUDE_CLIENTS = r"""
import fcntl, socket, struct, sys, termios, time
path = sys.argv[1]
silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
silent.connect(path)
stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
stuck.connect(path)
stuck.sendall(b'{"v": 1, "op": "follow"}\n')
print("ready", flush=True)
while True:
    queued = struct.unpack("i", fcntl.ioctl(stuck, termios.FIONREAD, b"\0" * 4))[0]
    print("queued", queued, flush=True)
    time.sleep(0.2)
"""


@dataclass
class Agent:
    proc: Popen[Any]
    out: Lines
    err: Lines
    record: dict[str, Any]

    @property
    def name(self) -> str:
        return self.record["name"]


def start_agents(*specs: tuple[Host, tuple[str, ...]], timeout: float = 15) -> list[Agent]:
    """`announce ARGS` on each host, all at once (probing runs in parallel); returns
    once each has printed `announced`."""
    procs = [(host.xmppll_popen("announce", "--json", *args)) for host, args in specs]
    agents = []
    for proc in procs:
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        try:
            record = out.wait_json(lambda r: r["event"] == "announced", timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nstderr:\n" + "\n".join(err.lines)) from None
        agents.append(Agent(proc, out, err, record))
    return agents


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def names(records: Iterable[dict[str, Any]]) -> set[str]:
    return {r["name"] for r in records}


def browse(host: Host, *args: str, **kw: Any) -> tuple[CompletedProcess[str], float]:
    start = time.monotonic()
    done = host.xmppll("browse", "--json", *args, **kw)
    return done, time.monotonic() - start


def wait_cached(host: Host, wanted: set[str], timeout: float = 10) -> list[dict[str, Any]]:
    """Poll the agent's cache (browse through the agent) until it lists `wanted`."""
    deadline = time.monotonic() + timeout
    while True:
        done, _ = browse(host)
        assert done.returncode == 0, done.stderr
        peers = jsonl(done.stdout)
        if wanted <= names(peers):
            return peers
        if time.monotonic() > deadline:
            raise AssertionError(f"{host.name}'s agent never listed {wanted - names(peers)}")
        time.sleep(0.2)


def socket_of(host: Host, name: str) -> Path:
    return Path(host.env["XDG_RUNTIME_DIR"]) / "xmppll" / f"{name}.sock"


def control(host: Host, path: Path, *requests: bytes, user: str | None = None,
            ) -> list[dict[str, Any]]:
    """Raw requests on the control socket at `path`, one reply each (see CONTROL_CLIENT)."""
    done = host.run([sys.executable, "-c", CONTROL_CLIENT, str(path)], user=user,
                    input=json.dumps([r.hex() for r in requests]), timeout=20)
    assert done.returncode == 0, done.stderr
    return jsonl(done.stdout)


def request(op: str, **args: Any) -> bytes:
    return (json.dumps({"v": 1, "op": op, **args}) + "\n").encode()


def imported_modules(stderr: str) -> set[str]:
    """Module names from `python -X importtime` output."""
    found = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":  # the header line
                found.add(name)
    return found


def heavy(modules: set[str]) -> set[str]:
    """The modules a one-shot command through the agent must not load."""
    roots = ("zeroconf", "xml", "defusedxml", "asyncio", "ssl")
    return {m for m in modules if m.split(".")[0] in roots}


# What a command through the agent must not import either (issue 14): each costs ~0.5-5 ms
# of a 10 ms budget. The entry point runs on an interpreter without site, so the editable
# install's finder, which loads re and pathlib itself, hides none. (pip's launcher of an
# installed `xmppll` adds re: pyproject.toml says why it is kept.)
STDLIB_HEAVY = {"re", "enum", "json", "socket", "selectors", "pathlib", "contextlib",
                "typing", "collections", "functools", "warnings", "logging", "threading",
                "subprocess", "fnmatch"}
ROOT = Path(__file__).resolve().parent.parent
BARE = [sys.executable, "-S", "-X", "importtime", "-c",
        "from xmppll.cli.fast import main; main()"]


def bare_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "PYTHONPATH": str(ROOT)}


def count_events(lines: Lines, event: str, prefix: str) -> set[str]:
    found = set()
    for line in list(lines.lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event and record.get("name", "").startswith(prefix):
            found.add(record["name"])
    return found


def wait_count(lines: Lines, event: str, prefix: str, n: int, timeout: float) -> float:
    """Wait until `n` distinct names starting with `prefix` had `event`; the seconds it took."""
    start = time.monotonic()
    while True:
        seen = count_events(lines, event, prefix)
        if len(seen) >= n:
            return time.monotonic() - start
        if time.monotonic() - start > timeout or lines.closed():
            raise AssertionError(f"only {len(seen)} of {n} {event!r} events for "
                                 f"{prefix}* within {timeout} s")
        time.sleep(0.1)


# --- browse from the cache ------------------------------------------------------------

NO_MDNS = """
table inet xmppll_test {
    chain input { type filter hook input priority 0; udp dport 5353 drop; udp sport 5353 drop; }
    chain output { type filter hook output priority 0; udp dport 5353 drop; udp sport 5353 drop; }
}
"""


def test_browse_answers_from_the_agent_cache(lan: Lan) -> None:
    a, b, c = lan.hosts
    start_agents((a, ()), (b, ()), (c, ()))
    wait_cached(a, {"tester@h2", "tester@h3"})
    # Cut host A off mDNS entirely (nothing in, nothing out): whatever browse prints
    # now can only come from the agent's memory.
    cut = a.run(["nft", "-f", "-"], input=NO_MDNS)
    assert cut.returncode == 0, cut.stderr

    done, wall = browse(a, "--timeout", "0.05")
    assert done.returncode == 0, done.stderr
    peers = jsonl(done.stdout)
    assert names(peers) == {"tester@h2", "tester@h3"}  # not itself
    by_name = {p["name"]: p for p in peers}
    assert c.ipv4 in by_name["tester@h3"]["addresses"]
    assert by_name["tester@h2"]["status"] == "avail"
    assert all("event" not in p for p in peers)
    assert wall < 2.0

    # The control: without the agent, the same browse on the same cut-off host finds
    # nobody, so the listing above did not come from the link.
    done, _ = browse(a, "--no-agent", "--timeout", "0.5")
    assert done.returncode == 0, done.stderr
    assert jsonl(done.stdout) == []

    # A pattern filters the cached list; --table renders it for a person.
    done, _ = browse(a, "*@h3")
    assert names(jsonl(done.stdout)) == {"tester@h3"}
    table = a.xmppll("browse", "--table")
    assert table.returncode == 0 and "tester@h2" in table.stdout and "tester@h3" in table.stdout


# --- send through the agent --------------------------------------------------------------

def test_send_through_the_agent_reuses_one_stream(lan: Lan) -> None:
    a, b, _ = lan.hosts
    agent_a, _agent_b = start_agents((a, ()), (b, ()))
    wait_cached(a, {"tester@h2"})
    wait_cached(b, {"tester@h1"})
    listener = b.xmppll_popen("listen", "--json", "--backlog")  # none missed at start
    inbox = Lines(listener.stdout)

    received = []
    for i in range(10):
        done = a.xmppll("send", "tester@h2", f"hello {i}", timeout=30)
        assert done.returncode == 0, done.stderr
        assert done.stdout == ""
        received.append(inbox.wait_json(lambda r, i=i: r["body"] == f"hello {i}", 10))

    first = received[0]
    assert first["from"] == agent_a.name == "tester@h1"
    assert first["to"] == "tester@h2"
    assert first["verified"] is True
    assert all(r["verified"] is True and r["from"] == "tester@h1" for r in received)
    # One TCP connection carried all ten: the same source port at B every time.
    assert {(r["peer"]["address"], r["peer"]["port"]) for r in received} == {
        (first["peer"]["address"], first["peer"]["port"])
    }
    assert first["peer"]["address"] in agent_a.record["addresses"]

    # The agent's own count, from the `send` op's reply: still the one stream.
    reply, = control(a, socket_of(a, "tester@h1"),
                     request("send", message={"to": "tester@h2", "body": "eleventh"}))
    assert reply["ok"] is True, reply
    assert reply["to"] == "tester@h2"
    assert reply["streams_opened"] == 1
    assert inbox.wait_json(lambda r: r["body"] == "eleventh", 10)["peer"]["port"] == \
        first["peer"]["port"]

    # A name nobody publishes: the agent says so with the standalone exit code.
    done = a.xmppll("send", "nobody@h9", "hi", timeout=30)
    assert done.returncode == 68, (done.returncode, done.stderr)
    assert "nobody@h9" in done.stderr


def test_one_shot_commands_through_the_agent_stay_lean(lan: Lan) -> None:
    """Every command a running agent answers loads neither click (the agent path
    parses with its generated table) nor zeroconf, the XML stack, asyncio or ssl, nor,
    from its entry point, any of the standard library's slow imports (STDLIB_HEAVY),
    and prints what the click CLI prints (XMPPLL_NO_FAST=1)."""
    a, b, _ = lan.hosts
    start_agents((a, ()), (b, ()))
    wait_cached(a, {"tester@h2"})
    py = [sys.executable, "-X", "importtime", "-m", "xmppll"]
    completing = {**a.env, "_XMPPLL_COMPLETE": "bash_complete",
                  "COMP_LINE": "xmppll send tester@", "COMP_WORDBREAKS": " \t\n\"'@><=;|&(:"}
    cases: list[tuple[list[str], dict[str, str] | None]] = [
        (["send", "tester@h2", "lean"], None), (["send", "--receipt", "tester@h2", "r"], None),
        (["status", "--json"], None), (["status", "away", "--msg", "x", "--json"], None),
        (["browse", "--json"], None), (["browse", "--table", "*h2"], None),
        (["browse", "--follow", "--timeout", "0.3", "--json"], None),
        ([], completing),
    ]
    for args, env in cases:
        done = a.run([*py, *args], timeout=30, env=env)
        assert done.returncode == 0, (args, done.stderr[-2000:])
        modules = imported_modules(done.stderr)
        assert "xmppll.agent.control" in modules, args
        assert "click" not in modules and heavy(modules) == set(), (args, heavy(modules))
        slow = a.run([sys.executable, "-m", "xmppll", *args], timeout=30,
                     env={**(env or a.env), "XMPPLL_NO_FAST": "1"})
        assert (slow.returncode, slow.stdout) == (0, done.stdout), args
        if "*h2" in args:
            continue  # a pattern is matched with fnmatch, which imports re
        lean = a.run([*BARE, *args], timeout=30, env=bare_env(env or a.env))
        assert lean.returncode == 0, (args, lean.stderr[-2000:])
        assert imported_modules(lean.stderr) & STDLIB_HEAVY == set(), (
            args, imported_modules(lean.stderr) & STDLIB_HEAVY)
    assert done.stdout == "plain,@h2\n"  # the completion: readline keeps "tester"
    # listen through the agent: its start (up to the inbox stream) is lean as well.
    listener = a.popen([*BARE, "listen", "--json"], env=bare_env(a.env))
    listener_err = Lines(listener.stderr)
    time.sleep(1.0)  # it follows from now on: let it connect first
    stamp = time.monotonic()
    sent = b.xmppll("send", "tester@h1", "to the listener", timeout=30)
    assert sent.returncode == 0, sent.stderr
    assert "to the listener" in Lines(listener.stdout).wait_for("to the listener", 10)
    listener.terminate()
    listener.wait(10)
    time.sleep(0.2)  # the reader thread's last lines
    modules = imported_modules("\n".join(listener_err.lines))
    assert "xmppll.agent.listening" in modules and "click" not in modules
    assert heavy(modules) | modules & STDLIB_HEAVY == set(), modules & STDLIB_HEAVY
    assert time.monotonic() - stamp < 15
    # withdraw, last: the agent goes.
    done = a.run([*BARE, "withdraw", "--json"], timeout=30, env=bare_env(a.env))
    assert done.returncode == 0, done.stderr[-2000:]
    modules = imported_modules(done.stderr)
    assert "click" not in modules and heavy(modules) | modules & STDLIB_HEAVY == set()
    assert jsonl(done.stdout) == [{"event": "withdrawn", "name": "tester@h1"}]
    # The same measure does see the heavy stack where it belongs: without the agent.
    done = a.run([*py, "browse", "--no-agent", "--timeout", "0.3"], timeout=30)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"zeroconf", "asyncio", "click"} <= heavy(imported_modules(done.stderr)) | {
        m.split(".")[0] for m in imported_modules(done.stderr)}


@pytest.mark.parametrize("entry", ["fast path", "click"])
def test_sighup_rereads_the_config_file_and_flags_keep_winning(lan: Lan, entry: str) -> None:
    """announce through either face: on SIGHUP the presence settings that came from the
    config file are read again and re-announced; one given as a flag (or in the
    environment) stays as given."""
    a, b, _ = lan.hosts
    config = Path(a.env["XDG_CONFIG_HOME"]) / "xmppll" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('msg = "before"\nnick = "FromFile"\nfirst = "Ann"\n')
    env = {**a.env, "XMPPLL_LAST": "FromEnv",
           **({"XMPPLL_NO_FAST": "1"} if entry == "click" else {})}
    proc = a.xmppll_popen("announce", "--json", "--nick", "Flag", "hup@h1", env=env)
    out = Lines(proc.stdout)
    first = out.wait_json(lambda r: r["event"] == "announced", 15)
    assert (first["msg"], first["nick"], first["first"], first["last"]) == (
        "before", "Flag", "Ann", "FromEnv")
    config.write_text('msg = "after"\nnick = "Ignored"\nlast = "Ignored"\n')
    proc.send_signal(signal.SIGHUP)
    event = out.wait_json(lambda r: r["event"] == "reloaded", 10)
    assert (event["msg"], event["nick"], event["first"], event["last"]) == (
        "after", "Flag", None, "FromEnv")
    seen = wait_until(lambda: next((p for p in jsonl(b.xmppll("browse", "--json").stdout)
                                    if p["name"] == "hup@h1" and p["msg"] == "after"), None),
                      10, "h2 to see the reloaded presence")
    assert seen["nick"] == "Flag"


# --- status ------------------------------------------------------------------------------

def test_status_lists_every_agent_and_name_picks_one(lan: Lan) -> None:
    a, _, c = lan.hosts
    alice, bob = start_agents((a, ("alice",)), (a, ("bob", "--status", "away")))
    assert (alice.name, bob.name) == ("alice@h1", "bob@h1")

    done = a.xmppll("status", "--json")
    assert done.returncode == 0, done.stderr
    records = jsonl(done.stdout)
    assert names(records) == {"alice@h1", "bob@h1"}
    assert {r["name"]: r["status"] for r in records} == {"alice@h1": "avail", "bob@h1": "away"}
    assert {r["pid"] for r in records} == {alice.proc.pid, bob.proc.pid}

    for pick in ("bob", "bob@h1"):
        done = a.xmppll("status", "--name", pick, "--json")
        assert done.returncode == 0, done.stderr
        assert [r["name"] for r in jsonl(done.stdout)] == ["bob@h1"]

    # A change needs to know which agent: --name says it, and only that one changes.
    done = a.xmppll("status", "dnd", "--msg", "busy", "--name", "alice", "--json")
    assert done.returncode == 0, done.stderr
    assert jsonl(done.stdout)[0]["status"] == "dnd"
    done = a.xmppll("status", "--json")
    assert done.returncode == 0, done.stderr
    states = {r["name"]: r["status"] for r in jsonl(done.stdout)}
    assert states == {"alice@h1": "dnd", "bob@h1": "away"}

    # No agent on this host: say so, EX_UNAVAILABLE.
    done = c.xmppll("status")
    assert done.returncode == 69
    assert done.stderr.startswith("xmppll: error:") and "no agent" in done.stderr
    assert done.stdout == ""
    done = a.xmppll("status", "--name", "carol")
    assert done.returncode == 69 and "carol@h1" in done.stderr


# --- control-socket abuse ----------------------------------------------------------------

def test_control_socket_refuses_another_user(lan: Lan) -> None:
    a, _, _ = lan.hosts
    ensure_user(OTHER_USER)
    agent, = start_agents((a, ()))
    path = socket_of(a, agent.name)
    runtime = Path(a.env["XDG_RUNTIME_DIR"])
    other_env = {**a.env_for(OTHER_USER), "XDG_RUNTIME_DIR": str(runtime)}

    # As set up, another uid cannot even reach the socket: the directory is 0700.
    assert (runtime / "xmppll").stat().st_mode & 0o777 == 0o700
    assert path.stat().st_mode & 0o777 == 0o600
    reply, = control(a, path, request("info"), user=OTHER_USER)
    assert reply == {"oserror": "PermissionError", "errno": 13}
    done = a.xmppll("status", "--name", agent.name, user=OTHER_USER, env=other_env)
    assert done.returncode == 69, done.stderr
    assert done.stderr.startswith("xmppll: error:")

    # File modes can be loosened by mistake; the agent still asks the kernel who is
    # calling (SO_PEERCRED) and refuses.
    runtime.chmod(0o755)
    (runtime / "xmppll").chmod(0o755)
    path.chmod(0o666)
    reply, = control(a, path, request("info"), user=OTHER_USER)
    assert reply["ok"] is False and reply["code"] == 69, reply
    assert "permission denied" in reply["error"]
    # Refused before a word is read: a `withdraw` from it does nothing.
    reply = control(a, path, request("withdraw"), user=OTHER_USER)[0]
    assert reply["ok"] is False and "permission denied" in reply["error"], reply
    done = a.xmppll("status", "--name", agent.name, user=OTHER_USER, env=other_env)
    assert done.returncode == 69
    assert "permission denied" in done.stderr
    done = a.xmppll("withdraw", agent.name, user=OTHER_USER, env=other_env)
    assert done.returncode == 69

    # Its owner is still served, and the agent is still up.
    assert agent.proc.poll() is None
    done = a.xmppll("status", "--json")
    assert done.returncode == 0 and jsonl(done.stdout)[0]["name"] == agent.name


def test_control_socket_answers_malformed_requests(lan: Lan) -> None:
    a, _, _ = lan.hosts
    agent, = start_agents((a, ()))
    path = socket_of(a, agent.name)
    bad = [b"not json\n", b"[1, 2]\n", b'{"v": 1, "op": "nope"}\n',
           b'{"v": 2, "op": "info"}\n', b'{"op": "info"}\n', b'"info"\n',
           b"\xff\xfe\x00garbage\n", request("send", message="not an object")]
    replies = control(a, path, *bad, request("info"))
    assert len(replies) == len(bad) + 1, replies
    for raw, reply in zip(bad, replies, strict=False):
        assert reply.get("v") == 1 and reply.get("ok") is False, (raw, reply)
        assert isinstance(reply["error"], str) and reply["error"], (raw, reply)
        assert reply["code"] in (64, 65), (raw, reply)
    assert "not JSON" in replies[0]["error"]
    assert "unknown op" in replies[2]["error"]
    # The same connection still works after all that.
    assert replies[-1]["ok"] is True and replies[-1]["name"] == agent.name

    # One line far over any request's size: an error reply, then the agent hangs up.
    reply, = control(a, path, b"{" + b"x" * 300_000 + b"\n", request("info"))[:1]
    assert reply.get("ok") is False, reply
    assert "Traceback" not in "\n".join(agent.err.lines)
    done = a.xmppll("status")
    assert done.returncode == 0, done.stderr


def test_silent_and_stuck_clients_do_not_disturb_others(lan: Lan) -> None:
    a, _, c = lan.hosts
    agent, = start_agents((a, ()))
    rude = a.popen([sys.executable, "-c", RUDE_CLIENTS, str(socket_of(a, agent.name))])
    rude_out = Lines(rude.stdout)
    rude_out.wait_for("ready", 10)
    follower = a.xmppll_popen("browse", "--follow", "--json", "many*")
    follow = Lines(follower.stdout)
    time.sleep(0.3)

    # 600 peers with 200-byte status messages: ~0.5 MB of `added` events, far more than
    # a Unix socket buffers for a client that never reads.
    many = c.popen([sys.executable, ZC_PEERS, "600", "--prefix", "many", "--msg-bytes", "200"])
    Lines(many.stdout).wait_for("ready 600", 30)
    took = wait_count(follow, "added", "many", 600, 30)
    assert took < 30

    # The stuck follower's socket filled up and stays full (the agent holds the rest,
    # unable to write it): it got a fraction of what the reading follower got.
    delivered = sum(len(line) + 1 for line in follow.lines)
    time.sleep(0.5)
    queued = [int(line.split()[1]) for line in rude_out.lines[-3:]]
    assert len(set(queued)) == 1 and 30_000 < queued[0] < delivered / 2, (queued, delivered)

    # ...and everyone else is served at once.
    for _ in range(3):
        start = time.monotonic()
        done = a.xmppll("status", "--json")
        assert done.returncode == 0, done.stderr
        done, wall = browse(a, "many*")
        assert done.returncode == 0, done.stderr
        assert len(jsonl(done.stdout)) == 600
        assert time.monotonic() - start < 3.0
        assert wall < 2.0
    assert rude.poll() is None and agent.proc.poll() is None


# --- agent death and restart -------------------------------------------------------------

def test_killed_agent_is_replaced_and_its_records_cleared(lan: Lan) -> None:
    a, b, _ = lan.hosts
    watcher = b.xmppll_popen("browse", "--follow", "--json", "tester@h1")  # no agent on B
    seen = Lines(watcher.stdout)
    first, = start_agents((a, ()))
    path = socket_of(a, first.name)
    seen.wait_json(lambda r: r["event"] == "added" and r["name"] == "tester@h1", 10)

    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(5)
    assert path.exists()  # left behind: nobody cleaned up
    done = a.xmppll("status")
    assert done.returncode == 69, "a dead agent's socket must not count as a running agent"

    # Its records are still cached on B (PTR lives 75 min); a stale withdraw clears them.
    done = a.xmppll("withdraw", "--stale", "tester@h1", "--json")
    assert done.returncode == 0, done.stderr
    assert jsonl(done.stdout) == [{"event": "withdrawn", "name": "tester@h1", "stale": True}]
    start = time.monotonic()
    seen.wait_json(lambda r: r["event"] == "removed" and r["name"] == "tester@h1", 5)
    assert time.monotonic() - start < 5

    # The next agent for the name starts cleanly over the stale socket file.
    assert path.exists()
    second, = start_agents((a, ()))
    assert second.name == "tester@h1"
    done = a.xmppll("status", "--json")
    assert done.returncode == 0, done.stderr
    assert jsonl(done.stdout)[0]["pid"] == second.proc.pid
    seen.wait_json(lambda r: r["event"] == "added" and r["name"] == "tester@h1", 10)

    # A second agent for a name that runs refuses, clearly, and leaves the first alone.
    done = a.xmppll("announce", "--json", timeout=15)
    assert done.returncode == 69
    assert "already running" in done.stderr and "tester@h1" in done.stderr
    assert second.proc.poll() is None
    assert jsonl(a.xmppll("status", "--json").stdout)[0]["pid"] == second.proc.pid
    # ...and withdraw --stale will not speak for a live agent either.
    done = a.xmppll("withdraw", "--stale", "tester@h1")
    assert done.returncode == 69


# --- the cache stays true -----------------------------------------------------------------

def test_dead_peer_leaves_the_cache_when_its_srv_expires(lan: Lan) -> None:
    """kill -9 sends no goodbye. The victim's SRV/A live 5 s, its PTR and TXT the usual
    4500 s: gone within 30 s means the agent acted on SRV/A expiry (RFC 6762 §10.5),
    not on the 75-minute PTR TTL python-zeroconf's browser waits for."""
    a, _, c = lan.hosts
    start_agents((a, ()))
    follower = a.xmppll_popen("browse", "--follow", "--json", "victim*")
    follow = Lines(follower.stdout)
    victim = c.popen([sys.executable, ZC_PEERS, "1", "--prefix", "victim",
                      "--server", "victim-h3", "--host-ttl", "5"])
    Lines(victim.stdout).wait_for("ready 1", 15)
    added = follow.wait_json(lambda r: r["event"] == "added", 10)
    assert added["name"] == "victim0@h3" and added["host"] == "victim-h3.local"

    victim.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    victim.wait(5)
    removed = follow.wait_json(lambda r: r["event"] == "removed", 30)
    took = time.monotonic() - killed
    assert removed["name"] == "victim0@h3"
    assert took < 30
    done, _ = browse(a, "victim*")
    assert jsonl(done.stdout) == []


def test_burst_of_1000_announcements_loses_no_event(lan: Lan) -> None:
    a, _, c = lan.hosts
    start_agents((a, ()))
    follower = a.xmppll_popen("browse", "--follow", "--json", "burst*")
    follow = Lines(follower.stdout)
    time.sleep(0.3)
    burst = c.popen([sys.executable, ZC_PEERS, "1000", "--prefix", "burst"])
    burst_out = Lines(burst.stdout)
    burst_out.wait_for("ready 1000", 30)
    wait_count(follow, "added", "burst", 1000, 60)
    done, _ = browse(a, "burst*")
    assert len(jsonl(done.stdout)) == 1000

    burst.send_signal(signal.SIGTERM)
    burst_out.wait_for("withdrawn 1000", 30)
    wait_count(follow, "removed", "burst", 1000, 60)
    done, _ = browse(a, "burst*")
    assert jsonl(done.stdout) == []

