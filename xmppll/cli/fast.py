"""The console entry point: commands that a running agent answers, without click.

Importing click and the command definitions costs more than the agent takes to answer
(issue 14), so `main()` first tries to read argv with the table that fastspec.py
generates from those definitions (_fastspec.py): the same option strings, types,
defaults, environment variables and config-file defaults, and the help click prints.
It answers only what it fully understands: `browse`, `status`, `withdraw` and `listen`
when an agent runs, `send` with or without one, when every parameter given is one the
command's runner below handles; bash's completion of peer and agent names; and
`xmppll [COMMAND] --help` on a terminal of 80 columns or more (or none). Anything else
(an unknown or malformed option, a parameter that needs the standalone code, no agent
running, a table older than the definitions) goes to the click CLI, before anything
was done, which then does all of it as if this module did not exist. XMPPLL_NO_FAST=1
sends everything there.
"""

from __future__ import annotations

import os
import sys

from xmppll.cli import COMPLETE_VAR

TYPE_CHECKING = False  # typing costs ~2.5 ms to import: commands through the agent skip it
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

    Values = dict[str, Any]
STEP_ASIDE = object()  # a runner's answer: leave this one to click, nothing was done
GIVEN = "_given"  # in a runner's values: the names set on the command line or in the env


class _Unknown(Exception):
    """Something only click can answer (or explain)."""


# --- what each command's runner handles ------------------------------------------------

# Parameters each runner implements, and those it leaves to click whenever they are set
# (on the command line, in the environment or the config file): with them the command
# does something else than ask the agent. Every parameter of the click command must be
# in one of the two; tests/test_fast.py checks it, so an option added to a command is
# answered by click until someone says here what it means on the agent path.
HANDLED = {
    "announce": {"name", "port", "status", "msg", "nick", "first", "last", "email", "jid",
                 "txt", "no_personal", "no_rename", "accept_files", "max_file_size", "tls",
                 "as_json", "verbose", "quiet", "color"},
    "browse": {"pattern", "follow", "timeout", "as_table", "as_json", "color"},
    "status": {"status", "msg", "name", "as_json", "quiet", "color"},
    "withdraw": {"name", "as_json", "quiet"},
    "send": {"to", "text", "from_", "type_", "subject", "thread", "receipt", "id_",
             "timeout", "wait", "json_input", "lines", "everyone", "quiet", "files",
             "file_name", "method", "tls"},
    "listen": {"name", "backlog", "command", "output", "as_json", "quiet", "color"},
}
TO_CLICK = {
    "announce": {"avatar", "keep_days", "keep_size", "download_dir", "interfaces", "domains",
                 "dns_server", "tsig_key", "dns_ttl", "dns_host"},
    "browse": {"no_agent", "no_link", "interfaces", "domains", "dns_server"},
    "status": {"interfaces", "avatar", "no_avatar"},
    "withdraw": {"stale", "interfaces", "domains", "dns_server", "tsig_key"},
    "send": {"interfaces", "domains", "dns_server", "verbose", "chatstate"},
    "listen": {"interfaces", "verbose", "chatstates"},
}
# listen's options for the agent it starts when none runs: unused when one does, so
# only a value on the command line (which click would check) sends it to click.
ARGV_TO_CLICK = {"listen": {"verify", "port", "no_announce", "keep_days", "keep_size",
                            "accept_files", "download_dir", "max_file_size", "tls"}}


def main() -> None:
    """`xmppll`: the agent path when it applies, else the click CLI."""
    args = sys.argv[1:]
    completing_now = COMPLETE_VAR in os.environ
    # announce, inbox, chat...: straight to click, for the price of this module.
    mine = completing_now or (args and args[0] in HANDLED) or _asks_help(args)
    if mine and not os.environ.get("XMPPLL_NO_FAST") and _current():
        try:
            if completing_now:
                _complete()
            elif _asks_help(args):
                _help(args)
            else:
                _run(args)
        except SystemExit as done:
            _leave(done)
    from xmppll.cli.commands import main as click_main

    click_main()


