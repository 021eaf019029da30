"""Man pages written from the click definitions, so no option is undocumented or stale.

    python -m xmppll.cli.manpage man/

writes xmppll(1), one xmppll-COMMAND(1) per subcommand and xmppll(7) (the JSON
records, the control socket protocol, exit codes, files and environment). The pages
carry no date: the same tree always gives the same bytes, which the tests compare
with the committed man/. Only this module (the documentation generator) and cli.py
import click.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import click

from xmppll import __version__
from xmppll.cli import config
from xmppll.errors import EXIT_CODES

SOURCE = f"xmppll {__version__}"
_UNSET = getattr(click.core, "UNSET", None)  # click >= 8.3: "no default" is a sentinel
Block = tuple[Any, ...]

# --- roff ---------------------------------------------------------------------


def esc(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, non-ASCII as \\[uXXXX]
    (so the page renders the same whatever the input encoding groff assumes)."""
    out = []
    for ch in text.replace("\\", "\\e").replace("-", "\\-"):
        out.append(ch if ord(ch) < 128 else f"\\[u{ord(ch):04X}]")
    return "".join(out)


def line(text: str) -> str:
    """A text line that cannot be taken for a request (leading . or ')."""
    text = text.strip()
    return "\\&" + text if text[:1] in (".", "'") else text


def bold(text: str) -> str:
    return f"\\fB{esc(text)}\\fR"


def ital(text: str) -> str:
    return f"\\fI{esc(text)}\\fR"


_CODE = re.compile(r"`([^`]+)`")


def inline(text: str) -> str:
    """Text with `code` spans in bold (the convention of man-pages(7) for literals)."""
    parts = _CODE.split(text)
    return "".join(bold(p) if i % 2 else esc(p) for i, p in enumerate(parts))


def render_blocks(blocks: list[Block]) -> list[str]:
    """('p', text) paragraphs, ('tp', term, text) tagged paragraphs, ('ex', lines)
    literal examples, ('roff', lines) for what the three cannot say."""
    out: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "p":
            out += [".PP", line(inline(block[1]))]
        elif kind == "tp":
            out += [".TP", line(inline(block[1])), line(inline(block[2]))]
        elif kind == "ex":
            out += [".PP", ".RS 4", ".nf"]
            out += [("\\&" + esc(text) if text[:1] in ".'" else esc(text)) if text else ""
                    for text in block[1]]
            out += [".fi", ".RE"]
        elif kind == "roff":
            out += list(block[1])
        else:
            raise ValueError(kind)
    return out


def page(title: str, section: int, name_line: str, sections: list[tuple[str, list[str]]]
         ) -> str:
    out = [f'.TH {title.upper()} {section} "" "{SOURCE}" '
           f'"{"User Commands" if section == 1 else "Miscellanea"}"',
           ".SH NAME", name_line]
    for heading, body in sections:
        out.append(f".SH {heading}")
        out += body
    return "\n".join(out) + "\n"


def paragraphs(text: str) -> list[Block]:
    """click help text as blocks: a paragraph after a lone \\b line keeps its lines."""
    blocks: list[Block] = []
    for para in re.split(r"\n\s*\n", text.strip()):
        lines = para.splitlines()
        if lines and lines[0].strip() == "\b":
            body = [ln for ln in lines[1:]]
            if body and body[0].strip().endswith(":"):
                blocks.append(("p", body[0].strip()))
                body = body[1:]
            indent = min((len(ln) - len(ln.lstrip()) for ln in body if ln.strip()), default=0)
            blocks.append(("ex", [ln[indent:].rstrip() for ln in body]))
        else:
            blocks.append(("p", " ".join(ln.strip() for ln in lines)))
    return blocks


# --- from click -----------------------------------------------------------------


def commands() -> dict[str, click.Command]:
    from xmppll.cli.commands import cli

    return dict(sorted(cli.commands.items()))


def _metavar(param: click.Parameter, ctx: click.Context) -> str:
    if isinstance(param, click.Option) and param.metavar:
        return param.metavar
    if isinstance(param.type, click.Choice):
        return "|".join(str(c) for c in param.type.choices)
    if isinstance(param, click.Argument):
        return param.human_readable_name
    return param.type.name.upper()


def _option_term(opt: click.Option, ctx: click.Context) -> str:
    names = [bold(n) for n in sorted(opt.opts, key=lambda n: n.startswith("--"))]
    term = ", ".join(names)
    if opt.secondary_opts:
        term += " | " + ", ".join(bold(n) for n in opt.secondary_opts)
    if not opt.is_flag:
        term += " " + ital(_metavar(opt, ctx))
    return term


def _default(opt: click.Option, ctx: click.Context) -> str | None:
    if opt.is_flag or opt.multiple or "[default" in (opt.help or ""):
        return None
    value = opt.get_default(ctx, call=True)
    if value is _UNSET or value is None or value == "":
        return None
    return str(value)


