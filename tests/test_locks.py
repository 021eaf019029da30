"""The name lock's hand-over (xmppll/agent/locks.py), in process: two opens of one file
are two flock owners, as two processes would be."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from xmppll.agent import locks
from xmppll.errors import UnavailableError


async def _withdrawing_agent(state: Path) -> int:
    """The lock of an agent of juliet@h1 that has started to withdraw."""
    held = await locks.take_name(state, "juliet@h1")
    locks.mark_withdrawing(held)
    return held


def test_a_running_agent_keeps_its_name(tmp_path: Path) -> None:
    async def main() -> None:
        held = await locks.take_name(tmp_path, "juliet@h1")
        try:
            with pytest.raises(UnavailableError, match="already running .* withdraw juliet@h1"):
                await locks.take_name(tmp_path, "juliet@h1")
        finally:
            os.close(held)

    asyncio.run(main())


def test_a_withdrawing_agent_hands_its_name_over_when_it_goes(tmp_path: Path) -> None:
    async def main() -> None:
        held = await _withdrawing_agent(tmp_path)
        loop = asyncio.get_running_loop()
        gone = loop.create_future()
        loop.call_later(0.2, lambda: (os.close(held), gone.set_result(loop.time())))
        taken = await asyncio.wait_for(locks.take_name(tmp_path, "juliet@h1"), 5)
        assert gone.done(), "taken before the withdrawing agent let go"
        assert os.pread(taken, 64, 0) == b"", "the new holder must not look withdrawing"
        # a running (not withdrawing) holder: no wait
        await asyncio.wait_for(locks.wait_for_withdrawal(tmp_path), 5)
        os.close(taken)

    asyncio.run(main())


def test_a_stuck_withdrawal_is_reported_with_its_pid(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locks, "HANDOVER_WAIT", 0.1)

    async def main() -> None:
        held = await _withdrawing_agent(tmp_path)
        try:
            with pytest.raises(UnavailableError, match=f"pid {os.getpid()}.*kill {os.getpid()}"):
                await locks.take_name(tmp_path, "juliet@h1")
        finally:
            os.close(held)

    asyncio.run(main())


def test_a_send_waits_for_a_withdrawing_agent_and_not_for_a_missing_one(tmp_path: Path) -> None:
    async def main() -> None:
        await asyncio.wait_for(locks.wait_for_withdrawal(tmp_path / "nobody"), 1)
        held = await _withdrawing_agent(tmp_path)
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, os.close, held)
        started = loop.time()
        await asyncio.wait_for(locks.wait_for_withdrawal(tmp_path), 5)
        assert loop.time() - started >= 0.2

    asyncio.run(main())
