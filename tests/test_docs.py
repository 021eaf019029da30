"""The man pages: generated from the click definitions, committed, current, complete,
and rendered by groff without a warning. No network is used here."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest
from conftest import require

from xmppll.cli import manpage
from xmppll.cli.commands import cli
from xmppll.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"
COMMANDS = sorted(cli.commands)


def _page(name: str) -> str:
    return (MAN / name).read_text(encoding="ascii")


def test_committed_pages_equal_a_fresh_generation() -> None:
    fresh = manpage.pages()
    committed = {p.name for p in MAN.iterdir()}
    assert committed == set(fresh), "regenerate with: python -m xmppll.cli.manpage man/"
    for name, text in fresh.items():
        assert _page(name) == text, f"man/{name} is stale: python -m xmppll.cli.manpage man/"
        assert "Sentinel" not in text and "UNSET" not in text, f"{name}: click internals"


def test_every_command_has_help_and_a_page_listed_in_xmppll_1() -> None:
    main = _page("xmppll.1")
    for name in COMMANDS:
        assert cli.commands[name].help, f"{name} has no help"
        assert (MAN / f"xmppll-{name}.1").exists()
        assert f".BR xmppll\\-{name} (1)" in main


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_argument_and_envvar_is_in_the_commands_page(name: str) -> None:
    text = _page(f"xmppll-{name}.1")
    command = cli.commands[name]
    ctx = manpage.command_context(name, command)
    for param in [*command.params, command.get_help_option(ctx)]:
        assert param is not None
        if isinstance(param, click.Argument):
            assert f"\\fI{param.human_readable_name}\\fR" in text, param.name
        else:
            for opt in [*param.opts, *param.secondary_opts]:
                assert f"\\fB{manpage.esc(opt)}\\fR" in text, f"{name}: {opt}"
            if param.name == "help":
                assert set(param.opts) == {"-h", "--help"}
            if param.help:
                first_words = param.help.split("[")[0].split()[:3]
                assert manpage.inline(" ".join(first_words)) in text, f"{name}: {param.name}"
        if param.envvar:
            assert manpage.esc(str(param.envvar)) in text, f"{name}: {param.envvar}"


def test_main_pages_document_every_exit_code_and_environment_variable() -> None:
    for page in ("xmppll.1", "xmppll.7"):
        text = _page(page)
        for code in EXIT_CODES:
            assert f".TP\n{code}\n" in text, f"{page}: exit code {code}"
        envs = {str(p.envvar) for c in cli.commands.values() for p in c.params if p.envvar}
        for env in envs | {"NO_COLOR", "XDG_CONFIG_HOME", "XDG_STATE_HOME",
                           "XDG_RUNTIME_DIR", "NOTIFY_SOCKET"}:
            assert manpage.esc(env) in text, f"{page}: {env}"


def test_xmppll_7_documents_every_control_op_and_record_field() -> None:
    """The ops are read from agent.py's op_* methods, so a new op without a paragraph
    in xmppll(7) fails here."""
    text = _page("xmppll.7")
    tree = ast.parse((ROOT / "xmppll" / "agent" / "agent.py").read_text())
    ops = {node.name[3:] for node in ast.walk(tree)
           if isinstance(node, ast.AsyncFunctionDef) and node.name.startswith("op_")}
    assert ops, "no op_* methods found in agent.py"
    for op in ops:
        assert f".TP\n\\fB{op}\\fR\n" in text, f"control op {op!r} is not in xmppll(7)"
    from xmppll.discovery.presence import peer_fields

    for key in ["name", "host", "addresses", "port", *peer_fields({})]:
        assert f".TP\n\\fB{key}\\fR\n" in text, f"peer field {key!r}"
    for key in ("seq", "kind", "from", "to", "type", "id", "body", "subject", "thread",
                "xml", "peer", "verified", "secure", "received"):
        assert f".TP\n\\fB{key}\\fR\n" in text, f"stanza field {key!r}"


def test_config_settings_are_in_the_files_section() -> None:
    from xmppll.cli import config

    text = _page("xmppll.1")
    for key in config.SETTINGS:
        assert key in text


@pytest.mark.parametrize("name", sorted(p.name for p in MAN.glob("xmppll*")))
def test_groff_renders_without_warnings(name: str) -> None:
    require(shutil.which("groff") is not None, "groff (Debian: groff-base)")
    done = subprocess.run(["groff", "-man", "-ww", "-z", str(MAN / name)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr


@pytest.mark.parametrize("name", ["xmppll.1", "xmppll-send.1", "xmppll.7"])
def test_man_renders_the_page_for_a_reader(name: str) -> None:
    require(shutil.which("man") is not None, "man (Debian: man-db)")
    done = subprocess.run(["man", "--warnings", "-l", str(MAN / name)], capture_output=True,
                          text=True, env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin",
                                          "MAN_KEEP_FORMATTING": "0"})
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "NAME" in done.stdout and "xmppll" in done.stdout


def test_pages_and_completions_are_installed_with_the_package() -> None:
    """pyproject's data-files put every generated file under the install prefix
    (share/man/man1 ...), where man(1) looks for a venv on PATH."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    installed = {f for files in data["data-files"].values() for f in files}
    generated = {f"man/{p.name}" for p in MAN.iterdir()}
    generated |= {f"completions/{p.name}" for p in (ROOT / "completions").iterdir()}
    assert installed == generated
    sections = data["data-files"]
    assert all(f.endswith(".1") for f in sections["share/man/man1"])
    assert sections["share/man/man7"] == ["man/xmppll.7"]


def test_help_imports_neither_zeroconf_nor_xml() -> None:
    """`xmppll --help` (and a subcommand's) costs a Python start, not the network or
    XML stacks, nor the doc and completion generators."""
    code = (
        "import sys\n"
        "from xmppll.cli import commands as cli\n"
        "for args in (['--help'], ['send', '--help'], ['browse', '--help']):\n"
        "    try:\n"
        "        cli.cli.main(args, prog_name='xmppll', standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "import json\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    loaded = set(json.loads(done.stderr.strip().splitlines()[-1]))
    heavy = {m for m in loaded if m.split(".")[0] in ("zeroconf", "defusedxml", "asyncio")
             or m.startswith("xml.") or m in ("xmppll.cli.manpage", "xmppll.cli.completion")}
    assert not heavy, f"--help imported {sorted(heavy)}"