def config_key(command: str, param: click.Parameter) -> str | None:
    key = param.name
    return key if key in config.COMMANDS and command in config.COMMANDS[key] else None


def option_notes(command: str, param: click.Parameter, ctx: click.Context) -> list[str]:
    """Default, environment variable and config-file key of one option, in that order."""
    notes = []
    if isinstance(param, click.Option) and (default := _default(param, ctx)) is not None:
        notes.append(f"Default: {bold(default)}.")
    if param.envvar:
        extra = " (several, separated by spaces)" if getattr(param, "multiple", False) else ""
        notes.append(f"Environment: {bold(str(param.envvar))}{esc(extra)}.")
    if (key := config_key(command, param)) is not None:
        notes.append(f"Config file: {bold(key)}.")
    return notes


def synopsis(prog: str, cmd: click.Command, ctx: click.Context) -> list[str]:
    parts = [bold(prog)]
    for param in cmd.params:
        if isinstance(param, click.Argument):
            arg = ital(param.human_readable_name)
            if param.nargs != 1:
                arg += "..."
            parts.append(arg if param.required else f"[{arg}]")
    for param in cmd.params:
        if isinstance(param, click.Option) and param.name != "help":
            name = bold(next((o for o in param.opts if o.startswith("--")), param.opts[0]))
            if param.secondary_opts:
                name += "|" + bold(param.secondary_opts[0])
            if not param.is_flag:
                name += " " + ital(_metavar(param, ctx))
            parts.append(f"[{name}]" + ("..." if param.multiple else ""))
    return [".nh", ".ad l", " ".join(parts), ".ad", ".hy"]


def command_context(name: str, cmd: click.Command) -> click.Context:
    """The context the command runs in, with the group's settings (-h as well as
    --help): click caches the help option per command from the first context asked."""
    from xmppll.cli.commands import cli

    parent = click.Context(cli, info_name="xmppll", **cli.context_settings)
    return click.Context(cmd, info_name=name, parent=parent)


def _help_option(cmd: click.Command, ctx: click.Context) -> click.Option | None:
    return cmd.get_help_option(ctx)


def command_page(name: str, cmd: click.Command) -> str:

    ctx = command_context(name, cmd)
    short = cmd.get_short_help_str(limit=200).rstrip(".")
    options: list[str] = []
    params = [*cmd.params, _help_option(cmd, ctx)]
    for param in params:
        if param is None:
            continue
        if isinstance(param, click.Argument):
            continue
        assert isinstance(param, click.Option)
        text = " ".join([inline(param.help or ""), *option_notes(name, param, ctx)])
        options += [".TP", _option_term(param, ctx), line(text)]
    arguments: list[str] = []
    for param in cmd.params:
        if isinstance(param, click.Argument):
            notes = option_notes(name, param, ctx)
            text = ARGUMENTS.get((name, param.name or ""), "")
            arguments += [".TP", ital(param.human_readable_name),
                          line(" ".join([inline(text), *notes]))]
    envs = sorted({str(p.envvar) for p in cmd.params if p.envvar})
    sections: list[tuple[str, list[str]]] = [
        ("SYNOPSIS", synopsis(f"xmppll {name}", cmd, ctx)),
        ("DESCRIPTION", render_blocks(paragraphs(cmd.help or ""))
         + render_blocks(EXTRA.get(name, []))),
    ]
    if arguments:
        sections.append(("ARGUMENTS", arguments))
    sections.append(("OPTIONS", options))
    if envs:
        sections.append(("ENVIRONMENT", render_blocks(
            [("tp", f"`{e}`", ENV_HELP.get(e, "Default for the option of the same name."))
             for e in envs]
            + [("p", "Options given on the command line win over the environment, which "
                     "wins over the config file (see `xmppll config`).")])))
    sections.append(("EXIT STATUS", render_blocks(
        [("p", "0 on success, otherwise one of the codes listed in xmppll(1) and "
               "xmppll(7), with a one-line message on standard error.")])))
    sections.append(("SEE ALSO", [see_also(exclude=name)]))
    return page(f"xmppll-{name}", 1, f"xmppll\\-{esc(name)} \\- {esc(short)}", sections)


def see_also(exclude: str | None = None) -> str:
    refs = ["xmppll(1)"] if exclude != "" else []
    refs += [f"xmppll-{n}(1)" for n in commands() if n != exclude]
    refs += ["xmppll(7)", "avahi-browse(1)", "jq(1)"]
    return ",\n".join(f".BR {esc(r.split('(')[0])} ({r.split('(')[1]}" for r in refs)


# --- hand-written knowledge the click tree does not hold ----------------------------