def _leave(done: SystemExit) -> NoReturn:
    """Exit without the interpreter's teardown, which frees every object and module
    one by one (~3 ms, a third of what the agent path adds to the floor) just before
    the process ends anyway. Only once nothing is left for it to do: output flushed,
    no other thread, no exit handler (logging, for one); else the usual exit."""
    import atexit

    code = done.code if done.code is not None else 0
    threading = sys.modules.get("threading")
    if (not isinstance(code, int) or getattr(atexit, "_ncallbacks", lambda: 1)()
            or (threading is not None and threading.active_count() > 1)):
        raise done
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        raise done from None
    os._exit(code)


def _current() -> bool:
    """The table matches the definitions it was generated from. Checked in a source
    tree only, where commands.py may have changed since (an editable install): an
    installed package carries the table it was built and tested with, and reading
    and summing its definitions would cost ~0.7 ms of every command."""
    here = os.path.dirname(__file__)
    if not os.path.exists(os.path.join(here, os.pardir, os.pardir, "pyproject.toml")):
        return True
    import zlib

    from xmppll.cli import _fastspec

    crc = 0
    try:
        for name in ("commands.py", "keep.py"):
            with open(os.path.join(here, name), "rb") as fh:
                crc = zlib.crc32(fh.read(), crc)
    except OSError:
        return False
    return crc == _fastspec.SOURCES


# --- help as click prints it --------------------------------------------------------------

def _asks_help(args: list[str]) -> bool:
    return 1 <= len(args) <= 2 and args[-1] in ("-h", "--help")


def _help(args: list[str]) -> None:
    """`xmppll [COMMAND] --help` from the table, when click would print the same: at
    its width for 80 columns or more, with no config file (its values show as
    defaults). Else, or for an unknown command, click answers."""
    from xmppll.cli import _fastspec

    name = args[0] if len(args) == 2 else ""
    text = _fastspec.HELP.get(name)
    if (text is None or args[-1] not in _fastspec.HELP_OPTIONS or _config_file()
            or _columns() < _fastspec.HELP_WIDTH + 2):
        return
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    sys.exit(0)


