"""Shell completion: the committed scripts are click's current ones, every option
completes, peer names come from the agent or a bounded browse, and a real bash in a
pty on the virtual LAN completes `xmppll send <TAB>` to a peer on another host.

Anything that would browse runs inside a LAN host only: in this process the browse
is replaced by a function that fails the test.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import pytest
from click.shell_completion import ShellComplete
from lan import Lan, Lines

from xmppll.agent import control
from xmppll.cli import COMPLETE_VAR, completion, completion_scripts
from xmppll.cli.commands import cli

ROOT = Path(__file__).resolve().parent.parent
XMPPLL = Path(sys.executable).with_name("xmppll")
PEERS = [
    {"name": "juliet@capulet", "status": "away", "msg": "balcony", "addresses": ["10.0.0.5"],
     "port": 5298},
    {"name": "romeo@montague", "status": "avail", "msg": None, "addresses": ["10.0.0.6"],
     "port": 5298},
]


@pytest.fixture(autouse=True)
def no_browse_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process is in the machine's own network namespace: it must never browse."""

    def refuse(*args: Any, **kw: Any) -> None:
        raise AssertionError("completion tried to browse the real network")

    from xmppll.discovery.mdns import oneshot

    monkeypatch.setattr(oneshot, "browse", refuse)
    monkeypatch.setattr(control, "running_agents", lambda: [])


def complete(args: list[str], incomplete: str) -> list[str]:
    comp = ShellComplete(cli, {}, "xmppll", COMPLETE_VAR)
    return [str(item.value) for item in comp.get_completions(args, incomplete)]


@pytest.mark.parametrize("shell", sorted(completion.FILES))
def test_committed_scripts_equal_a_fresh_generation(shell: str) -> None:
    path = ROOT / "completions" / completion.FILES[shell]
    assert path.read_text() == completion_scripts.source(shell), (
        "regenerate with: python -m xmppll.cli.completion_scripts completions/")


def test_the_scripts_are_click_shims_calling_xmppll_back() -> None:
    for name in completion.FILES.values():
        text = (ROOT / "completions" / name).read_text()
        assert "_XMPPLL_COMPLETE" in text and "xmppll" in text


def test_every_command_completes() -> None:
    assert set(complete([], "")) == set(cli.commands)


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_option_of_every_command_completes(name: str) -> None:
    command = cli.commands[name]
    offered = set(complete([name], "-"))
    for param in command.params:
        if isinstance(param, click.Option):
            long = [o for o in (*param.opts, *param.secondary_opts) if o.startswith("--")]
            assert set(long) <= offered, f"{name}: {long} not offered ({sorted(offered)})"
    assert "--help" in offered


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_choice_options_complete_their_values(name: str) -> None:
    for param in cli.commands[name].params:
        if isinstance(param, click.Option) and isinstance(param.type, click.Choice):
            values = set(complete([name, param.opts[0]], ""))
            assert values == {str(c) for c in param.type.choices}, param.name


def test_peer_names_come_from_the_agents_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []
    monkeypatch.setattr(control, "running_agents", lambda: ["me@here"])

    def request(name: str, op: str, **kw: Any) -> dict[str, Any]:
        asked.append((name, op))
        return {"ok": True, "peers": PEERS}

    monkeypatch.setattr(control, "request", request)
    assert complete(["send"], "") == ["juliet@capulet", "romeo@montague"]
    assert complete(["send"], "JUL") == ["juliet@capulet"]
    assert asked == [("me@here", "peers"), ("me@here", "peers")]


def test_peer_names_without_an_agent_come_from_a_short_browse(
        monkeypatch: pytest.MonkeyPatch) -> None:

    timeouts = []

    def browse(timeout: float, interfaces: Any = None) -> list[dict[str, Any]]:
        timeouts.append(timeout)
        return PEERS

    from xmppll.discovery.mdns import oneshot

    monkeypatch.setattr(oneshot, "browse", browse)
    assert complete(["send"], "r") == ["romeo@montague"]
    assert timeouts == [completion.BROWSE_TIMEOUT] and completion.BROWSE_TIMEOUT <= 0.3


def test_a_hung_lookup_is_cut_at_the_hard_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(completion, "_online_peers", lambda: time.sleep(30) or PEERS)
    start = time.monotonic()
    assert completion.peers("", cap=0.2) == []
    assert time.monotonic() - start < 0.5


def test_a_failing_lookup_offers_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> list[dict[str, Any]]:
        raise OSError("no network")

    monkeypatch.setattr(completion, "_online_peers", broken)
    assert complete(["send"], "") == []


def test_descriptions_carry_status_and_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(completion, "_online_peers", lambda: PEERS)
    items = completion.peers("")
    assert [(i.value, i.help) for i in items] == [("juliet@capulet", "away: balcony"),
                                                   ("romeo@montague", "avail")]


