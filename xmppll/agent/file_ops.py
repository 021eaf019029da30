"""The agent's `send_file` op: files offered as the agent's published name, with
progress streamed back to the command that asked (`xmppll send --file` with an agent
running). Kept out of agent.py, which only routes the op here.

Request: `to` (or `everyone`), `files` (paths the agent opens: the same user's; stdin
was spooled to a file by the client), `names` (the name to offer each as, or null),
`send_timeout`, `wait`, `method`. Reply `{"ok": true}`, then `{"progress", "total",
"name"}` lines while bytes move, then `{"done": true, "sent": [...]}` (or, after the
reply, an error line `{"ok": false, ...}`: the client reads both).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from xmppll.agent.control_server import reply
from xmppll.defaults import FILE_TIMEOUT
from xmppll.errors import DataError, NoPeerError
from xmppll.xmpp.delivery import Delivery
from xmppll.xmpp.files.send import METHODS, FileSender, send_files
from xmppll.xmpp.files.transfer import Source, open_source


async def send_file(delivery: Delivery, sources: Callable[[], list[str] | None],
                    req: dict[str, Any], writer: asyncio.StreamWriter,
                    everyone: list[str] | None) -> None:
    paths = req.get("files")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise DataError("send_file: \"files\" must be a list of paths")
    shown = req.get("names") or [None] * len(paths)
    method = req.get("method") or "auto"
    if method not in METHODS:
        raise DataError(f"send_file: method must be one of {', '.join(METHODS)}")
    if everyone is not None:
        names = everyone
        if not names:
            raise NoPeerError("no peers on the link")
    elif isinstance(req.get("to"), str):
        names = [req["to"]]
    else:
        raise DataError("send_file: \"to\" must be a name (or give \"everyone\")")
    opened: list[Source] = []
    try:
        for path, name in zip(paths, shown, strict=True):
            opened.append(open_source(path, name))
        await reply(writer, {"ok": True})

        def report(line: dict[str, Any]) -> None:
            writer.write((json.dumps(line) + "\n").encode())

        results = await send_files(
            FileSender(delivery, sources), names, opened,
            timeout=float(req.get("send_timeout") or FILE_TIMEOUT),
            wait=float(req.get("wait") or 0), method=method, report=report)
        writer.write((json.dumps({"done": True, "sent": results}) + "\n").encode())
        await writer.drain()
    finally:
        for source in opened:
            source.close()