def _columns() -> int:
    """The terminal width as shutil.get_terminal_size (which click asks) finds it."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


# --- parsing argv as click would --------------------------------------------------------

def _convert(param: dict[str, Any], value: str) -> Any:
    kind = param["type"]
    try:
        if kind == "str":
            return value
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        raise _Unknown from None
    if kind == "choice":
        for choice in param["choices"]:
            if choice == value or (param["fold"] and choice.lower() == value.lower()):
                return choice
    if kind == "file" and not os.path.isdir(value):
        return value
    raise _Unknown


def parse(command: str, args: list[str], *, defaults: Values | None = None
          ) -> tuple[Values, set[str], set[str], set[str]]:
    """(values, names set from argv, from the environment, from `defaults`, the config
    file's) as click would parse `xmppll COMMAND ARGS`; raises _Unknown where click
    would say more than a value (help, an error)."""
    from xmppll.cli import _fastspec

    params = _fastspec.COMMANDS[command]
    options: dict[str, tuple[dict[str, Any], bool]] = {}
    for p in params:
        options.update({opt: (p, True) for opt in p["opts"]})
        options.update({opt: (p, False) for opt in p["secondary"]})
    values: Values = {}
    from_argv: set[str] = set()
    positional: list[str] = []

    def put(p: dict[str, Any], value: Any) -> None:
        from_argv.add(p["name"])
        if p["multiple"]:
            values.setdefault(p["name"], []).append(value)
        else:
            values[p["name"]] = value

    def take(p: dict[str, Any], on: bool, inline: str | None, rest: list[str]) -> None:
        if p["type"] == "flag":
            if inline is not None:
                raise _Unknown
            put(p, on)
            return
        if p["type"] == "other" or p["nargs"] != 1:
            raise _Unknown
        if inline is None:
            if not rest:
                raise _Unknown
            inline = rest.pop(0)
        put(p, _convert(p, inline))

    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            positional += rest
            break
        if arg[:1] != "-" or arg == "-":
            positional.append(arg)
        elif arg.startswith("--"):
            opt, eq, inline = arg.partition("=")
            if opt not in options:
                raise _Unknown
            take(*options[opt], inline if eq else None, rest)
        else:
            for i in range(1, len(arg)):
                if f"-{arg[i]}" not in options:
                    raise _Unknown
                p, on = options[f"-{arg[i]}"]
                if p["type"] == "flag":
                    put(p, on)
                    continue
                take(p, on, arg[i + 1:] or None, rest)
                break
    arguments = [p for p in params if p["kind"] == "argument"]
    for i, p in enumerate(arguments):
        if p["nargs"] == -1:
            after = sum(1 for q in arguments[i + 1:])
            taken, positional = positional[:len(positional) - after], positional[
                len(positional) - after:]
            if taken:
                from_argv.add(p["name"])
                values[p["name"]] = [_convert(p, v) for v in taken]
        elif p["nargs"] == 1 and positional:
            from_argv.add(p["name"])
            values[p["name"]] = _convert(p, positional.pop(0))
        elif p["nargs"] != 1:
            raise _Unknown
    if positional:
        raise _Unknown  # click: "Got unexpected extra argument"
    from_env: set[str] = set()
    from_config: set[str] = set()
    for p in params:
        name = p["name"]
        if name in values:
            if p["multiple"] or p["nargs"] == -1:
                values[name] = tuple(values[name])
            continue
        raw = os.environ.get(p["envvar"]) if p["envvar"] else None
        if raw:
            if p["type"] == "flag":
                raise _Unknown
            values[name] = (tuple(_convert(p, v) for v in raw.split()) if p["multiple"]
                            else _convert(p, raw))
            from_env.add(name)
        elif defaults and name in defaults:
            value = defaults[name]
            values[name] = tuple(value) if p["multiple"] else value
            from_config.add(name)
        else:
            default = p["default"]
            values[name] = tuple(default) if isinstance(default, list) else default
    return values, from_argv, from_env, from_config


def plan(args: list[str]) -> tuple[Callable[[Values], Any], Values] | None:
    """The runner and its values for `xmppll ARGS`, or None: click's to answer."""
    from xmppll.cli import _fastspec

    if not args or args[0] not in _fastspec.COMMANDS or args[0] not in HANDLED:
        return None
    command = args[0]
    try:
        values, from_argv, from_env, from_config = parse(
            command, args[1:], defaults=_config_defaults(command))
    except _Unknown:
        return None
    given = from_argv | from_env
    from_elsewhere = from_env | from_config
    for p in _fastspec.COMMANDS[command]:
        name = p["name"]
        if name in HANDLED[command]:
            continue
        if name in TO_CLICK.get(command, ()) and name not in from_argv | from_elsewhere:
            continue
        if name in ARGV_TO_CLICK.get(command, ()) and name not in from_argv:
            continue
        return None
    values[GIVEN] = frozenset(given)
    return RUNNERS[command], values


def _config_defaults(command: str) -> Values:
    """The config file's defaults for `command` (click's default_map), read only when
    there is a file."""
    if not _config_file():
        return {}
    from xmppll.cli import config

    return config.default_map(config.load()).get(command, {})


def _config_file() -> bool:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".config")
    return os.path.exists(os.path.join(base, "xmppll", "config.toml"))


def _run(args: list[str]) -> None:
    """Run the agent path's answer and exit, or return to let click answer."""
    from xmppll.errors import XmpplError

    try:
        found = plan(args)
        if found is None:
            return
        runner, values = found
        if values.get("color") is not None:
            from xmppll.cli import render

            render.set_color(values["color"])
        if runner(values) is STEP_ASIDE:
            return
    except XmpplError as exc:
        from xmppll.cli import oneshot

        oneshot.exit_with(exc)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)


