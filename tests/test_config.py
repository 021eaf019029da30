"""Config precedence (flag > XMPPLL_* > config.toml > built-in) and bad-config errors.

`xmppll config` needs no network and runs here. The one test that runs `announce`
runs it in a LAN host, even though it stops at the port check before the link.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lan import Lan

from xmppll.cli import config
from xmppll.cli.commands import cli


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMPPLL_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), USER="juliet")
    env.update(extra)
    return env


def _write(home: Path, text: str) -> Path:
    path = home / ".config" / "xmppll" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _config(home: Path, **env: str) -> dict[str, dict[str, object]]:
    done = subprocess.run([sys.executable, "-m", "xmppll", "config", "--json"],
                          env=_env(home, **env), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return {r["setting"]: r for r in map(json.loads, done.stdout.splitlines())}


def test_builtin_defaults_without_file_or_environment(tmp_path: Path) -> None:
    shown = _config(tmp_path)
    assert set(shown) == set(config.SETTINGS)
    assert shown["port"] == {"setting": "port", "value": 5298, "source": "built-in"}
    assert shown["status"]["value"] == "avail" and shown["verify"]["value"] == "mark"
    assert shown["name"]["value"].startswith("juliet@")


def test_file_beats_builtin_and_environment_beats_file(tmp_path: Path) -> None:
    path = _write(tmp_path, 'port = 6000\nnick = "JuliC"\ninterfaces = ["eth0"]\n')
    shown = _config(tmp_path)
    assert shown["port"] == {"setting": "port", "value": 6000, "source": f"config {path}"}
    assert shown["interfaces"]["value"] == ["eth0"]
    shown = _config(tmp_path, XMPPLL_PORT="7000", XMPPLL_NICK="Jules")
    assert shown["port"]["value"] == "7000"
    assert shown["port"]["source"] == "environment XMPPLL_PORT"
    assert shown["nick"]["value"] == "Jules"
    assert shown["interfaces"]["source"] == f"config {path}"


def test_flag_beats_environment_beats_file_in_click(monkeypatch: pytest.MonkeyPatch) -> None:
    """The resolution each command really uses: its option with envvar= and the
    file's values as click's default_map."""
    announce = cli.commands["announce"]
    defaults = config.default_map({"port": 6000, "msg": "from file"})["announce"]

    def resolved(*args: str) -> dict[str, object]:
        return announce.make_context("announce", list(args), default_map=defaults).params

    monkeypatch.delenv("XMPPLL_PORT", raising=False)
    monkeypatch.delenv("XMPPLL_MSG", raising=False)
    assert resolved()["port"] == 6000 and resolved()["msg"] == "from file"
    monkeypatch.setenv("XMPPLL_PORT", "7000")
    assert resolved()["port"] == 7000
    assert resolved("--port", "8000")["port"] == 8000
    assert announce.make_context("announce", []).params["status"] == "avail"


def test_every_setting_is_the_default_of_a_real_option() -> None:
    for key, commands in config.COMMANDS.items():
        assert key in config.SETTINGS
        for name in commands:
            params = {p.name: p for p in cli.commands[name].params}
            assert key in params, f"config {key!r} names no option of {name}"
            assert params[key].envvar == config.envvar(key), f"{name} {key}"


def test_the_real_command_takes_flag_over_environment_over_file(lan: Lan) -> None:
    """End to end through main(): an out-of-range port is refused before the agent
    starts, and the message says which value won."""
    h1 = lan[0]
    _write(h1.home, "port = 70001\n")

    def refused(*args: str, **env: str) -> str:
        done = h1.xmppll("announce", *args, env={**h1.env, **env}, timeout=30)
        assert done.returncode == 64, done.stderr
        return done.stderr

    assert "invalid port 70001" in refused()
    assert "invalid port 70002" in refused(XMPPLL_PORT="70002")
    assert "invalid port 70003" in refused("--port", "70003", XMPPLL_PORT="70002")


@pytest.mark.parametrize(("text", "line", "says"), [
    ('nick = "JuliC"\nport = \n', 2, "Invalid value"),
    ('nick = "JuliC"\n\ncolour = "red"\n', 3, "unknown setting 'colour'"),
    ('port = "5298"\n', 1, "port must be an integer"),
    ('nick = "x"\nstatus = "busy"\n', 2, "status must be one of avail, away, dnd"),
    ('interfaces = "eth0"\n', 1, "interfaces must be a list"),
])
def test_a_bad_file_is_exit_65_naming_file_and_line(tmp_path: Path, text: str, line: int,
                                                    says: str) -> None:
    path = _write(tmp_path, text)
    done = subprocess.run([sys.executable, "-m", "xmppll", "config"], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 65
    assert done.stdout == ""
    [message] = done.stderr.splitlines()
    assert message.startswith(f"xmppll: error: {path}")
    assert f"line {line}" in message and says in message, message


def test_a_bad_file_stops_every_command_before_it_acts(tmp_path: Path) -> None:
    _write(tmp_path, "port = [\n")
    done = subprocess.run([sys.executable, "-m", "xmppll", "status"], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 65 and "config.toml" in done.stderr
