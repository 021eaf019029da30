"""Shell completion: click's machinery, plus what it cannot know (who is on the link).

The shell runs `xmppll` with `_XMPPLL_COMPLETE=<shell>_complete` at each TAB; the
completions/ scripts are click's own shims, written by
`python -m xmppll.cli.completion_scripts DIR` (which imports the commands: this module
must not, since the commands import it).
Peer names come from the running agent's cache (one socket round trip) or, when none
runs, from a browse bounded to BROWSE_TIMEOUT; either way the answer is given within
HARD_CAP, and any failure means no suggestions, never a message on the terminal.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

from click.shell_completion import (
    BashComplete,
    CompletionItem,
    add_completion_class,
    split_arg_string,
)

from xmppll.cli.peer_names import HARD_CAP, peer_items, readline_prefix

BROWSE_TIMEOUT = 0.3  # seconds of listening for answers when no agent runs
FILES = {"bash": "xmppll.bash", "zsh": "_xmppll", "fish": "xmppll.fish"}

# bash splits words at COMP_WORDBREAKS, which holds '@' and ':' by default, so in
# `xmppll send juliet@cap<TAB>` bash's current word is `cap`, and readline replaces
# `@cap`. This shim hands xmppll the line itself (COMP_LINE up to the cursor) and
# xmppll answers with the part of each candidate that readline replaces.
_SOURCE_BASH = """\
%(complete_func)s() {
    local IFS=$'\\n'
    local response

    response=$(env COMP_LINE="${COMP_LINE:0:COMP_POINT}" \
COMP_WORDBREAKS="$COMP_WORDBREAKS" COMP_WORDS="${COMP_WORDS[*]}" \
COMP_CWORD=$COMP_CWORD %(complete_var)s=bash_complete $1)

    for completion in $response; do
        IFS=',' read type value <<< "$completion"

        if [[ $type == 'dir' ]]; then
            COMPREPLY=()
            compopt -o dirnames
        elif [[ $type == 'file' ]]; then
            COMPREPLY=()
            compopt -o default
        elif [[ $type == 'plain' ]]; then
            COMPREPLY+=("$value")
        fi
    done

    return 0
}

%(complete_func)s_setup() {
    complete -o nosort -F %(complete_func)s %(prog_name)s
}

%(complete_func)s_setup;
"""


class Bash(BashComplete):
    """click's bash completion, reading the line rather than bash's word split."""

    source_template = _SOURCE_BASH

    def source(self) -> str:
        return self.source_template % self.source_vars()  # no bash version probe

    def get_completion_args(self) -> tuple[list[str], str]:
        line = os.environ.get("COMP_LINE")
        if line is None:
            return super().get_completion_args()
        words = split_arg_string(line)
        if not line or line[-1].isspace() or not words:
            args, incomplete = words[1:], ""
        else:
            args, incomplete = words[1:-1], words[-1]
        self._prefix = readline_prefix(incomplete, os.environ.get("COMP_WORDBREAKS", "@:="))
        return args, incomplete

    def format_completion(self, item: CompletionItem) -> str:
        value = str(item.value)
        prefix = getattr(self, "_prefix", "")
        if prefix and value.startswith(prefix):
            value = value[len(prefix):]
        return f"{item.type},{value}"


def register() -> None:
    add_completion_class(Bash, "bash")


def _bounded(work: Any, cap: float) -> list[dict[str, Any]]:
    """Run `work()` on a daemon thread and take whatever it has after `cap` seconds."""
    box: list[list[dict[str, Any]]] = []

    def run() -> None:
        with contextlib.suppress(BaseException):  # no suggestions, and no noise
            box.append(work())

    thread = threading.Thread(target=run, name="xmppll-complete", daemon=True)
    thread.start()
    thread.join(cap)
    return list(box[0]) if box else []


def _online_peers() -> list[dict[str, Any]]:
    import logging

    from xmppll.agent import control

    logging.getLogger("zeroconf").setLevel(logging.CRITICAL)
    for agent in control.running_agents():
        try:
            return control.request(agent, "peers", timeout=HARD_CAP / 2)["peers"]
        except Exception:  # a stuck or old agent: ask the link itself
            break
    from xmppll.discovery.mdns import oneshot

    return oneshot.browse(BROWSE_TIMEOUT)


def peers(incomplete: str, *, cap: float = HARD_CAP) -> list[CompletionItem]:
    """Names of the peers online that start with `incomplete` (case-insensitive)."""
    return [CompletionItem(name, help=help_)
            for name, help_ in peer_items(_bounded(_online_peers, cap), incomplete)]


def agents(incomplete: str) -> list[CompletionItem]:
    """This user's running agents (for --from, --name, withdraw and listen)."""
    def work() -> list[dict[str, Any]]:
        from xmppll.agent import control

        return [{"name": n} for n in control.running_agents()]

    return [CompletionItem(a["name"]) for a in _bounded(work, HARD_CAP)
            if a["name"].lower().startswith(incomplete.lower())]


def interfaces(incomplete: str) -> list[CompletionItem]:
    import socket

    try:
        names = [name for _index, name in socket.if_nameindex()]
    except OSError:
        return []
    return [CompletionItem(n) for n in names if n.startswith(incomplete) and n != "lo"]
