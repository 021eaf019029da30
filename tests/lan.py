"""A virtual LAN for end-to-end tests: hosts as network namespaces on one bridge.

xmppll speaks mDNS multicast, which must never reach the machine's real network, so every
test that touches the network runs its commands inside namespaces built here. Each host
has its own network namespace (an ``eth0`` on a shared bridge, no route out), its own host
name (a UTS namespace per command), and its own HOME and XDG directories, so two hosts'
commands never share state by accident.

Plain module, no pytest: fixtures in conftest.py wrap it, and it can be used from a REPL
to poke at a LAN by hand.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

IFNAME = "eth0"
_FE80_WAIT = 5.0  # seconds: DAD is off, so the address should appear at once
_TERM_GRACE = 3.0  # seconds between SIGTERM and SIGKILL at close

_open_lans: set[Lan] = set()
_UNSCOPED_FE80 = re.compile(r"\bfe80:[0-9a-f:]*(?![0-9a-f:%])", re.IGNORECASE)


def assert_scoped(text: str, what: str = "browse output") -> None:
    """No IPv6 link-local address without its `%interface`: nothing can connect to one,
    so xmppll must never list it. Every browse run through Host.xmppll and
    Host.xmppll_popen is checked with this."""
    bad = _UNSCOPED_FE80.findall(text)
    assert not bad, f"{what} lists link-local addresses without a scope: {bad}\n{text}"


def ensure_user(name: str) -> int:
    """Return the uid of system user `name`, creating it if missing.

    Tests of "another user" need a real second uid (the control socket must refuse it);
    a system account without home or shell is enough for that and harmless to leave.
    """
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name).pw_uid
    # No check=True: a concurrent run may create the same user between lookup and useradd.
    done = subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        capture_output=True,
        text=True,
    )
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        raise RuntimeError(f"cannot create user {name}: {done.stderr.strip()}") from None


def _ip_batch(lines: Sequence[str], *, force: bool = False) -> None:
    """Run many ip commands in one process: one fork per LAN instead of dozens keeps
    set-up well under a second. `netns exec` inside a batch forks and waits."""
    argv = ["ip", "-force", "-batch", "-"] if force else ["ip", "-batch", "-"]
    done = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True)
    if done.returncode and not force:
        raise RuntimeError(f"ip -batch failed ({done.returncode}): {done.stderr.strip()}")


def _quote(path: Path) -> str:
    """Quote a path for an ip batch line, which splits on blanks unless quoted."""
    return '"' + str(path) + '"'


def _alive(pid: int) -> bool:
    """True while `pid` runs; a zombie counts as gone because it holds no namespace."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


