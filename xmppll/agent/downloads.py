"""Files offered to the agent: the policy that answers them, the records they leave in
the inbox, and where they are written.

Every offer is an inbox record (`"kind": "file", "state": "offered"`), so `listen`
shows it; what became of it follows as another record with the same `id`:
`received` (path, size, sha256), `failed` (reason) or `declined` (reason).

Policies (`--accept-files`, config accept_files): never; ask (the default: the offer
waits for `xmppll accept ID` or `xmppll decline ID`); verified (senders whose name
advertises the address they speak from are accepted at once, the others asked);
always. An offer above max_file_size or the free space of the download folder is
declined with the reason whatever the policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xmppll import timestamps
from xmppll.errors import DataError, UsageError, XmpplError
from xmppll.xmpp.dispatch import Dispatcher, Store
from xmppll.xmpp.files.names import sender_folder
from xmppll.xmpp.files.namespaces import OFFERS
from xmppll.xmpp.hub import Hub
from xmppll.xmpp.stream import split_tag

if TYPE_CHECKING:
    import xml.etree.ElementTree as ET

    from xmppll.xmpp.connection import Connection
    from xmppll.xmpp.files.receive import FileReceiver, Incoming

log = logging.getLogger("xmppll")
POLICIES = ("never", "ask", "verified", "always")
MAX_FILE_SIZE = 1 << 30
OFFER_TTL = 3600.0  # s an unanswered offer is kept (its sender has long given up)


def default_download_dir() -> Path:
    """$XDG_DOWNLOAD_DIR/xmppll, else ~/Downloads/xmppll."""
    base = os.environ.get("XDG_DOWNLOAD_DIR")
    if base:
        return Path(base).expanduser() / "xmppll"
    return Path.home() / "Downloads" / "xmppll"


def parse_size(value: Any) -> int:
    """Bytes from an integer or a string with an optional K/M/G/T suffix (binary)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        text = str(value).strip().upper().removesuffix("B").removesuffix("I")
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
        factor = units.get(text[-1:], 1)
        try:
            size = int(float(text[:-1] if text[-1:] in units else text) * factor)
        except ValueError:
            raise DataError(f"not a size: {value!r} (say 1G, 500M or a number of "
                            "bytes)") from None
    if size <= 0:
        raise DataError(f"max_file_size must be positive, not {value!r}")
    return size


@dataclass
class DownloadConfig:
    policy: str = "ask"
    folder: Path = field(default_factory=default_download_dir)
    max_size: int = MAX_FILE_SIZE


def free_space(folder: Path) -> int | None:
    path = folder
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


