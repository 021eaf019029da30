"""Real peers in the virtual LAN: avahi-daemon and libpurple's Bonjour (finch), headless.

Every process here runs inside a host of a `lan.Lan` (never in the machine's own
network namespace: mDNS must not reach a real network), following
`shared/reference/real-peers.md`:

- `AvahiDaemon(host)`: a private D-Bus system bus for that host and an avahi-daemon with
  its own `/run/avahi-daemon` (a tmpfs mounted inside the mount namespace that
  `ip netns exec` gives each command), host name = the host's UTS name, `eth0` only, no
  reflector. Clients (`avahi-browse`, `avahi-publish`, libpurple) find it through
  `DBUS_SYSTEM_BUS_ADDRESS`.
- `Finch(host, avahi)`: finch in tmux with a per-host home holding an enabled
  `prpl-bonjour` account, a private session bus, driven with `dbus-send`; received IMs
  come from a `dbus-monitor` started before finch.
- `Sniffer(host)`: a packet capture of the host's eth0 (TCP payloads and mDNS TXT
  records), so a test run leaves the raw XML of every stream both ways for review,
  and the byte order of a TXT record on the wire can be checked. No tcpdump needed:
  `python tests/peers.py sniff OUT` runs it.

Plain module, no pytest, like lan.py.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lan import Host, Lines

INSTALL_HINT = "apt-get install avahi-daemon avahi-utils finch libpurple-bin dbus tmux"
ARTIFACTS = Path(__file__).parent / "artifacts"
AVAHI_READY = 10.0  # seconds; measured 0.8-1.0 s
FINCH_READY = 20.0  # seconds; measured 1.0-1.2 s
PUBLISH_READY = 10.0  # seconds; measured 0.8-1.0 s
DBUS_CALL_TIMEOUT = 10.0
BONJOUR_PLUGIN = "libbonjour.so"


def missing_avahi() -> str | None:
    """What this machine lacks to run avahi peers, or None."""
    for tool in ("avahi-daemon", "avahi-browse", "avahi-publish", "avahi-resolve",
                 "dbus-daemon", "dbus-send", "timeout", "mount"):
        if shutil.which(tool) is None:
            return f"`{tool}` ({INSTALL_HINT})"
    return None


def missing_finch() -> str | None:
    """What this machine lacks to run a libpurple Bonjour peer, or None."""
    for tool in ("finch", "tmux", "dbus-monitor"):
        if shutil.which(tool) is None:
            return f"`{tool}` ({INSTALL_HINT})"
    plugin_dirs = [Path(p) / "purple-2" for p in ("/usr/lib", "/usr/lib64", "/usr/local/lib")]
    plugin_dirs += list(Path("/usr/lib").glob("*-linux-gnu*/purple-2"))
    if not any((d / BONJOUR_PLUGIN).exists() for d in plugin_dirs):
        return f"libpurple's Bonjour plugin ({INSTALL_HINT})"
    return None


def package_versions(*packages: str) -> dict[str, str]:
    """Installed Debian versions, for reports and artifacts ({} off Debian)."""
    out = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Version}\\n", *packages],
                         capture_output=True, text=True)
    return dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)


def _wait(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05,
          detail: Callable[[], str] | None = None) -> Any:
    """Poll `check` until it returns something truthy; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() >= deadline:
            extra = f"\n{detail()}" if detail else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{extra}")
        time.sleep(interval)


# --- D-Bus -------------------------------------------------------------------------------

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>{kind}</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""


