"""The xmppll side of the interop tests with real peers (test_interop*.py): agents, JSON
output, `listen` in the background, and a gentle stop. Plain module, no pytest.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lan import Host, Lines

# Markup characters, quotes and non-ASCII up to the astral plane: must arrive as the same text.
TRICKY = "a <b>x</b> & y; 'q' \"dq\" — ünïcødé ✓ 日本語 🦆"


@dataclass
class Agent:
    """A running `xmppll announce` (or `listen` with its own agent)."""

    host: Host
    proc: subprocess.Popen[str]
    out: Lines
    err: Lines
    event: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.event["name"]

    def problems(self) -> list[str]:
        """Warnings, errors or tracebacks the agent printed."""
        return [line for line in self.err.lines
                if any(w in line.lower() for w in ("warning", "error", "traceback"))]


def start_agent(host: Host, *args: str, command: str = "announce") -> Agent:
    """`xmppll announce ARGS` (JSON events on stdout), returned once announced."""
    proc = host.xmppll_popen(command, *args, "--json", encoding="utf-8", errors="replace")
    agent = Agent(host, proc, Lines(proc.stdout), Lines(proc.stderr))
    agent.event = agent.out.wait_json(lambda r: r["event"] == "announced", 15)
    return agent


def xmppll_json(host: Host, *args: str, timeout: float = 30) -> list[dict[str, Any]]:
    done = host.xmppll(*args, timeout=timeout)
    assert done.returncode == 0, f"xmppll {' '.join(args)}: rc {done.returncode}\n{done.stderr}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def wait_until(check: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def listen(host: Host, *args: str) -> tuple[subprocess.Popen[str], Lines, Lines]:
    """`xmppll listen --json ARGS` in the background: (process, stdout, stderr)."""
    proc = host.xmppll_popen("listen", "--json", *args, encoding="utf-8", errors="replace")
    return proc, Lines(proc.stdout), Lines(proc.stderr)


def stop_gently(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> None:
    """SIGINT, as a user's ^C, by default: `listen` then withdraws the agent it started."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
