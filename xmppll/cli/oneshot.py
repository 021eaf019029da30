"""What a command does once its options are parsed, shared by the click commands
(commands.py) and the agent path that runs without click (fast.py): no click here."""

from __future__ import annotations

import sys

from xmppll.cli import render
from xmppll.errors import UsageError, XmpplError

TYPE_CHECKING = False  # typing costs ~2.5 ms to import: commands through the agent skip it
if TYPE_CHECKING:
    from typing import Any, NoReturn


def exit_with(exc: XmpplError) -> NoReturn:
    """A failure as the user sees it: one line on stderr and its exit code."""
    render.error(str(exc))
    quiet_stdout()
    sys.exit(exc.exit_code)


def warnings_as_lines() -> None:
    """A Python warning (a status message cut to fit the TXT record) as one line of
    ours on stderr, not the interpreter's two with a source line."""
    import warnings

    warnings.showwarning = lambda message, *args, **kw: render.warn(str(message))


def quiet_stdout() -> None:
    """After a broken pipe, the interpreter's final flush of stdout would fail again
    and print a traceback: point stdout at /dev/null first."""
    import os

    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def print_status(reply: dict[str, Any], as_json: bool | None) -> None:
    record = {k: v for k, v in reply.items() if k not in ("v", "ok")}
    if render.wants_json(as_json):
        render.write_json(record)
        return
    msg = f"  {render.safe(record['msg'])}" if record.get("msg") else ""
    status = render.status_word(record.get("status"), render.use_color())
    render.write_line(f"{render.safe(record['name'])}  {status}  port {record['port']}{msg}")


