"""The agent path (xmppll/cli/fast.py) reads argv with a table generated from the click
definitions: the committed table is current, every parameter of its commands is
classified, and it reads argv as click does or leaves it to click. No network here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xmppll.cli import _fastspec, fast, fastspec
from xmppll.cli.commands import cli

ROOT = Path(__file__).resolve().parent.parent

FAST = sorted(fast.HANDLED)


def test_committed_table_equals_a_fresh_generation() -> None:
    assert fastspec.TARGET.read_text() == fastspec.source(), \
        "regenerate with: python -m xmppll.cli.fastspec"
    assert fast._current()


def test_the_table_covers_the_commands_the_runners_answer() -> None:
    assert set(fast.HANDLED) == set(fast.RUNNERS) == set(fastspec.COMMANDS) == set(
        _fastspec.COMMANDS)


@pytest.mark.parametrize("name", FAST)
def test_every_parameter_is_handled_or_left_to_click(name: str) -> None:
    params = {p.name for p in cli.commands[name].params}
    handled, to_click = fast.HANDLED[name], fast.TO_CLICK.get(name, set())
    argv_only = fast.ARGV_TO_CLICK.get(name, set())
    unclassified = params - handled - to_click - argv_only
    assert not unclassified, (
        f"xmppll {name}: say in xmppll/cli/fast.py (HANDLED, TO_CLICK) what "
        f"{sorted(unclassified)} mean(s) when an agent answers")
    assert not (handled | to_click | argv_only) - params, "stale names in fast.py"


def _click_values(name: str, args: list[str]) -> dict | None:
    """What click makes of `xmppll NAME ARGS`: the parameter values, or None when it
    refuses (or prints help)."""
    command = cli.commands[name]
    parent = click.Context(cli, info_name="xmppll", **cli.context_settings)
    try:
        ctx = command.make_context(name, list(args), parent=parent)
    except (click.exceptions.Exit, click.UsageError, click.BadParameter, click.Abort):
        return None
    # Not --color and --keep-*: click hands them to callbacks, not to the command.
    return dict(ctx.params)


CASES = [
    ["browse"], ["browse", "--json"], ["browse", "juliet@*", "--table"],
    ["browse", "-f", "--timeout", "2.5"], ["browse", "--timeout=3"], ["browse", "--no-json"],
    ["browse", "--color", "never", "x*"], ["browse", "--no-agent"], ["browse", "-i", "eth0"],
    ["browse", "a", "b"], ["browse", "--timeout", "x"], ["browse", "--help"], ["browse", "-h"],
    ["status"], ["status", "away", "--msg", "lunch"], ["status", "AWAY"], ["status", "bored"],
    ["status", "--msg="], ["status", "--name", "bob", "-q", "--json"],
    ["send", "juliet@capulet", "hi", "there"], ["send", "--receipt", "j", "--", "-1"],
    ["send", "j", "-5"], ["send", "--type", "normal", "--subject", "s", "j", "b"],
    ["send", "--type", "groupchat", "j", "b"], ["send", "-qv", "j", "b"],
    ["send", "--all", "lunch"], ["send", "--json"], ["send", "--lines", "j"],
    ["send", "--timeout", "1", "--wait", "2", "--id", "x", "--from", "me", "j", "b"],
    ["send", "--timeout"], ["send", "--receipt=1", "j", "b"],
    ["send", "j", "--file", "a", "--file", "b", "--method", "oob", "text"],
    ["send", "j", "--file", "-", "--name", "x.log"], ["send", "--method", "x", "j"],
    ["send", "--all", "--file", "a", "--timeout", "3"], ["send", "--name", "n", "j"],
    ["withdraw"], ["withdraw", "bob", "--json"], ["withdraw", "--stale"],
    ["listen"], ["listen", "--backlog", "--exec", "cat", "--output", "/tmp/x.jsonl"],
    ["listen", "--output", "/tmp"], ["listen", "--port", "5299"], ["listen", "bob", "-q"],
    ["listen", "--keep-days", "3"], ["listen", "--verify", "nope"],
]


def _check(args: list[str]) -> None:
    name = args[0]
    clicked = _click_values(name, args[1:])
    found = fast.plan(args)
    if found is None:
        return  # left to click: always allowed
    values = found[1]
    assert clicked is not None, f"the agent path accepted what click refuses: {args}"
    for key, value in values.items():
        if key not in clicked:
            continue
        want = clicked[key]
        if isinstance(want, tuple | list):
            want, value = tuple(want), tuple(value)
        assert value == want, (args, key)


@pytest.mark.parametrize("args", CASES, ids=" ".join)
def test_parses_as_click_does_or_leaves_it_to_click(monkeypatch: pytest.MonkeyPatch,
                                                    args: list[str]) -> None:
    for key in list(os.environ):
        if key.startswith("XMPPLL_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent")  # no config file
    _check(args)


def _words(name: str) -> st.SearchStrategy[list[str]]:
    params = _fastspec.COMMANDS[name]
    opts = [o for p in params for o in p["opts"] + p["secondary"]]
    values = st.sampled_from(["x", "1", "2.5", "-1", "away", "AWAY", "chat", "mark", "",
                              "a=b", "--", "-", "/tmp", "juliet@capulet"])
    return st.lists(st.one_of(st.sampled_from(opts), values,
                              st.builds(lambda o, v: f"{o}={v}",
                                        st.sampled_from(opts), values)), max_size=6)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_random_argv_parses_as_click_does_or_goes_to_click(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(FAST))
    saved = {k: os.environ.pop(k) for k in list(os.environ)
             if k.startswith("XMPPLL_") or k == "XDG_CONFIG_HOME"}
    os.environ["XDG_CONFIG_HOME"] = "/nonexistent"  # no config file
    try:
        _check([name, *data.draw(_words(name))])
    finally:
        del os.environ["XDG_CONFIG_HOME"]
        os.environ.update(saved)


def test_environment_and_config_settings_reach_the_values(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "xmppll").mkdir()
    (tmp_path / "xmppll" / "config.toml").write_text('name = "juliet@capulet"\n')
    assert fast.plan(["listen"])[1]["name"] == "juliet@capulet"
    monkeypatch.setenv("XMPPLL_NAME", "romeo@montague")
    assert fast.plan(["listen"])[1]["name"] == "romeo@montague"
    # A setting that makes the command something else than a question to the agent:
    monkeypatch.setenv("XMPPLL_INTERFACES", "eth0")
    assert fast.plan(["browse"]) is None
    assert fast.plan(["listen"]) is None  # click checks the interface names
    (tmp_path / "xmppll" / "config.toml").write_text('domains = ["lan.example"]\n')
    assert fast.plan(["send", "j", "b"]) is None


def test_what_the_agent_path_leaves_to_click() -> None:
    for args in (["--help"], ["--version"], [], ["announce", "--avatar", "me.png"],
                 ["announce", "--domain", "lan.example"], ["inbox"], ["config"],
                 ["status", "--help"], ["browse", "--no-agent"], ["send", "-v", "j", "b"],
                 ["withdraw", "--stale"], ["listen", "--port", "1"], ["status", "-i", "lo"]):
        assert fast.plan(args) is None, args


COMPLETIONS = [
    (["send"], "", "peers"), (["send"], "jul", "peers"), (["send", "--receipt"], "", "peers"),
    (["send", "--from"], "", "agents"), (["send", "juliet"], "", None),
    (["send"], "--", None), (["status", "--name"], "b", "agents"), (["withdraw"], "", "agents"),
    (["listen"], "", "agents"), (["send", "-i"], "", "interfaces"), (["browse"], "", None),
    (["send", "--timeout"], "", None), (["announce"], "", None),
]


@pytest.mark.parametrize(("args", "incomplete", "which"), COMPLETIONS)
def test_completion_knows_what_is_being_completed(args, incomplete, which) -> None:
    assert fast.completing(args, incomplete) == which


@pytest.mark.parametrize(("args", "incomplete", "which"), COMPLETIONS)
def test_completion_agrees_with_click(monkeypatch, args, incomplete, which) -> None:
    """Whatever the agent path says is completed, click completes with the same
    completer (click's own resolution, without running the completer)."""
    from click.shell_completion import _resolve_context, _resolve_incomplete

    if which is None:
        return
    for key in list(os.environ):
        if key.startswith("XMPPLL_"):
            monkeypatch.delenv(key)
    ctx = _resolve_context(cli, {}, "xmppll", list(args))
    obj, _ = _resolve_incomplete(ctx, list(args), incomplete)
    assert fastspec._completer(obj) == which


def test_no_click_and_no_heavy_module_on_the_way_in() -> None:
    """Parsing and planning load nothing but the table (the runners then load the
    control client; tests/test_agent.py checks whole commands on a LAN)."""
    code = ("import sys; from xmppll.cli import fast; fast.plan(['send', 'j', 'hi']); "
            "fast.plan(['browse', '--json']); fast.completing(['send'], 'j'); "
            "print(' '.join(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items()
                               if not k.startswith("XMPPLL_")}, check=True)
    loaded = set(done.stdout.split())
    assert not {m for m in loaded if m.split(".")[0] in (
        "click", "zeroconf", "xml", "defusedxml", "asyncio", "ssl", "dns", "tomllib")}


