"""telepathy-salut on one host of the virtual LAN, headless (shared/reference/salut-facts.md).

Per `Salut`: a private D-Bus session bus, `SALUT_PERSIST=1 telepathy-salut` on it (with
the host's avahi-daemon on the host's system bus) logging every stanza to a debug log,
and one long-running driver (tests/helpers/salut_driver.py, Debian's /usr/bin/python3
with python3-dbus) that speaks the Telepathy D-Bus API: JSON commands on its stdin,
replies on its stdout, and everything salut reports on its own (received messages,
delivery reports, presence, channels) appended to a JSON Lines events file.

Its published name is `<account>@<avahi host name>`. Never send it a stream whose
header `from` names a service that is not published: salut 0.8.1 aborts on that.

Files: `send_file` and `accept_files` (Telepathy FileTransfer channels; salut speaks
jabber:iq:oob over HTTP). To extend (avatars): add a `cmd_<name>` to the driver and a
method here calling `self.call("<name>", ...)`; new signals go to the driver's
`_subscribe` and come back as events.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lan import Host, Lines

from peers.avahi import AvahiDaemon, missing_avahi
from peers.common import Bus, _terminate, _wait

SALUT_BINARY = Path("/usr/lib/telepathy/telepathy-salut")
SYSTEM_PYTHON = Path("/usr/bin/python3")
DRIVER = Path(__file__).resolve().parent.parent / "helpers" / "salut_driver.py"
SALUT_HINT = ("telepathy-salut 0.8.1 from bullseye + python3-dbus python3-gi "
              "(tests/run.sh installs them as root)")
SALUT_READY = 20.0  # seconds, start to Connected; measured about 1 s
CALL_TIMEOUT = 15.0  # seconds per driver command (each D-Bus call inside has 10 s)
# CHARSET: salut never calls setlocale(), so GLib would log non-ASCII text as "?";
# g_get_charset() honours this variable.
DEBUG_ENV = {"SALUT_DEBUG": "all", "WOCKY_DEBUG": "all", "GIBBER_DEBUG": "all",
             "G_MESSAGES_DEBUG": "all", "CHARSET": "UTF-8"}


@functools.cache
def missing_salut() -> str | None:
    """What this machine lacks to run a telepathy-salut peer, or None."""
    missing = missing_avahi()
    if missing:
        return missing
    if not SALUT_BINARY.exists():
        return f"{SALUT_BINARY} ({SALUT_HINT})"
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} ({SALUT_HINT})"
    probe = subprocess.run([str(SYSTEM_PYTHON), "-c", "import dbus, dbus.mainloop.glib; "
                            "from gi.repository import GLib"], capture_output=True, text=True)
    if probe.returncode:
        return f"python3-dbus/python3-gi for {SYSTEM_PYTHON} ({SALUT_HINT})"
    return None


class SalutError(RuntimeError):
    """The driver answered a command with an error (a D-Bus error, usually)."""


class Salut:
    """telepathy-salut on `host`, using the host's `avahi` daemon, driven over D-Bus."""

    def __init__(self, host: Host, avahi: AvahiDaemon, account: str = "alice",
                 first: str = "Alice", last: str = "Liddell", *, start: bool = True) -> None:
        self.host = host
        self.avahi = avahi
        self.account = account
        self.first, self.last = first, last
        self.name = f"{account}@{avahi.hostname}"
        self.dir = host.home / f"salut-{account}"
        self.home = self.dir / "home"
        self.debug_log = self.dir / "salut.debug.log"
        self.events_path = self.dir / "events.jsonl"
        self.bus: Bus | None = None
        self.proc: subprocess.Popen[Any] | None = None
        self.driver: subprocess.Popen[str] | None = None
        self.replies: Lines | None = None
        self.driver_err: Lines | None = None
        self.self_id: str | None = None
        self.startup_seconds: float | None = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        if start:
            self.start()

    # -- lifecycle
    @property
    def env(self) -> dict[str, str]:
        assert self.bus is not None, "salut not started"
        return {**self.avahi.env, "DBUS_SESSION_BUS_ADDRESS": self.bus.address,
                "HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / ".config"),
                "XDG_CACHE_HOME": str(self.home / ".cache"),
                "XDG_DATA_HOME": str(self.home / ".local" / "share"),
                "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}

    def start(self) -> None:
        t0 = time.monotonic()
        self.home.mkdir(parents=True, exist_ok=True)
        self.events_path.touch()
        self.bus = Bus(self.host, "session", self.dir)
        with open(self.debug_log, "ab") as log:  # the child keeps its own descriptor
            self.proc = self.host.popen(
                [str(SALUT_BINARY)], env={**self.env, **DEBUG_ENV, "SALUT_PERSIST": "1"},
                stdout=log, stderr=subprocess.STDOUT, text=False)
        self.driver = self.host.popen(
            [str(SYSTEM_PYTHON), str(DRIVER), str(self.events_path)], env=self.env,
            stdin=subprocess.PIPE, encoding="utf-8", errors="replace")
        self.replies = Lines(self.driver.stdout)
        self.driver_err = Lines(self.driver.stderr)
        self.replies.wait_json(lambda r: r["id"] is None and r["result"] == "ready", 10)
        result = self.call("connect", first=self.first, last=self.last,
                           published_name=self.account, timeout=SALUT_READY)
        self.self_id = result["self_id"]
        if self.self_id != self.name:
            raise AssertionError(f"salut calls itself {self.self_id!r}, expected {self.name!r}")
        self.startup_seconds = time.monotonic() - t0

    def alive(self) -> bool:
        """salut itself still runs (it aborts on some remote input, see the module doc)."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        """Disconnect (salut withdraws its service), then end the driver, salut, the bus."""
        if self.driver is not None:
            if self.driver.poll() is None and self.alive():
                with contextlib.suppress(Exception):
                    self.call("quit", timeout=5)
            with contextlib.suppress(OSError):
                assert self.driver.stdin is not None
                self.driver.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.driver.wait(5)
            _terminate(self.driver)
        if self.proc is not None:
            _terminate(self.proc)
        if self.bus is not None:
            self.bus.stop()

    # -- the driver
    def call(self, cmd: str, timeout: float = CALL_TIMEOUT, **args: Any) -> Any:
        """One driver command; its result, or SalutError with the driver's message."""
        assert self.driver is not None and self.driver.stdin is not None and self.replies
        with self._lock:
            if self.driver.poll() is not None:
                raise SalutError(f"salut driver exited ({self.driver.returncode}): "
                                 + "\n".join(self.driver_err.lines if self.driver_err else []))
            rid = next(self._ids)
            self.driver.stdin.write(json.dumps({"id": rid, "cmd": cmd, **args}) + "\n")
            self.driver.stdin.flush()
            reply = self.replies.wait_json(lambda r: r["id"] == rid, timeout)
        if not reply["ok"]:
            raise SalutError(f"salut {cmd} {args}: {reply['error']}\n{self._tail()}")
        return reply["result"]

    # -- presence
    def set_presence(self, status: str, message: str = "") -> None:
        """available, away, or busy/dnd (salut publishes status=avail/away/dnd)."""
        self.call("set_presence", status=status, message=message)

    def contacts(self) -> dict[str, dict[str, Any]]:
        """Every contact salut sees: id -> {"type", "status", "message"}."""
        return self.call("contacts")

    def presence(self, contact: str) -> dict[str, Any]:
        """One contact's presence; status "unknown" when salut does not know it."""
        return self.call("presence", contact=contact)

    def wait_presence(self, contact: str, predicate: Callable[[dict[str, Any]], bool]
                      | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """The contact's presence once it satisfies `predicate` (default: online)."""
        pred = predicate or (lambda p: p["status"] not in ("unknown", "offline"))
        last: list[dict[str, Any]] = []

        def check() -> dict[str, Any] | None:
            last[:] = [self.presence(contact)]
            return last[0] if pred(last[0]) else None

        return _wait(check, timeout, f"salut to see {contact}", interval=0.1,
                     detail=lambda: f"last presence: {last}\ncontacts: {self.contacts()}")

    # -- messages
    def send(self, to: str, text: str) -> dict[str, Any]:
        """Send `text` (plain; salut adds an XHTML-IM copy) to `to` over a Text channel.
        Returns {"token", "channel"}; a delivery failure arrives as a
        "delivery-report" event."""
        return self.call("send", to=to, text=text)

    def close_channel(self, contact: str) -> bool:
        return self.call("close_channel", contact=contact)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every event recorded so far (of `kind` when given), oldest first."""
        out = []
        for line in self.events_path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if kind is None or rec.get("event") == kind:
                    out.append(rec)
        return out

    def wait_event(self, kind: str, predicate: Callable[[dict[str, Any]], bool],
                   timeout: float = 10.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            return next((e for e in self.events(kind) if predicate(e)), None)

        return _wait(check, timeout, f"a matching salut {kind!r} event", interval=0.05,
                     detail=lambda: "events of that kind: "
                     + json.dumps(self.events(kind), ensure_ascii=False)[-3000:]
                     + f"\nsalut alive: {self.alive()}\n" + self._tail())

    def wait_message(self, predicate: Callable[[dict[str, Any]], bool],
                     timeout: float = 10.0) -> dict[str, Any]:
        """A received message ({"from", "text", "html", "parts", ...})."""
        return self.wait_event("message", predicate, timeout)

    # -- avatars
    def set_avatar(self, data: bytes, mime: str = "image/png") -> str:
        """Publish `data` as salut's avatar (a NULL record and phsh, through avahi)."""
        import base64

        return self.call("set_avatar", data=base64.b64encode(data).decode(), mime=mime)

    def clear_avatar(self) -> None:
        self.call("clear_avatar")

    def avatar_token(self, contact: str) -> str:
        return self.call("avatar_token", contact=contact)

    def avatar_of(self, contact: str, token: str, timeout: float = 15.0) -> bytes:
        """The contact's avatar whose token (salut: its SHA-1) is `token`, asked for
        (RequestAvatars) until an AvatarRetrieved with that token comes."""
        import base64

        deadline = time.monotonic() + timeout
        while True:
            self.call("request_avatar", contact=contact)
            try:
                event = self.wait_event("avatar", lambda e: e["id"] == contact
                                        and e["token"] == token,
                                        max(0.1, min(3.0, deadline - time.monotonic())))
                return base64.b64decode(event["data"])
            except AssertionError:
                if time.monotonic() >= deadline:
                    raise

    # -- files (jabber:iq:oob over HTTP; file-transfer-facts.md)
    def accept_files(self, folder: Path) -> None:
        """Accept every incoming file into `folder` from now on (as a user clicking
        "accept"); each ends as a "file-received" event with its path."""
        self.call("accept_files", folder=str(folder))

    def send_file(self, to: str, path: Path, name: str | None = None,
                  mime: str = "application/octet-stream") -> str:
        """Offer the file at `path` to `to`; the channel's path, for wait_file_state."""
        return self.call("send_file", to=to, file=str(path), name=name, mime=mime)

    def wait_file_state(self, channel: str, state: str = "completed",
                        timeout: float = 30.0) -> dict[str, Any]:
        """The channel's `state` event; a cancel of that channel fails at once."""
        def check() -> dict[str, Any] | None:
            for e in self.events("file-state"):
                if e["path"] != channel:
                    continue
                if e["state"] == state:
                    return e
                if e["state"] == "cancelled" and state != "cancelled":
                    raise AssertionError(f"salut cancelled {channel}: {e}\n" + self._tail())
            return None

        return _wait(check, timeout, f"salut's file transfer {channel} to be {state}",
                     interval=0.05, detail=lambda: json.dumps(
                         [e for e in self.events() if e["event"].startswith("file")])[-3000:]
                     + f"\nsalut alive: {self.alive()}\n" + self._tail())

    def wait_file_received(self, name: str, timeout: float = 30.0) -> Path:
        """The path of a received file called `name`, once salut said "completed" and
        the driver read it to the end."""
        event = self.wait_event("file-received",
                                lambda e: Path(e["file"]).name == name, timeout)
        self.wait_file_state(event["path"], "completed", timeout)
        return Path(event["file"])

    # -- the debug log
    def debug_text(self) -> str:
        try:
            return self.debug_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _tail(self, n: int = 40) -> str:
        lines = self.debug_text().splitlines()
        return "salut debug log (tail):\n" + "\n".join(lines[-n:])

    def save_debug_log(self, directory: Path) -> list[Path]:
        """The debug log and the events file, named after the host."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = [directory / f"salut-{self.host.name}.debug.log",
                 directory / f"salut-{self.host.name}.events.jsonl"]
        for src, dst in zip((self.debug_log, self.events_path), paths, strict=True):
            if src.exists():
                shutil.copy(src, dst)
        if self.driver_err is not None and self.driver_err.lines:
            path = directory / f"salut-{self.host.name}.driver.stderr"
            path.write_text("\n".join(self.driver_err.lines) + "\n")
            paths.append(path)
        return paths