ARGUMENTS = {
    ("announce", "name"): "The name to publish, `user@machine`; a bare `user` gets this "
                          "machine's host label appended. Default: `$USER@$(hostname -s)`.",
    ("browse", "pattern"): "A shell glob on peer names, case-insensitive (`'juliet@*'`).",
    ("listen", "name"): "The agent to follow (or to start when none runs). Default: the "
                        "only running agent, else `$USER@$(hostname -s)`.",
    ("send", "to"): "The peer's name as published on the link (`juliet@capulet`). With "
                    "`--all`, the first word of the message instead.",
    ("send", "text"): "The message; words are joined by spaces. Without TEXT the message "
                      "is read from standard input.",
    ("status", "status"): "The new presence: `avail`, `away` or `dnd`. Without it (and "
                          "without `--msg`) the current presence is shown.",
    ("withdraw", "name"): "The agent to stop (default: the only one running).",
    ("avatar", "name"): "The peer whose picture to fetch, as published on the link.",
    ("chat", "peer"): "The peer to talk with, as published on the link "
                      "(`juliet@capulet`). It need not be online when the chat opens.",
}

EXTRA: dict[str, list[Block]] = {
    "avatar": [
        ("p", "A picture is published as a DNS NULL record at the instance name "
              "(`NAME._presence._tcp.local`, TTL 120) and its SHA-1 in the TXT key `phsh`; "
              "`browse` shows that hash as `avatar`. A peer is asked for its picture only "
              "when its `phsh` names one not held yet, and no more once it came. The "
              "picture returned is always the one whose SHA-1 is the current `phsh`: "
              "avahi's goodbye for a changed picture carries the new data, which leaves "
              "the old one in other caches."),
    ],
    "chat": [
        ("p", "The scroll-back is the last `--last` messages with NAME, both sides: "
              "received ones from the inbox, sent ones from the agent's sent log (every "
              "message the agent delivered, whichever command sent it). Your lines are "
              "shown once NAME took them; one that could not be delivered is reported. "
              "Typing sends `composing`, then `paused` after 5 s of quiet, and `gone` on "
              "leaving, to peers that advertise chat states (XEP-0085) only: libpurple "
              "and telepathy-salut never get a notice. Commands: `/file PATH` (needs "
              "file transfer in the agent), `/help`, `/quit`; a line starting with `//` "
              "sends one starting with `/`."),
    ],
    "announce": [
        ("p", "The agent publishes the PTR, SRV and TXT records of `_presence._tcp` "
              "(and the host's address records unless avahi-daemon already does), "
              "listens on the advertised port over IPv4 and IPv6, stores every received "
              "stanza in its inbox, keeps a live cache of the peers on the link, and "
              "serves a control socket for the other commands (see xmppll(7)). When "
              "the name is taken, the user part is renamed (`juliet-2@capulet`) unless "
              "`--no-rename` is given."),
        ("p", "SIGINT and SIGTERM withdraw (goodbye packets) and exit 0. SIGHUP "
              "re-reads the config file and re-announces the presence settings that "
              "came from it."),
    ],
    "send": [
        ("p", "A message counts as delivered when the peer closed its side of the stream "
              "after reading it, or, with `--receipt`, when its XEP-0184 receipt "
              "arrived. With several messages (`--lines`, `--json`) the command stops at "
              "the first failure and says how many went out before it."),
        ("p", "With `--file`, each file is offered the way the peer takes files: "
              "libpurple (Pidgin, finch) by XEP-0096 SI over XEP-0065 SOCKS5 "
              "bytestreams, telepathy-salut and iChat by jabber:iq:oob (the receiver "
              "fetches it over HTTP from us), another xmppll by SI. The command exits 0 "
              "only once the receiver has every byte, 69 when it declines, 75 when "
              "nobody accepts within `--timeout` (120 s for files), 66 when a file "
              "cannot be read. Standard input (`--file -`) is first spooled to a "
              "temporary file, as SI must announce the size. On a terminal a progress "
              "bar on standard error shows bytes, rate and time left; `-q` hides it."),
    ],
    "accept": [
        ("p", "Offers wait for an answer while the sender's stream is open. The file "
              "goes to the sender's folder under the download directory unless `--to` "
              "is given; it is written to a `.part` file and renamed once complete."),
    ],
    "listen": [
        ("p", "Each stanza is printed once it is on disk; `--backlog` first prints what "
              "arrived since the last listener stopped, so a listener restarted after a "
              "crash neither loses nor repeats a line. `--exec` runs the command through "
              "sh(1) with the stanza's JSON line on standard input, at most four at a "
              "time; a failing command is logged and does not stop the listener."),
    ],
    "browse": [
        ("p", "On a terminal the peers are a table (status in colour); in a pipe, or "
              "with `--json`, one JSON object per peer (see xmppll(7)). With `--follow`, "
              "each record carries an `event`: `added`, `updated` or `removed`."),
    ],
}

