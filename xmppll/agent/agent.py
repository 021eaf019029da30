"""The agent: one long-running process per published name.

Being on the link is two things at once (records over mDNS and a listener on the
advertised port), so they live together here, with the live peer cache and the control
socket that lets one-shot commands use all of it for the cost of a round trip.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from xmppll import identity
from xmppll.agent import retention
from xmppll.agent.control_server import ControlServer, reply
from xmppll.agent.inbox import Inbox, catch_up
from xmppll.agent.policy import Policy
from xmppll.discovery.mdns.link import local_addresses, mdns_port_taken, open_link
from xmppll.discovery.mdns.peers import PeerView, wait_for_peer
from xmppll.discovery.mdns.publish import Publisher, Record, choose_host
from xmppll.discovery.presence import Presence, check_status, encode_txt
from xmppll.errors import (
    DataError,
    NoPeerError,
    UnavailableError,
    XmpplError,
)
from xmppll.xmpp import caps
from xmppll.xmpp import stanza as st
from xmppll.xmpp.incoming import IncomingServer, bind_port, normalize, same_address
from xmppll.xmpp.outgoing import ConnectFailed, StreamPool, Target

DEFAULT_PORT = 5298
log = logging.getLogger("xmppll")
REFRESH_INTERVAL = 10.0
FOLLOW_BACKLOG = 10000  # events queued for a follower that is not reading, then dropped
LOOKUP_WAIT = 0.5  # how long a stream waits to resolve a sender it does not know yet
Emit = Callable[[dict[str, Any]], None]


@dataclass
class AgentConfig:
    name: str
    presence: Presence
    interfaces: list[str] = field(default_factory=list)
    rename: bool = True
    port_given: bool = False
    verify: str = "mark"
    publish: bool = True  # False: serve the port and keep the inbox, but stay unlisted
    reload: Callable[[], dict[str, Any]] | None = None  # SIGHUP: presence from config
    retention_policy: Policy = field(default_factory=Policy)


def caps_tuple() -> tuple[str, str, str]:
    return (caps.CAPS_NODE, "sha-1", caps.caps_ver())


class Agent:
    """Runs until withdrawn or signalled; `emit` gets the agent's own events."""

    def __init__(self, config: AgentConfig, emit: Emit) -> None:
        self.config = config
        self.emit = emit
        self.presence = config.presence
        self.state = identity.state_dir(config.name)
        self.stop_event = asyncio.Event()
        self.subscribers: dict[asyncio.Queue, asyncio.StreamWriter] = {}
        self.publisher: Publisher | None = None
        self.view: PeerView | None = None
        self.listeners: list[socket.socket] = []
        self.inbox: Inbox | None = None
        self.pool = StreamPool()
        self.incoming: IncomingServer | None = None
        self.ready = asyncio.Event()
        self._lock_fd: int | None = None
        self.control = ControlServer(self)

    @property
    def name(self) -> str:
        rec = self.publisher.record if self.publisher else None
        return rec.name if rec else self.config.name

    def txt(self) -> bytes:
        return encode_txt(self.presence, caps_tuple())

    async def run(self) -> None:
        self._take_lock()
        self.txt()  # refuse an unpublishable record before touching the network
        shared = mdns_port_taken()
        self.listeners = bind_port(self.presence.port, self.config.port_given)
        self.presence.port = self.listeners[0].getsockname()[1]
        mine = local_addresses(self.config.interfaces or None)
        azc = await open_link(self.config.interfaces or None)
        try:
            # Before anything is published: a SIGTERM that arrives after the records
            # are out (a script stopping us right after `announced`) must still run
            # the goodbyes, not kill the process with the records left behind.
            self._install_signals()
            self.view = PeerView(azc.zeroconf, on_event=self._on_peer,
                                 exclude={self.config.name})
            await self.view.start()
            self.inbox = Inbox(self.state)
            self.incoming = IncomingServer(name=lambda: self.name, inbox=self.inbox,
                                           lookup=self._lookup, owners=self._owners,
                                           owned_by=self._addresses_of,
                                           verify=self.config.verify,
                                           on_receipt=self.pool.acknowledge)
            await self.incoming.start(self.listeners)
            if self.config.publish:
                await self._publish(azc, mine, shared)
            else:
                await self.control.start(self.config.name)
                self.emit({"event": "listening", "name": self.config.name,
                           "port": self.presence.port, "addresses": [a.address for a in mine]})
                sd_notify(f"READY=1\nSTATUS=listening on port {self.presence.port}")
            refresher = asyncio.ensure_future(self._refresh_loop())
            keeper = asyncio.ensure_future(retention.keep(self.inbox, self.config.retention_policy))
            self.ready.set()
            await self.stop_event.wait()
            refresher.cancel()
            keeper.cancel()
        finally:
            await self._shutdown(azc)

    async def _publish(self, azc: Any, mine: list, shared: bool) -> None:
        label = identity.host_label()
        host = asyncio.ensure_future(choose_host(azc.zeroconf, label, mine, shared=shared))
        self.publisher = Publisher(azc, rename=self.config.rename, on_event=self._on_publish)
        record = await self.publisher.publish(
            Record(self.config.name, f"{label}.local.", self.presence.port, self.txt(), []),
            host,
        )
        assert self.view is not None
        self.view.exclude_name(record.name)
        await self.control.start(record.name)
        self._save_record(record)
        self.emit({"event": "announced", "name": record.name,
                   "host": record.server.rstrip("."), "addresses": record.addresses,
                   "port": record.port, **self._presence_json()})
        sd_notify(f"READY=1\nSTATUS=announced {record.name} on port {record.port}")

    async def _lookup(self, name: str, wait: bool) -> list[str] | None:
        """The addresses `name` advertises, asking the link when it is not cached yet
        (a sender that published itself a moment ago)."""
        assert self.view is not None
        peer = await wait_for_peer(self.view, name, LOOKUP_WAIT if wait else 0)
        return peer["addresses"] if peer else None

    def _addresses_of(self, name: str) -> list[str]:
        assert self.view is not None
        peer = self.view.find(name)
        return peer["addresses"] if peer else []

    def _owners(self, address: str, scope: str | None) -> list[str]:
        assert self.view is not None
        return [
            peer["name"] for peer in self.view.peers.values()
            if any(same_address(normalize(a), (address, scope)) for a in peer["addresses"])
        ]

    def _take_lock(self) -> None:
        """One agent per name: a second one refuses with a clear error; the lock dies
        with its process, so a kill -9 never leaves the name locked."""
        self.state.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UnavailableError(
                f"an agent for {self.config.name} is already running "
                f"(stop it with: xmppll withdraw {self.config.name})"
            ) from None
        self._lock_fd = fd

    def _save_record(self, record: Record) -> None:
        """Kept so that `withdraw --stale` can say goodbye for us after a crash."""
        path = self.state / "published.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**record.to_json(), "pid": os.getpid()}))
        tmp.replace(path)

    def _presence_json(self) -> dict[str, Any]:
        data = self.presence.to_json()
        data.pop("port")
        return data

    def _on_publish(self, event: dict[str, Any]) -> None:
        self.emit(event)
        if event["event"] == "renamed" and self.publisher and self.publisher.record:
            self._save_record(self.publisher.record)
            if self.view:
                self.view.exclude_name(event["name"])
            asyncio.ensure_future(self.control.start(event["name"]))
        if event["event"] == "withdrawn":
            self.stop_event.set()

    def _on_peer(self, event: dict[str, Any]) -> None:
        for queue, writer in list(self.subscribers.items()):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                # A follower this far behind has stopped reading: drop it here, since
                # raising into the peer view would lose this batch for everyone.
                del self.subscribers[queue]
                writer.transport.abort()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL)
            if self.view:
                self.view.refresh()

    def _install_signals(self) -> None:
        """Signals reach only the main thread; `listen` runs its agent in another one
        and stops it through `stop()`."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self._reload()))

    async def _reload(self) -> None:
        """SIGHUP: re-read the config file and re-announce the presence it sets; a bad
        file is logged and changes nothing (the agent keeps running)."""
        if self.config.reload is None:
            return
        try:
            changes = self.config.reload()
            await self._set_presence(changes)
        except XmpplError as exc:
            log.error("config not reloaded: %s", exc)
            return
        self.emit({"event": "reloaded", "name": self.name, **self._presence_json()})

    def stop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Thread-safe: ask the agent to withdraw and exit."""
        loop.call_soon_threadsafe(self.stop_event.set)

    async def _shutdown(self, azc: Any) -> None:
        sd_notify("STOPPING=1")
        await self.pool.close()
        if self.incoming:
            await self.incoming.close()
        if self.view:
            await self.view.stop()
        if self.publisher and self.publisher.record:
            name = self.publisher.record.name
            await self.publisher.withdraw()
            (self.state / "published.json").unlink(missing_ok=True)
            self.emit({"event": "withdrawn", "name": name})
        await self.control.stop()
        for sock in self.listeners:
            sock.close()
        if self.inbox:
            self.inbox.close()
        await azc.async_close()

    async def op_info(self, req: dict, writer: asyncio.StreamWriter) -> None:
        rec = self.publisher.record if self.publisher else None
        await reply(writer, {"ok": True, "name": self.name, "pid": os.getpid(),
                              "port": self.presence.port,
                              "host": rec.server.rstrip(".") if rec else None,
                              "addresses": rec.addresses if rec else [],
                              **self._presence_json()})

    async def op_status(self, req: dict, writer: asyncio.StreamWriter) -> None:
        changes = {k: req[k] for k in ("status", "msg") if req.get(k) is not None}
        if changes:
            await self._set_presence(changes)
            self.emit({"event": "status", "name": self.name, **self._presence_json()})
        await self.op_info(req, writer)

    async def _set_presence(self, changes: dict[str, Any]) -> None:
        """Apply presence changes and re-announce the TXT in place; an unpublishable
        result is refused and the old presence kept."""
        old = replace(self.presence)
        for key, value in changes.items():
            value = check_status(value) if key == "status" and value else value
            setattr(self.presence, key, value or (None if key != "status" else "avail"))
        try:
            txt = self.txt()
        except XmpplError:
            self.presence = old
            raise
        if self.publisher is not None and self.publisher.record is not None:
            await self.publisher.update_txt(txt)

    async def op_peers(self, req: dict, writer: asyncio.StreamWriter) -> None:
        peers = sorted(self.view.peers.values(), key=lambda p: p["name"].lower()) \
            if self.view else []
        await reply(writer, {"ok": True, "peers": peers})

    async def op_follow(self, req: dict, writer: asyncio.StreamWriter) -> None:
        """Streams `added` for every cached peer, then every change, until the client
        goes away; a client that stops reading is dropped, never blocks the agent."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=FOLLOW_BACKLOG)
        self.subscribers[queue] = writer
        try:
            await reply(writer, {"ok": True})
            for peer in list(self.view.peers.values()) if self.view else []:
                queue.put_nowait({"event": "added", **peer})
            while True:
                event = await queue.get()
                writer.write((json.dumps(event) + "\n").encode())
                await asyncio.wait_for(writer.drain(), 30)
        finally:
            self.subscribers.pop(queue, None)

    async def op_inbox(self, req: dict, writer: asyncio.StreamWriter) -> None:
        """Streams stored stanzas with seq > `after` (default: from now on), then each
        new one as soon as it is on disk."""
        assert self.inbox is not None
        queue: asyncio.Queue = asyncio.Queue()
        self.inbox.subscribers.add(queue)
        try:
            after = req.get("after")
            last = self.inbox.seq if after is None else int(after)
            await reply(writer, {"ok": True, "seq": self.inbox.seq})
            async for record in catch_up(self.state, last):  # off the loop: no stall
                writer.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
                last = record["seq"]
                await writer.drain()
            while True:
                record = await queue.get()
                if record["seq"] <= last:
                    continue
                writer.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
                last = record["seq"]
                await writer.drain()
        finally:
            self.inbox.subscribers.discard(queue)

    async def op_send(self, req: dict, writer: asyncio.StreamWriter) -> None:
        """Deliver one message as our published name, from an address we advertise.
        A failed connect re-resolves the peer and tries once more (RFC 6762 §10.4:
        the cached address may be stale)."""
        message = req.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("to"), str):
            raise DataError("send: \"message\" must be an object with \"to\"")
        timeout = float(req.get("send_timeout") or 10.0)
        peer = await self._resolve(message["to"], float(req.get("wait") or 0))
        reuse = bool(req.get("receipt")) or _speaks_receipts(peer)
        element = st.message_from_json(message, from_=self.name, receipt=reuse)
        try:
            await self._deliver(peer, element, timeout, reuse)
        except ConnectFailed:
            assert self.view is not None
            self.view.ask(peer["name"])
            peer = await self._resolve(message["to"], 1.0)
            await self._deliver(peer, element, timeout, reuse)
        await reply(writer, {"ok": True, "id": element.get("id"), "to": peer["name"],
                              "streams_opened": self.pool.opened})

    async def _resolve(self, name: str, wait: float) -> dict[str, Any]:
        assert self.view is not None
        peer = await wait_for_peer(self.view, name, max(wait, 1.5))
        if peer is None:
            raise NoPeerError(f"no peer named {name} on the link")
        return peer

    async def _deliver(self, peer: dict[str, Any], element: Any, timeout: float,
                       reuse: bool) -> None:
        rec = self.publisher.record if self.publisher else None
        target = Target(peer["name"], peer["addresses"], peer["port"])
        await self.pool.send(target, element, me=self.name, timeout=timeout,
                             sources=rec.addresses if rec else None, receipts=reuse)

    async def op_withdraw(self, req: dict, writer: asyncio.StreamWriter) -> None:
        await reply(writer, {"ok": True, "name": self.name})
        self.stop_event.set()


def _speaks_receipts(peer: dict[str, Any]) -> bool:
    """Whether the peer acknowledges with XEP-0184 receipts, which is what lets a
    reused stream confirm each message: known for xmppll's own caps node."""
    peer_caps = peer.get("caps") or {}
    return peer_caps.get("node") == caps.CAPS_NODE


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) how the agent is doing, when it runs us under
    NOTIFY_SOCKET: a path, or '@name' for an abstract socket. Best effort: a
    missing or broken socket must never stop the agent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return
    target = "\0" + address[1:] if address[0] == "@" else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), target)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", address, exc.strerror or exc)


def run_agent(config: AgentConfig, emit: Emit) -> None:
    """Entry point for `announce`: runs the agent to completion in this process."""
    asyncio.run(Agent(config, emit).run())


class BackgroundAgent:
    """An agent on a thread of this process, for `listen` when none runs: it is then
    used through its control socket like any other, so one code path prints."""

    def __init__(self, config: AgentConfig, emit: Emit) -> None:
        self.agent: Agent | None = None
        self.error: BaseException | None = None
        self._config, self._emit = config, emit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="xmppll-agent", daemon=True)

    def start(self) -> str:
        """Returns the published name once the agent serves its control socket."""
        self._thread.start()
        self._started.wait()
        if self.error is not None:
            raise self.error
        assert self.agent is not None
        return self.agent.name

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self.agent = Agent(self._config, self._emit)
            waiter = asyncio.ensure_future(self.agent.ready.wait())
            waiter.add_done_callback(lambda _: self._started.set())
            await self.agent.run()

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the main thread by start()
            self.error = exc
        finally:
            self._started.set()

    def stop(self, timeout: float = 5.0) -> None:
        if self.agent is not None and self._loop is not None and self._thread.is_alive():
            self.agent.stop(self._loop)
        self._thread.join(timeout)
