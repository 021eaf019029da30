"""Faults on the virtual LAN: a slow lossy link, peers dying mid-stream, a full disk, a
closed output pipe, an agent killed with -9.

The rule under every fault: say so (non-zero exit, one error line, a logged reason),
never claim a success that did not happen, lose nothing that was acknowledged, and keep
working once the fault is gone.

The link is impaired only inside the LAN's own namespaces: by tests/netimpair.py's
HubLan (a user-space hub delaying and dropping frames between TAP devices; the kernel
here has no netem) and by nftables rules in a host's namespace.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import lan_missing, require
from lan import Host, Lan, Lines, wait_until
from netimpair import HubLan, nft_dropped, nft_loss

HELPERS = Path(__file__).parent / "helpers"
DYING_PEER = str(HELPERS / "dying_peer.py")
PY = sys.executable
BIG = 500 * 1024

pytestmark = pytest.mark.lan


def require_nft() -> None:
    require(shutil.which("nft") is not None, "nftables (the `nft` command)")


def token() -> str:
    return "t" + secrets.token_hex(4)


def start_agent(host: Host, *args: str, env: dict[str, str] | None = None,
                timeout: float = 20) -> tuple[subprocess.Popen[str], Lines, Lines, dict]:
    proc = host.xmppll_popen("announce", "--json", *args, env=env)
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    try:
        record = out.wait_json(lambda r: r["event"] == "announced", timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nstderr: {err.lines}") from None
    return proc, out, err, record


def inbox(host: Host, name: str, state: Path | None = None) -> list[dict[str, Any]]:
    """The agent's inbox, parsed strictly: every line a complete JSON object, seq
    strictly increasing."""
    path = (state or Path(host.env["XDG_STATE_HOME"])) / "xmppll" / name / "inbox.jsonl"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    assert not data or data.endswith(b"\n"), "torn last line"
    records = [json.loads(line) for line in data.decode().split("\n") if line]
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(set(seqs)), seqs
    return records


def bodies(records: list[dict[str, Any]], tok: str) -> list[str]:
    return [r["body"] for r in records if tok in (r.get("body") or "")]


def fails(done: subprocess.CompletedProcess[str]) -> str:
    """A failure said properly: non-zero exit, one `xmppll: error:` line, no trace."""
    assert done.returncode not in (0, None), (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("xmppll: error: ")]
    assert len(errors) == 1, done.stderr
    return errors[0]


def established(host: Host, port: int) -> int:
    """TCP connections established to local `port` on `host`."""
    done = subprocess.run(["ip", "netns", "exec", host.netns, "ss", "-tnH", "state",
                           "established", f"( sport = :{port} )"], capture_output=True,
                          text=True)
    return len(done.stdout.splitlines())


# --- a slow, lossy link ---------------------------------------------------------------------


@pytest.fixture
def slow_lan() -> Iterator[HubLan]:
    """h1 (no agent) and ten agents tester@h2..tester@h11, on a hub that is clean while
    they announce; the test then sets the impairment."""
    missing = lan_missing()
    require(missing is None, f"virtual LAN support: {missing}")
    require(os.path.exists("/dev/net/tun"), "/dev/net/tun (TAP devices)")
    with HubLan(11) as lan:
        procs = [h.xmppll_popen("announce", "--json") for h in lan.hosts[1:]]
        for proc in procs:
            Lines(proc.stdout).wait_json(lambda r: r["event"] == "announced", 30)
        yield lan


def test_lossy_slow_link_browse_finds_all_and_send_delivers(slow_lan: HubLan) -> None:
    """20 % of frames lost (each way, each copy) and 200 ms each way: a one-shot browse
    still lists all ten peers, and send delivers (TCP retransmits within --timeout)."""
    lan = slow_lan
    a, b = lan.hosts[0], lan.hosts[1]
    want = {f"tester@h{i}" for i in range(2, 12)}
    lan.impair(delay=0.2, loss=0.2)
    timings = []
    for _ in range(2):
        start = time.monotonic()
        done = a.xmppll("browse", "--json", "--no-agent", "--timeout", "25", timeout=40)
        took = time.monotonic() - start
        assert done.returncode == 0, done.stderr
        listed = {json.loads(line)["name"] for line in done.stdout.splitlines()}
        assert listed == want, f"missing {want - listed} after {took:.1f} s"
        timings.append(took)

    tok = token()
    sends = []
    for args in (("--wait", "10"), ("--wait", "10", "--receipt")):
        start = time.monotonic()
        done = a.xmppll("send", "tester@h2", f"{tok} {' '.join(args)}", *args,
                        "--timeout", "60", timeout=90)
        sends.append(time.monotonic() - start)
        assert done.returncode == 0, done.stderr
    big = f"{tok} big " + "x" * 20000
    start = time.monotonic()
    done = a.xmppll("send", "tester@h2", "--wait", "10", "--timeout", "60", input=big,
                    timeout=90)
    sends.append(time.monotonic() - start)
    assert done.returncode == 0, done.stderr
    got = bodies(inbox(b, "tester@h2"), tok)
    assert got == [f"{tok} --wait 10", f"{tok} --wait 10 --receipt", big]
    stats = lan.hub_stats()
    print(f"\nbrowse --no-agent, 10 peers, 20 % loss + 200 ms: {timings[0]:.1f} s, "
          f"then {timings[1]:.1f} s (wall, process start included)\n"
          f"send: {sends[0]:.1f} s; --receipt: {sends[1]:.1f} s; 20 KB: {sends[2]:.1f} s\n"
          f"hub: {stats}")
    assert stats["lost"] > 0


def test_send_under_nft_loss_delivers_each_message_once(lan: Lan) -> None:
    """20 % of the packets into either host dropped by nftables: a batch of messages
    sent standalone (one stream each) all arrive, each once, in order."""
    require_nft()
    a, b, _ = lan.hosts
    _, _, _, record = start_agent(b)
    COUNT = 6  # noqa: N806 (a constant of this test)
    for host in (a, b):
        nft_loss(host, 20)
    tok = token()
    lines = "".join(f"{tok} {i}\n" for i in range(COUNT))
    start = time.monotonic()
    done = a.xmppll("send", "tester@h2", "--lines", "--wait", "10", "--timeout", "30",
                    input=lines, timeout=300)
    took = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    assert bodies(inbox(b, "tester@h2"), tok) == [f"{tok} {i}" for i in range(COUNT)]
    dropped = nft_dropped(a) + nft_dropped(b)
    print(f"\n{COUNT} messages, one stream each, 20 % loss into both hosts: {took:.1f} s; "
          f"{dropped} packets dropped")
    assert dropped > 0


# --- peers dying mid-stream ------------------------------------------------------------------


def start_dying(host: Host, name: str, after: int,
                *extra: str) -> tuple[subprocess.Popen[str], Lines]:
    proc = host.popen([PY, DYING_PEER, name, "--after", str(after), *extra])
    out = Lines(proc.stdout)
    out.wait_for("ready", 15)
    return proc, out


@pytest.mark.parametrize(("after", "how", "size"), [(0, "kill", BIG), (100_000, "kill", BIG),
                                                    (0, "close", 8000), (0, "read-all", BIG)])
def test_peer_dying_mid_stream_is_never_a_success(lan: Lan, after: int, how: str,
                                                  size: int) -> None:
    """A peer that reads the stream header (and maybe 100 KB) of a 500 KB message and
    is killed; or one that closes its side (a FIN: what a peer done reading sends) with
    8 KB of ours unread, then dies; or one that reads the whole message and our closing
    tag and dies without closing the stream (an agent killed before its fsync). Send,
    standalone and through an agent, fails every time: the last two were counted
    deliveries once."""
    a, b, c = lan.hosts
    start_agent(a)
    extra = () if how == "kill" else (f"--{how}",)
    alone, alone_out = start_dying(b, "alone@h2", after, *extra)
    via, via_out = start_dying(b, "via@h2", after, *extra)
    body = token() + " " + "y" * size
    done = c.xmppll("send", "alone@h2", "--wait", "5", input=body, timeout=60)
    alone_out.wait_for("dying", 5)
    line = fails(done)
    print(f"\nstandalone: exit {done.returncode}: {line}")
    done = a.xmppll("send", "via@h2", "--wait", "5", input=body, timeout=60)
    via_out.wait_for("dying", 5)
    line = fails(done)
    print(f"via the agent: exit {done.returncode}: {line}")
    for proc in (alone, via):
        assert proc.wait(5) == -signal.SIGKILL


def test_agent_killed_while_a_large_message_is_in_flight(lan: Lan) -> None:
    """kill -9 of the receiving agent while 500 KB crawl to it (an nftables rate limit
    holds the transfer at ~100 KB/s): send fails, and the restarted agent's inbox holds
    no part of it."""
    require_nft()
    a, b, _ = lan.hosts
    proc, _, _, _ = start_agent(b, "--port", "5310")
    subprocess.run(["ip", "netns", "exec", b.netns, "nft", "-f", "-"], check=True, text=True,
                   input="table inet xmppll_rate {\n chain input {\n"
                         "  type filter hook input priority 0;\n"
                         "  tcp dport 5310 limit rate over 100 kbytes/second drop\n }\n}\n")
    tok = token()
    sender = a.xmppll_popen("send", "tester@h2", "--timeout", "60", "-v",
                            stdin=subprocess.PIPE)
    sender.stdin.write(f"{tok} " + "z" * BIG)
    sender.stdin.close()
    wait_until(lambda: established(b, 5310), 10, "the sender's connection")
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(5)
    code = sender.wait(70)
    err = sender.stderr.read()
    assert code != 0, f"send reported success to a killed agent: {err}"
    assert "xmppll: error: " in err and "Traceback" not in err, err
    start_agent(b, "--port", "5310")
    assert bodies(inbox(b, "tester@h2"), tok) == []


# --- a full disk -----------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755",
                    "xmppll-test", str(path)], check=True)
    try:
        yield path
    finally:
        # Lazy: the agent may still hold the inbox open; the LAN kills it later.
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Use up every free page of the file system at `path`."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as fh:
        while True:
            try:
                fh.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    return filler


def test_inbox_disk_full_refuses_without_receipt_and_recovers(lan: Lan) -> None:
    a, b, _ = lan.hosts
    with small_tmpfs(b.home / "small-state", "64k") as state:
        env = {**b.env, "XDG_STATE_HOME": str(state)}
        agent, _, agent_err, _ = start_agent(b, env=env)
        tok = token()
        # Bodies bigger than a page: an append cannot fit in the inbox's last page.
        pad = " " + "p" * 9000
        assert a.xmppll("send", "tester@h2", f"{tok} before{pad}").returncode == 0
        filler = fill(state)

        lost = fails(a.xmppll("send", "tester@h2", f"{tok} lost{pad}"))
        start = time.monotonic()
        lost_receipt = fails(a.xmppll("send", "--receipt", "tester@h2",
                                      f"{tok} lost-receipt{pad}"))
        assert time.monotonic() - start < 5, "the sender waited out its timeout"
        assert "resource-constraint" in lost and "resource-constraint" in lost_receipt
        print(f"\ndisk full: send: {lost}\nsend --receipt: {lost_receipt}")
        wait_until(lambda: any("No space left" in line for line in agent_err.lines), 5,
                   "the agent to log the full disk")
        assert agent.poll() is None, "the agent died of a full disk"
        assert b.xmppll("status", env=env).returncode == 0
        assert bodies(inbox(b, "tester@h2", state), tok) == [f"{tok} before{pad}"]

        filler.unlink()
        assert a.xmppll("send", "tester@h2", f"{tok} after{pad}").returncode == 0
        assert a.xmppll("send", "--receipt", "tester@h2", f"{tok} after-receipt").returncode == 0
        assert bodies(inbox(b, "tester@h2", state), tok) == [
            f"{tok} before{pad}", f"{tok} after{pad}", f"{tok} after-receipt"]
        assert not any("Traceback" in line for line in agent_err.lines), agent_err.lines


# --- a closed output pipe ------------------------------------------------------------------


def test_listen_into_closed_pipe_exits_74_and_loses_nothing(lan: Lan) -> None:
    a, b, _ = lan.hosts
    start_agent(b)
    tok = token()
    listen = f"{PY} -m xmppll listen tester@h2"
    pipe = b.popen(["sh", "-c", f"{{ {listen}; echo \"listen exit $?\" >&2; }} | "
                    "(head -1; exec 0<&-; echo 'head exited' >&2; sleep 30)"],
                   start_new_session=True)
    out, err = Lines(pipe.stdout), Lines(pipe.stderr)
    time.sleep(1.0)  # listen has subscribed to the inbox
    assert a.xmppll("send", "tester@h2", f"{tok} one").returncode == 0
    assert json.loads(out.wait_for(tok, 10))["body"] == f"{tok} one"
    err.wait_for("head exited", 10)
    assert a.xmppll("send", "tester@h2", f"{tok} two").returncode == 0
    assert err.wait_for("listen exit", 10) == "listen exit 74"
    errors = [line for line in err.lines if line.startswith("xmppll:")]
    assert len(errors) == 1 and errors[0].startswith("xmppll: error: "), err.lines
    assert "pipe" in errors[0]
    os.killpg(pipe.pid, signal.SIGTERM)
    later = b.xmppll_popen("listen", "tester@h2", "--backlog")
    later_out = Lines(later.stdout)
    assert json.loads(later_out.wait_for(tok, 10))["body"] == f"{tok} two"


# --- an agent killed with -9 -----------------------------------------------------------------

SENDER = r"""
import subprocess, sys, threading
tok, workers = sys.argv[1], int(sys.argv[2])
count = iter(range(10**6))
lock = threading.Lock()
def work():
    while True:
        with lock:
            i = next(count)
        body = f"{tok} {i}"
        done = subprocess.run([sys.executable, "-m", "xmppll", "send", "tester@h2", body,
                               "--timeout", "5"], capture_output=True, text=True)
        with lock:
            print("ok" if done.returncode == 0 else f"fail {done.returncode}", body,
                  flush=True)
