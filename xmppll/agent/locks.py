"""The file locks that let processes of one user share a name: `agent.lock` in the
name's state directory, held by its agent for its whole life (the kernel drops a flock
with its process, so a kill -9 never leaves a name taken), and the turns one-shot
sends take.

`withdraw` answers as soon as peers have been told, while the agent still repeats its
goodbyes and closes its streams; meanwhile `agent.lock` says "withdrawing", and whoever
wants the name next (announce, listen, a one-shot send's transient presence) waits
for that agent to finish instead of failing, or publishing the name just before one of
the old agent's goodbyes removes it again from peers' caches."""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path

from xmppll.errors import UnavailableError

AGENT_LOCK = "agent.lock"
WITHDRAWING = b"withdrawing "  # then the pid
# The goodbyes take 0.25 s; closing streams politely up to 2 s each, in parallel.
HANDOVER_WAIT = 15.0
POLL = 0.01


async def acquire(fd: int, within: float) -> bool:
    """flock `fd`, waiting up to `within` seconds without blocking the loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(POLL)


def _withdrawing(fd: int) -> str | None:
    """The pid of the agent that holds the lock and is going, if it is going."""
    said = os.pread(fd, 64, 0)
    return said[len(WITHDRAWING):].strip().decode() if said.startswith(WITHDRAWING) else None


async def take_name(state: Path, name: str) -> int:
    """The agent's lock for `name`; waits for a withdrawing agent of that name to go,
    refuses while a running one holds it."""
    state.mkdir(parents=True, exist_ok=True)
    fd = os.open(state / AGENT_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    if await acquire(fd, 0) or (_withdrawing(fd) and await acquire(fd, HANDOVER_WAIT)):
        os.ftruncate(fd, 0)
        return fd
    pid = _withdrawing(fd)
    os.close(fd)
    if pid:
        raise UnavailableError(f"the agent for {name} (pid {pid}) is still saying goodbye "
                               f"after {HANDOVER_WAIT:.0f} s: try again, or stop it with "
                               f"kill {pid}")
    raise UnavailableError(f"an agent for {name} is already running "
                           f"(stop it with: xmppll withdraw {name})")


def mark_withdrawing(fd: int) -> None:
    """From here on, whoever waits for the name waits for us to finish."""
    os.pwrite(fd, WITHDRAWING + f"{os.getpid()}\n".encode(), 0)


async def wait_for_withdrawal(state: Path) -> None:
    """Before publishing a name without its agent: if that agent is still saying
    goodbye, let it finish (bounded: a stuck one does not block us for good)."""
    try:
        fd = os.open(state / AGENT_LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if _withdrawing(fd) and await acquire(fd, HANDOVER_WAIT):
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