class Host:
    """One machine on the LAN. Commands run through `wrap`, so they see this host's
    network, host name and environment and nothing of the machine running the tests."""

    def __init__(self, lan: Lan, index: int) -> None:
        self.lan = lan
        self.name = f"{lan.prefix}{index}"
        self.netns = f"xl{lan.runid}-{self.name}"
        self.ifname = IFNAME
        self.ipv4 = f"10.77.{lan.subnet}.{index}"
        self.ipv6_ll = ""  # known once the link is up, see Lan._wait_link_local
        self.veth = f"v{lan.runid}{index}"  # the bridge-side end; <= 15 chars
        self.home = lan.tmp / self.name
        self.env = self._make_env(self.home, lan.user, None)
        self._user_envs: dict[str, dict[str, str]] = {}

    def _make_env(self, home: Path, user: str, owner: pwd.struct_passwd | None) -> dict[str, str]:
        runtime = home / "run"
        for d in (home, home / ".config", home / ".local" / "state", runtime):
            d.mkdir(parents=True, exist_ok=True)
            if owner is not None:
                os.chown(d, owner.pw_uid, owner.pw_gid)
        # XDG_RUNTIME_DIR must be private: xmppll puts its control socket there.
        runtime.chmod(0o700)
        env = self.lan.base_env.copy()
        env.update(
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / ".config"),
            XDG_STATE_HOME=str(home / ".local" / "state"),
            XDG_RUNTIME_DIR=str(runtime),
            USER=user,
            LOGNAME=user,
            PYTHONUNBUFFERED="1",
        )
        return env

    def env_for(self, user: str | None) -> dict[str, str]:
        """The environment for commands run as `user` (None: the LAN's default identity).

        Another uid gets its own HOME beside this host's, owned by it, because it could
        neither write to nor be isolated from the default one.
        """
        if user is None:
            return self.env
        if user not in self._user_envs:
            ensure_user(user)
            self._user_envs[user] = self._make_env(
                self.lan.tmp / f"{self.name}.{user}", user, pwd.getpwnam(user)
            )
        return self._user_envs[user]

    def wrap(self, argv: Sequence[str], *, user: str | None = None) -> list[str]:
        """argv that runs `argv` in this host's namespace under its host name, as `user`
        (a real uid) if given. Each step execs the next, so the returned process's pid
        is the command's own and signals reach it directly."""
        if user is not None:
            pw = pwd.getpwuid(ensure_user(user))
            argv = [
                "setpriv",
                f"--reuid={pw.pw_uid}",
                f"--regid={pw.pw_gid}",
                "--init-groups",
                "--",
                *argv,
            ]
        return [
            "ip",
            "netns",
            "exec",
            self.netns,
            "unshare",
            "--uts",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            self.name,
            *argv,
        ]

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | bytes | None = None,
        timeout: float = 60,
        env: dict[str, str] | None = None,
        check: bool = False,
        user: str | None = None,
    ) -> subprocess.CompletedProcess[Any]:
        """Run to completion and capture output (bytes only when `input` is bytes).

        stdin is /dev/null unless `input` is given: commands like `xmppll send` read
        stdin when it is not a terminal and would hang on an inherited one.
        """
        feed: dict[str, Any] = (
            {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        )
        return subprocess.run(
            self.wrap(argv, user=user),
            env=self.env_for(user) if env is None else env,
            capture_output=True,
            text=not isinstance(input, bytes),
            timeout=timeout,
            check=check,
            **feed,
        )

    def popen(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        stdin: Any = None,
        user: str | None = None,
        **kw: Any,
    ) -> subprocess.Popen[Any]:
        """Start a background command; the LAN kills it at close.

        stdout and stderr are text pipes unless overridden in `kw`; stdin=None means
        /dev/null (pass subprocess.PIPE to write to it).
        """
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("text", True)
        proc = subprocess.Popen(
            self.wrap(argv, user=user),
            env=self.env_for(user) if env is None else env,
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            **kw,
        )
        self.lan.procs.append(proc)
        return proc

    def xmppll(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run `python -m xmppll ARGS` on this host (see `run` for keywords). A browse's
        output is checked for unscoped link-local addresses (assert_scoped)."""
        done = self.run([sys.executable, "-m", "xmppll", *args], **kw)
        if args and args[0] == "browse" and isinstance(done.stdout, str):
            assert_scoped(done.stdout, f"{self.name}: xmppll {' '.join(args)}")
        return done

    def xmppll_popen(self, *args: str, **kw: Any) -> subprocess.Popen[Any]:
        """Start `python -m xmppll ARGS` on this host (see `popen` for keywords). A
        browse's output, read through Lines, is checked like `xmppll`'s."""
        proc = self.popen([sys.executable, "-m", "xmppll", *args], **kw)
        if args and args[0] == "browse" and proc.stdout is not None:
            proc.stdout.xmppll_browse = True  # type: ignore[union-attr]
        return proc

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.netns} {self.ipv4} {self.ipv6_ll}>"


class Lan:
    """Hosts h1..hN, each a namespace with `eth0` on bridge `br0` in a namespace of its own.

    Names carry a random run id, so parallel test runs on one machine never collide.
    Everything is torn down by `close` (also on context exit and, as a last resort, at
    interpreter exit).
    """

    def __init__(self, n_hosts: int = 3, *, user: str = "tester", tmp: Path | None = None,
                 prefix: str = "h", subnet: int | None = None) -> None:
        self.runid = secrets.token_hex(3)
        # `prefix` names the hosts (h1, h2...): LANs joined by a router need distinct names.
        self.prefix = prefix
        self.subnet = subnet or random.randrange(1, 254)
        self.user = user
        self.bridge_netns = f"xl{self.runid}-br"
        self.hosts: list[Host] = []
        self.procs: list[subprocess.Popen[Any]] = []
        self._closed = False
        self.tmp = Path(tempfile.mkdtemp(prefix=f"xmppll-lan-{self.runid}-", dir=tmp))
        # Other uids (Host.env_for) need to reach their homes inside.
        self.tmp.chmod(0o755)
        # A bus address in the caller's environment is a path socket, which crosses
        # network namespaces: it would connect a host to the real machine's D-Bus.
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("DBUS_")}
        _open_lans.add(self)
        try:
            self._add_hosts(n_hosts, first=True)
        except BaseException:
            self.close()
            raise

    def __getitem__(self, i: int) -> Host:
        return self.hosts[i]

    def __enter__(self) -> Lan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_host(self) -> Host:
        """Plug one more host into the bridge, e.g. a peer that joins late."""
        return self._add_hosts(1, first=False)[0]

    def _add_hosts(self, count: int, *, first: bool) -> list[Host]:
        start = len(self.hosts) + 1
        if start + count - 1 > 254:
            raise ValueError("a /24 holds at most 254 hosts")
        new = [Host(self, i) for i in range(start, start + count)]
        self.hosts.extend(new)
        br = self.bridge_netns
        lines: list[str] = []
        bridge_cmds: list[str] = []
        if first:
            # The bridge only forwards frames; IPv6 off keeps its own chatter off the wire.
            # Snooping off: without a querier the bridge would stop flooding mDNS.
            lines += [
                f"netns add {br}",
                f"netns exec {br} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
                "net.ipv6.conf.default.disable_ipv6=1",
            ]
            bridge_cmds += [
                "link set lo up",
                "link add br0 type bridge mcast_snooping 0",
                "link set br0 up",
            ]
        for h in new:
            h_cmds = [
                "link set lo up",
                f"addr add {h.ipv4}/24 dev {IFNAME}",
                f"link set {IFNAME} up",
                # Link-scope multicast route: senders and joins that do not name an
                # interface (as on any host with a default route) find eth0.
                f"route add 224.0.0.0/4 dev {IFNAME}",
            ]
            h_file = self.tmp / f".{h.name}.ip"
            h_file.write_text("\n".join(h_cmds) + "\n")
            # DAD off before the link comes up, so fe80:: is usable at once (tests
            # otherwise wait ~1-2 s per host for it to leave the tentative state).
            lines += [
                f"netns add {h.netns}",
                f"link add {h.veth} netns {br} type veth peer name {IFNAME} netns {h.netns}",
                f"netns exec {h.netns} sysctl -qw net.ipv6.conf.all.accept_dad=0 "
                f"net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.{IFNAME}.accept_dad=0",
            ]
            bridge_cmds.append(f"link set {h.veth} master br0 up")
        br_file = self.tmp / ".br.ip"
        br_file.write_text("\n".join(bridge_cmds) + "\n")
        lines.append(f"netns exec {br} ip -batch {_quote(br_file)}")
        lines += [
            f"netns exec {h.netns} ip -batch {_quote(self.tmp / f'.{h.name}.ip')}" for h in new
        ]
        _ip_batch(lines)
        self._wait_link_local(new)
        return new

    def _wait_link_local(self, hosts: list[Host]) -> None:
        """Fill in each host's fe80:: address once the kernel has assigned it."""
        pending = list(hosts)
        deadline = time.monotonic() + _FE80_WAIT
        while pending:
            polls = [
                (
                    h,
                    subprocess.Popen(
                        [
                            "ip",
                            "-j",
                            "-n",
                            h.netns,
                            "-6",
                            "addr",
                            "show",
                            "dev",
                            IFNAME,
                            "scope",
                            "link",
                        ],
                        stdout=subprocess.PIPE,
                        text=True,
                    ),
                )
                for h in pending
            ]
            pending = []
            for h, p in polls:
                out, _ = p.communicate()
                addrs = [
                    a
                    for link in json.loads(out or "[]")
                    for a in link.get("addr_info", [])
                    if not a.get("tentative") and not a.get("dadfailed")
                ]
                if addrs:
                    h.ipv6_ll = addrs[0]["local"]
                else:
                    pending.append(h)
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"no usable fe80:: address on {[h.name for h in pending]}")
            if pending:
                time.sleep(0.02)

    def _namespaces(self) -> list[str]:
        return [self.bridge_netns, *(h.netns for h in self.hosts)]

    def _netns_pids(self) -> set[int]:
        done = subprocess.run(
            ["ip", "-force", "-batch", "-"],
            input="".join(f"netns pids {ns}\n" for ns in self._namespaces()),
            capture_output=True,
            text=True,
        )
        return {int(tok) for tok in done.stdout.split() if tok.isdigit()}

    def _stop_processes(self) -> None:
        """SIGTERM everything on the LAN, SIGKILL what is left after a grace period.

        Not only the tracked Popens: `xmppll announce` leaves an agent running, and
        that must die too or it would keep its namespace (and port) alive.
        """
        pids = self._netns_pids() | {p.pid for p in self.procs if p.poll() is None}
        for pid in pids:
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _TERM_GRACE
        while time.monotonic() < deadline:
            for p in self.procs:
                p.poll()  # reap our own children, or they stay zombies that look alive
            if not any(_alive(pid) for pid in pids):
                break
            time.sleep(0.02)
        # Anything forked during the grace period is caught by the second listing.
        for pid in pids | self._netns_pids():
            if _alive(pid):
                _kill(pid, signal.SIGKILL)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=1)
            if p.stdin:
                with contextlib.suppress(OSError):
                    p.stdin.close()

    def _delete_namespaces(self) -> None:
        # Deleting the veth explicitly frees it even if a process we could not kill
        # (uninterruptible sleep) keeps its namespace alive after `netns del`.
        lines = [f"netns exec {h.netns} ip link del {IFNAME}" for h in self.hosts]
        lines += [f"netns del {ns}" for ns in self._namespaces()]
        _ip_batch(lines, force=True)

    def close(self) -> None:
        """Tear everything down. Idempotent, and never raises: it runs in teardown and
        at exit, where an exception would hide the test's own failure. Problems are
        reported on stderr instead."""
        if self._closed:
            return
        self._closed = True
        _open_lans.discard(self)
        for step in (
            self._stop_processes,
            self._delete_namespaces,
            lambda: shutil.rmtree(self.tmp),
        ):
            try:
                step()
            except Exception as e:  # keep going: later steps still free resources
                print(f"lan {self.runid}: cleanup step failed: {e!r}", file=sys.stderr)

    def __repr__(self) -> str:
        return f"<Lan {self.runid} 10.77.{self.subnet}.0/24 {[h.name for h in self.hosts]}>"