# --- the runners: what commands.py does when an agent answers ---------------------------

def _browse(v: Values) -> Any:
    from xmppll.agent import client
    from xmppll.cli import oneshot

    agent = client.any_agent()
    if agent is None:
        return STEP_ASIDE  # a browse of the link: zeroconf, the click CLI's job
    oneshot.show_peers(agent=agent, pattern=v["pattern"], follow=v["follow"],
                       timeout=v["timeout"], as_table=v["as_table"], as_json=v["as_json"])
    return None


def _status(v: Values) -> Any:
    from xmppll.agent import client
    from xmppll.cli.oneshot import print_status

    replies = client.status(v["name"], v["status"], v["msg"])
    if v["quiet"] and (v["status"] is not None or v["msg"] is not None):
        return None
    for reply in replies:
        print_status(reply, v["as_json"])
    return None


def _withdraw(v: Values) -> Any:
    from xmppll.agent import client
    from xmppll.cli import render

    result = client.withdraw(v["name"])
    if v["quiet"]:
        return None
    if render.wants_json(v["as_json"]):
        render.write_json(result)
    else:
        render.write_line(render.agent_event_line(result))
    return None


def _send(v: Values) -> Any:
    from xmppll import identity
    from xmppll.agent import client
    from xmppll.cli import oneshot, render

    if v["files"]:
        return _send_files(v)
    if v["file_name"] is not None:
        return STEP_ASIDE  # a usage error: click says it
    messages = oneshot.Messages(v)
    me = identity.check_instance_name(v["from_"] or identity.default_name())
    agent = client.sending_agent(v["from_"])
    if agent is None:
        # Standalone (no --interface, --domain or --verbose: those go to click):
        # resolve and connect here, as commands.send does, without click's ~35 ms.
        oneshot.warnings_as_lines()
        oneshot.setup_logging(False)
    with render.progress(messages.progress_text(),
                         enabled=not (v["quiet"] or messages.reads_stdin)):
        client.send(messages.records, agent=agent, me=me, everyone=messages.everyone,
                    timeout=messages.timeout, wait=messages.wait, receipt=v["receipt"],
                    interfaces=None, tls=v["tls"])
    return None


def _send_files(v: Values) -> Any:
    """`send --file` through the agent, as commands._send_files does it, when nothing
    needs click: no usage error to explain, no progress bar (click's) on a terminal.
    Importing click and the commands was most of a send's fixed cost (bench/files.py)."""
    from xmppll.defaults import FILE_TIMEOUT

    files, to, text, everyone = v["files"], v["to"], v["text"], v["everyone"]
    timeout = FILE_TIMEOUT if v["timeout"] is None else v["timeout"]
    if everyone and to:
        text, to = (to, *text), None
    if (timeout <= 0 or v["wait"] < 0 or (not to and not everyone) or files.count("-") > 1
            or (v["file_name"] is not None and "-" not in files)
            or (not v["quiet"] and sys.stderr.isatty())):
        return STEP_ASIDE
    from xmppll import identity
    from xmppll.agent import client

    me = identity.check_instance_name(v["from_"] or identity.default_name())
    agent = client.sending_agent(v["from_"])
    if agent is None:
        return STEP_ASIDE  # standalone: the click CLI's job
    if text:
        client.send(iter([(0, {"to": to, "body": " ".join(text)})]), agent=agent, me=me,
                    everyone=everyone, timeout=min(timeout, 10.0), wait=v["wait"],
                    receipt=False, interfaces=None)
    shown = [v["file_name"] if f == "-" else None for f in files]
    client.send_files(list(files), shown, agent=agent, me=me, to=to, everyone=everyone,
                      timeout=timeout, wait=v["wait"], method=v["method"], interfaces=None,
                      report=None)
    return None