ENV_HELP = {
    "XMPPLL_NAME": "Default instance name (`user@machine`) for announce and listen.",
    "XMPPLL_INTERFACES": "Network interfaces to use for mDNS, separated by spaces.",
    "XMPPLL_PORT": "TCP port the agent serves.",
    "XMPPLL_STATUS": "Initial presence: avail, away or dnd.",
    "XMPPLL_MSG": "Status message.",
    "XMPPLL_NICK": "Nickname published in the TXT record.",
    "XMPPLL_FIRST": "First name published in the TXT record (key `1st`).",
    "XMPPLL_LAST": "Last name published in the TXT record.",
    "XMPPLL_EMAIL": "E-mail address(es) published in the TXT record.",
    "XMPPLL_JID": "Regular XMPP address(es) published in the TXT record.",
    "XMPPLL_VERIFY": "How listen treats senders it cannot verify: strict, mark or off.",
    "XMPPLL_KEEP_DAYS": "Inbox retention: days of read history to keep (default 30).",
    "XMPPLL_KEEP_SIZE": "Inbox retention: read history to keep in all (default 256M).",
    "XMPPLL_ACCEPT_FILES": "File offers: never, ask, verified or always.",
    "XMPPLL_DOWNLOAD_DIR": "Where received files go (a folder per sender).",
    "XMPPLL_MAX_FILE_SIZE": "Offers larger than this many bytes are declined.",
    "XMPPLL_TLS": "Encryption policy: prefer (STARTTLS with peers that advertise a key), "
                  "require (refuse peers that cannot encrypt) or off.",
}

OTHER_ENV: list[Block] = [
    ("tp", "`NO_COLOR`", "When set and not empty, no colour (unless `--color always`)."),
    ("tp", "`XDG_CONFIG_HOME`", "Where the config file lives (default `~/.config`)."),
    ("tp", "`XDG_STATE_HOME`", "Where each name's inbox lives (default `~/.local/state`)."),
    ("tp", "`XDG_RUNTIME_DIR`", "Where the control sockets live (default "
                                "`/tmp/xmppll-UID`)."),
    ("tp", "`USER`", "The user part of the default name."),
    ("tp", "`NOTIFY_SOCKET`", "Set by systemd for Type=notify services: the agent sends "
                              "READY=1 once announced and STOPPING=1 when it withdraws."),
    ("tp", "`XMPPLL_MDNS_TTL`", "Seconds every published record lives, instead of "
                               "120 s and 75 min (RFC 6762); for tests of expiry and sleep."),
    ("tp", "`_XMPPLL_COMPLETE`", "Set by the shell completion scripts; not for people."),
    ("tp", "`XDG_DOWNLOAD_DIR`", "The default download folder is its `xmppll` "
                                 "subfolder (else `~/Downloads/xmppll`)."),
    ("tp", "`XMPPLL_FILE_STALL`", "Seconds without a byte moving before a file "
                                  "transfer fails (default 30)."),
]

FILES: list[Block] = [
    ("tp", "`$XDG_CONFIG_HOME/xmppll/config.toml`",
     "Defaults: " + ", ".join(config.SETTINGS) + ". A bad file is an error naming the file "
     "and line (exit 65). `xmppll config` shows each setting and where it came from."),
    ("tp", "`$XDG_STATE_HOME/xmppll/NAME/inbox.jsonl`",
     "The newest stanzas the agent for NAME received, one JSON object per line with a "
     "`seq`, written and fsync'd before the sender is acknowledged."),
    ("tp", "`$XDG_STATE_HOME/xmppll/NAME/inbox.d/`",
     "Older stanzas: inbox.jsonl moves here, named by its first seq, once it holds 16 "
     "MiB; each has a `.meta.json` summary, rebuilt when missing. Retention "
     "(`--keep-days`, `--keep-size`) deletes the oldest of these once read; `pruned` "
     "holds the last seq it dropped."),
    ("tp", "`$XDG_STATE_HOME/xmppll/NAME/cursor`",
     "The sequence number of the last stanza a listener printed (for `listen --backlog`)."),
    ("tp", "`$XDG_STATE_HOME/xmppll/NAME/published.json`",
     "The records the running agent published (for `withdraw --stale` after a crash)."),
    ("tp", "`$XDG_STATE_HOME/xmppll/NAME/agent.lock`", "Held by the agent for NAME."),
    ("tp", "`$XDG_DOWNLOAD_DIR/xmppll/SENDER/`",
     "Received files, one folder per sender (`~/Downloads/xmppll/SENDER/` without "
     "XDG_DOWNLOAD_DIR; `--download-dir` or config download_dir elsewhere)."),
    ("tp", "`$XDG_STATE_HOME/xmppll/NAME/tls/key.pem`, `cert.pem`",
     "NAME's key pair and self-signed certificate (0600), made on its first announce unless "
     "`--tls off`; the certificate's fingerprint is published as TXT `x-xmppll-tls`."),
    ("tp", "`$XDG_STATE_HOME/xmppll/known_peers`",
     "The key each peer name showed first (`FINGERPRINT NAME` per line), like ssh's "
     "known_hosts: a name whose key changes is refused (exit 77) until "
     "`xmppll trust NAME`."),
    ("tp", "`$XDG_RUNTIME_DIR/xmppll/NAME.sock`",
     "The agent's control socket (directory 0700, socket 0600); "
     "`/tmp/xmppll-UID/NAME.sock` without XDG_RUNTIME_DIR."),
]


