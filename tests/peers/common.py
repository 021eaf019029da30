"""What every real peer in the virtual LAN shares: a private D-Bus daemon per host, bounded
waits, stopping a process, and the installed package versions for the artifacts.

Plain module, no pytest, like lan.py.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lan import Host, Lines

INSTALL_HINT = "apt-get install avahi-daemon avahi-utils finch libpurple-bin dbus tmux"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
DBUS_CALL_TIMEOUT = 10.0


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