def setup_logging(verbose: bool) -> None:
    """One line per record on stderr (the journal, under systemd), ours and the
    libraries' alike; tracebacks only with -v: an expected condition is a sentence."""
    import logging

    class Formatter(logging.Formatter):
        def formatException(self, ei: Any) -> str:  # noqa: N802 (logging's name)
            return super().formatException(ei) if verbose else ""

        def format(self, record: logging.LogRecord) -> str:
            if record.exc_info and not verbose:
                exc = record.exc_info[1]
                record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
                record.args = None
                record.exc_info = record.exc_text = None
            return super().format(record)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Formatter("xmppll: [%(relativeCreated)4d ms] %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("xmppll").setLevel(logging.INFO if verbose else logging.WARNING)


def text_records(to: str | None, text: tuple[str, ...], lines: bool,
                  base: dict[str, Any]) -> Any:
    if text:
        yield 0, {**base, "to": to, "body": " ".join(text)}
        return
    if sys.stdin.isatty() and not lines:
        raise UsageError("no message: give TEXT, or pipe it on stdin")
    if not lines:
        yield 0, {**base, "to": to, "body": sys.stdin.read().removesuffix("\n")}
        return
    for lineno, line in enumerate(sys.stdin, 1):
        yield lineno, {**base, "to": to, "body": line.removesuffix("\n")}


def json_records(default_to: str | None) -> Any:
    """JSON Lines of the stanza shape, read as they come (a pipe from `listen`)."""
    import json

    from xmppll.errors import DataError

    for lineno, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise DataError(f"line {lineno}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"line {lineno}: expected a JSON object")
        if default_to and not record.get("to"):
            record["to"] = default_to
        if not isinstance(record.get("to"), str) or not isinstance(record.get("body"), str):
            raise DataError(f"line {lineno}: \"to\" and \"body\" must be strings")
        yield lineno, record


class Messages:
    """`send`'s messages as its arguments describe them, checked once for both paths:
    where they go, the records (read from stdin as they come), the timeout."""

    def __init__(self, v: dict[str, Any]) -> None:
        from xmppll.defaults import MESSAGE_TIMEOUT

        self.to, self.text, self.everyone = v["to"], v["text"], v["everyone"]
        json_input, lines, wait = v["json_input"], v["lines"], v["wait"]
        self.timeout = MESSAGE_TIMEOUT if v["timeout"] is None else v["timeout"]
        self.wait = wait
        if self.timeout <= 0 or wait < 0:
            raise UsageError("--timeout must be positive and --wait not negative")
        if self.everyone and self.to:
            self.text = (self.to, *self.text)
            self.to = None
        if not self.to and not self.everyone and not json_input:
            raise UsageError("missing TO: name a peer, or use --all or --json")
        if json_input and (self.text or lines):
            raise UsageError("--json reads messages from stdin: give no TEXT and no --lines")
        if v["id_"] is not None and (lines or json_input):
            raise UsageError("--id names one message: with --lines or --json, give each "
                             "JSON line an \"id\" instead")
        chatstate = v.get("chatstate")
        if chatstate is not None and (json_input or lines):
            raise UsageError("--chatstate goes with TEXT or alone, not with --json or --lines")
        base = {"type": v["type_"], "subject": v["subject"], "thread": v["thread"],
                "id": v["id_"], **({"chatstate": chatstate} if chatstate else {})}
        if chatstate is not None and not self.text:
            self.records: Any = iter([(0, {**base, "to": self.to})])
        elif json_input:
            self.records = json_records(self.to)
        else:
            self.records = text_records(self.to, self.text, lines, base)
        # Not while reading stdin: the writer of the pipe (make) may print on the terminal.
        self.reads_stdin = json_input or lines or not self.text

    def progress_text(self) -> str:
        target = "every peer" if self.everyone else (self.to or "the peers named on stdin")
        return (f"waiting for {target} (--wait {self.wait:g})..." if self.wait
                else f"sending to {target}...")


def show_peers(*, agent: str | None, pattern: str | None, follow: bool,
               timeout: float | None, as_table: bool, as_json: bool | None,
               interfaces: list[str] | None = None, wide: Any = None,
               link: bool = True) -> None:
    """`browse`: the peers whose name matches the shell glob `pattern`, as JSON lines or
    a table, once or as they change; a failing wide-area domain is said on stderr and
    the last one raised, after the peers that could be listed."""
    from xmppll.agent import client

    if timeout is not None and timeout <= 0:
        raise UsageError("--timeout must be positive")
    emit_json = not as_table and render.wants_json(as_json)
    color = not emit_json and render.use_color()

    if pattern is None:
        def matches(peer: dict[str, Any]) -> bool:
            return True
    else:
        import fnmatch  # imports re: only for a pattern (issue 14)

        def matches(peer: dict[str, Any]) -> bool:
            return fnmatch.fnmatchcase(peer["name"].lower(), pattern.lower())

    if follow:
        def emit(event: dict[str, Any]) -> None:
            if matches(event):
                if emit_json:
                    render.write_json(event)
                else:
                    render.write_line(render.peer_event_line(event, color=color))
        client.follow(agent, emit, interfaces, timeout, wide=wide, link=link)
        return
    with render.progress("browsing the link...", enabled=agent is None and link):
        peers, failures = client.peers(agent, interfaces, timeout or 3.0, wide=wide,
                                       link=link)
    peers = [p for p in peers if matches(p)]
    if emit_json:
        for peer in peers:
            render.write_json(peer)
    else:
        for line in render.peer_table(peers, color=color, max_width=render.terminal_width()):
            render.write_line(line)
    for failure in failures[:-1]:
        render.error(str(failure))
    if failures:
        raise failures[-1]


def listen_to(agent: str, *, backlog: bool, command: str | None, output: str | None,
              as_json: bool | None, chatstates: bool = False) -> None:
    """`listen` once an agent runs: its inbox from the cursor (--backlog) or from now,
    to stdout, --output and --exec, until interrupted."""
    from xmppll import identity, quickjson
    from xmppll.agent import control, listening
    from xmppll.agent.cursor import Cursor

    emit_json = render.wants_json(as_json)
    color = not emit_json and render.use_color()
    cursor = Cursor(identity.state_path(agent))
    runner = listening.Runner(command) if command else None
    out = listening.FileOutput(output) if output else None

    def show(record: dict[str, Any]) -> None:
        if emit_json:
            render.write_json(record)
        else:
            render.write_line(render.stanza_line(record, color=color))

    try:
        after = cursor.get() if backlog else None
        records = control.stream(agent, "inbox", **({"after": after} if after is not None
                                                      else {}),
                                 **({"chatstates": True} if chatstates else {}))
        listening.consume(records, cursor=cursor, show=show, output=out, runner=runner,
                          to_json=lambda r: quickjson.dumps(r, ensure_ascii=False))
    except KeyboardInterrupt:
        pass
    finally:
        if runner:
            runner.close()


PRESENCE_SETTINGS = ("status", "msg", "nick", "first", "last", "email", "jid")


def downloads(accept_files: str, download_dir: str | None, max_file_size: int | None) -> Any:
    """The agent's DownloadConfig from the file options."""
    from pathlib import Path

    from xmppll.agent.downloads import MAX_FILE_SIZE, DownloadConfig, default_download_dir

    if max_file_size is not None and max_file_size <= 0:
        raise UsageError("--max-file-size must be positive")
    folder = Path(download_dir).expanduser() if download_dir else default_download_dir()
    return DownloadConfig(accept_files, folder, max_file_size or MAX_FILE_SIZE)


def announce(v: dict[str, Any], *, from_file: list[str], interfaces: Any, wide: Any,
             avatar: Any, retention: Any, download_dir: str | None) -> None:
    """`announce`: run the agent in this process until interrupted or withdrawn.
    `v` holds the command's options by name; `from_file`, the presence settings a
    SIGHUP re-reads from the config file; interfaces, wide and avatar are checked
    (callables) once the key maker runs."""
    from xmppll import identity
    from xmppll.agent import keymaker
    from xmppll.defaults import DEFAULT_PORT

    port = v["port"]
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"invalid port {port}: use 1-65535")
    me = identity.check_instance_name(v["name"] or identity.default_name())
    # Before the agent's imports: they then overlap with the child making a new key.
    maker = keymaker.start(identity.state_dir(me), me) if v["tls"] != "off" else None

    from xmppll.agent.agent import AgentConfig, run_agent
    from xmppll.discovery.presence import Presence, parse_txt_option

    presence = Presence(
        port=port or DEFAULT_PORT, status=v["status"], msg=v["msg"], nick=v["nick"],
        first=v["first"], last=v["last"], email=v["email"], jid=v["jid"],
        extra=[parse_txt_option(t) for t in v["txt"]], personal=not v["no_personal"],
    )

    def reload() -> dict[str, Any]:
        from xmppll.cli import config

        settings = config.load()
        return {key: settings.get(key) for key in from_file}

    agent_config = AgentConfig(
        name=me, presence=presence, interfaces=interfaces() or [],
        rename=not v["no_rename"], port_given=port is not None, reload=reload,
        wide=wide(), tls=v["tls"], retention_policy=retention, avatar=avatar(),
        downloads=downloads(v["accept_files"], download_dir, v["max_file_size"]),
        key_maker=maker,
    )
    emit_json = render.wants_json(v["as_json"])
    setup_logging(v["verbose"])

    def emit(event: dict[str, Any]) -> None:
        if v["quiet"]:
            return
        if emit_json:
            render.write_json(event)
        else:
            render.write_line(render.agent_event_line(event))

    run_agent(agent_config, emit)
