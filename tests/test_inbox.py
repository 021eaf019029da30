"""The inbox's segments, retention and catch-up, in process: files only, no network.

Covers: reading after a seq across sealed segments (bisection, gaps, junk lines, long
lines), retention that never drops unread records, a prune killed at every step, lost
or corrupted summaries, seqs never reused, and op_inbox reading off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from xmppll.agent import history, retention, segments
from xmppll.agent.cursor import Cursor
from xmppll.agent.inbox import Inbox, read_after
from xmppll.agent.policy import Policy

OLD = "2001-01-01T00:00:00.000Z"  # far older than any retention age


def record(i: int, peer: str = "p@h", received: str = OLD) -> dict[str, Any]:
    return {"kind": "message", "from": peer, "to": "me@h", "type": "chat", "id": f"i{i}",
            "body": f"m{i}", "peer": {"address": "10.0.0.1", "port": 5298, "name": peer},
            "verified": True, "received": received}


def fill(state: Path, n: int, *, segment_bytes: int = 4000, batch: int = 7,
         peers: tuple[str, ...] = ("p@h",)) -> list[int]:
    """n records through the real writer, in batches (a batch is one group commit)."""
    async def main() -> list[int]:
        inbox = Inbox(state, segment_bytes=segment_bytes)
        seqs: list[int] = []
        try:
            for start in range(0, n, batch):
                done = await asyncio.gather(*(inbox.submit(record(i, peers[i % len(peers)]))
                                              for i in range(start, min(n, start + batch))))
                seqs += [r["seq"] for r in done]
        finally:
            inbox.close()
        return seqs

    return asyncio.run(main())


def seqs_after(state: Path, after: int) -> list[int]:
    return [r["seq"] for r in read_after(state, after)]


def set_cursor(state: Path, seq: int) -> None:
    cursor = Cursor(state)
    cursor.set(seq)
    cursor.close()


def test_read_after_any_seq_across_sealed_segments(tmp_path: Path) -> None:
    seqs = fill(tmp_path, 400)
    assert seqs == list(range(1, 401))
    assert len(segments.sealed(tmp_path)) > 5, "small segments were sealed"
    for after in (0, 1, 6, 7, 8, 99, 200, 399, 400, 1000):
        assert seqs_after(tmp_path, after) == list(range(after + 1, 401)), after
    assert Inbox(tmp_path).seq == 400


def test_bisection_with_gaps_junk_and_long_lines(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """One big file (an inbox.jsonl from before segments) with seq gaps (failed
    batches), lines that are not records, and lines far longer than a read block."""
    monkeypatch.setattr(segments, "BLOCK", 64)
    rng = random.Random(7)
    seq, lines, present = 0, [], []
    for i in range(600):
        seq += rng.choice((1, 1, 1, 2, 5))
        body = "x" * (rng.choice((10, 10, 300)))
        lines.append(json.dumps({"seq": seq, **record(i), "body": body}) + "\n")
        present.append(seq)
        if i % 97 == 0:
            lines.append("not json at all\n")
    (tmp_path / "inbox.jsonl").write_text("".join(lines))
    for after in range(0, seq + 2):
        assert seqs_after(tmp_path, after) == [s for s in present if s > after], after


def test_torn_tail_is_cut_and_seq_goes_on(tmp_path: Path) -> None:
    fill(tmp_path, 50)
    with open(tmp_path / "inbox.jsonl", "ab") as fh:
        fh.write(b'{"seq": 51, "kind": "mess')
    assert seqs_after(tmp_path, 45) == [46, 47, 48, 49, 50], "a torn line is not a record"
    assert fill(tmp_path, 3) == [51, 52, 53]
    assert seqs_after(tmp_path, 49) == [50, 51, 52, 53]


def test_unread_older_than_retention_survive_and_read_history_goes(tmp_path: Path) -> None:
    fill(tmp_path, 300)
    set_cursor(tmp_path, 120)
    before = history.stats(tmp_path)
    done = retention.prune(tmp_path, Policy(keep_days=0, keep_bytes=0))
    assert done["segments"] > 0 and done["through"] <= 120
    assert seqs_after(tmp_path, 120) == list(range(121, 301)), "unread survive, however old"
    after = history.stats(tmp_path)
    assert after["bytes"] < before["bytes"] and after["unread"] == 180
    assert after["first_seq"] == done["through"] + 1
    for _, path in segments.sealed(tmp_path):
        assert segments.last_seq(path) > 120, "only segments wholly read go"


def test_retention_keeps_recent_and_small_read_history(tmp_path: Path) -> None:
    fill(tmp_path, 300)
    set_cursor(tmp_path, 300)
    now = retention._epoch(OLD) + 86400  # one day after the records
    assert retention.prune(tmp_path, Policy(keep_days=30, keep_bytes=1 << 30), now)[
        "segments"] == 0, "within both limits: nothing goes"
    sizes = [p.stat().st_size for _, p in segments.sealed(tmp_path)]
    done = retention.prune(tmp_path, Policy(keep_days=30, keep_bytes=sum(sizes[-3:])), now)
    assert len(segments.sealed(tmp_path)) == 3 and done["segments"] == len(sizes) - 3


def test_seq_never_reused_after_pruning_everything(tmp_path: Path) -> None:
    fill(tmp_path, 200)
    set_cursor(tmp_path, 200)
    retention.prune(tmp_path, Policy(keep_days=0, keep_bytes=0))
    (tmp_path / "inbox.jsonl").write_bytes(b"")  # as if sealed just before a crash
    for _, path in segments.sealed(tmp_path):
        path.unlink()
    assert Inbox(tmp_path).seq == segments.pruned_through(tmp_path) > 0
    assert fill(tmp_path, 1)[0] == segments.pruned_through(tmp_path) + 1


PRUNE = """
import sys
from pathlib import Path
from xmppll.agent import retention
from xmppll.agent.policy import Policy
retention.prune(Path(sys.argv[1]), Policy(keep_days=0, keep_bytes=0))
"""


def test_prune_killed_at_every_step_loses_nothing_unread(tmp_path: Path) -> None:
    base = tmp_path / "base"
    fill(base, 300)
    set_cursor(base, 170)
    unread = seqs_after(base, 170)
    steps = 0
    while True:
        steps += 1
        state = tmp_path / f"kill{steps}"
        shutil.copytree(base, state)
        done = subprocess.run([sys.executable, "-c", PRUNE, str(state)], timeout=60,
                              env={**os.environ, retention.KILL_AFTER: str(steps)})
        assert seqs_after(state, 170) == unread, f"killed after step {steps}"
        records = list(read_after(state, 0))
        assert [r["seq"] for r in records] == sorted({r["seq"] for r in records})
        assert Inbox(state).seq == 300
        assert fill(state, 1) == [301]
        # The next prune (the agent's next round) finishes the job from any state.
        retention.prune(state, Policy(keep_days=0, keep_bytes=0))
        assert seqs_after(state, 170) == unread + [301]
        if done.returncode == 0:
            break
        assert done.returncode == -signal.SIGKILL
    assert steps > 3, "the prune had several steps to be killed at"


def test_summary_lost_or_corrupted_is_rebuilt(tmp_path: Path) -> None:
    fill(tmp_path, 300, peers=("a@h", "b@h", "c@h"))
    expected = history.stats(tmp_path)
    metas = sorted(segments.sealed_dir(tmp_path).glob("*.meta.json"))
    assert len(metas) == len(segments.sealed(tmp_path))
    metas[0].unlink()
    metas[1].write_text("{garbage")
    metas[2].write_text(json.dumps({"version": 1, "bytes": 1, "count": 999, "peers": {}}))
    assert history.stats(tmp_path) == expected
    for meta in metas[:3]:
        assert json.loads(meta.read_text())["count"] == segments.build_summary(
            segments.sealed_path(tmp_path, int(meta.name[:20])))["count"]


def test_stats_counts(tmp_path: Path) -> None:
    fill(tmp_path, 250)
    set_cursor(tmp_path, 77)
    info = history.stats(tmp_path)
    assert (info["messages"], info["unread"], info["first_seq"], info["last_seq"]) == \
        (250, 173, 1, 250)
    assert info["oldest"] == OLD and info["disk"] > 0


def test_last_with_peer_reads_only_segments_naming_it(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    peers = ("a@h",) * 150 + ("rare@h",) * 3 + ("a@h",) * 150
    fill(tmp_path, len(peers), peers=peers)
    history.stats(tmp_path)  # summaries exist
    opened: list[Path] = []
    real = segments.lines_backwards
    monkeypatch.setattr(segments, "lines_backwards",
                        lambda path: (opened.append(path), real(path))[1])
    got = history.last_with(tmp_path, "rare@h", 10)
    assert [r["seq"] for r in got] == [151, 152, 153]
    sealed = [p for p in opened if p.parent.name == segments.SEALED]
    assert len(sealed) <= 2, "segments without the peer are skipped by their summary"
    assert [r["body"] for r in history.last_with(tmp_path, "a@h", 2)] == ["m301", "m302"]


def test_op_inbox_catches_up_off_the_event_loop(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's op_inbox with after=N streams N+1.. and the file reads happen on a
    worker thread, never on the loop's."""
    from xmppll.agent.agent import Agent, AgentConfig
    from xmppll.discovery.presence import Presence

    fill(tmp_path, 300)
    threads: set[int] = set()
    real = segments.records_after

    def spy(fh: Any, after: int) -> Any:
        threads.add(threading.get_ident())
        return real(fh, after)

    monkeypatch.setattr(segments, "records_after", spy)

    class Writer:
        def __init__(self) -> None:
            self.lines: list[dict[str, Any]] = []
            self.enough = asyncio.Event()

        def write(self, data: bytes) -> None:
            self.lines += [json.loads(x) for x in data.decode().splitlines()]
            if len(self.lines) >= 1 + 300 - 250:
                self.enough.set()

        async def drain(self) -> None:
            pass

    async def main() -> tuple[list[dict[str, Any]], int]:
        agent = Agent(AgentConfig(name="me@h", presence=Presence(port=1)), lambda e: None)
        agent.state = tmp_path
        agent.inbox = Inbox(tmp_path)
        writer = Writer()
        task = asyncio.ensure_future(agent.op_inbox({"after": 250}, writer))  # type: ignore
        await asyncio.wait_for(writer.enough.wait(), 10)
        task.cancel()
        agent.inbox.close()
        return writer.lines, threading.get_ident()

    lines, loop_thread = asyncio.run(main())
    assert lines[0]["ok"] is True and lines[0]["seq"] == 300
    assert [r["seq"] for r in lines[1:]] == list(range(251, 301))
    assert threads and loop_thread not in threads


def test_exec_moves_the_cursor_only_past_finished_commands(tmp_path: Path) -> None:
    """The cursor is what retention may drop: with --exec it must not pass a stanza
    whose command has not finished."""
    from xmppll.agent import listening

    gate = tmp_path / "gate"
    runner = listening.Runner(f"cat > /dev/null; until [ -e {gate} ]; do sleep 0.01; done")
    cursor = Cursor(tmp_path)
    try:
        listening.consume([{"seq": s} for s in (1, 2, 3)], cursor=cursor, show=lambda r: None,
                          runner=runner, to_json=json.dumps)
        assert cursor.get() == 0, "no command has finished"
        gate.touch()
        runner.close()  # waits for the commands
        assert cursor.get() == 3
    finally:
        gate.touch()
        runner.close()
        cursor.close()