class Bus:
    """A private dbus-daemon (system or session type) for one host, in its namespace.

    A path socket, so clients in any namespace can reach it; each host's is its own,
    and nothing ever talks to the machine's real buses.
    """

    def __init__(self, host: Host, kind: str, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.socket = directory / f"{kind}_bus_socket"
        self.address = f"unix:path={self.socket}"
        config = directory / f"{kind}-bus.conf"
        config.write_text(_BUS_CONFIG.format(kind=kind, socket=self.socket))
        self.proc = host.popen(
            ["dbus-daemon", f"--config-file={config}", "--nofork", "--nopidfile",
             "--print-address=1"],
        )
        out = Lines(self.proc.stdout)
        out.wait_for(lambda line: line.startswith("unix:"), 10)

    def stop(self) -> None:
        _terminate(self.proc)


def _terminate(proc: subprocess.Popen[Any], grace: float = 3.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)


# --- avahi-daemon ---------------------------------------------------------------------

_AVAHI_CONFIG = """[server]
host-name={host}
domain-name=local
use-ipv4=yes
use-ipv6=yes
allow-interfaces={ifname}
enable-dbus=yes
ratelimit-interval-usec=1000000
ratelimit-burst=1000

{browse_domains}
[wide-area]
enable-wide-area={wide}

[publish]
publish-hinfo=no
publish-workstation=no

[reflector]
enable-reflector={reflect}
reflect-ipv=no
"""

_AVAHI_ESCAPE = re.compile(r"\\(\d{3}|.)")
_TXT_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')


def avahi_unescape(text: str) -> str:
    """avahi-browse -p escapes labels: `\\064` is '@', `\\.` is '.'."""
    def one(m: re.Match[str]) -> str:
        code = m.group(1)
        return chr(int(code)) if code.isdigit() else code

    raw = _AVAHI_ESCAPE.sub(one, text)
    # The decimal escapes are bytes: UTF-8 names come back as one escape per byte.
    with contextlib.suppress(UnicodeError):
        return raw.encode("latin-1").decode("utf-8")
    return raw


def parse_browse_line(line: str) -> dict[str, Any] | None:
    """One line of `avahi-browse -p` (`+` new, `-` removed, `=` resolved), or None.

    `txt` is in WIRE order: avahi-browse prints the strings of a TXT record in reverse
    (real-peers.md), so they are reversed back here.
    """
    fields = line.split(";")
    if not fields or fields[0] not in ("+", "-", "=") or len(fields) < 6:
        return None
    rec: dict[str, Any] = {
        "event": fields[0], "interface": fields[1], "protocol": fields[2],
        "name": avahi_unescape(fields[3]), "type": fields[4], "domain": fields[5],
    }
    if fields[0] == "=" and len(fields) >= 10:
        printed = [avahi_unescape(s) for s in _TXT_STRING.findall(";".join(fields[9:]))]
        txt = list(reversed(printed))
        rec.update(host=fields[6], address=fields[7], port=int(fields[8]), txt=txt,
                   txt_dict=dict(s.partition("=")[::2] for s in reversed(txt)))
    return rec


class AvahiDaemon:
    """avahi-daemon for one host, on its own private system bus."""

    def __init__(self, host: Host, *, start: bool = True, reflect: bool = False,
                 wide_area: str | None = None, resolv_conf: Path | None = None) -> None:
        """`reflect`: an mDNS reflector between the host's interfaces (a router);
        `wide_area`: also browse that DNS-SD domain over unicast DNS, asking the server
        of `resolv_conf` (avahi reads only /etc/resolv.conf: it is bind-mounted over
        it in the daemon's own mount namespace)."""
        self.host = host
        self.reflect = reflect
        self.wide_area = wide_area
        self.resolv_conf = resolv_conf
        self.dir = host.home / "avahi"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "avahi-daemon.conf"
        self.bus: Bus | None = None
        self.proc: subprocess.Popen[Any] | None = None
        self.log: Lines | None = None
        self.publishers: list[subprocess.Popen[Any]] = []
        self.startup_seconds: float | None = None
        if start:
            self.start()

    @property
    def env(self) -> dict[str, str]:
        """The host's environment plus the bus: what avahi's clients need."""
        assert self.bus is not None, "avahi-daemon not started"
        return {**self.host.env, "DBUS_SYSTEM_BUS_ADDRESS": self.bus.address}

    @property
    def hostname(self) -> str:
        return self.host.name

    def start(self) -> None:
        t0 = time.monotonic()
        self.conf.write_text(_AVAHI_CONFIG.format(
            host=self.host.name, ifname=self.host.ifname,
            browse_domains=f"browse-domains={self.wide_area}" if self.wide_area else "",
            wide="yes" if self.wide_area else "no", reflect="yes" if self.reflect else "no"))
        self.bus = Bus(self.host, "system", self.dir)
        # `ip netns exec` gives every command a private (slave) mount namespace, so this
        # tmpfs hides the pid file and socket from every other host's daemon. mkdir -p
        # only makes sure the mount point exists (avahi's package leaves it to systemd).
        script = (
            "mkdir -p /run/avahi-daemon && mount -t tmpfs tmpfs /run/avahi-daemon && "
            + (f"mount --bind '{self.resolv_conf}' /etc/resolv.conf && "
               if self.resolv_conf else "")
            + 'exec avahi-daemon -f "$0" --no-drop-root --no-chroot --no-rlimits'
        )
        self.proc = self.host.popen(["sh", "-c", script, str(self.conf)], env=self.env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.log = Lines(self.proc.stderr)
        self.log.wait_for("Server startup complete", AVAHI_READY)
        self.startup_seconds = time.monotonic() - t0

    def log_text(self) -> str:
        return "\n".join(self.log.lines) if self.log else ""

    def run(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """A client command on this host, against this daemon."""
        return self.host.run(argv, env=self.env, timeout=timeout)

    def browse(self, timeout: float = 5.0, service: str = "_presence._tcp",
               resolve: bool = True) -> list[dict[str, Any]]:
        """`avahi-browse -tp[r]` parsed; always under `timeout`, because avahi-browse
        can hang on a resolver when a host vanishes (coexistence-facts.md §2)."""
        flags = "-tpr" if resolve else "-tp"
        done = self.run(["timeout", f"{timeout:g}", "avahi-browse", flags, service],
                        timeout=timeout + 10)
        return [r for r in map(parse_browse_line, done.stdout.splitlines()) if r]

    def wait_resolved(self, name: str, predicate: Callable[[dict[str, Any]], bool] | None = None,
                      timeout: float = 10.0, protocol: str | None = None) -> dict[str, Any]:
        """The first resolved (`=`) line for `name` that satisfies `predicate`."""
        seen: list[dict[str, Any]] = []

        def check() -> dict[str, Any] | None:
            seen[:] = self.browse(timeout=3.0)
            for rec in seen:
                if rec["event"] == "=" and rec["name"] == name and (
                        protocol is None or rec["protocol"] == protocol) and (
                        predicate is None or predicate(rec)):
                    return rec
            return None

        return _wait(check, timeout, f"avahi-browse on {self.host.name} to resolve {name}",
                     interval=0.2, detail=lambda: "\n".join(map(json.dumps, seen)))

    def wait_gone(self, name: str, timeout: float = 10.0) -> None:
        _wait(lambda: not any(r["name"] == name for r in self.browse(timeout=3.0)),
              timeout, f"{name} to leave avahi-browse on {self.host.name}", interval=0.2)

    def resolve_host(self, hostname: str, family: int = 4, timeout: float = 5.0) -> str | None:
        """`avahi-resolve -4|-6 -n HOST`: the address, or None."""
        done = self.run(["timeout", f"{timeout:g}", "avahi-resolve", f"-{family}", "-n",
                         hostname], timeout=timeout + 10)
        parts = done.stdout.split()
        return parts[1] if done.returncode == 0 and len(parts) >= 2 else None

    def publish(self, name: str, port: int, txt: list[str],
                service: str = "_presence._tcp") -> subprocess.Popen[str]:
        """`avahi-publish -s`, returned once probing is done ("Established under name").
        The Popen carries `.lines` (its merged output); kill it to unpublish."""
        proc = self.host.popen(["avahi-publish", "-s", name, service, str(port), *txt],
                               env=self.env, stderr=subprocess.STDOUT)
        lines = Lines(proc.stdout)
        proc.lines = lines  # type: ignore[attr-defined]
        lines.wait_for("Established under name", PUBLISH_READY)
        self.publishers.append(proc)
        return proc

    def unpublish(self, proc: subprocess.Popen[Any]) -> None:
        _terminate(proc)
        with contextlib.suppress(ValueError):
            self.publishers.remove(proc)

    def stop(self) -> None:
        for proc in list(self.publishers):
            self.unpublish(proc)
        if self.proc is not None:
            _terminate(self.proc)
        if self.bus is not None:
            self.bus.stop()

    def save_log(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"avahi-daemon-{self.host.name}.log"
        path.write_text(self.log_text() + "\n")
        return path


# --- finch / libpurple ------------------------------------------------------------------

_ACCOUNTS = """<?xml version='1.0' encoding='UTF-8' ?>
<account version='1.0'>
  <account>
    <protocol>prpl-bonjour</protocol>
    <name>{account}</name>
    <settings>
      <setting name='first' type='string'>{first}</setting>
      <setting name='last' type='string'>{last}</setting>
      <setting name='port' type='int'>5298</setting>
    </settings>
    <settings ui='gnt-purple'>
      <setting name='auto-login' type='bool'>1</setting>
    </settings>
  </account>
</account>
"""

_PREFS = """<?xml version='1.0' encoding='UTF-8' ?>
<pref version='1' name='/'>
  <pref name='purple'>
    <pref name='logging'>
      <pref name='format' type='string' value='txt'/>
      <pref name='log_ims' type='bool' value='1'/>
    </pref>
  </pref>
</pref>
"""

_FINCH_SH = """#!/bin/sh
# Started by tmux inside the namespace; tmux's own environment is not ours, so set all.
export HOME='{home}' DBUS_SESSION_BUS_ADDRESS='{session}' DBUS_SYSTEM_BUS_ADDRESS='{system}'
export TERM=screen LANG=C.UTF-8 LC_ALL=C.UTF-8
echo $$ >'{pidfile}'
exec finch -c '{home}/.purple' -d 2>>'{debug}'
"""

class StaleHandle(RuntimeError):
    """libpurple no longer has the object an id named (a buddy that just left)."""


STATUS_PRIMITIVES = {"offline": 1, "available": 2, "away": 5}
_DBUS_DEST = "im.pidgin.purple.PurpleService"
_DBUS_PATH = "/im/pidgin/purple/PurpleObject"
_DBUS_IFACE = "im.pidgin.purple.PurpleInterface"
_PORT_LINE = re.compile(r"bonjour: Bound IPv4 socket to port (\d+)")


class Finch:
    """finch (libpurple Bonjour) on one host, headless in tmux, driven over D-Bus.

    Its published name is `<account>@<avahi host name>`; its port is read from the
    debug log each time, never assumed (it moves after a restart or going offline).
    """

    def __init__(self, host: Host, avahi: AvahiDaemon, account: str = "romeo",
                 first: str = "Romeo", last: str = "Montague", *, start: bool = True) -> None:
        self.host = host
        self.avahi = avahi
        self.account = account
        self.first, self.last = first, last
        self.name = f"{account}@{avahi.hostname}"
        self.dir = host.home / "finch"
        self.home = self.dir / "home"
        self.debug_log = self.dir / "finch.debug"
        self.pidfile = self.dir / "finch.pid"
        self.tmux_socket = self.dir / "tmux.sock"
        self.bus: Bus | None = None
        self.monitor: subprocess.Popen[Any] | None = None
        self.signals: Lines | None = None
        self.account_id = 0
        self.startup_seconds: float | None = None
        if start:
            self.start()

    # -- lifecycle
    def start(self) -> None:
        t0 = time.monotonic()
        purple = self.home / ".purple"
        purple.mkdir(parents=True, exist_ok=True)
        esc = html.escape
        (purple / "accounts.xml").write_text(_ACCOUNTS.format(
            account=esc(self.account), first=esc(self.first), last=esc(self.last)))
        (purple / "prefs.xml").write_text(_PREFS)
        self.bus = Bus(self.host, "session", self.dir)
        # The monitor must run before finch: a signal sent before it connects is lost.
        self.monitor = self.host.popen(
            ["dbus-monitor", "--address", self.bus.address,
             f"type='signal',interface='{_DBUS_IFACE}',member='ReceivedImMsg'"],
            stderr=subprocess.DEVNULL,
        )
        self.signals = Lines(self.monitor.stdout)
        # dbus-monitor announces itself with NameAcquired once its match rule is in place.
        self.signals.wait_for("NameAcquired", 10)
        self._launch()
        self.startup_seconds = time.monotonic() - t0

    def _launch(self) -> None:
        script = self.dir / "finch.sh"
        assert self.bus is not None and self.avahi.bus is not None
        script.write_text(_FINCH_SH.format(
            home=self.home, session=self.bus.address, system=self.avahi.bus.address,
            pidfile=self.pidfile, debug=self.debug_log))
        script.chmod(0o755)
        self.pidfile.unlink(missing_ok=True)
        registered = self._count("Successfully registered service")
        done = self.host.run(["tmux", "-S", str(self.tmux_socket), "new-session", "-d", "-s",
                              "finch", "-x", "160", "-y", "50", str(script)], timeout=20)
        if done.returncode:
            raise RuntimeError(f"tmux failed to start finch: {done.stderr.strip()}")
        self.wait_registered(registered, FINCH_READY)

    def wait_registered(self, before: int, timeout: float) -> None:
        """Ready: a new "Successfully registered service" in the debug log AND libpurple
        answering with a connected account on D-Bus."""
        _wait(lambda: self._count("Successfully registered service") > before, timeout,
              "finch to register its Bonjour service", detail=self._tail)
        self.account_id = _wait(self.connected, timeout,
                                "libpurple's connected Bonjour account", detail=self._tail)

    def connected(self) -> int:
        """libpurple's connected Bonjour account id, 0 while offline."""
        try:
            return self.call_int("PurpleAccountsFindConnected", "string:", "string:prpl-bonjour")
        except RuntimeError:  # service not on the bus yet
            return 0

    @property
    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        pid = self.pid
        if pid is None:
            return False
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return False
        return state not in ("Z", "X")

    def stop(self) -> None:
        """Offline first (a prompt goodbye), then kill finch by its PID."""
        if self.alive():
            with contextlib.suppress(Exception):
                self.set_status("offline")
            pid = self.pid
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                with contextlib.suppress(AssertionError):
                    _wait(lambda: not self.alive(), 3, "finch to exit")
                if self.alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        self.host.run(["tmux", "-S", str(self.tmux_socket), "kill-server"], timeout=10)
        if self.monitor is not None:
            _terminate(self.monitor)
        if self.bus is not None:
            self.bus.stop()

    # -- the debug log, libpurple's best oracle
    def debug_text(self) -> str:
        try:
            return self.debug_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _count(self, needle: str) -> int:
        return self.debug_text().count(needle)

    def _tail(self, n: int = 40) -> str:
        lines = self.debug_text().splitlines()
        return "finch debug log (tail):\n" + "\n".join(lines[-n:])

    @property
    def port(self) -> int:
        """The port libpurple bound last (it takes a random one when 5298 is busy)."""
        found = _PORT_LINE.findall(self.debug_text())
        if not found:
            raise AssertionError("finch has not bound a port yet\n" + self._tail())
        return int(found[-1])

    def save_debug_log(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"finch-{self.host.name}.debug.log"
        path.write_text(self.debug_text())
        return path

    # -- D-Bus
    def call(self, method: str, *args: str) -> list[str]:
        """libpurple's D-Bus API through dbus-send; the reply's values, as text.

        dbus-send runs in the host like every other command of that host; the bus is
        a path socket, private to this Finch."""
        assert self.bus is not None
        done = self.host.run(
            ["dbus-send", f"--bus={self.bus.address}", "--print-reply=literal",
             f"--reply-timeout={int(DBUS_CALL_TIMEOUT * 1000)}", f"--dest={_DBUS_DEST}",
             _DBUS_PATH, f"{_DBUS_IFACE}.{method}", *args],
            timeout=DBUS_CALL_TIMEOUT + 5,
        )
        if done.returncode:
            if "InvalidHandle" in done.stderr:
                raise StaleHandle(done.stderr.strip())
            raise RuntimeError(f"D-Bus {method}{args} failed: {done.stderr.strip()}")
        return [line.strip() for line in done.stdout.splitlines() if line.strip()]

    def call_int(self, method: str, *args: str) -> int:
        out = self.call(method, *args)
        if not out:
            return 0
        return int(out[0].split()[-1])

    def call_str(self, method: str, *args: str) -> str:
        assert self.bus is not None
        done = self.host.run(
            ["dbus-send", f"--bus={self.bus.address}", "--print-reply=literal",
             f"--dest={_DBUS_DEST}", _DBUS_PATH, f"{_DBUS_IFACE}.{method}", *args],
            timeout=DBUS_CALL_TIMEOUT + 5,
        )
        if done.returncode:
            if "InvalidHandle" in done.stderr:
                raise StaleHandle(done.stderr.strip())
            raise RuntimeError(f"D-Bus {method}{args} failed: {done.stderr.strip()}")
        # literal strings print as "   TEXT\n"
        text = done.stdout
        return text[3:-1] if text.startswith("   ") and text.endswith("\n") else text.strip()

    # -- buddies
    def _buddy(self, name: str) -> int:
        return self.call_int("PurpleFindBuddy", f"int32:{self.account_id}", f"string:{name}")

    def _active_status(self, name: str) -> int:
        try:
            buddy = self._buddy(name)
            if not buddy:
                return 0
            presence = self.call_int("PurpleBuddyGetPresence", f"int32:{buddy}")
            return self.call_int("PurplePresenceGetActiveStatus", f"int32:{presence}")
        except StaleHandle:
            return 0

    def buddy_online(self, name: str) -> bool:
        try:
            buddy = self._buddy(name)
            if not buddy:
                return False
            presence = self.call_int("PurpleBuddyGetPresence", f"int32:{buddy}")
            return self.call_int("PurplePresenceIsOnline", f"int32:{presence}") == 1
        except StaleHandle:  # the buddy was removed between two calls: it left
            return False

    def wait_buddy_online(self, name: str, timeout: float = 10.0) -> None:
        _wait(lambda: self.buddy_online(name), timeout, f"libpurple to see {name} online",
              interval=0.1, detail=self._tail)

    def wait_buddy_offline(self, name: str, timeout: float = 10.0) -> None:
        _wait(lambda: not self.buddy_online(name), timeout, f"libpurple to see {name} leave",
              interval=0.1, detail=self._tail)

    def buddy_status(self, name: str) -> str | None:
        """libpurple's status id for the buddy as its UI shows it ("available",
        "away", "offline"), or None when it knows no such buddy."""
        status = self._active_status(name)
        if not status:
            return None
        try:
            return self.call_str("PurpleStatusGetId", f"int32:{status}")
        except StaleHandle:
            return None

    def buddy_alias(self, name: str) -> str | None:
        """The name libpurple shows for the buddy: its `nick`, else "1st last"."""
        try:
            buddy = self._buddy(name)
            return self.call_str("PurpleBuddyGetServerAlias", f"int32:{buddy}") if buddy else None
        except StaleHandle:
            return None

    def buddy_message(self, name: str) -> str:
        """The buddy's status message as libpurple shows it ('' when none)."""
        status = self._active_status(name)
        if not status:
            return ""
        try:
            return self.call_str("PurpleStatusGetAttrString", f"int32:{status}",
                                 "string:message")
        except StaleHandle:
            return ""

    # -- messages
    def send_im(self, name: str, text: str) -> None:
        """Send `text` as plain text: PurpleConvImSend takes HTML, so escape it once."""
        conv = self.call_int("PurpleConversationNew", "int32:1", f"int32:{self.account_id}",
                             f"string:{name}")
        im = self.call_int("PurpleConvIm", f"int32:{conv}")
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        self.call("PurpleConvImSend", f"int32:{im}", f"string:{escaped}")

    def close_conversation(self, name: str) -> bool:
        """Close the conversation window: libpurple ends the stream (close tag, FIN)."""
        conv = self.call_int("PurpleFindConversationWithAccount", "int32:1", f"string:{name}",
                             f"int32:{self.account_id}")
        if not conv:
            return False
        self.call("PurpleConversationDestroy", f"int32:{conv}")
        return True

    def received(self, timeout: float = 0.0) -> list[tuple[str, str]]:
        """Every (sender, message) of ReceivedImMsg so far; waits up to `timeout` for
        at least one."""
        if timeout:
            with contextlib.suppress(AssertionError):
                _wait(lambda: self._parse_signals(), timeout, "a ReceivedImMsg")
        return self._parse_signals()

    def wait_received(self, predicate: Callable[[str, str], bool], timeout: float = 10.0
                      ) -> tuple[str, str]:
        def check() -> tuple[str, str] | None:
            for sender, message in self._parse_signals():
                if predicate(sender, message):
                    return sender, message
            return None

        return _wait(check, timeout, "a matching ReceivedImMsg",
                     detail=lambda: f"received so far: {self._parse_signals()!r}\n"
                     + self._tail())

    def _parse_signals(self) -> list[tuple[str, str]]:
        """ReceivedImMsg(int32 account, string sender, string message, int32 conv,
        uint32 flags) from dbus-monitor's text. dbus-monitor prints strings raw (no
        escaping, newlines kept), so a message ends where the two numeric arguments
        that follow it begin."""
        assert self.signals is not None
        lines = list(self.signals.lines)
        found: list[tuple[str, str]] = []
        i = 0
        while i < len(lines):
            if not (lines[i].startswith("signal ") and "member=ReceivedImMsg" in lines[i]):
                i += 1
                continue
            body = lines[i + 1:]
            # body[0] int32 account, body[1] string "sender", body[2...] string "message...
            if len(body) < 5 or not body[1].lstrip().startswith('string "'):
                break  # still arriving
            sender = body[1].lstrip()[len('string "'):-1]
            msg_lines = [body[2].lstrip()[len('string "'):]]
            j = 3
            end = None
            while j + 1 < len(body):
                if re.fullmatch(r"\s+int32 -?\d+", body[j]) and re.fullmatch(
                        r"\s+uint32 \d+", body[j + 1]):
                    end = j
                    break
                msg_lines.append(body[j])
                j += 1
            if end is None:
                break  # incomplete
            message = "\n".join(msg_lines)
            found.append((sender, message[:-1] if message.endswith('"') else message))
            i = i + 1 + end + 2
        return found

    # -- my own status
    def set_status(self, kind: str, msg: str | None = None) -> None:
        """"available", "away" (libpurple publishes status=dnd) or "offline" (withdraws
        the service). Coming back from offline re-binds, usually on a new port: this
        waits until it has registered again."""
        before = self._count("Successfully registered service")
        was_offline = not self.connected()
        saved = self.call_int("PurpleSavedstatusNew", "string:",
                              f"int32:{STATUS_PRIMITIVES[kind]}")
        if msg:
            self.call("PurpleSavedstatusSetMessage", f"int32:{saved}", f"string:{msg}")
        self.call("PurpleSavedstatusActivate", f"int32:{saved}")
        if kind == "offline":
            _wait(lambda: not self.connected(), 10, "libpurple to go offline")
        elif was_offline:
            self.wait_registered(before, FINCH_READY)


# --- packet capture -------------------------------------------------------------------

class Sniffer:
    """Captures a host's eth0 into a JSON Lines file: every TCP segment (with payload,
    hex) and every mDNS TXT record (strings in wire order). Runs in the host, as
    `python tests/peers.py sniff OUT`."""

    def __init__(self, host: Host, out: Path) -> None:
        self.host = host
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = host.popen([sys.executable, str(Path(__file__).resolve()), "sniff",
                                str(out)])
        Lines(self.proc.stdout).wait_for("ready", 10)

    def records(self) -> list[dict[str, Any]]:
        try:
            text = self.out.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def txt_records(self, instance: str) -> list[list[str]]:
        """The TXT strings (wire order) of every mDNS record seen for `instance`."""
        key = instance.lower()
        return [r["txt"] for r in self.records()
                if r.get("proto") == "mdns" and r["name"].lower().startswith(key + ".")]

    def stop(self) -> None:
        _terminate(self.proc)


def tcp_transcripts(records: list[dict[str, Any]], names: dict[str, str]) -> list[dict[str, Any]]:
    """Group captured TCP segments into connections, in the form of the reference
    transcripts: `+S.mmm C>S b'...'` lines, retransmissions dropped.

    `names` maps an address (no scope) to a label for the header line."""
    conns: dict[tuple, dict[str, Any]] = {}
    order: list[tuple] = []
    for r in records:
        if r.get("proto") != "tcp":
            continue
        a, b = (r["src"], r["sport"]), (r["dst"], r["dport"])
        key = (a, b) if (a, b) in conns else (b, a) if (b, a) in conns else None
        if key is None:
            if "S" not in r["flags"] or "A" in r["flags"]:
                continue  # a connection whose start we missed
            key = (a, b)
            conns[key] = {"client": a, "server": b, "t0": r["t"], "lines": [], "seen": set(),
                          "data": {"C": b"", "S": b""}}
            order.append(key)
        conn = conns[key]
        way = "C" if (r["src"], r["sport"]) == conn["client"] else "S"
        arrow = "C>S" if way == "C" else "S>C"
        rel = f"+{r['t'] - conn['t0']:.3f}"
        payload = bytes.fromhex(r["data"])
        if payload:
            mark = (way, r["seq"], len(payload))
            if mark in conn["seen"]:
                continue
            conn["seen"].add(mark)
            conn["data"][way] += payload
            conn["lines"].append(f"{rel} {arrow} {payload!r}")
        for flag, word in (("S", "SYN"), ("F", "FIN"), ("R", "RST")):
            if flag in r["flags"]:
                conn["lines"].append(f"{rel} {arrow} {word}")
    result = []
    for key in order:
        conn = conns[key]
        c, s = conn["client"], conn["server"]

        def label(addr: tuple[str, int]) -> str:
            return f"{names.get(addr[0].partition('%')[0], '?')} [{addr[0]}]:{addr[1]}"

        header = f"# {label(c)} -> {label(s)}  (C = initiator, S = responder)"
        result.append({"client": c, "server": s, "text": "\n".join([header, *conn["lines"]]),
                       "client_bytes": conn["data"]["C"], "server_bytes": conn["data"]["S"]})
    return result


def _sniff(out_path: str, ifname: str = "eth0") -> None:
    """The capture loop (run inside a namespace host, as root)."""
    from zeroconf import DNSIncoming, DNSText  # the venv has it: xmppll depends on it

    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, 33, 8 * 1024 * 1024)  # SO_RCVBUFFORCE
    sock.bind((ifname, 0))
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sock.settimeout(0.2)
    print("ready", flush=True)
    with open(out_path, "a", buffering=1) as fh:
        while running:
            try:
                frame, _addr = sock.recvfrom(65535)
            except TimeoutError:
                continue
            except InterruptedError:
                continue
            now = time.time()
            ethertype = struct.unpack("!H", frame[12:14])[0]
            if ethertype == 0x0800:
                ihl = (frame[14] & 0x0F) * 4
                proto = frame[14 + 9]
                total = struct.unpack("!H", frame[16:18])[0]
                src = socket.inet_ntop(socket.AF_INET, frame[26:30])
                dst = socket.inet_ntop(socket.AF_INET, frame[30:34])
                l4 = frame[14 + ihl:14 + total]
            elif ethertype == 0x86DD:
                proto = frame[14 + 6]
                plen = struct.unpack("!H", frame[18:20])[0]
                src = socket.inet_ntop(socket.AF_INET6, frame[22:38])
                dst = socket.inet_ntop(socket.AF_INET6, frame[38:54])
                l4 = frame[54:54 + plen]
            else:
                continue
            if proto == 6 and len(l4) >= 20:
                sport, dport, seq = struct.unpack("!HHI", l4[:8])
                offset = (l4[12] >> 4) * 4
                bits = l4[13]
                flags = "".join(f for f, bit in (("F", 1), ("S", 2), ("R", 4), ("P", 8),
                                                 ("A", 16)) if bits & bit)
                fh.write(json.dumps({"t": now, "proto": "tcp", "src": src, "sport": sport,
                                     "dst": dst, "dport": dport, "seq": seq, "flags": flags,
                                     "data": l4[offset:].hex()}) + "\n")
            elif proto == 17 and len(l4) >= 8:
                sport, dport = struct.unpack("!HH", l4[:4])
                if 5353 not in (sport, dport):
                    continue
                try:
                    msg = DNSIncoming(l4[8:])
                    answers = msg.answers()
                except Exception:
                    continue
                for rec in answers:
                    if isinstance(rec, DNSText):
                        raw, strings, i = rec.text, [], 0
                        while i < len(raw):
                            n = raw[i]
                            strings.append(raw[i + 1:i + 1 + n].decode("utf-8", "replace"))
                            i += 1 + n
                        fh.write(json.dumps({"t": now, "proto": "mdns", "src": src,
                                             "name": rec.name, "ttl": rec.ttl,
                                             "txt": strings}) + "\n")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "sniff":
        _sniff(sys.argv[2], *(sys.argv[3:4]))
    else:
        sys.exit("usage: peers.py sniff OUT [IFNAME]")
