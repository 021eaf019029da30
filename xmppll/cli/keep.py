"""--keep-days and --keep-size: the inbox retention settings, on every command that
runs an agent or prunes. Their values go to ctx.meta, so a command's signature need
not change; `policy()` turns them into the agent's Policy."""

from __future__ import annotations

from typing import Any

import click

from xmppll.agent.policy import DEFAULT_KEEP_DAYS, DEFAULT_KEEP_SIZE, Policy, parse_size
from xmppll.errors import UsageError


def _store(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if param.name == "keep_size" and value is not None:
        try:
            parse_size(value)
        except UsageError as exc:
            raise click.BadParameter(str(exc)) from None
    ctx.meta[f"xmppll.{param.name}"] = value
    return value


def keep_options(func: Any) -> Any:
    func = click.option(
        "--keep-size", metavar="SIZE", default=DEFAULT_KEEP_SIZE, show_default=True,
        callback=_store, expose_value=False, envvar="XMPPLL_KEEP_SIZE", show_envvar=True,
        help="Inbox retention: read messages beyond this much in all may be dropped "
             "(K, M, G; unread ones never are).")(func)
    return click.option(
        "--keep-days", type=click.IntRange(min=0), metavar="DAYS",
        default=DEFAULT_KEEP_DAYS, show_default=True, callback=_store, expose_value=False,
        envvar="XMPPLL_KEEP_DAYS", show_envvar=True,
        help="Inbox retention: read messages older than this may be dropped.")(func)


def policy(ctx: click.Context | None = None) -> Policy:
    meta = (ctx or click.get_current_context()).meta
    return Policy.of(meta.get("xmppll.keep_days"), meta.get("xmppll.keep_size"))
