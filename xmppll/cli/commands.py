"""The command line: parse, call the core, render. Nothing else lives here.

Heavy modules (zeroconf, the XML stack) are imported inside the commands that need
them, so `status`, `withdraw` and `--help` cost a Python start and a socket round trip.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any

import click

from xmppll import __version__
from xmppll.cli import COMPLETE_VAR, keep, oneshot, render
from xmppll.cli.keep import keep_options
from xmppll.cli.oneshot import Messages, exit_with, show_peers
from xmppll.cli.oneshot import print_status as _print_status
from xmppll.cli.oneshot import setup_logging as _setup_logging
from xmppll.defaults import (
    DEFAULT_PORT,
    FILE_TIMEOUT,
    MESSAGE_TIMEOUT,
    STATUSES,
    VERIFY_POLICIES,
)
from xmppll.errors import UsageError, XmpplError

STATUS_CHOICE = click.Choice(STATUSES, case_sensitive=False)
ACCEPT_CHOICE = click.Choice(["never", "ask", "verified", "always"])
METHOD_CHOICE = click.Choice(["auto", "si", "oob"])


def interface_option(func: Any) -> Any:
    return click.option(
        "--interface", "-i", "interfaces", multiple=True, metavar="IF",
        envvar="XMPPLL_INTERFACES", show_envvar=True, shell_complete=_complete_interfaces,
        help="Use only this network interface for mDNS (repeatable).",
    )(func)


def dns_options(*, key: bool = False, publish: bool = False) -> Any:
    """Wide-area DNS-SD (RFC 6763 over unicast DNS): the domains, the server and, to
    publish, the TSIG key, TTL and host name. The command gets them as **dns."""
    def wrap(func: Any) -> Any:
        options = [
            click.option("--domain", "domains", multiple=True, metavar="DOMAIN",
                         help="Also use this wide-area DNS-SD domain (repeatable; 'auto': "
                              "the b/lb._dns-sd._udp domains of the search list).",
                         **_env("domains")),
            click.option("--dns-server", metavar="ADDRESS[#PORT]",
                         help="DNS server for --domain [default: queries to resolv.conf's, "
                              "updates to the zone's primary from its SOA].",
                         **_env("dns_server")),
        ]
        if key:
            options.append(click.option(
                "--tsig-key", metavar="FILE", help="TSIG key that signs the DNS UPDATEs "
                "(tsig-keygen's output; refused unless only its owner can read it).",
                **_env("tsig_key")))
        if publish:
            options += [
                click.option("--dns-ttl", type=int, metavar="SECONDS", help="TTL of the "
                             "DNS records, and the heartbeat that refreshes them "
                             "[default: 60].", **_env("dns_ttl")),
                click.option("--dns-host", metavar="NAME", help="Point the SRV at this "
                             "existing host name instead of publishing <host>.<domain> "
                             "A/AAAA.", **_env("dns_host")),
            ]
        for option in reversed(options):
            func = option(func)
        return func
    return wrap


def _wide(dns: dict[str, Any], *, need_key: bool = False) -> Any:
    """The checked WideAreaSettings, or None without --domain (nothing DNS is imported
    then)."""
    if not dns.get("domains"):
        return None
    from xmppll.discovery.widearea import config as wide_config

    return wide_config.settings(dns["domains"], dns_server=dns.get("dns_server"),
                                tsig_key=dns.get("tsig_key"), dns_ttl=dns.get("dns_ttl"),
                                dns_host=dns.get("dns_host"), need_key=need_key)


def json_option(func: Any) -> Any:
    return click.option(
        "--json/--no-json", "as_json", default=None,
        help="JSON Lines output (the default when stdout is not a terminal).",
    )(func)


def _set_color(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        render.set_color(value)


def color_option(func: Any) -> Any:
    return click.option(
        "--color", type=click.Choice(render.COLOR_MODES), default=None, metavar="WHEN",
        expose_value=False, is_eager=True, callback=_set_color,
        help="Colour the human output: auto (on a terminal, unless NO_COLOR is set), "
             "always or never [default: auto].",
    )(func)


def tls_option(func: Any) -> Any:
    return click.option(
        "--tls", type=click.Choice(["prefer", "require", "off"]), default="prefer",
        show_default=True, help="Encryption: STARTTLS with peers that advertise a key and "
        "plain text with the others (prefer), refuse peers that cannot encrypt (require, "
        "e.g. libpurple), or neither offer nor use it (off).", **_env("tls"),
    )(func)


def verbose_option(func: Any) -> Any:
    return click.option("--verbose", "-v", is_flag=True,
                        help="Show the mDNS and stream steps on stderr.")(func)


def download_options(func: Any) -> Any:
    """Files offered to the agent (announce, and listen when it starts the agent)."""
    func = click.option("--max-file-size", type=int, default=None, metavar="BYTES",
                        help="Decline offers larger than this [default: 1073741824, "
                             "1 GiB].", **_env("max_file_size"))(func)
    func = click.option("--download-dir", type=click.Path(file_okay=False), default=None,
                        metavar="DIR", help="Where received files go, one folder per "
                        "sender [default: $XDG_DOWNLOAD_DIR/xmppll, else "
                        "~/Downloads/xmppll].", **_env("download_dir"))(func)
    return click.option("--accept-files", type=ACCEPT_CHOICE, default="ask",
                        show_default=True, help="File offers: decline all, ask (accept "
                        "with xmppll accept ID), accept verified senders at once, or "
                        "accept all.", **_env("accept_files"))(func)


def quiet_option(func: Any) -> Any:
    return click.option("--quiet", "-q", is_flag=True,
                        help="Print nothing but errors.")(func)


def _complete_peers(ctx: click.Context, param: click.Parameter, incomplete: str) -> Any:
    from xmppll.cli import completion

    return completion.peers(incomplete)


def _complete_agents(ctx: click.Context, param: click.Parameter, incomplete: str) -> Any:
    from xmppll.cli import completion

    return completion.agents(incomplete)


def _complete_interfaces(ctx: click.Context, param: click.Parameter, incomplete: str) -> Any:
    from xmppll.cli import completion

    return completion.interfaces(incomplete)


def _check_interfaces(interfaces: tuple[str, ...]) -> list[str] | None:
    if not interfaces:
        return None
    from xmppll.discovery.mdns.link import local_addresses

    local_addresses(list(interfaces))
    return list(interfaces)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xmppll")
def cli() -> None:
    """Serverless XMPP (XEP-0174) from the shell: see who is on the link, publish
    yourself, send and receive messages. Output is JSON Lines when piped.

    Each command has its own --help and man page (man xmppll-send); the JSON
    records and the control socket are described in xmppll(7)."""


def _env(key: str) -> dict[str, Any]:
    return {"envvar": f"XMPPLL_{key.upper()}", "show_envvar": True}


@cli.command()
@click.argument("name", required=False, envvar="XMPPLL_NAME")
@click.option("--port", type=int, default=None, metavar="PORT", help="TCP port to serve "
              f"[default: {DEFAULT_PORT}, or a free one when taken].", **_env("port"))
@click.option("--status", type=STATUS_CHOICE, default="avail", show_default=True,
              help="Initial presence.", **_env("status"))
@click.option("--msg", metavar="TEXT", help="Status message.", **_env("msg"))
@click.option("--nick", help="Nickname (TXT nick).", **_env("nick"))
@click.option("--first", help="First name (TXT 1st).", **_env("first"))
@click.option("--last", help="Last name (TXT last).", **_env("last"))
@click.option("--email", help="E-mail address(es), space-separated.", **_env("email"))
@click.option("--jid", help="Regular XMPP address(es), space-separated.", **_env("jid"))
@click.option("--txt", "txt", multiple=True, metavar="KEY=VALUE",
              help="Extra TXT entry (repeatable).")
@click.option("--no-personal", is_flag=True, help="Publish no personal data "
              "(1st, last, nick, email, jid).")
@click.option("--no-rename", is_flag=True, help="Fail instead of renaming when the name "
              "is taken.")
@click.option("--avatar", type=click.Path(dir_okay=False), metavar="FILE",
              help="Publish this PNG or JPEG picture (at most 65398 bytes).", **_env("avatar"))
@keep_options
@download_options
@tls_option
@interface_option
@dns_options(key=True, publish=True)
@json_option
@verbose_option
@quiet_option
@color_option
def announce(name: str | None, port: int | None, status: str, msg: str | None,
             nick: str | None, first: str | None, last: str | None, email: str | None,
             jid: str | None, txt: tuple[str, ...], no_personal: bool, no_rename: bool,
             accept_files: str, download_dir: str | None, max_file_size: int | None,
             tls: str, avatar: str | None, interfaces: tuple[str, ...], as_json: bool | None,
             verbose: bool, quiet: bool, **dns: Any) -> None:
    """Start the agent: publish NAME (default user@host) and stay until interrupted
    or withdrawn. Prints one event per line (announced, conflict, renamed, ...).

    Under systemd (Type=notify) the agent reports READY=1 once announced.
    SIGHUP re-reads the config file.

    With --domain, the agent also publishes in that DNS-SD domain (one signed DNS
    UPDATE: A/AAAA, SRV, TXT, PTR), refreshes it every --dns-ttl seconds, and lists
    the domain's peers beside the link's.

    \b
    Examples:
      xmppll announce --msg "on call" &
      xmppll announce juliet --status away --nick JuliC
      xmppll announce --domain lan.example --tsig-key ~/.config/xmppll/tsig.key"""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    # SIGHUP re-reads what came from the config file (or nowhere); flags and the
    # environment keep winning, as at start.
    from_file = [key for key in oneshot.PRESENCE_SETTINGS
                 if ctx.get_parameter_source(key) in (ParameterSource.DEFAULT,
                                                      ParameterSource.DEFAULT_MAP)]
    oneshot.announce(locals(), from_file=from_file,
                     interfaces=lambda: _check_interfaces(interfaces),
                     wide=lambda: _wide(dns, need_key=True), avatar=lambda: _read_avatar(avatar),
                     retention=keep.policy(), download_dir=download_dir)


def _read_avatar(path: str | None) -> bytes | None:
    if path is None:
        return None
    from xmppll.discovery.mdns.avatar import read_image

    return read_image(os.path.expanduser(path))


@cli.command()
@click.argument("pattern", required=False)
@click.option("--follow", "-f", is_flag=True, help="Stream added/updated/removed events.")
@click.option("--timeout", type=float, default=None, metavar="SECONDS",
              help="Longest wait [default: 3; with --follow: none].")
@click.option("--table", "as_table", is_flag=True, help="Human-readable table even in a pipe.")
@click.option("--no-agent", is_flag=True, help="Browse the link directly even when an "
              "agent runs.")
@click.option("--no-link", is_flag=True, help="Only the --domain peers: skip mDNS.")
@interface_option
@dns_options()
@json_option
@color_option
def browse(pattern: str | None, follow: bool, timeout: float | None, as_table: bool,
           no_agent: bool, no_link: bool, interfaces: tuple[str, ...], as_json: bool | None,
           **dns: Any) -> None:
    """List the peers on the link (those whose name matches PATTERN, a shell glob).

    With an agent running, its live cache answers at once; otherwise a one-shot
    mDNS browse ends when answers stop (at most --timeout). With --domain, that
    domain's peers are asked from DNS as well (records gain "domain"); --follow
    polls it every 5 s. A domain whose server fails is reported on stderr (and in the
    exit code) while the other peers are still listed.

    \b
    Examples:
      xmppll browse
      xmppll browse --domain lan.example --no-link
      xmppll browse 'juliet@*' | jq -r .status
      xmppll browse --follow | jq -r 'select(.event=="added") | .name'"""
    from xmppll.agent import client

    ifaces = _check_interfaces(interfaces)
    wide = _wide(dns)
    if no_link and wide is None:
        raise UsageError("--no-link lists only --domain peers: give --domain")
    show_peers(agent=None if no_agent or ifaces else client.any_agent(), pattern=pattern,
               follow=follow, timeout=timeout, as_table=as_table, as_json=as_json,
               interfaces=ifaces, wide=wide, link=not no_link)


@cli.command()
@click.argument("status", type=STATUS_CHOICE, required=False)
@click.option("--msg", metavar="TEXT", help="New status message ('' clears it).")
@click.option("--name", metavar="NAME", shell_complete=_complete_agents,
              help="Which agent, when several run.")
@click.option("--avatar", type=click.Path(dir_okay=False), metavar="FILE",
              help="Publish this PNG or JPEG picture instead of the current one.")
@click.option("--no-avatar", is_flag=True, help="Stop publishing a picture.")
@interface_option
@json_option
@quiet_option
@color_option
def status(status: str | None, msg: str | None, name: str | None, avatar: str | None,
           no_avatar: bool, interfaces: tuple[str, ...], as_json: bool | None,
           quiet: bool) -> None:
    """Show my presence, or change it (the running agent re-announces its TXT).

    \b
    Examples:
      xmppll status
      xmppll status away --msg "lunch"
      xmppll status avail --msg ''
      xmppll status --avatar ~/me.png"""
    from xmppll.agent import client

    _check_interfaces(interfaces)
    if avatar is not None and no_avatar:
        raise UsageError("--avatar and --no-avatar exclude each other")
    picture = _read_avatar(avatar)
    replies = client.status(name, status, msg, avatar=picture, no_avatar=no_avatar)
    if quiet and (status is not None or msg is not None or avatar or no_avatar):
        return
    for reply in replies:
        _print_status(reply, as_json)


@cli.command()
@click.argument("name", required=False, shell_complete=_complete_agents)
@click.option("--stale", is_flag=True, help="Send goodbyes for NAME's records left by an "
              "agent that died (kill -9, crash).")
@interface_option
@dns_options(key=True)
@json_option
@quiet_option
def withdraw(name: str | None, stale: bool, interfaces: tuple[str, ...],
             as_json: bool | None, quiet: bool, **dns: Any) -> None:
    """Go offline: the agent sends goodbyes and exits (peers drop NAME at once).

    \b
    Examples:
      xmppll withdraw
      xmppll withdraw --stale   # after the agent was killed with -9
      xmppll withdraw --stale --domain lan.example --tsig-key tsig.key

    Returns once peers have been told; the agent repeats its goodbyes and closes
    its streams on its own, and an announce (or a send) as NAME meanwhile waits
    for it to finish.

    With --stale --domain, the dead agent's DNS records are deleted by a signed
    UPDATE (DNS has no goodbye; browsers would otherwise drop them only after 3
    heartbeats)."""
    from xmppll import identity
    from xmppll.agent import client

    ifaces = _check_interfaces(interfaces)
    if stale:
        target = identity.check_instance_name(name or identity.default_name())
        result = client.withdraw_stale(target, ifaces, wide=_wide(dns, need_key=True))
    else:
        result = client.withdraw(name)
    if quiet:
        return
    if render.wants_json(as_json):
        render.write_json(result)
    else:
        render.write_line(render.agent_event_line(result))


VERIFY_CHOICE = click.Choice(VERIFY_POLICIES)


@cli.command()
@click.argument("to", required=False, shell_complete=_complete_peers)
@click.argument("text", nargs=-1)
@click.option("--from", "from_", metavar="NAME", shell_complete=_complete_agents,
              help="Send as NAME [default: user@host].")
@click.option("--type", "type_", type=click.Choice(["chat", "normal", "headline"]),
              default="chat", show_default=True, help="Message type.")
@click.option("--subject", metavar="TEXT", help="Message subject.")
@click.option("--thread", metavar="ID", help="Conversation thread id.")
@click.option("--receipt", is_flag=True, help="Ask for an XEP-0184 receipt and succeed "
              "only when it comes back.")
@click.option("--id", "id_", metavar="ID", help="The message id [default: a new one]. "
              "A receiver stores a message it already has (same sender, same id, within "
              "5 minutes) only once, so a script can retry with the same --id without "
              "doubling it.")
@click.option("--timeout", type=float, default=None, metavar="SECONDS",
              help="Seconds to deliver each message, or for a receiver to accept each "
              f"file [default: {MESSAGE_TIMEOUT:g}; with --file: {FILE_TIMEOUT:g}, as a person "
              "may have to accept].")
@click.option("--wait", type=float, default=0.0, metavar="SECONDS",
              help="Seconds to wait for TO to appear on the link [default: 0].")
@click.option("--json", "json_input", is_flag=True, help="Read JSON Lines of the stanza "
              "shape from stdin (to and body required).")
@click.option("--lines", is_flag=True, help="One message per line of stdin.")
@click.option("--all", "everyone", is_flag=True, help="Send to every peer on the link.")
@click.option("--file", "files", multiple=True, metavar="PATH",
              help="Offer the file PATH (repeatable; - is stdin); exits 0 once the "
              "receiver has every byte, 69 when declined, 66 when PATH cannot be read.")
@click.option("--name", "file_name", metavar="NAME", help="The file name to offer "
              "stdin (--file -) under [default: stdin].")
@click.option("--method", type=METHOD_CHOICE, default="auto", show_default=True,
              help="How files move: SI with SOCKS5 bytestreams (libpurple), OOB over "
              "HTTP (telepathy-salut, iChat), or what the peer takes.")
@tls_option
@click.option("--chatstate", type=click.Choice(["active", "composing", "paused", "inactive",
                                                "gone"]), metavar="STATE",
              help="Send this chat state (XEP-0085): alone without TEXT, only to peers that "
                   "advertise chat states; with TEXT, riding on the message where read.")
@interface_option
@dns_options()
@verbose_option
@quiet_option
def send(to: str | None, text: tuple[str, ...], from_: str | None, type_: str,
         subject: str | None, thread: str | None, receipt: bool, id_: str | None,
         timeout: float | None,
         wait: float, json_input: bool, lines: bool, everyone: bool, files: tuple[str, ...],
         file_name: str | None, method: str, tls: str, chatstate: str | None,
         interfaces: tuple[str, ...], verbose: bool, quiet: bool, **dns: Any) -> None:
    """Send TEXT (or stdin) to the peer TO. Exits 0 only when the peer took it.

    With an agent running (as the sender), the agent delivers: as its published name,
    over a reused stream, resolving TO on the link and in its --domain. Otherwise this
    command resolves (in --domain first, then on the link) and connects itself, to
    whatever address was resolved, from the address the route picks.
    On a terminal, a wait longer than a moment shows its progress on stderr.

    \b
    Examples:
      xmppll send juliet@capulet "ready?"
      make 2>&1 | tail -20 | xmppll send ops@buildbox
      xmppll send --all "lunch is here"
      xmppll send --wait 60 juliet@capulet "you are up"
      xmppll send --id build-42 ops@buildbox "build 42 ok"   # safe to retry
      xmppll send --chatstate composing juliet@capulet
      xmppll listen | jq -c '{to: .from, body: .body}' | xmppll send --json
      xmppll send juliet@capulet --file report.pdf "the report"
      make 2>&1 | xmppll send ops@buildbox --file - --name build.log"""
    from xmppll import identity
    from xmppll.agent import client

    if files:
        _send_files(to, text, from_, files, file_name, method, timeout, wait, everyone,
                    interfaces, verbose, quiet)
        return
    if file_name is not None:
        raise UsageError("--name names stdin sent with --file -")
    messages = Messages(locals())
    me = identity.check_instance_name(from_ or identity.default_name())
    ifaces = _check_interfaces(interfaces)
    agent = None if ifaces else client.sending_agent(from_)
    if verbose or not agent:  # logging costs ~5 ms of imports the agent's client can skip
        _setup_logging(verbose)
    with render.progress(messages.progress_text(),
                         enabled=not (quiet or verbose or messages.reads_stdin)):
        client.send(messages.records, agent=agent, me=me, everyone=messages.everyone,
                    timeout=messages.timeout, wait=messages.wait, receipt=receipt,
                    interfaces=ifaces, wide=_wide(dns), tls=tls)


@contextlib.contextmanager
def _transfer_progress(enabled: bool) -> Any:
    """A progress bar per file on stderr (bytes, rate, time left: click's own bar),
    only on a terminal; yields the callback that gets the progress lines."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    bars: dict[str, Any] = {}
    # The rate counts from the last report before bytes moved (reports come every
    # 0.2 s, also while the offer waits), not from the bar's first report: a transfer
    # shorter than a report period would show an absurd rate (seen on a terminal).
    state: dict[str, Any] = {"seen": time.monotonic()}

    def show(_: Any) -> str:
        done, rate = state.get("done", 0), state.get("rate", 0.0)
        return f"{render.safe(state.get('name', ''))} {_size(done)} at {_size(rate)}/s"

    def report(line: dict[str, Any]) -> None:
        name, total, done = line["name"], int(line["total"]), int(line["progress"])
        now = time.monotonic()
        bar = bars.get(name)
        if bar is None:
            for other in bars.values():
                other.render_finish()
            bar = bars[name] = click.progressbar(
                length=max(total, 1), file=sys.stderr, show_eta=True, show_percent=True,
                item_show_func=show, width=24)
            state.update(start=state["seen"], last=0)
        if done == 0:
            state["start"] = now
        state["seen"] = now
        elapsed = max(1e-3, now - state["start"])
        state.update(name=name, done=done, rate=done / elapsed)
        bar.update(done - state["last"], current_item=name)
        state["last"] = done

    try:
        yield report
    finally:
        for bar in bars.values():
            bar.render_finish()


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _send_files(to: str | None, text: tuple[str, ...], from_: str | None,
                files: tuple[str, ...], file_name: str | None, method: str,
                timeout: float | None, wait: float, everyone: bool,
                interfaces: tuple[str, ...], verbose: bool, quiet: bool) -> None:
    """`send --file`: TEXT (if any) as a message first, then each file."""
    from xmppll import identity
    from xmppll.agent import client

    timeout = FILE_TIMEOUT if timeout is None else timeout
    if timeout <= 0 or wait < 0:
        raise UsageError("--timeout must be positive and --wait not negative")
    if everyone and to:
        text = (to, *text)
        to = None
    if not to and not everyone:
        raise UsageError("missing TO: name a peer, or use --all")
    if files.count("-") > 1:
        raise UsageError("stdin can be sent once: give --file - only once")
    if file_name is not None and "-" not in files:
        raise UsageError("--name names stdin: use it with --file -")
    me = identity.check_instance_name(from_ or identity.default_name())
    ifaces = _check_interfaces(interfaces)
    agent = None if ifaces else client.sending_agent(from_)
    if verbose or not agent:
        _setup_logging(verbose)
    if text:
        client.send(iter([(0, {"to": to, "body": " ".join(text)})]), agent=agent, me=me,
                    everyone=everyone, timeout=min(timeout, 10.0), wait=wait,
                    receipt=False, interfaces=ifaces)
    shown = [file_name if f == "-" else None for f in files]
    with _transfer_progress(enabled=not (quiet or verbose)) as report:
        client.send_files(list(files), shown, agent=agent, me=me, to=to,
                          everyone=everyone, timeout=timeout, wait=wait, method=method,
                          interfaces=ifaces, report=report)


@cli.command()
@click.argument("name", required=False, envvar="XMPPLL_NAME", shell_complete=_complete_agents)
@click.option("--backlog", is_flag=True, help="First print what arrived while no "
              "listener was reading.")
@click.option("--exec", "command", metavar="CMD", help="Run CMD for each stanza, its "
              "JSON on stdin.")
@click.option("--output", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also append each JSON line to FILE (fsync'd).")
@click.option("--verify", type=VERIFY_CHOICE, default="mark", show_default=True,
              help="Unverified senders: reject, mark verified:false, or skip the check "
              "(when this command starts the agent).", **_env("verify"))
@click.option("--port", type=int, default=None, metavar="PORT", help="Port to serve when "
              "this command starts the agent.", **_env("port"))
@click.option("--no-announce", is_flag=True, help="Serve the port but do not publish "
              "(when this command starts the agent).")
@click.option("--chatstates", is_flag=True, help="Also print peers' chat states (typing "
              "notices) as they come, as records of kind chatstate (never stored).")
@keep_options
@download_options
@tls_option
@interface_option
@json_option
@verbose_option
@quiet_option
@color_option
def listen(name: str | None, backlog: bool, command: str | None, output: str | None,
           verify: str, port: int | None, no_announce: bool, accept_files: str,
           download_dir: str | None, max_file_size: int | None, tls: str, chatstates: bool,
           interfaces: tuple[str, ...], as_json: bool | None, verbose: bool,
           quiet: bool) -> None:
    """Print each received stanza as one JSON line (a readable line on a terminal).

    Follows the running agent's inbox; with none running, runs one in the foreground
    until interrupted (its events go to stderr; --quiet hides them).

    \b
    Examples:
      xmppll listen
      xmppll listen --backlog --output ~/chat.jsonl
      xmppll listen --exec 'jq -r .body >> ~/messages.txt'"""
    import signal

    _setup_logging(verbose)
    ifaces = _check_interfaces(interfaces)
    background = None
    from xmppll.agent import client

    agent = client.running(name)
    if not agent:
        background, agent = _start_agent(name, verify, port, no_announce, ifaces, quiet,
                                         oneshot.downloads(accept_files, download_dir,
                                                    max_file_size), tls)
        # The agent runs on a thread and cannot catch signals: make SIGTERM (kill, a
        # service manager) withdraw it like ^C, or peers keep a ghost for the TTL.
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        oneshot.listen_to(agent, backlog=backlog, command=command, output=output,
                          as_json=as_json, chatstates=chatstates)
    finally:
        if background is not None:
            background.stop()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _start_agent(name: str | None, verify: str, port: int | None, no_announce: bool,
                 ifaces: list[str] | None, quiet: bool = False,
                 downloads: Any = None, tls: str = "prefer") -> tuple[Any, str]:
    from xmppll import identity
    from xmppll.agent.agent import AgentConfig, BackgroundAgent
    from xmppll.discovery.presence import Presence

    config = AgentConfig(
        name=identity.check_instance_name(name or identity.default_name()),
        presence=Presence(port=port or DEFAULT_PORT), interfaces=ifaces or [],
        port_given=port is not None, verify=verify, publish=not no_announce, tls=tls,
        retention_policy=keep.policy(),
        **({"downloads": downloads} if downloads is not None else {}),
    )

    def emit(event: dict[str, Any]) -> None:
        if not quiet:
            sys.stderr.write(f"xmppll: {render.agent_event_line(event)}\n")

    background = BackgroundAgent(config, emit)
    return background, background.start()


@cli.command()
@click.argument("name", shell_complete=_complete_peers)
@click.option("--output", "-o", type=click.Path(dir_okay=False, allow_dash=True),
              metavar="FILE", help="Write the picture to FILE ('-': standard output, "
              "refused on a terminal).")
@click.option("--timeout", type=float, default=5.0, show_default=True, metavar="SECONDS",
              help="Longest wait for the picture.")
@interface_option
@json_option
def avatar(name: str, output: str | None, timeout: float, interfaces: tuple[str, ...],
           as_json: bool | None) -> None:
    """Fetch the picture NAME publishes (XEP-0174: a DNS NULL record, its SHA-1 in
    the TXT key phsh) and write it to --output.

    Through the running agent when there is one (it holds the pictures it heard),
    else a one-shot mDNS query. Without --output, prints the picture's SHA-1 and
    type. Exits 68 when NAME is not on the link, 69 when it publishes no picture.

    \b
    Examples:
      xmppll avatar juliet@capulet --output juliet.png
      xmppll avatar juliet@capulet -o - | display -"""
    from xmppll.agent import client
    from xmppll.discovery.mdns.avatar import image_type, sha1_hex

    if timeout <= 0:
        raise UsageError("--timeout must be positive")
    if output == "-" and sys.stdout.isatty():
        raise UsageError("refusing to write a picture to a terminal: use --output FILE "
                         "or a pipe")
    ifaces = _check_interfaces(interfaces)
    agent = None if ifaces else client.any_agent()
    with render.progress(f"asking {name} for its picture...", enabled=output != "-"):
        found, sha, data = client.avatar(agent, name, ifaces, timeout)
    if data is None:
        from xmppll.errors import UnavailableError

        raise UnavailableError(f"{found} publishes no picture")
    record = {"name": found, "avatar": sha1_hex(data), "type": image_type(data),
              "bytes": len(data)}
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    if output is not None:
        from pathlib import Path

        Path(output).write_bytes(data)
        record["output"] = output
    if render.wants_json(as_json):
        render.write_json(record)
    else:
        render.write_line(f"{render.safe(found)}  {record['avatar']}  {record['type']}  "
                          f"{record['bytes']} bytes" + (f"  -> {output}" if output else ""))


@cli.command()
@click.argument("peer", metavar="NAME", shell_complete=_complete_peers)
@click.option("--name", metavar="NAME", shell_complete=_complete_agents,
              help="Chat as this agent [default: the running one, else user@host].")
@click.option("--last", type=click.IntRange(min=0), default=20, show_default=True,
              metavar="N", help="How many earlier messages to show first.")
@interface_option
@color_option
def chat(peer: str, name: str | None, last: int, interfaces: tuple[str, ...]) -> None:
    """Talk with NAME in this terminal, as talk(1) does: the last messages exchanged
    with NAME, then new ones as they come; what you type is sent line by line, with
    line editing and history. The peer's status and typing show in the bottom bar,
    and yours is sent to peers that read chat states (XEP-0085).

    /file PATH sends a file, Ctrl-D leaves. Starts an agent for its duration when none
    runs. For scripts, use send and listen: chat refuses to run without a terminal.

    \b
    Examples:
      xmppll chat juliet@capulet
      xmppll chat --name romeo@montague --last 50 juliet@capulet"""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("chat needs a terminal on stdin and stdout; in a script use "
                         "`xmppll send` and `xmppll listen`")
    from xmppll.agent import client
    from xmppll.cli import chat as chat_ui

    ifaces = _check_interfaces(interfaces)
    agent = client.running(name)
    background = None
    if not agent:
        import signal

        background, agent = _start_agent(name, "mark", None, False, ifaces, quiet=True)
        signal.signal(signal.SIGTERM, _interrupt)  # withdraw on kill, as listen does
    try:
        chat_ui.run(agent, peer, last=last, color=render.use_color())
    finally:
        if background is not None:
            background.stop()


@cli.command("inbox")
@click.argument("name", required=False, envvar="XMPPLL_NAME", shell_complete=_complete_agents)
@click.option("--prune", is_flag=True, help="Drop the read history beyond --keep-days "
              "and --keep-size now, and say what went.")
@click.option("--peer", metavar="NAME", help="Print the last messages from NAME "
              "instead (its instance name or address), oldest first.")
@click.option("--last", type=click.IntRange(min=1), default=20, show_default=True,
              metavar="N", help="With --peer: how many messages.")
@keep_options
@json_option
@color_option
def inbox(name: str | None, prune: bool, peer: str | None, last: int,
          as_json: bool | None) -> None:
    """Show NAME's inbox: where it is, how many messages and how much disk, the oldest
    and newest, and how many no listener has read yet.

    Reads the files, so it works with or without a running agent. The agent applies
    the retention itself (at start, hourly and whenever a 16 MiB segment fills);
    messages no listener has read are never dropped, whatever their age.

    \b
    Examples:
      xmppll inbox
      xmppll inbox --prune --keep-days 7 --keep-size 100M
      xmppll inbox --peer juliet@capulet --last 5"""
    from xmppll.agent import client
    from xmppll.cli import inbox_view

    inbox_view.run(client.running(name) or name, prune=prune, peer=peer, last=last,
                   policy=keep.policy(), as_json=render.wants_json(as_json))


@cli.command()
@click.argument("offer_id", metavar="ID")
@click.option("--to", "folder", type=click.Path(file_okay=False), metavar="DIR",
              help="Write the file into DIR [default: the download folder of the "
              "sender].")
@click.option("--name", metavar="NAME", shell_complete=_complete_agents,
              help="Which agent, when several run.")
@json_option
@quiet_option
@color_option
def accept(offer_id: str, folder: str | None, name: str | None, as_json: bool | None,
           quiet: bool) -> None:
    """Accept the file offer ID (from a `file` record of listen) and wait until the
    file is on disk; prints its `received` record (path, size, sha256).

    \b
    Examples:
      xmppll accept f3
      xmppll accept f3 --to ~/incoming"""
    from xmppll.agent import client

    record = client.accept(name, offer_id, folder)
    if not quiet:
        _print_record(record, as_json)


@cli.command()
@click.argument("offer_id", metavar="ID")
@click.option("--reason", metavar="TEXT", help="Tell the sender why.")
@click.option("--name", metavar="NAME", shell_complete=_complete_agents,
              help="Which agent, when several run.")
@json_option
@quiet_option
@color_option
def decline(offer_id: str, reason: str | None, name: str | None, as_json: bool | None,
            quiet: bool) -> None:
    """Decline the file offer ID; the sender's `send --file` exits 69.

    \b
    Examples:
      xmppll decline f3 --reason "too big for this laptop"
    """
    from xmppll.agent import client

    record = client.decline(name, offer_id, reason)
    if not quiet:
        _print_record(record, as_json)


def _print_record(record: dict[str, Any], as_json: bool | None) -> None:
    if render.wants_json(as_json):
        render.write_json(record)
    else:
        render.write_line(render.stanza_line(record, color=render.use_color()))


@cli.command()
@click.argument("name", shell_complete=_complete_peers)
@click.option("--fingerprint", metavar="PIN", help="Trust this key (sha256:..., as browse "
              "shows it in \"tls\") instead of the one NAME advertises now.")
@click.option("--forget", is_flag=True, help="Forget NAME's key: the next contact records "
              "the key it shows then (or that it has none).")
@click.option("--timeout", type=float, default=3.0, show_default=True, metavar="SECONDS",
              help="Longest wait to find NAME on the link.")
@interface_option
@json_option
@quiet_option
def trust(name: str, fingerprint: str | None, forget: bool, timeout: float,
          interfaces: tuple[str, ...], as_json: bool | None, quiet: bool) -> None:
    """Accept the key NAME advertises now as its key. xmppll remembers the key each
    peer name shows first (like ssh's known_hosts, in $XDG_STATE_HOME/xmppll/known_peers)
    and refuses a name whose key changed, with exit code 77, until you run this.

    \b
    Examples:
      xmppll trust juliet@capulet
      xmppll trust juliet@capulet --fingerprint sha256:0Xq...
      xmppll trust juliet@capulet --forget"""
    from xmppll.agent import client
    from xmppll.agent.trust import trust as accept

    if timeout <= 0:
        raise UsageError("--timeout must be positive")
    ifaces = _check_interfaces(interfaces)
    agent = None if ifaces else client.any_agent()
    result = accept(name, fingerprint=fingerprint, forget=forget,
                    peers=lambda: client.peers(agent, ifaces, timeout)[0])
    if quiet:
        return
    if render.wants_json(as_json):
        render.write_json(result)
    elif result["tls"] is None:
        render.write_line(f"forgot the key of {render.safe(result['name'])}"
                          + (f" ({result['was']})" if result["was"] else ""))
    else:
        was = f" (was {result['was']})" if result["was"] else ""
        render.write_line(f"trusting {render.safe(result['name'])} with key "
                          f"{result['tls']}{was}")


@cli.command("config")
@json_option
def show_config(as_json: bool | None) -> None:
    """Show the effective defaults and where each comes from (flags > environment >
    config file > built-in).

    The file is $XDG_CONFIG_HOME/xmppll/config.toml (~/.config/xmppll/config.toml);
    each setting there is the default for the option of the same name, and
    XMPPLL_<SETTING> in the environment overrides it."""
    import os

    from xmppll import identity
    from xmppll.cli import config

    settings = config.load()
    path = str(config.config_path())
    for key in config.SETTINGS:
        env = config.envvar(key)
        if env in os.environ:
            value, source = os.environ[env], f"environment {env}"
        elif key in settings:
            value, source = settings[key], f"config {path}"
        else:
            value, source = _builtin(key, identity), "built-in"
        if render.wants_json(as_json):
            render.write_json({"setting": key, "value": value, "source": source})
        else:
            render.write_line(f"{key:<10} {render.safe(value)!s:<28} {source}")


def _builtin(key: str, identity: Any) -> Any:
    from xmppll.agent.downloads import MAX_FILE_SIZE, default_download_dir
    from xmppll.agent.policy import DEFAULT_KEEP_DAYS, DEFAULT_KEEP_SIZE

    return {"name": identity.default_name(), "status": "avail", "port": DEFAULT_PORT,
            "verify": "mark", "interfaces": [], "domains": [], "dns_ttl": 60,
            "keep_days": DEFAULT_KEEP_DAYS, "keep_size": DEFAULT_KEEP_SIZE,
            "accept_files": "ask", "download_dir": str(default_download_dir()),
            "max_file_size": MAX_FILE_SIZE, "tls": "prefer"}.get(key)


def main() -> None:
    """Console entry point: map every failure to one stderr line and an exit code."""
    oneshot.warnings_as_lines()
    if COMPLETE_VAR in os.environ:
        _complete()
    try:
        from xmppll.cli import config

        cli.main(standalone_mode=False, prog_name="xmppll",
                 default_map=config.default_map(config.load()))
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        render.error(exc.format_message())
        sys.exit(64)
    except click.Abort:
        sys.exit(130)
    except XmpplError as exc:
        exit_with(exc)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)


def _complete() -> None:
    """Shell completion (the shell runs us with _XMPPLL_COMPLETE set): never an error
    on the terminal while someone types, and out at once, leaving no thread behind."""
    from xmppll.cli import completion

    completion.register()
    code = 0
    try:
        cli.main(prog_name="xmppll")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    except BaseException:  # a broken completion must stay silent
        code = 1
    sys.stdout.flush()
    os._exit(code)


