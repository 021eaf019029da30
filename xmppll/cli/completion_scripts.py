"""The completion scripts under completions/, written from the click definitions:
`python -m xmppll.cli.completion_scripts completions/` (tests/test_completion.py checks
that the committed ones equal a fresh generation)."""

from __future__ import annotations

import sys
from pathlib import Path

from click.shell_completion import get_completion_class

from xmppll.cli import COMPLETE_VAR
from xmppll.cli.commands import cli
from xmppll.cli.completion import FILES, register


def source(shell: str) -> str:
    """The completion script for `shell`, as committed under completions/."""
    register()
    cls = get_completion_class(shell)
    assert cls is not None, shell
    return cls(cli, {}, "xmppll", COMPLETE_VAR).source()


def write(directory: Path) -> list[Path]:
    """(Re)generate every completion script into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for shell, name in FILES.items():
        path = directory / name
        path.write_text(source(shell))
        written.append(path)
    return written


def main(argv: list[str]) -> None:
    for path in write(Path(argv[0] if argv else "completions")):
        print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
