"""The table the agent path parses with (xmppll/cli/_fastspec.py), generated from the
click definitions like the man pages: `python -m xmppll.cli.fastspec` rewrites it, and
tests/test_fast.py checks that the committed one is current.

Each command the agent path may answer gets the list of its parameters as click sees
them: option strings, whether a flag, how many values, the type (str, int, float,
choice, file; anything else is "other", which the agent path leaves to click), the
value click gives when the parameter is absent, its environment variable and its
completer; and the help of every command, as click prints it on a terminal of 80
columns or more. `SOURCES` is a checksum of the files that define them: when they change and
the table was not regenerated, the agent path steps aside (fast.py) instead of parsing
with a stale table.
"""

from __future__ import annotations

import os
import sys
import zlib
from pathlib import Path
from typing import Any

import click

HERE = Path(__file__).resolve().parent
TARGET = HERE / "_fastspec.py"
# The modules whose click decorators define the options of the commands below.
SOURCE_FILES = ("commands.py", "keep.py")
COMMANDS = ("announce", "browse", "listen", "send", "status", "withdraw")


def sources_checksum(directory: Path = HERE) -> int:
    crc = 0
    for name in SOURCE_FILES:
        crc = zlib.crc32((directory / name).read_bytes(), crc)
    return crc


def _type(param: click.Parameter) -> dict[str, Any]:
    kind = param.type
    if isinstance(param, click.Option) and param.is_flag:
        return {"type": "flag" if param.is_bool_flag else "other"}
    if isinstance(kind, click.Choice):
        return {"type": "choice", "choices": [str(c) for c in kind.choices],
                "fold": not kind.case_sensitive}
    if isinstance(kind, click.Path) and not kind.exists and not kind.dir_okay \
            and kind.file_okay and not kind.resolve_path and kind.type is None:
        return {"type": "file"}
    simple = {click.STRING: "str", click.INT: "int", click.FLOAT: "float"}
    return {"type": simple.get(kind, "other")}  # type: ignore[call-overload]


def _completer(param: click.Parameter) -> str | None:
    func = getattr(param, "_custom_shell_complete", None)
    names = {"_complete_peers": "peers", "_complete_agents": "agents",
             "_complete_interfaces": "interfaces"}
    return names.get(getattr(func, "__name__", ""), "other" if func else None)


def command_table(name: str, command: click.Command,
                  parent: click.Context) -> list[dict[str, Any]]:
    """The parameters of one command, in click's order."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("XMPPLL_")}
    try:
        ctx = command.make_context(name, [], parent=parent, resilient_parsing=True)
    finally:
        os.environ.update(saved)
    table = []
    for param in command.params:
        if param.name is None:
            continue
        default = ctx.params[param.name] if param.name in ctx.params else \
            param.get_default(ctx)
        if param.multiple or param.nargs == -1:
            default = list(default or ())
        entry: dict[str, Any] = {
            "name": param.name,
            "kind": "argument" if isinstance(param, click.Argument) else "option",
            "opts": list(param.opts) if isinstance(param, click.Option) else [],
            "secondary": list(param.secondary_opts),
            "multiple": bool(param.multiple), "nargs": param.nargs,
            **_type(param),
            "default": default,
            "envvar": param.envvar if isinstance(param.envvar, str) else None,
            "complete": _completer(param),
            "eager": bool(param.is_eager),
        }
        table.append(entry)
    return table


def table() -> dict[str, list[dict[str, Any]]]:
    from xmppll.cli.commands import cli

    # Under the group's context, as `xmppll NAME` runs (-h): a command's help option is
    # made once, with the first context's settings, and kept.
    parent = click.Context(cli, info_name="xmppll", **cli.context_settings)
    return {name: command_table(name, cli.commands[name], parent) for name in COMMANDS}


HELP_WIDTH = 78  # what click formats for a terminal (or pipe) of 80 columns or more


def help_texts() -> dict[str, str]:
    """`xmppll --help` ("") and `xmppll COMMAND --help`, as click prints them at
    HELP_WIDTH: `--help` answered without importing click (fast.py)."""
    from xmppll.cli.commands import cli

    parent = click.Context(cli, info_name="xmppll", terminal_width=HELP_WIDTH,
                           **cli.context_settings)
    texts = {"": cli.get_help(parent)}
    for name, command in sorted(cli.commands.items()):
        ctx = click.Context(command, info_name=name, parent=parent,
                            terminal_width=HELP_WIDTH)
        texts[name] = command.get_help(ctx)
    return texts


def source() -> str:
    from xmppll.cli.commands import cli

    lines = ['"""Generated by `python -m xmppll.cli.fastspec` from the click definitions '
             '(fastspec.py):', 'do not edit."""', "# ruff: noqa: E501", "",
             f"SOURCES = {sources_checksum():#010x}", "", "COMMANDS = {"]
    for name, params in table().items():
        lines.append(f"    {name!r}: [")
        lines += [f"        {param!r}," for param in params]
        lines.append("    ],")
    lines += ["}", "", f"HELP_OPTIONS = {cli.context_settings['help_option_names']!r}",
              f"HELP_WIDTH = {HELP_WIDTH}", "HELP = {"]
    lines += [f"    {name!r}: {text!r}," for name, text in help_texts().items()]
    return "\n".join([*lines, "}", ""])


def main(argv: list[str]) -> None:
    target = Path(argv[0]) if argv else TARGET
    target.write_text(source())
    print(target)


if __name__ == "__main__":
    main(sys.argv[1:])
