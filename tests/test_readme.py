"""The README teaches only what works: its `sh` blocks run here, verbatim, on a
virtual LAN, and its tables and JSON examples match the code.

Convention (also stated in the README's Development section):

- every ```sh block runs, line by line, on host h1 with bash, in a directory holding a
  Makefile and a stand-in `notify-send` (which appends its arguments to a file: the
  desktop is the one thing the LAN has not got);
- peers `juliet@capulet` (h2) and `ops@buildbox` (h3) are online throughout;
  `romeo@montague` appears on h3 two seconds after `send --wait` starts;
- a line ending in `&` runs in the background, and the test waits until its agent
  answers (as a person waits for the `announced` line);
- a line whose comment says `Ctrl-C` runs until a peer's message has gone through it
  (the scenario below sends it), then gets SIGINT like a terminal's Ctrl-C;
- a block right after an HTML comment starting `not run by tests/test_readme.py` is
  skipped (installs, firewall, systemd), the comment saying why.

A line the scenarios below do not know still runs and must exit 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lan import Host, Lan, Lines

from xmppll.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SKIP_MARK = "<!-- not run by tests/test_readme.py"
VENV_BIN = Path(sys.executable).parent
LINE_TIMEOUT = 60.0


@dataclass
class Block:
    heading: str
    lines: list[str]
    skip: str | None


def blocks(lang: str = "sh") -> list[Block]:
    out: list[Block] = []
    heading, previous, current = "", "", None
    for raw in README.read_text().splitlines():
        if current is not None:
            if raw.strip() == "```":
                out.append(current)
                current = None
            else:
                current.lines.append(raw)
            continue
        if raw.startswith("#"):
            heading = raw.lstrip("#").strip()
        if raw.strip() == f"```{lang}":
            skip = previous if previous.startswith(SKIP_MARK) else None
            current = Block(heading, [], skip)
        elif raw.strip():
            previous = raw.strip()
    return out


def commands(block: Block) -> list[str]:
    return [ln for ln in block.lines if ln.strip() and not ln.lstrip().startswith("#")]


def code_and_comment(line: str) -> tuple[str, str]:
    code, _, comment = line.partition(" #")
    return code.rstrip(), comment


def until_ctrl_c(line: str) -> bool:
    return "Ctrl-C" in code_and_comment(line)[1]


def in_background(line: str) -> bool:
    return code_and_comment(line)[0].endswith("&")


# --- checks that need no network ---------------------------------------------------


def test_the_two_set_up_commands_are_there_as_they_were() -> None:
    setup = [b for b in blocks() if b.heading == "Set up"]
    assert [commands(b) for b in setup] == [["pip install . && xmppll browse"],
                                            ["sudo bash tests/run.sh"]]


def test_runnable_blocks_are_one_command_per_line() -> None:
    runnable = [b for b in blocks() if not b.skip]
    assert len(runnable) >= 10
    for block in runnable:
        for line in commands(block):
            assert not line.rstrip().endswith("\\"), f"continuation line in {block.heading}"
    headings = {b.heading for b in runnable}
    assert {"A 60-second tour", "Tell me when the build is done", "An echo bot with jq",
            "Broadcast to everyone on the link", "Wait for a peer, then send",
            "Forward messages to desktop notifications", "Keep a log of the chat"} <= headings


def test_every_skipped_block_says_why() -> None:
    for block in blocks():
        if block.skip:
            reason = block.skip[len(SKIP_MARK):].strip(" :-")
            assert len(reason) > 10, block.heading


def test_exit_code_table_lists_exactly_the_codes_the_commands_use() -> None:
    text = README.read_text()
    section = text[text.index("## Exit codes"):text.index("## Configuration")]
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", section, re.MULTILINE)
    assert {int(code) for code, _ in rows} == set(EXIT_CODES)


def test_placeholders_for_others_are_kept() -> None:
    text = README.read_text()
    assert "\n## Interoperability\n" in text and "\n## Performance\n" in text


def test_json_examples_parse() -> None:
    examples = [json.loads("\n".join(b.lines)) for b in blocks("json")]
    assert len(examples) == 2


# --- the README, run on the LAN ----------------------------------------------------------


def _inbox(host: Host, name: str) -> list[dict[str, Any]]:
    path = host.home / ".local" / "state" / "xmppll" / name / "inbox.jsonl"
    try:
        return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    except FileNotFoundError:
        return []


def _bodies(host: Host, name: str) -> list[str]:
    return [r.get("body") or "" for r in _inbox(host, name)]


def _eventually(check: Callable[[], Any], what: str, timeout: float = 20.0,
                every: float = 0.2, act: Callable[[], None] | None = None) -> Any:
    """Poll `check` until it is truthy; `act` (a peer sending again) runs between polls,
    at most every 2 s, for messages that went out before the reader was there."""
    deadline = time.monotonic() + timeout
    last_act = 0.0
    while True:
        if act is not None and time.monotonic() - last_act > 2.0:
            last_act = time.monotonic()
            act()
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"README: {what} (not within {timeout} s)")
        time.sleep(every)


@dataclass
class Run:
    line: str
    out: Path
    err: Path
    proc: subprocess.Popen[Any]
    started: float = field(default_factory=time.monotonic)

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")


class Readme:
    """Host h1 running README lines, with the peers and the checks around them."""

    def __init__(self, lan: Lan, workdir: Path) -> None:
        self.lan = lan
        self.h1, self.h2, self.h3 = lan[0], lan[1], lan[2]
        self.me = f"{self.h1.env['USER']}@{self.h1.name}"
        self.workdir = workdir
        self.notify_log = workdir / ".notify-send.log"
        stubs = workdir / ".bin"
        stubs.mkdir()
        stub = stubs / "notify-send"
        stub.write_text('#!/bin/sh\nprintf \'%s\\n\' "$*" >> "$NOTIFY_LOG"\n')
        stub.chmod(0o755)
        (workdir / "Makefile").write_text("all:\n\t@echo built the project\n")
        self.env = {**self.h1.env, "NOTIFY_LOG": str(self.notify_log),
                    "PATH": f"{stubs}:{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        self.count = 0

    def start(self, line: str) -> Run:
        self.count += 1
        out = self.workdir / f".line{self.count}.out"
        err = self.workdir / f".line{self.count}.err"
        with out.open("w") as o, err.open("w") as e:
            proc = subprocess.Popen(self.h1.wrap(["bash", "-c", line]), cwd=self.workdir,
                                    env=self.env, stdin=subprocess.DEVNULL, stdout=o,
                                    stderr=e, start_new_session=True)
        return Run(line, out, err, proc)

    def finish(self, run: Run, timeout: float = LINE_TIMEOUT) -> int:
        try:
            return run.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGKILL)
            raise AssertionError(f"README line did not finish in {timeout} s: {run.line}\n"
                                 f"stdout: {run.stdout()}\nstderr: {run.stderr()}") from None

    def interrupt(self, run: Run) -> int:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.proc.pid, signal.SIGINT)
        return self.finish(run, 20)

    def agent_answers(self) -> bool:
        return self.h1.xmppll("status", "--json", timeout=10).returncode == 0

    def peer_says(self, host: Host, name: str, body: str) -> Callable[[], None]:
        """A peer sending to us (as its published name, through its agent)."""
        def act() -> None:
            host.xmppll("send", "--from", name, "--wait", "5", self.me, body, timeout=30)
        return act


# Scenario: (pattern on the line, before, during, after). `during` is for Ctrl-C
# lines: it returns once the line has done its job. `after` checks the result.
Scenario = tuple[str, Callable[[Readme, Run], None] | None,
                 Callable[[Readme, Run], None] | None, Callable[[Readme, Run], None] | None]


def _tour_browse(r: Readme, run: Run) -> None:
    records = [json.loads(ln) for ln in run.stdout().splitlines()]
    names = {p["name"] for p in records}
    assert {"juliet@capulet", "ops@buildbox"} <= names, names
    documented = json.loads("\n".join(blocks("json")[0].lines))
    assert set(records[0]) == set(documented), "README's peer example has other keys"


def _announced(r: Readme, run: Run) -> None:
    _eventually(r.agent_answers, "the agent started with & never answered")
    status = json.loads(r.h1.xmppll("status", "--json").stdout)
    assert status["name"] == r.me and status["msg"] == "on call"


def _away(r: Readme, run: Run) -> None:
    def juliet_sees_me_away() -> bool:
        out = r.h2.xmppll("browse", "--json", timeout=20).stdout
        return any(p["name"] == r.me and p["status"] == "away" and p["msg"] == "lunch"
                   for p in map(json.loads, out.splitlines()))
    _eventually(juliet_sees_me_away, "juliet never saw us away")


def _juliet_got(body: str) -> Callable[[Readme, Run], None]:
    def check(r: Readme, run: Run) -> None:
        _eventually(lambda: body in _bodies(r.h2, "juliet@capulet"), f"juliet got no {body!r}")
    return check


def _ops_got(predicate: Callable[[str], bool], what: str) -> Callable[[Readme, Run], None]:
    def check(r: Readme, run: Run) -> None:
        _eventually(lambda: any(map(predicate, _bodies(r.h3, "ops@buildbox"))),
                    f"ops got no {what}")
    return check


def _tour_listen(r: Readme, run: Run) -> None:
    line = _eventually(lambda: [ln for ln in run.stdout().splitlines()
                                if "hello from juliet" in ln],
                       "listen printed no message", act=r.peer_says(
                           r.h2, "juliet@capulet", "hello from juliet"))[0]
    record = json.loads(line)
    assert record["from"] == "juliet@capulet" and record["to"] == r.me
    documented = json.loads("\n".join(blocks("json")[1].lines))
    assert set(record) == set(documented), "README's stanza example has other keys"


def _withdrawn(r: Readme, run: Run) -> None:
    assert r.h1.xmppll("status", timeout=10).returncode == 69


def _broadcast(r: Readme, run: Run) -> None:
    _juliet_got("lunch is here")(r, run)
    _ops_got(lambda b: b == "lunch is here", "broadcast")(r, run)


def _romeo_later(r: Readme, run: Run) -> None:
    def later() -> None:
        time.sleep(2)
        proc = r.h3.xmppll_popen("announce", "romeo@montague", "--json")
        Lines(proc.stdout).wait_json(lambda e: e["event"] == "announced", 20)
    threading.Thread(target=later, daemon=True).start()


def _romeo_got(r: Readme, run: Run) -> None:
    assert time.monotonic() - run.started >= 2, "send did not wait for romeo"
    _eventually(lambda: "you are up next" in _bodies(r.h3, "romeo@montague"),
                "romeo got nothing")


def _not_sent(r: Readme, run: Run) -> None:
    assert run.stdout().strip() == "not sent: exit 68"


def _echo(r: Readme, run: Run) -> None:
    _eventually(lambda: "echo: ping" in _bodies(r.h2, "juliet@capulet"),
                "the echo bot never answered", timeout=30,
                act=r.peer_says(r.h2, "juliet@capulet", "ping"))


def _notified(r: Readme, run: Run) -> None:
    def seen() -> bool:
        return r.notify_log.exists() and \
            "xmppll juliet@capulet: knock knock" in r.notify_log.read_text()
    _eventually(seen, "notify-send was never called", timeout=30,
                act=r.peer_says(r.h2, "juliet@capulet", "knock knock"))


def _logged(r: Readme, run: Run) -> None:
    log = r.workdir / "chat.jsonl"
    _eventually(lambda: log.exists() and "log me" in log.read_text(),
                "nothing in chat.jsonl", timeout=30,
                act=r.peer_says(r.h2, "juliet@capulet", "log me"))


def _read_log(r: Readme, run: Run) -> None:
    assert "juliet@capulet: log me" in run.stdout()


def _arrivals(r: Readme, run: Run) -> None:
    _eventually(lambda: {"juliet@capulet", "ops@buildbox"} <= set(run.stdout().split()),
                "browse --follow showed no arrivals")


def _exec(r: Readme, run: Run) -> None:
    out = r.workdir / "messages.txt"
    _eventually(lambda: out.exists() and "run me" in out.read_text(),
                "--exec never ran", timeout=30,
                act=r.peer_says(r.h2, "juliet@capulet", "run me"))


SCENARIOS: list[Scenario] = [
    (r"^xmppll browse +#", None, None, _tour_browse),
    (r"^xmppll announce .*&", None, None, _announced),
    (r"^xmppll status away", None, None, _away),
    (r'^xmppll send juliet@capulet "ready\?"', None, None, _juliet_got("ready?")),
    (r"^xmppll listen +#", None, _tour_listen, None),
    (r"^xmppll withdraw", None, None, _withdrawn),
    (r'^make && xmppll send ops@buildbox "build ok"', None, None,
     _ops_got(lambda b: b == "build ok", "'build ok'")),
    (r"^make 2>&1 \| tail", None, None, _ops_got(lambda b: "built the project" in b,
                                                  "make output")),
    (r"send --all", None, None, _broadcast),
    (r"send --wait 60 romeo@montague", _romeo_later, None, _romeo_got),
    (r"nobody@nowhere", None, None, _not_sent),
    (r"echo: ", None, _echo, None),
    (r"notify-send", None, _notified, None),
    (r"--output chat\.jsonl", None, _logged, None),
    (r"^jq .* chat\.jsonl", None, None, _read_log),
    (r"browse --follow", None, _arrivals, None),
    (r"--exec", None, _exec, None),
]


def _scenario(line: str) -> Scenario | None:
    found = [s for s in SCENARIOS if re.search(s[0], line)]
    assert len(found) <= 1, f"several scenarios match {line!r}"
    return found[0] if found else None


def test_every_scenario_matches_a_readme_line() -> None:
    """A scenario whose line left the README would check nothing: drop it too."""
    lines = [ln for b in blocks() if not b.skip for ln in commands(b)]
    for pattern, *_ in SCENARIOS:
        assert any(re.search(pattern, ln) for ln in lines), pattern


def test_the_readme_runs_on_the_lan(lan: Lan) -> None:
    juliet = lan[1].xmppll_popen("announce", "juliet@capulet", "--msg", "Hanging out", "--json")
    ops = lan[2].xmppll_popen("announce", "ops@buildbox", "--json")
    for proc in (juliet, ops):
        Lines(proc.stdout).wait_json(lambda e: e["event"] == "announced", 20)
    workdir = lan.tmp / "project"
    workdir.mkdir()
    readme = Readme(lan, workdir)
    _eventually(lambda: {"juliet@capulet", "ops@buildbox"} <= {
        json.loads(ln)["name"] for ln in lan[0].xmppll("browse", "--json").stdout.splitlines()},
        "the peers never showed up on h1")

    ran = 0
    for block in blocks():
        if block.skip:
            continue
        for line in commands(block):
            scenario = _scenario(line)
            _, before, during, after = scenario or (None, None, None, None)
            if before:
                before(readme, None)  # type: ignore[arg-type]
            run = readme.start(line)
            where = f"README ({block.heading}): {line}"
            if in_background(line):
                code = readme.finish(run)
            elif until_ctrl_c(line):
                try:
                    if during:
                        during(readme, run)
                    else:
                        time.sleep(3)
                    assert run.proc.poll() is None, f"{where}: ended before Ctrl-C\n" \
                                                     f"{run.stderr()}"
                finally:
                    code = readme.interrupt(run)
                code = 0 if code in (-signal.SIGINT, 130) else code
            else:
                code = readme.finish(run)
            assert code == 0, f"{where}: exit {code}\nstdout: {run.stdout()}\n" \
                              f"stderr: {run.stderr()}"
            assert "Traceback" not in run.stderr(), f"{where}:\n{run.stderr()}"
            if after:
                after(readme, run)
            ran += 1
    assert ran >= 15