HELP_CASES = [["--help"], ["-h"], ["send", "--help"], ["announce", "-h"], ["inbox", "--help"]]


# The entry point, then whether click was loaded, on stderr.
REPORTING = """import atexit, sys
atexit.register(lambda: print("click loaded:", "click" in sys.modules, file=sys.stderr))
from xmppll.cli.fast import main
main()
"""


def _xmppll(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("XMPPLL_")}
    return subprocess.run([sys.executable, "-c", REPORTING, *args],
                          capture_output=True, text=True, env={**base, **env}, timeout=60)


@pytest.mark.parametrize("args", HELP_CASES, ids=" ".join)
def test_help_is_clicks_own_without_click(args: list[str], tmp_path: Path) -> None:
    """`--help` from the table on a wide terminal (or a pipe) is click's own text; on a
    narrow one, or with a config file (its values show as defaults), click prints it."""
    env = {"COLUMNS": "80", "XDG_CONFIG_HOME": str(tmp_path)}
    fast, slow = _xmppll(args, **env), _xmppll(args, XMPPLL_NO_FAST="1", **env)
    assert (fast.returncode, fast.stdout) == (slow.returncode, slow.stdout) == (0, slow.stdout)
    assert "Usage: xmppll" in fast.stdout
    assert "click loaded: False" in fast.stderr and "click loaded: True" in slow.stderr
    narrow = _xmppll(args, COLUMNS="60", XDG_CONFIG_HOME=str(tmp_path))
    assert "click loaded: True" in narrow.stderr and narrow.stdout != fast.stdout
    (tmp_path / "xmppll").mkdir()
    (tmp_path / "xmppll" / "config.toml").write_text("")
    assert "click loaded: True" in _xmppll(args, **env).stderr