def exit_blocks() -> list[Block]:
    return [("tp", str(code), text[:1].upper() + text[1:] + ".")
            for code, text in sorted(EXIT_CODES.items())]


def env_blocks() -> list[Block]:
    envs: set[str] = set()
    for cmd in commands().values():
        envs |= {str(p.envvar) for p in cmd.params if p.envvar}
    envs |= {config.envvar(k) for k in config.SETTINGS}
    return [("tp", f"`{e}`", ENV_HELP.get(e, "Default for the option of the same name."))
            for e in sorted(envs)] + OTHER_ENV


def main_page() -> str:
    from xmppll.cli.commands import cli

    cmds = commands()
    listing: list[str] = []
    for name, cmd in cmds.items():
        listing += [".TP", f".BR xmppll\\-{esc(name)} (1)",
                    line(esc(cmd.get_short_help_str(limit=200)))]
    sections = [
        ("SYNOPSIS", [".nh", ".ad l",
                      f"{bold('xmppll')} [{bold('--version')}] [{bold('-h')}|"
                      f"{bold('--help')}] {ital('COMMAND')} [{ital('ARGS')}]...",
                      ".ad", ".hy"]),
        ("DESCRIPTION", render_blocks(paragraphs(cli.help or "") + [
            ("p", "On a LAN with no server, peers publish themselves over mDNS/DNS-SD as "
                  "`user@machine` (XEP-0174, link-local messaging) and exchange ordinary "
                  "XMPP messages over TCP. `xmppll announce` starts the agent, one "
                  "long-running process per published name; the other commands are its "
                  "clients when it runs (one round trip on a Unix socket) and work on "
                  "their own when it does not."),
            ("p", "Output is for people on a terminal (tables, colour) and JSON Lines in "
                  "a pipe or with `--json`; the records are described in xmppll(7). "
                  "Errors are one line on standard error, starting `xmppll: error:`."),
        ])),
        ("COMMANDS", listing),
        ("OPTIONS", render_blocks([
            ("tp", "`--version`", "Print the version and exit."),
            ("tp", "`-h`, `--help`", "Print the usage of xmppll or of a command."),
        ])),
        ("EXIT STATUS", render_blocks(exit_blocks())),
        ("ENVIRONMENT", render_blocks(env_blocks())),
        ("FILES", render_blocks(FILES)),
        ("EXAMPLES", render_blocks([("ex", [
            "xmppll browse",
            'xmppll announce --msg "on call" &',
            'xmppll send juliet@capulet "ready?"',
            "make 2>&1 | tail -20 | xmppll send ops@buildbox",
            "xmppll listen | jq -r '.from + \": \" + .body'",
            "xmppll withdraw",
        ])])),
        ("SHELL COMPLETION", render_blocks([
            ("p", "Scripts for bash, zsh and fish are installed with the package (under "
                  "its prefix: share/bash-completion/completions, share/zsh/site-functions, "
                  "share/fish/vendor_completions.d) and printed by "
                  "`_XMPPLL_COMPLETE=bash_source xmppll` (zsh_source, fish_source). Peer "
                  "names complete from the link: the agent's cache when one runs, else a "
                  "browse of a few hundred milliseconds."),
        ])),
        ("SEE ALSO", [see_also(exclude="")]),
    ]
    return page("xmppll", 1, "xmppll \\- serverless XMPP (XEP\\-0174) messaging from the "
                "shell", sections)


# --- xmppll(7) --------------------------------------------------------------------------

PEER_FIELDS: list[tuple[str, str]] = [
    ("event", "Under `browse --follow` and the `follow` op only: `added`, `updated` or "
              "`removed`."),
    ("name", "The instance name, `user@machine`."),
    ("host", "The SRV target without the trailing dot (`capulet.local`)."),
    ("addresses", "IPv4 and IPv6 addresses; link-local IPv6 carries its scope "
                  "(`fe80::1%eth0`)."),
    ("port", "The TCP port from SRV."),
    ("status", "`avail`, `away` or `dnd` (a missing or unknown status reads as avail)."),
    ("msg", "Status message, or null."),
    ("nick", "TXT `nick`, or null."),
    ("first", "TXT `1st`, or null."),
    ("last", "TXT `last`, or null."),
    ("email", "TXT `email`, or null."),
    ("jid", "TXT `jid`, or null."),
    ("caps", "XEP-0115 capabilities `{\"node\", \"hash\", \"ver\"}`, or null."),
    ("tls", "The fingerprint of the peer's TLS key (`sha256:` and 43 base64url "
            "characters, TXT `x-xmppll-tls`): it speaks STARTTLS, and a stream to it must "
            "show that key. Null for peers that cannot encrypt (libpurple, "
            "telepathy-salut)."),
    ("avatar", "SHA-1 (hex) of the peer's picture, TXT `phsh`, or null; `xmppll avatar` "
               "fetches it."),
    ("txt", "Every TXT key as published (lower-cased, first occurrence wins), unknown "
            "ones included."),
]

