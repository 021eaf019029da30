"""libpurple's Bonjour (finch) on one host of the virtual LAN, headless
(shared/reference/real-peers.md).

finch in tmux with a per-host home holding an enabled `prpl-bonjour` account, a
private session bus, driven with `dbus-send`; received IMs come from a `dbus-monitor`
started before finch.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lan import Host, Lines

from peers.avahi import AvahiDaemon
from peers.common import DBUS_CALL_TIMEOUT, INSTALL_HINT, Bus, _terminate, _wait

FINCH_READY = 20.0  # seconds; measured 1.0-1.2 s
BONJOUR_PLUGIN = "libbonjour.so"


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


# --- finch / libpurple ------------------------------------------------------------------

_ACCOUNTS = """<?xml version='1.0' encoding='UTF-8' ?>
<account version='1.0'>
  <account>
    <protocol>prpl-bonjour</protocol>
    <name>{account}</name>
    <settings>
      <setting name='first' type='string'>{first}</setting>
      <setting name='last' type='string'>{last}</setting>
      <setting name='port' type='int'>5298</setting>{icon}
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
# libpurple's file-transfer signals on D-Bus, each with the xfer's id (int32).
FILE_SIGNALS = ("FileRecvRequest", "FileRecvStart", "FileRecvComplete", "FileRecvCancel",
                "FileSendStart", "FileSendComplete", "FileSendCancel")
_SIGNAL_LINE = re.compile(r"^signal .*member=(\w+)$")


class Finch:
    """finch (libpurple Bonjour) on one host, headless in tmux, driven over D-Bus.

    Its published name is `<account>@<avahi host name>`; its port is read from the
    debug log each time, never assumed (it moves after a restart or going offline).
    """

    def __init__(self, host: Host, avahi: AvahiDaemon, account: str = "romeo",
                 first: str = "Romeo", last: str = "Montague", *, start: bool = True,
                 icon: bytes | None = None) -> None:
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
        # Its own picture: libpurple reads the account's `buddy_icon` setting (a file
        # in ~/.purple/icons) at login and publishes it (NULL record + phsh). Over
        # D-Bus it cannot be set: PurpleBuddyIconsSetAccountIcon takes a C pointer.
        self.icon = icon
        if start:
            self.start()

    # -- lifecycle
    def start(self) -> None:
        t0 = time.monotonic()
        purple = self.home / ".purple"
        purple.mkdir(parents=True, exist_ok=True)
        esc = html.escape
        icon = ""
        if self.icon is not None:
            (purple / "icons").mkdir(exist_ok=True)
            (purple / "icons" / "account-icon.png").write_bytes(self.icon)
            icon = ("\n      <setting name='buddy_icon' type='string'>account-icon.png"
                    "</setting>")
        (purple / "accounts.xml").write_text(_ACCOUNTS.format(
            account=esc(self.account), first=esc(self.first), last=esc(self.last),
            icon=icon))
        (purple / "prefs.xml").write_text(_PREFS)
        self.bus = Bus(self.host, "session", self.dir)
        # The monitor must run before finch: a signal sent before it connects is lost.
        self.monitor = self.host.popen(
            ["dbus-monitor", "--address", self.bus.address,
             *(f"type='signal',interface='{_DBUS_IFACE}',member='{member}'"
               for member in ("ReceivedImMsg", *FILE_SIGNALS))],
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

    def buddy_icon(self, name: str) -> bytes | None:
        """The picture libpurple holds for the buddy (PurpleBuddyIconGetData), or None."""
        try:
            buddy = self._buddy(name)
            icon = self.call_int("PurpleBuddyGetIcon", f"int32:{buddy}") if buddy else 0
            if not icon:
                return None
            out = self.call("PurpleBuddyIconGetData", f"int32:{icon}")
        except StaleHandle:
            return None
        return _bytes_from_dbus_send(out)

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

    # -- files (file-transfer-facts.md: SI + SOCKS5 bytestreams only)
    def file_signals(self) -> list[tuple[str, int]]:
        """Every file-transfer signal so far, oldest first: (member, xfer id)."""
        assert self.signals is not None
        lines = list(self.signals.lines)
        found = []
        for i, line in enumerate(lines[:-1]):
            m = _SIGNAL_LINE.match(line)
            if m and m.group(1) in FILE_SIGNALS:
                arg = lines[i + 1].split()
                if len(arg) == 2 and arg[0] == "int32":
                    found.append((m.group(1), int(arg[1])))
        return found

    def wait_file_signal(self, member: str, xfer: int | None = None, *, after: int = 0,
                         timeout: float = 20.0) -> int:
        """The xfer id of the first `member` signal (for `xfer` when given) among the
        signals from index `after` on. A cancel of that xfer fails at once."""
        def check() -> int | None:
            for name, xid in self.file_signals()[after:]:
                if xfer is not None and xid != xfer:
                    continue
                if name == member:
                    return xid
                if name.endswith("Cancel") and xfer is not None:
                    raise AssertionError(f"libpurple cancelled transfer {xid} ({name})\n"
                                         + self._tail())
            return None

        return _wait(check, timeout, f"libpurple's {member}", interval=0.1,
                     detail=lambda: f"file signals: {self.file_signals()}\n" + self._tail())

    def send_file(self, to: str, path: Path) -> int:
        """Offer the file at `path` (in this host) to `to`, as finch's "Send File"
        does (no prompt on the sending side); the index of the next file signal, for
        wait_file_signal(..., after=)."""
        before = len(self.file_signals())
        gc = self.call_int("PurpleAccountGetConnection", f"int32:{self.account_id}")
        self.call("ServSendFile", f"int32:{gc}", f"string:{to}", f"string:{path}")
        return before

    def receive_file(self, folder: Path, *, after: int = 0, size: int | None = None,
                     timeout: float = 30.0) -> Path:
        """Accept the next offered file (a FileRecvRequest from index `after` on) into
        `folder` under its offered name, wait for FileRecvComplete and for the file to
        be whole on disk (libpurple closes it just after the signal); its path."""
        xfer = self.wait_file_signal("FileRecvRequest", after=after, timeout=timeout)
        name = Path(self.call_str("PurpleXferGetFilename", f"int32:{xfer}")).name
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / (name or "unnamed")
        self.call("PurpleXferRequestAccepted", f"int32:{xfer}", f"string:{target}")
        self.wait_file_signal("FileRecvComplete", xfer, after=after, timeout=timeout)
        if size is not None:
            _wait(lambda: target.exists() and target.stat().st_size == size, 10,
                  f"{target} to hold {size} bytes", interval=0.05, detail=self._tail)
        return target


def _bytes_from_dbus_send(lines: list[str]) -> bytes:
    """dbus-send prints an `ay` as `array of bytes [ 89 50 4e ... ]` (hex, over several
    lines), or as a quoted string when every byte is printable."""
    text = " ".join(lines)
    if "[" in text:
        inner = text[text.index("[") + 1:text.rindex("]")]
        return bytes(int(tok, 16) for tok in inner.split())
    start = text.index('"') + 1
    return text[start:text.rindex('"')].encode("latin-1")
