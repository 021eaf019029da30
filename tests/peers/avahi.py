"""avahi-daemon for one host of the virtual LAN, on a private D-Bus system bus
(shared/reference/real-peers.md).

A private system bus for that host and an avahi-daemon with its own
`/run/avahi-daemon` (a tmpfs mounted inside the mount namespace that `ip netns exec`
gives each command), host name = the host's UTS name, `eth0` only, no reflector.
Clients (`avahi-browse`, `avahi-publish`, libpurple, telepathy-salut) find it through
`DBUS_SYSTEM_BUS_ADDRESS`.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lan import Host, Lines

from peers.common import INSTALL_HINT, Bus, _terminate, _wait

AVAHI_READY = 10.0  # seconds; measured 0.8-1.0 s
PUBLISH_READY = 10.0  # seconds; measured 0.8-1.0 s


def missing_avahi() -> str | None:
    """What this machine lacks to run avahi peers, or None."""
    for tool in ("avahi-daemon", "avahi-browse", "avahi-publish", "avahi-resolve",
                 "dbus-daemon", "dbus-send", "timeout", "mount"):
        if shutil.which(tool) is None:
            return f"`{tool}` ({INSTALL_HINT})"
    return None


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