class Downloads:
    def __init__(self, config: DownloadConfig, dispatcher: Dispatcher, hub: Hub,
                 store: Store) -> None:
        self.config = config
        self.store = store
        self.dispatcher, self.hub = dispatcher, hub
        self._receiver: FileReceiver | None = None
        for namespace in OFFERS:
            dispatcher.on_iq("set", namespace, self._first_offer)
        self.pending: dict[str, Incoming] = {}
        self.tasks: set[asyncio.Task] = set()

    @property
    def receiver(self) -> FileReceiver:
        """File transfer, loaded when the first offer comes: an idle agent never needs
        it (0.8 MB and ~5 ms of its start, issue 14). Once made, it answers offers
        itself: it registers its own handlers in place of _first_offer."""
        if self._receiver is None:
            from xmppll.xmpp.files.receive import FileReceiver

            self._receiver = FileReceiver(self.dispatcher, self.hub, self._offered,
                                          self._refused)
        return self._receiver

    async def _first_offer(self, conn: Connection, iq: ET.Element) -> ET.Element | None:
        receiver = self.receiver  # made now, it registered its own handlers
        handler = receiver.dispatcher.iq_handler("set", split_tag(iq[0].tag)[0] or "")
        if handler is None or handler == self._first_offer:
            raise AssertionError("the file receiver did not take over the offers")
        return await handler(conn, iq)

    def _record(self, inc: Incoming, state: str, **extra: Any) -> asyncio.Future:
        remote = inc.conn.remote
        peer: dict[str, Any] = {"address": remote.address, "port": remote.port,
                                "name": inc.conn.peer}
        if remote.scope:
            peer["scope"] = remote.scope
        record = {"kind": "file", "state": state, **inc.to_json(),
                  "to": self.receiver.me, **extra, "peer": peer, "received": timestamps.now()}
        return self.store.submit(record, None)

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        """A transfer the policy started: its failure is already an inbox record."""
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.info("file transfer failed: %s", task.exception())

    # --- offers as they come ------------------------------------------------------

    def _refused(self, inc: Incoming, reason: str) -> None:
        self._record(inc, "offered")
        self._record(inc, "failed", reason=reason)

    def _offered(self, inc: Incoming) -> None:
        self._record(inc, "offered")
        reason = self._too_big(inc, self.config.folder)
        policy = self.config.policy
        if reason is None and policy == "never":
            reason = "this agent does not accept files"
        if reason is not None:
            self._spawn(self._decline(inc, reason))
        elif policy == "always" or (policy == "verified" and inc.verified):
            self._spawn(self._take(inc, None))
        else:
            self.pending[inc.id] = inc
            self._spawn(self._expire(inc))

    def _too_big(self, inc: Incoming, folder: Path) -> str | None:
        if inc.size is None:
            return None  # an OOB offer may say nothing: the Sink stops at max_size
        if inc.size > self.config.max_size:
            return (f"{inc.size} bytes is more than this agent accepts "
                    f"(max_file_size {self.config.max_size})")
        free = free_space(folder)
        if free is not None and inc.size > free:
            return f"{inc.size} bytes is more than the free space ({free})"
        return None

    async def _expire(self, inc: Incoming) -> None:
        """An offer waits for an answer until its stream ends (or OFFER_TTL)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(inc.conn.done.wait(), OFFER_TTL)
        if self.pending.pop(inc.id, None) is not None:
            self._record(inc, "failed", reason=f"{inc.sender} went away before an answer")

    async def _decline(self, inc: Incoming, reason: str) -> None:
        await self.receiver.decline(inc, reason)
        await self._record(inc, "declined", reason=reason)

    async def _take(self, inc: Incoming, to: Path | None) -> dict[str, Any]:
        folder = to or self.config.folder / sender_folder(inc.sender)
        try:
            result = await self.receiver.accept(inc, folder, self.config.max_size)
        except (XmpplError, OSError) as exc:
            await self._record(inc, "failed", reason=str(exc))
            raise
        log.info("received %s from %s: %s", inc.name, inc.sender, result["path"])
        return await self._record(inc, "received", **result)

    # --- answers from `xmppll accept` / `decline` -----------------------------------

    def _find(self, offer_id: str) -> Incoming:
        inc = self.pending.pop(offer_id, None)
        if inc is None:
            raise UsageError(f"no pending file offer {offer_id!r} (see: xmppll listen "
                             "--backlog | jq 'select(.kind==\"file\")')")
        return inc

    async def accept(self, offer_id: str, to: str | None) -> dict[str, Any]:
        inc = self._find(offer_id)
        folder = Path(to).expanduser() if to else None
        reason = self._too_big(inc, folder or self.config.folder)
        if reason is not None:
            await self._decline(inc, reason)
            raise DataError(reason)
        return await self._take(inc, folder)

    async def decline(self, offer_id: str, reason: str | None) -> dict[str, Any]:
        inc = self._find(offer_id)
        reason = reason or "declined by the user"
        await self.receiver.decline(inc, reason)
        return await self._record(inc, "declined", reason=reason)

    def offers(self) -> list[dict[str, Any]]:
        return [{"kind": "file", "state": "offered", **inc.to_json()}
                for inc in self.pending.values()]