STANZA_FIELDS: list[tuple[str, str]] = [
    ("seq", "Position in the inbox (1, 2, ...); `listen --backlog` resumes after the last "
            "one printed."),
    ("kind", "`message`, `iq` or `presence`; under `listen --chatstates` also "
             "`chatstate`, a typing notice (never stored, so it has no `seq`), with "
             "`state`, `from`, `to`, `id`, `peer`, `verified` and `received`."),
    ("state", "In a `chatstate` record only: `active`, `composing`, `paused`, "
              "`inactive` or `gone` (XEP-0085; iChat's jabber:x:event notices read as "
              "composing or paused)."),
    ("from", "The sender's name, as the stanza claims it."),
    ("to", "The recipient's name."),
    ("type", "For messages: `chat`, `normal`, `headline`, `groupchat` or `error`."),
    ("id", "The stanza id, or null."),
    ("body", "The message text, or null."),
    ("subject", "The subject, or null."),
    ("thread", "The thread id, or null."),
    ("query", "For an iq only: the namespace of its payload."),
    ("xml", "The stanza as received, for what the other fields leave out."),
    ("peer", "Where it came from: `{\"address\", \"port\", \"name\"}` (and `scope` for "
             "link-local IPv6)."),
    ("verified", "True when the sender's claimed name advertises the address the stream "
                 "came from, or, for a name that advertises a TLS key, when the sender "
                 "proved that key in the TLS handshake; false or null otherwise."),
    ("secure", "`tls` when the stream was encrypted (STARTTLS, TLS 1.3); null for plain "
               "text. With `verified` true, a `tls` record came from the holder of the "
               "key its sender's name advertises, unread by others on the link."),
    ("received", "When the agent stored it, UTC, ISO 8601 with milliseconds."),
]

AGENT_EVENTS: list[tuple[str, str]] = [
    ("announced", "Published and defended: `name`, `host`, `addresses`, `port` and the "
                  "presence fields (`status`, `msg`, ...)."),
    ("renamed", "The name was taken: `from` is the name asked for, `name` the one "
                "published. Also after a sleep or a link coming back, when someone took "
                "the name meanwhile (it is probed again, never fought for)."),
    ("conflict", "The name `name` is taken (before `renamed`; with `--no-rename`, "
                 "the agent exits)."),
    ("addresses", "The host's addresses changed (DHCP, a link gone or back): `name` and "
                  "the `addresses` now announced; the ones gone got a goodbye."),
    ("host", "The host's own responder (avahi-daemon) renamed the host: `name`, the "
             "`host` our record now points at, and the one it pointed at (`from`)."),
    ("status", "The presence changed (`xmppll status`): `name` and the presence fields."),
    ("reloaded", "SIGHUP re-read the config file: `name` and the presence fields."),
    ("listening", "`listen --no-announce` serves `port` without publishing."),
    ("withdrawn", "Goodbyes sent: `name` (and `stale: true` from `withdraw --stale`)."),
]

