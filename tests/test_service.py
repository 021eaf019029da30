"""Running the agent as a systemd user service: the unit file is valid, the agent
reports READY=1 / STOPPING=1 on NOTIFY_SOCKET, and expected failures are one line,
never a traceback. The announce runs inside a virtual LAN host only."""

from __future__ import annotations

import configparser
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import require
from lan import Lan, Lines

from xmppll.agent.agent import sd_notify

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "contrib" / "systemd" / "xmppll-agent@.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_unit_runs_announce_for_its_instance_as_type_notify() -> None:
    unit = _unit()
    assert unit["Service"]["Type"] == "notify"
    assert unit["Service"]["ExecStart"].endswith("xmppll announce %i")
    assert "69" in unit["Service"]["RestartPreventExitStatus"].split()


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze (Debian: systemd)")
    shutil.copy(UNIT, tmp_path)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--user",
         str(tmp_path / "xmppll-agent@juliet.service")],
        capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_sd_notify_sends_one_datagram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      abstract: bool) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if abstract:
            name = f"xmppll-test-{os.getpid()}-{id(sock)}"
            sock.bind("\0" + name)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        else:
            sock.bind(str(tmp_path / "notify"))
            monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        sock.settimeout(2)
        sd_notify("READY=1")
        assert sock.recv(4096) == b"READY=1"


def test_sd_notify_without_systemd_or_with_a_dead_socket_is_harmless(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    sd_notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    sd_notify("READY=1")  # logged, not raised


def test_agent_reports_ready_once_announced_and_stopping_on_sigterm(lan: Lan) -> None:
    h1 = lan[0]
    path = lan.tmp / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        os.chmod(path, 0o777)
        sock.settimeout(20)
        proc = h1.xmppll_popen("announce", "juliet", "--json",
                               env={**h1.env, "NOTIFY_SOCKET": str(path)})
        out = Lines(proc.stdout)
        ready = sock.recv(4096).decode()
        assert ready.startswith("READY=1\n")
        assert "STATUS=announced juliet@h1 on port" in ready
        # READY comes after the record is out: the event is already printed
        out.wait_json(lambda r: r["event"] == "announced" and r["name"] == "juliet@h1", 1)
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096) == b"STOPPING=1"
        assert proc.wait(15) == 0
        out.wait_json(lambda r: r["event"] == "withdrawn", 5)
        assert "Traceback" not in proc.stderr.read()


def test_expected_failures_are_one_line_not_a_traceback(lan: Lan) -> None:
    """What the journal shows when the name is already served on this host."""
    h1 = lan[0]
    first = h1.xmppll_popen("announce", "juliet", "--json")
    Lines(first.stdout).wait_json(lambda r: r["event"] == "announced", 20)
    second = h1.xmppll("announce", "juliet", "--json", timeout=30)
    assert second.returncode == 69
    lines = second.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("xmppll: error: "), second.stderr