@atexit.register
def _close_all() -> None:
    """Last resort for LANs nobody closed (a crashed fixture, an interactive session)."""
    for lan in list(_open_lans):
        lan.close()


class Lines:
    """Reads a text stream line by line in a background thread, so tests can wait for
    a line with a timeout instead of blocking forever on readline.

    Each wait starts after the line the previous successful wait returned, so
    consecutive waits walk forward through the output and a line that arrived before
    the wait was called is still found.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._next = 0
        self._eof = False
        self._scoped = getattr(stream, "xmppll_browse", False)  # see Host.xmppll_popen
        self.problems: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(
            target=self._read,
            args=(stream,),
            daemon=True,
            name=f"Lines({getattr(stream, 'name', stream)!r})",
        ).start()

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                if self._scoped:
                    try:
                        assert_scoped(line)
                    except AssertionError as exc:
                        self.problems.append(str(exc))
                with self._cond:
                    self.lines.append(line.rstrip("\r\n"))
                    self._cond.notify_all()
        except (OSError, ValueError):  # the stream was closed under us: same as EOF
            pass
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()
            with contextlib.suppress(OSError, ValueError):
                stream.close()

    def closed(self) -> bool:
        """True once the writer has closed the stream (e.g. the process exited)."""
        with self._cond:
            return self._eof

    def wait_for(self, predicate: Callable[[str], bool] | str, timeout: float) -> str:
        """The first new line containing `predicate` (a str) or satisfying it."""
        if isinstance(predicate, str):
            needle = predicate
            return self._wait(lambda line: line if needle in line else None, timeout, repr(needle))
        return self._wait(
            lambda line: line if predicate(line) else None,
            timeout,
            getattr(predicate, "__name__", repr(predicate)),
        )

    def wait_json(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        """The first new line that is a JSON object satisfying `predicate`.

        Other lines are skipped, and a predicate raising KeyError or TypeError counts
        as no match, so `lambda r: r["event"] == "added"` works on mixed records.
        """

        def test(line: str) -> dict[str, Any] | None:
            try:
                obj = json.loads(line)
            except ValueError:
                return None
            if not isinstance(obj, dict):
                return None
            try:
                return obj if predicate(obj) else None
            except (KeyError, TypeError):
                return None

        return self._wait(test, timeout, getattr(predicate, "__name__", repr(predicate)))

    def _wait(self, test: Callable[[str], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            start = self._next
            while True:
                if self.problems:
                    raise AssertionError(self.problems[0])
                for i in range(start, len(self.lines)):
                    found = test(self.lines[i])
                    if found is not None:
                        self._next = i + 1
                        return found
                start = len(self.lines)
                # A closed stream gets no more lines: fail now, not after the timeout.
                if self._eof:
                    raise AssertionError(self._report(f"stream ended with no line matching {what}"))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        self._report(f"no line matching {what} within {timeout} s")
                    )
                self._cond.wait(remaining)

    def _report(self, headline: str, tail: int = 200) -> str:
        shown = self.lines[-tail:]
        total = len(self.lines)
        skipped = f" (last {len(shown)} of {total})" if len(shown) < total else ""
        return "\n".join([f"{headline}; lines seen{skipped}:", *("  | " + s for s in shown)])


def wait_until(check: Callable[[], Any], timeout: float, what: str, *,
               interval: float = 0.05, error: type[Exception] = AssertionError) -> Any:
    """What `check()` returns once it is true, polled every `interval` s; `error` when
    `timeout` s pass first."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