def _listen(v: Values) -> Any:
    from xmppll.agent import client

    agent = client.running(v["name"])
    if not agent:
        return STEP_ASIDE  # it starts an agent: the click CLI's job
    from xmppll.cli import oneshot

    if v["command"]:  # --exec logs a command that fails
        oneshot.setup_logging(False)
    oneshot.listen_to(agent, backlog=v["backlog"], command=v["command"], output=v["output"],
                      as_json=v["as_json"])
    return None


def _announce(v: Values) -> Any:
    """`announce` with none of the options that need click's checks: the agent starts
    ~35 ms sooner, and keeps none of click's ~5 MB (issue 14)."""
    from xmppll.agent.policy import Policy
    from xmppll.cli import oneshot

    oneshot.warnings_as_lines()
    oneshot.announce(v, from_file=[k for k in oneshot.PRESENCE_SETTINGS if k not in v[GIVEN]],
                     interfaces=lambda: None, wide=lambda: None, avatar=lambda: None,
                     retention=Policy.of(v["keep_days"], v["keep_size"]), download_dir=None)
    return None


RUNNERS: dict[str, Callable[[Values], Any]] = {
    "announce": _announce, "browse": _browse, "status": _status, "withdraw": _withdraw,
    "send": _send, "listen": _listen,
}


# --- completion of peer and agent names (bash) ------------------------------------------

def completing(args: list[str], incomplete: str) -> str | None:
    """The completer ("peers", "agents", ...) of what is being typed after `xmppll
    ARGS`, when the table says so without doubt; else None (click works it out)."""
    from xmppll.cli import _fastspec

    if not args or args[0] not in _fastspec.COMMANDS or incomplete[:1] == "-":
        return None
    command, words = args[0], args[1:]
    params = _fastspec.COMMANDS[command]
    if words and words[-1][:1] == "-" and "=" not in words[-1]:
        option = next((p for p in params if words[-1] in p["opts"] + p["secondary"]), None)
        if option is None:
            return None  # a cluster of short options, or unknown
        if option["type"] != "flag":
            return option["complete"] if words[-1] in option["opts"] else None
    try:
        values, *_ = parse(command, words)
    except _Unknown:
        return None
    for p in params:  # click: the first argument without a value, or nargs=-1
        if p["kind"] == "argument" and (values.get(p["name"]) is None or p["nargs"] == -1):
            return p["complete"]
    return None


def _complete() -> None:
    """bash's TAB on a peer or agent name, through the agent; anything else (zsh, fish,
    option names, no agent running) returns to click's completion."""
    if os.environ.get(COMPLETE_VAR) != "bash_complete" or "COMP_LINE" not in os.environ:
        return
    line = os.environ["COMP_LINE"]
    if any(ch in line for ch in "\"'\\$`"):
        return  # quoting: click's split_arg_string knows it
    words = line.split()
    if not line or line[-1].isspace() or not words:
        args, incomplete = words[1:], ""
    else:
        args, incomplete = words[1:-1], words[-1]
    which = completing(args, incomplete)
    if which not in ("peers", "agents"):
        return
    from xmppll.agent import control
    from xmppll.cli.peer_names import HARD_CAP, peer_items, readline_prefix

    agents = control.running_agents()
    if which == "agents":
        items = [(name, "") for name in agents if name.lower().startswith(incomplete.lower())]
    else:
        if not agents:
            return  # a browse of the link: click's completion does it, bounded
        try:
            found = control.request(agents[0], "peers",
                                    timeout=HARD_CAP / 2)["peers"]
        except Exception:  # noqa: BLE001 - a stuck or old agent: click's path asks the link
            return
        items = peer_items(found, incomplete)
    prefix = readline_prefix(incomplete, os.environ.get("COMP_WORDBREAKS", "@:="))
    out = []
    for value, _help in items:
        if prefix and value.startswith(prefix):
            value = value[len(prefix):]
        out.append(f"plain,{value}")
    sys.stdout.write("\n".join(out) + "\n")
    sys.exit(0)