OPS: list[tuple[str, str, str]] = [
    ("info", "none",
     "`name`, `pid`, `port`, `host`, `addresses` and the presence fields (`status`, "
     "`msg`, `nick`, `first`, `last`, `email`, `jid`)."),
    ("status", "`status` (avail, away or dnd) and/or `msg` (an empty string clears it); "
               "null or absent leaves a field unchanged; `avatar`: a new picture, "
               "base64 (PNG or JPEG), or `no_avatar`: true to publish none",
     "as for `info`, after the TXT record was updated in place."),
    ("peers", "none", "`peers`: the cached peer records, sorted by name."),
    ("follow", "none",
     "streaming: this reply, then an `added` event for each cached peer, then one event "
     "per change, until the client disconnects. A client that stops reading is "
     "dropped."),
    ("inbox", "`after` (optional): a sequence number; `chatstates` (boolean): also "
              "stream chat states as they come",
     "streaming: this reply with `seq`, the last stored sequence number; then every "
     "stored stanza with a greater `seq` (none when `after` is absent), then each new "
     "one once it is on disk; with `chatstates`, `chatstate` records (no `seq`) "
     "between them."),
    ("send", "`message`: an object of the stanza shape (`to` and `body` required; "
             "`type`, `subject`, `thread`, `id` optional; `chatstate`: a chat state, "
             "sent alone when there is no `body`, to peers that read them only); "
             "`send_timeout` (seconds, default 10); `wait` (seconds to wait for the "
             "peer to appear); `receipt` "
             "(boolean); `everyone` (boolean: to every cached peer, in parallel, "
             "`to` ignored)",
     "once the peer took the message: `id`, `to` and `streams_opened` (the "
     "connections the agent has dialled so far); with `everyone`, `sent`: one "
     "object per peer, `to` with `id`, or `to` with `error` and `code`. Messages to "
     "one peer queue behind each other on one connection; peers are served in "
     "parallel."),
    ("store", "`record`: a stanza record (the shape `listen` prints, without `seq`)",
     "once it is on disk: `seq`. A one-shot `send` that received a stanza on its own "
     "connection hands it over this way; a message whose sender and `id` are already "
     "stored is not stored again."),
    ("avatar", "`peer`: a peer name; `wait` (seconds, default 5)",
     "`name`, `avatar` (the SHA-1 of its picture, or null) and `data`: the picture, "
     "base64, or null when it publishes none."),
    ("conversation", "`peer`: a peer name",
     "streaming: this reply with `seq` and `peer` (its record, or null), then every "
     "record concerning that peer: stored stanzas from it, its `chatstate` records, "
     "messages we sent it (`direction`: `out`, `to`, `id`, `body`, `sent`), and "
     "`added`/`updated`/`removed` events about it. What `xmppll chat` shows."),
    ("withdraw", "none",
     "`name`; then the agent sends goodbyes, removes its socket and exits."),
    ("send_file", "`files`: paths the agent opens (the same user's); `names`: the name "
                  "to offer each under, or null; `to`, or `everyone` (boolean); "
                  "`send_timeout` (seconds for a receiver to accept, default 120); "
                  "`wait`; `method` (auto, si or oob)",
     "streaming: this reply, then `{\"progress\", \"total\", \"name\"}` lines while "
     "bytes move, then `{\"done\": true, \"sent\": [...]}`, one object per file and "
     "peer: `to`, `name`, `size`, `method`, or `to`, `name`, `error` and `code`."),
    ("accept", "`id`: a pending offer; `to` (optional): a folder",
     "once the file is on disk: `record`, its `received` record (a failure is an error "
     "reply with the reason)."),
    ("decline", "`id`: a pending offer; `reason` (optional): told to the sender",
     "`record`: the `declined` record."),
]

FILE_FIELDS: list[tuple[str, str]] = [
    ("state", "`offered`, then `received`, `failed` or `declined` (records with the "
              "same `id`)."),
    ("name", "The file name, made safe (no path, no control characters, no leading "
             "dot); `offered_name` is the one the sender gave when they differ."),
    ("size", "Bytes announced (`offered`) or written (`received`); null when an OOB "
             "offer does not say."),
    ("mime", "The MIME type the sender gave."),
    ("method", "`si` (XEP-0096 over SOCKS5 bytestreams) or `oob` (jabber:iq:oob, HTTP)."),
    ("path", "For `received`: where the file is (never over an existing file: "
             "` (1)` is added)."),
    ("sha256", "For `received`: the SHA-256 of the bytes written."),
    ("reason", "For `failed` and `declined`: why."),
]


def fields(items: list[tuple[str, str]]) -> list[Block]:
    return [("tp", f"`{key}`", text) for key, text in items]