def test_help_imports_nothing_slow() -> None:
    """On an interpreter without site (whose editable-install finder would load re and
    pathlib itself), `--help` loads nothing but xmppll's table on top of the
    interpreter's own start."""
    run = [sys.executable, "-S", "-X", "importtime", "-c",
           "from xmppll.cli.fast import main; main()", "--help"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    done = subprocess.run(run, capture_output=True, text=True, env=env, timeout=60)
    floor = subprocess.run([sys.executable, "-S", "-X", "importtime", "-c", "pass"],
                           capture_output=True, text=True, env=env, timeout=60)

    def modules(stderr: str) -> set[str]:
        return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
                if line.startswith("import time:") and "|" in line} - {"package"}

    assert done.returncode == 0 and "Usage: xmppll" in done.stdout
    extra = modules(done.stderr) - modules(floor.stderr)
    # site would load os and its helpers anyway; -S leaves them to us
    with_site = {"os", "stat", "_stat", "posixpath", "genericpath", "_collections_abc"}
    built_in = {"atexit"}  # compiled into the interpreter: nothing to find or load
    assert {m for m in extra if not m.startswith("xmppll")} <= {"__future__", "zlib",
                                                                  *with_site, *built_in}, extra


def _leave(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "import sys\nfrom xmppll.cli.fast import _leave\n"
                           + code], capture_output=True, text=True, timeout=30)


def test_the_quick_exit_flushes_and_keeps_the_code() -> None:
    done = _leave("sys.stdout.write('out'); sys.stderr.write('err'); _leave(SystemExit(4))")
    assert (done.returncode, done.stdout, done.stderr) == (4, "out", "err")


def test_the_quick_exit_leaves_exit_handlers_and_threads_to_the_usual_exit() -> None:
    done = _leave("import atexit; atexit.register(print, 'handler ran'); _leave(SystemExit(3))")
    assert (done.returncode, done.stdout) == (3, "handler ran\n")
    done = _leave("import threading, time\n"
                  "def late(): time.sleep(0.2); print('thread ended')\n"
                  "threading.Thread(target=late).start()\n"
                  "_leave(SystemExit(5))")
    assert (done.returncode, done.stdout) == (5, "thread ended\n")
    done = _leave("_leave(SystemExit('a message'))")
    assert (done.returncode, done.stderr) == (1, "a message\n")
