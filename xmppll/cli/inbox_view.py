"""`xmppll inbox`: the inbox's summary, a prune, or one peer's last messages, as JSON
or as aligned lines."""

from __future__ import annotations

from typing import Any

from xmppll.agent.policy import Policy
from xmppll.cli import render
from xmppll.errors import IOFailure


def size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def lines(info: dict[str, Any]) -> list[str]:
    seqs = f" (seq {info['first_seq']}-{info['last_seq']})" if info["last_seq"] else ""
    rows = [
        ("inbox", info["path"]),
        ("messages", f"{info['messages']}{seqs}"),
        ("unread", f"{info['unread']} (read through seq {info['cursor']})"),
        ("disk", f"{size(info['disk'])} in {info['segments']} segments"),
        ("oldest", info["oldest"] or "-"),
        ("newest", info["newest"] or "-"),
    ]
    pruned = info.get("pruned")
    if pruned is not None:
        rows.append(("pruned", f"{pruned['segments']} segments, {size(pruned['bytes'])} "
                               f"(through seq {pruned['through']})"))
    return [f"{key:<9} {render.safe(value)}" for key, value in rows]


def run(name: str | None, *, prune: bool, peer: str | None, last: int, policy: Policy,
        as_json: bool) -> None:
    from xmppll import identity
    from xmppll.agent import history, retention

    state = identity.state_dir(identity.check_instance_name(name or identity.default_name()))
    try:
        if peer is not None:
            for record in history.last_with(state, peer, last):
                if as_json:
                    render.write_json(record)
                else:
                    render.write_line(render.stanza_line(record, color=render.use_color()))
            return
        pruned = retention.prune(state, policy) if prune else None
        info = history.stats(state)
    except OSError as exc:
        raise IOFailure(f"cannot read the inbox in {state}: {exc.strerror or exc}") from None
    if pruned is not None:
        info["pruned"] = pruned
    if as_json:
        render.write_json(info)
    else:
        for line in lines(info):
            render.write_line(line)