def records_page() -> str:
    peer_example = [
        '{"name": "juliet@capulet", "host": "capulet.local",',
        ' "addresses": ["10.0.0.5", "fe80::1%eth0"], "port": 5298,',
        ' "status": "avail", "msg": "Hanging out", "nick": "JuliC",',
        ' "first": "Juliet", "last": "Capulet", "email": null, "jid": null,',
        ' "caps": {"node": "...", "hash": "sha-1", "ver": "..."},',
        ' "tls": "sha256:0XqZ...43 characters...",',
        ' "txt": {"txtvers": "1", "status": "avail", "port.p2pj": "5298"}}',
    ]
    stanza_example = [
        '{"seq": 7, "kind": "message", "from": "romeo@montague",',
        ' "to": "juliet@capulet", "type": "chat", "id": "a1b2", "body": "hi",',
        ' "subject": null, "thread": null, "xml": "<message ...>...</message>",',
        ' "peer": {"address": "10.0.0.6", "port": 51234, "name": "romeo@montague"},',
        ' "verified": true, "secure": "tls", "received": "2026-11-24T12:00:00.123Z"}',
    ]
    op_blocks: list[Block] = []
    for op, args, reply in OPS:
        op_blocks.append(("tp", f"`{op}`", f"Arguments: {args}. Reply: {reply}"))
    sections = [
        ("DESCRIPTION", render_blocks([
            ("p", "Every xmppll command that prints records prints JSON Lines in a pipe "
                  "(or with `--json`): one JSON object per line, UTF-8, flushed line by "
                  "line. Each kind of thing has one shape, the same in every command, so "
                  "the output of one command is the input of the next, with jq(1) "
                  "between them when needed. Fields may be added in later versions; "
                  "none will change meaning."),
        ])),
        ("PEER RECORDS", render_blocks(
            [("p", "Printed by `xmppll browse` and `xmppll browse --follow`, returned by "
                   "the `peers` and `follow` ops:"), ("ex", peer_example)]
            + fields(PEER_FIELDS))),
        ("STANZA RECORDS", render_blocks(
            [("p", "Printed by `xmppll listen`, stored in the inbox, and read by "
                   "`xmppll send --json` (which needs only `to` and `body`, ignores "
                   "`from` and the receiving fields, and sends messages only):"),
             ("ex", stanza_example)]
            + fields(STANZA_FIELDS)
            + [("p", "A received line becomes a reply with one jq filter:"),
               ("ex", ["xmppll listen | jq --unbuffered -c \\",
                       "    '{to: .from, body: (\"echo: \" + .body)}' | xmppll send --json"])])),
        ("FILE RECORDS", render_blocks(
            [("p", "A file offered to the agent is a record in the inbox with `\"kind\": "
                   "\"file\"`, the `id` that `xmppll accept ID` and `xmppll decline ID` "
                   "name, `from`, `to`, `verified`, `peer` and `received` as for stanzas, "
                   "and:"),
             ("ex", ['{"seq": 9, "kind": "file", "state": "offered", "id": "f1",',
                     ' "from": "romeo@montague", "name": "build.log", "size": 5120,',
                     ' "mime": "text/plain", "verified": true, "method": "si", ...}',
                     '{"seq": 10, "kind": "file", "state": "received", "id": "f1",',
                     ' "path": "/home/j/Downloads/xmppll/romeo@montague/build.log",',
                     ' "size": 5120, "sha256": "...", ...}'])]
            + fields(FILE_FIELDS)
            + [("p", "The file is written to a `.part` file in the sender's folder, "
                     "fsync'd and renamed only once complete; a transfer that fails "
                     "(more or fewer bytes than announced, a stall, a refused address) "
                     "leaves nothing behind.")])),
        ("AGENT EVENTS", render_blocks(
            [("p", "`xmppll announce` prints one record per event of its agent, each with "
                   "an `event` key:")] + fields(AGENT_EVENTS))),
        ("CONTROL SOCKET", render_blocks([
            ("p", "The commands talk to a running agent over a Unix stream socket at "
                  "`$XDG_RUNTIME_DIR/xmppll/NAME.sock` (or `/tmp/xmppll-UID/NAME.sock`). "
                  "The directory is 0700 and the socket 0600, and the agent also checks "
                  "the peer's uid (SO_PEERCRED): only its owner may use it."),
            ("p", "The protocol is versioned JSON Lines. Each request is one line; each "
                  "reply is one line, on the same connection, in order:"),
            ("ex", ['request: {"v": 1, "op": "OP", ...arguments}',
                    'reply:   {"v": 1, "ok": true, ...result}',
                    'error:   {"v": 1, "ok": false, "error": "MESSAGE", "code": N}']),
            ("p", "`code` is one of the exit codes below: 64 for a malformed request or "
                  "an unknown op, 68 when a peer is not on the link, and so on. The "
                  "streaming ops (`follow`, `inbox`) send their reply line and then one "
                  "record per line until the client closes the connection. The ops:"),
            *op_blocks,
            ("p", "For example, with socat(1):"),
            ("ex", ['echo \'{"v": 1, "op": "peers"}\' |',
                    '    socat - UNIX-CONNECT:"$XDG_RUNTIME_DIR/xmppll/$USER@$(hostname -s)'
                    '.sock"']),
        ])),
        ("EXIT STATUS", render_blocks(exit_blocks())),
        ("ENVIRONMENT", render_blocks(env_blocks())),
        ("FILES", render_blocks(FILES)),
        ("SEE ALSO", [see_also(exclude="")]),
    ]
    return page("xmppll", 7, "xmppll \\- JSON records, control socket, exit codes and "
                "files of xmppll", sections)


def pages() -> dict[str, str]:
    """File name -> roff text of every page."""
    out = {"xmppll.1": main_page(), "xmppll.7": records_page()}
    for name, cmd in commands().items():
        out[f"xmppll-{name}.1"] = command_page(name, cmd)
    return out


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in pages().items():
        path = directory / name
        path.write_text(text, encoding="ascii")
        written.append(path)
    return written


def main(argv: list[str]) -> None:
    for path in write(Path(argv[0] if argv else "man")):
        print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
