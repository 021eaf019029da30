"""Self-tests of the virtual LAN: every end-to-end test trusts these properties."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest
from conftest import require
from lan import Lan, Lines, ensure_user

# Joins the mDNS group on eth0 and prints "SOURCE PAYLOAD" per datagram. The IPv4 join
# names no interface, as most mDNS stacks do, so it also checks the multicast route.
LISTEN = r"""
import socket, struct, sys
group = sys.argv[1]
if ":" in group:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", 5353))
    ifindex = struct.pack("@I", socket.if_nametoindex("eth0"))
    mreq = socket.inet_pton(socket.AF_INET6, group) + ifindex
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", 5353))
    mreq = socket.inet_aton(group) + socket.inet_aton("0.0.0.0")
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(2048)
    print(addr[0].partition("%")[0], data.decode(errors="replace"), flush=True)
"""

SEND = r"""
import socket, sys
group, payload = sys.argv[1], sys.argv[2].encode()
if ":" in group:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    s.sendto(payload, (group, 5353, 0, socket.if_nametoindex("eth0")))
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
    s.sendto(payload, (group, 5353))
"""


def _gone(pid: int) -> bool:
    """A pid that no longer runs; a zombie nobody reaped yet counts as gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _netns_names() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_hosts_have_distinct_hostnames(lan: Lan) -> None:
    seen = [h.run(["hostname"], check=True).stdout.strip() for h in lan.hosts]
    assert seen == ["h1", "h2", "h3"]
    py = lan[1].run([sys.executable, "-c", "import socket; print(socket.gethostname())"])
    assert py.stdout.strip() == "h2"


def test_hosts_have_private_homes(lan: Lan) -> None:
    h1, h2 = lan[0], lan[1]
    assert h1.home != h2.home
    out = h1.run(["sh", "-c", 'echo "$USER $HOME $XDG_RUNTIME_DIR"'], check=True).stdout.split()
    assert out == ["tester", str(h1.home), h1.env["XDG_RUNTIME_DIR"]]
    assert stat.S_IMODE(os.stat(h1.env["XDG_RUNTIME_DIR"]).st_mode) == 0o700


@pytest.mark.parametrize("family", ["ipv4", "ipv6_ll"])
def test_ping(lan: Lan, family: str) -> None:
    require(shutil.which("ping") is not None, "ping (apt-get install iputils-ping)")
    target = lan[1].ipv4 if family == "ipv4" else f"{lan[1].ipv6_ll}%eth0"
    done = lan[0].run(["ping", "-c1", "-W2", target])
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("group", ["224.0.0.251", "ff02::fb"])
def test_mdns_multicast_reaches_other_host(lan: Lan, group: str) -> None:
    h1, h2 = lan[0], lan[1]
    listener = h2.popen([sys.executable, "-c", LISTEN, group])
    out = Lines(listener.stdout)
    out.wait_for("ready", timeout=10)
    token = f"hello-{lan.runid}"
    h1.run([sys.executable, "-c", SEND, group, token], check=True)
    source = out.wait_for(token, timeout=5).split()[0]
    assert source == (h1.ipv4 if "." in group else h1.ipv6_ll)


def test_added_host_joins_the_link(lan: Lan) -> None:
    h4 = lan.add_host()
    assert h4.run(["hostname"]).stdout.strip() == "h4"
    assert h4.ipv6_ll.startswith("fe80:")
    require(shutil.which("ping") is not None, "ping (apt-get install iputils-ping)")
    done = h4.run(["ping", "-c1", "-W2", lan[0].ipv4])
    assert done.returncode == 0, done.stdout + done.stderr


def test_run_as_another_user(lan: Lan) -> None:
    uid = ensure_user("xmppll-other")
    done = lan[0].run(
        ["sh", "-c", 'id -u; hostname; echo "$HOME"'], user="xmppll-other", check=True
    )
    home = lan[0].env_for("xmppll-other")["HOME"]
    assert done.stdout.split() == [str(uid), "h1", home]
    assert os.stat(home).st_uid == uid


def test_close_removes_everything(lan_factory: Callable[..., Lan]) -> None:
    lan = lan_factory(2)
    tracked = lan[0].popen(["sleep", "300"])
    out = Lines(tracked.stdout)
    # Started by a command that has already exited, like an agent that daemonizes.
    orphan = int(lan[1].run(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"]).stdout)
    assert lan.runid in _netns_names()
    lan.close()
    lan.close()
    assert tracked.poll() is not None
    assert _gone(orphan)
    assert lan.runid not in _netns_names()
    assert not lan.tmp.exists()
    with pytest.raises(AssertionError, match="stream ended"):
        out.wait_for("never", timeout=5)


def _pipe() -> tuple[Lines, IO[str]]:
    r, w = os.pipe()
    return Lines(os.fdopen(r)), os.fdopen(w, "w")


def test_lines_wait_for_times_out() -> None:
    lines, writer = _pipe()
    writer.write("first\n")
    writer.flush()
    with pytest.raises(AssertionError, match=r"(?s)within 0.2 s.*first"):
        lines.wait_for("never", timeout=0.2)
    writer.close()


def test_lines_returns_only_new_lines() -> None:
    lines, writer = _pipe()
    writer.write('first\n{"event": "added", "n": 1}\n[1]\n{"n": 2}\nlast\n')
    writer.flush()
    assert lines.wait_for("first", timeout=5) == "first"
    assert lines.wait_json(lambda r: r["n"] == 2, timeout=5) == {"n": 2}
    with pytest.raises(AssertionError):  # already passed over
        lines.wait_for("first", timeout=0.1)
    assert lines.wait_for(str.isalpha, timeout=5) == "last"
    writer.close()


def test_lines_fails_at_once_when_stream_ends() -> None:
    lines, writer = _pipe()
    writer.write("bye\n")
    writer.close()
    with pytest.raises(AssertionError, match="stream ended"):
        lines.wait_for("never", timeout=30)
    assert lines.closed()
    assert lines.lines == ["bye"]