for _ in range(workers):
    threading.Thread(target=work, daemon=True).start()
threading.Event().wait()
"""


def test_agent_killed_and_restarted_keeps_inbox_and_withdraws_stale(lan: Lan) -> None:
    a, b, c = lan.hosts
    follower = c.xmppll_popen("browse", "--follow", "--json")  # no agent on h3
    seen = Lines(follower.stdout)

    def state_on_c(kind: str, **fields: Any) -> dict[str, Any]:
        return seen.wait_json(lambda r: r["event"] == kind and r["name"] == "tester@h2"
                              and all(r[k] == v for k, v in fields.items()), 10)

    agent, _, _, _ = start_agent(b, "--port", "5321")
    state_on_c("added", port=5321)

    # Messages keep coming (three senders on h1) while the agent is killed.
    tok = token()
    sender = a.popen([PY, "-c", SENDER, tok, "3"], start_new_session=True)
    results = Lines(sender.stdout)
    wait_until(lambda: sum(line.startswith("ok") for line in results.lines) >= 10, 30,
               "ten messages delivered")
    agent.send_signal(signal.SIGKILL)
    agent.wait(5)
    # Sends against the dead agent fail (no answer on the link: exit 68).
    wait_until(lambda: sum(line.startswith("fail") for line in results.lines) >= 3, 20,
               "three sends to fail against the dead agent")
    os.killpg(sender.pid, signal.SIGKILL)
    sender.wait(5)
    time.sleep(0.2)
    delivered = [line.split(" ", 1)[1] for line in list(results.lines) if line.startswith("ok")]
    failed = [line for line in results.lines if line.startswith("fail")]
    stored = bodies(inbox(b, "tester@h2"), tok)
    assert set(delivered) <= set(stored), f"acknowledged but lost: {set(delivered) - set(stored)}"
    assert len(stored) == len(set(stored))
    print(f"\nkill -9 under load: {len(delivered)} sends succeeded, {len(failed)} failed, "
          f"{len(stored)} stored (stored but unconfirmed: {len(set(stored) - set(delivered))})")

    # The dead agent's records are still cached on h3 (no goodbye was sent). The
    # restarted agent replaces them: h3 follows it to its new port.
    agent, _, _, record = start_agent(b, "--port", "5322")
    assert record["name"] == "tester@h2"
    state_on_c("updated", port=5322)
    listed = [json.loads(line) for line in c.xmppll("browse", "--json", "--no-agent").stdout
              .splitlines()]
    assert [(p["name"], p["port"]) for p in listed] == [("tester@h2", 5322)]
    assert a.xmppll("send", "tester@h2", f"{tok} after restart").returncode == 0
    records = inbox(b, "tester@h2")
    assert bodies(records, tok)[-1] == f"{tok} after restart"
    assert set(stored) <= set(bodies(records, tok))

    # Killed again, and this time withdrawn as stale: h3 drops it at once.
    agent.send_signal(signal.SIGKILL)
    agent.wait(5)
    done = b.xmppll("withdraw", "--stale", "--json")
    assert done.returncode == 0, done.stderr
    start = time.monotonic()
    state_on_c("removed")
    assert time.monotonic() - start < 5
    listed = c.xmppll("browse", "--json", "--no-agent").stdout
    assert not re.search(r'"name": "tester@h2"', listed), listed