def _bash_complete(line: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the bash shim gets back for the text before the cursor, `line`."""
    monkeypatch.setenv("COMP_LINE", line)
    monkeypatch.setenv("COMP_WORDBREAKS", " \t\n\"'@><=;|&(:")
    monkeypatch.setenv("COMP_WORDS", line)
    monkeypatch.setenv("COMP_CWORD", "0")
    comp = completion.Bash(cli, {}, "xmppll", COMPLETE_VAR)
    args, incomplete = comp.get_completion_args()
    return [comp.format_completion(i) for i in comp.get_completions(args, incomplete)]


def test_bash_gets_the_part_after_its_word_break(monkeypatch: pytest.MonkeyPatch) -> None:
    """bash splits `juliet@cap` at '@', and readline then replaces `@cap` (an '@'
    stays with the word after it, where ':' and '=' do not): the answer must be
    `@capulet`, not the whole name, which would land after `juliet`."""
    monkeypatch.setattr(completion, "_online_peers", lambda: PEERS)
    assert _bash_complete("xmppll send ", monkeypatch) == [
        "plain,juliet@capulet", "plain,romeo@montague"]
    assert _bash_complete("xmppll send juliet@cap", monkeypatch) == ["plain,@capulet"]
    assert _bash_complete("xmppll send --type=ch", monkeypatch) == ["plain,chat"]
    assert _bash_complete("xmppll sen", monkeypatch) == ["plain,send"]


def test_the_completion_process_is_silent_and_exits_at_once(tmp_path: Path) -> None:
    """A bad config file, or any failure, must not print on the terminal while
    someone types: the shell would show it mid-line."""
    (tmp_path / "xmppll").mkdir()
    (tmp_path / "xmppll" / "config.toml").write_text("port = [oops\n")
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "_XMPPLL_COMPLETE": "bash_complete",
           "COMP_LINE": "xmppll send --ty", "COMP_WORDS": "xmppll send --ty", "COMP_CWORD": "2"}
    done = subprocess.run([sys.executable, "-m", "xmppll"], env=env, capture_output=True,
                          text=True, timeout=10)
    assert done.stdout == "plain,--type\n"
    assert done.stderr == ""
    assert done.returncode == 0


# --- a real bash, in a pty, on the virtual LAN ------------------------------------------


class Pty:
    """An interactive program on a pseudo-terminal, read as one growing screen text."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True, close_fds=True)
        os.close(slave)
        self.text = ""

    def send(self, data: str) -> None:
        os.write(self.master, data.encode())

    def expect(self, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} not seen within {timeout} s; screen:\n"
                                     f"{self.text[-2000:]}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    self.text += os.read(self.master, 65536).decode(errors="replace")
                except OSError:  # the program exited
                    raise AssertionError(f"pty closed; screen:\n{self.text}") from None
        return self.text

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(5)
        os.close(self.master)


def _announce(host: Any, *args: str) -> None:
    proc = host.xmppll_popen("announce", "--json", *args)
    Lines(proc.stdout).wait_json(lambda r: r["event"] == "announced", 20)


@pytest.mark.parametrize("with_agent", [False, True], ids=["browse", "agent-cache"])
def test_tab_in_a_real_bash_offers_the_peers_online(lan: Lan, with_agent: bool) -> None:
    h1, h2, h3 = lan[0], lan[1], lan[2]
    _announce(h2, "juliet@capulet", "--msg", "balcony")
    _announce(h3, "romeo@montague")
    if with_agent:
        _announce(h1)
        # the agent's cache must hold both before we ask it
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            out = h1.xmppll("browse", "--json").stdout
            if "juliet@capulet" in out and "romeo@montague" in out:
                break
            time.sleep(0.2)
    env = {**h1.env, "PATH": f"{XMPPLL.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "TERM": "dumb", "PS1": "READY$ ", "INPUTRC": "/dev/null", "HISTFILE": "/dev/null"}
    shell = Pty(h1.wrap(["bash", "--norc", "--noprofile", "-i"]), env)
    try:
        shell.send(f"source {ROOT / 'completions' / 'xmppll.bash'}; echo SOURCED\n")
        shell.expect("SOURCED\r\nREADY$ ")
        # two peers: the first TAB finds no common prefix, the second lists them
        shell.send("xmppll send \t\t")
        screen = shell.expect("romeo@montague", timeout=10)
        assert "juliet@capulet" in screen
        shell.send("\x15")  # ^U: clear the line

        def line_after_tab(typed: str) -> str:
            """Type, TAB, then run the line with `echo` in front (^A goes to its
            start): the words bash ended up with, free of terminal redraw codes."""
            shell.text = ""
            shell.send(f"{typed}\t")
            time.sleep(0.1)
            shell.send("\x01echo LINE: \n")
            return shell.expect("\r\nREADY$ ").split("LINE: ")[-1].split("\r\n")[0]

        assert line_after_tab("xmppll send jul") == "xmppll send juliet@capulet"
        # bash breaks words at '@': the completion must still finish the name
        assert line_after_tab("xmppll send romeo@mon") == "xmppll send romeo@montague"
        assert line_after_tab("xmppll send --type=he") == "xmppll send --type=headline"
        start = time.monotonic()
        shell.send("xmppll send nobody\t")
        shell.send("\x15echo DONE\n")
        shell.expect("DONE\r\n")
        assert time.monotonic() - start < 3, "completion held the shell"
    finally:
        shell.close()


@pytest.mark.parametrize("shell", sorted(completion.FILES))
def test_the_documented_one_liner_prints_the_committed_script(shell: str) -> None:
    """README: `_XMPPLL_COMPLETE=bash_source xmppll > ...` installs the same script."""
    env = {**os.environ, "_XMPPLL_COMPLETE": f"{shell}_source"}
    done = subprocess.run([sys.executable, "-m", "xmppll"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout == (ROOT / "completions" / completion.FILES[shell]).read_text()
