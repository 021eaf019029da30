"""The agent: one long-running process per published name.

Being on the link is two things at once (records over mDNS and a listener on the
advertised port), so they live together here, with the live peer cache and the control
socket that lets one-shot commands use all of it for the cost of a round trip.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
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
from xmppll.agent import keymaker, locks, retention
from xmppll.agent.control_server import ControlServer, reply
from xmppll.agent.downloads import DownloadConfig, Downloads
from xmppll.agent.inbox import Inbox, catch_up
from xmppll.agent.policy import Policy
from xmppll.agent.sentlog import SentLog
from xmppll.agent.store import InboxStore, message_key
from xmppll.defaults import MESSAGE_TIMEOUT
from xmppll.discovery.directory import Directories, Peer
from xmppll.discovery.mdns.directory import MdnsDirectory
from xmppll.discovery.presence import Presence, check_status, encode_txt
from xmppll.errors import (
    DataError,
    NoPeerError,
    TimeoutFailure,
    XmpplError,
)
from xmppll.xmpp import caps, tls
from xmppll.xmpp.chatstates import ChatStates
from xmppll.xmpp.delivery import Delivery, Hooks, PeerInfo
from xmppll.xmpp.disco import Disco
from xmppll.xmpp.dispatch import Dispatcher
from xmppll.xmpp.hub import Hub, bind_port
from xmppll.xmpp.receipts import Receipts

log = logging.getLogger("xmppll")
FOLLOW_BACKLOG = 10000  # events queued for a follower that is not reading, then dropped
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
    wide: Any = None  # WideAreaSettings: also publish and browse these DNS-SD domains
    retention_policy: Policy = field(default_factory=Policy)
    downloads: DownloadConfig = field(default_factory=DownloadConfig)  # files offered to us
    tls: str = "prefer"  # prefer | require | off (xmppll.xmpp.tls)
    avatar: bytes | None = None  # our picture (checked PNG/JPEG); its SHA-1 goes in phsh
    key_maker: Any = None  # keymaker.start()'s child, making the name's first TLS key


def caps_tuple() -> tuple[str, str, str]:
    return (caps.CAPS_NODE, "sha-1", caps.caps_ver())


def peer_info(peer: Peer | None) -> PeerInfo | None:
    return None if peer is None else PeerInfo(peer.name, peer.addresses, peer.port, peer.caps,
                                              domain=peer.domain, pin=peer.fields.get("tls"))


class Agent:
    """Runs until withdrawn or signalled; `emit` gets the agent's own events.

    The composition root: discovery (the Directories) and messaging (the Hub of
    connections, the dispatch and its handlers, delivery) meet only here."""

    def __init__(self, config: AgentConfig, emit: Emit) -> None:
        self.config = config
        self.emit = emit
        self.presence = config.presence
        self.state = identity.state_dir(config.name)
        self.stop_event = asyncio.Event()
        self.subscribers: dict[asyncio.Queue, asyncio.StreamWriter] = {}
        self.live: set[asyncio.Queue] = set()  # chat states and sent messages: not stored
        self.mdns = MdnsDirectory(interfaces=config.interfaces, state=self.state,
                                  on_peer=self._on_peer, on_event=self._on_publish,
                                  exclude={config.name})
        self.directory = Directories([self.mdns, *self._wide_area(config)])
        self.listeners: list[socket.socket] = []
        self.inbox: Inbox | None = None
        self.store: InboxStore | None = None
        self.hub: Hub | None = None
        self.tls: tls.Tls | None = None
        self.delivery: Delivery | None = None
        self.downloads: Downloads | None = None
        self.ready = asyncio.Event()
        self.told = asyncio.Event()  # our first goodbyes are out
        self._lock_fd: int | None = None
        self.control = ControlServer(self)

    def _wide_area(self, config: AgentConfig) -> list[Any]:
        """Wide-area DNS-SD beside the link, when domains are configured (dnspython is
        imported only then)."""
        if config.wide is None:
            return []
        from xmppll.discovery.widearea.directory import WideAreaDirectory

        return [WideAreaDirectory(config.wide, state=self.state, on_peer=self._on_peer,
                                  on_event=self.emit, exclude={config.name})]

    @property
    def name(self) -> str:
        record = self.mdns.record
        return record.name if record else self.config.name

    def txt(self) -> bytes:
        return encode_txt(self.presence, caps_tuple())

    async def run(self) -> None:
        self._lock_fd = await locks.take_name(self.state, self.config.name)
        self.tls = tls.Tls(self.config.tls, None, tls.KnownPeers(identity.known_peers_path()))
        if self.tls.on and self.config.key_maker is None:
            self._add_key()
        # Refuse an unpublishable record before touching the network (with a pin of the
        # right size in it while the key is still being made).
        pending = [(tls.TXT_KEY, tls.PIN_SHAPE)] if self._key_pending() else []
        encode_txt(replace(self.presence, extra=[*self.presence.extra, *pending]),
                   caps_tuple())
        self.listeners = bind_port(self.presence.port, self.config.port_given)
        self.presence.port = self.listeners[0].getsockname()[1]
        await self.directory.start()
        if self.config.avatar is not None:
            self._picture(self.config.avatar)
        try:
            # Before anything is published: a SIGTERM that arrives after the records
            # are out (a script stopping us right after `announced`) must still run
            # the goodbyes, not kill the process with the records left behind.
            self._install_signals()
            self.inbox = Inbox(self.state)
            self.store = InboxStore(self.inbox)
            self._messaging(self.store)
            assert self.hub is not None
            await self.hub.serve(self.listeners)
            if self.config.publish:
                await self._publish()
            else:
                if self._key_pending():
                    await self._key_made()
                await self.control.start(self.config.name)
                self.emit({"event": "listening", "name": self.config.name,
                           "port": self.presence.port, "addresses": self._local_addresses()})
                sd_notify(f"READY=1\nSTATUS=listening on port {self.presence.port}")
            keeper = asyncio.ensure_future(retention.keep(self.inbox,
                                                          self.config.retention_policy))
            self.ready.set()
            await self.stop_event.wait()
            keeper.cancel()
        finally:
            await self._shutdown()

    def _messaging(self, store: InboxStore) -> None:
        me = lambda: self.name  # noqa: E731 (the name changes when we are renamed)
        dispatcher = Dispatcher(store, me)
        receipts = Receipts(dispatcher)
        disco = Disco(dispatcher)
        self.hub = Hub(me=me, peers=self.directory, dispatcher=dispatcher,
                       verify=self.config.verify, tls=self.tls)
        self.delivery = Delivery(self.hub, receipts, disco, Hooks(
            resolve=self._resolve, stale=self.directory.stale, sources=self._sources))
        self.downloads = Downloads(self.config.downloads, dispatcher, self.hub, store)
        self.delivery.chatstates = ChatStates(dispatcher, self._to_live)
        self.sent = SentLog(self.state)

    def _to_live(self, record: dict[str, Any]) -> None:
        for queue in list(self.live):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(record)

    def _picture(self, data: bytes | None) -> None:
        """Our picture: its NULL record out first, then `phsh` (the caller's TXT
        update, or the first announcement)."""
        from xmppll.discovery.mdns.avatar import sha1_hex

        self.mdns.set_picture(data)
        self.presence.avatar = sha1_hex(data) if data is not None else None

    async def _resolve(self, name: str, wait: float) -> PeerInfo | None:
        return peer_info(await self.directory.resolve(name, wait))

    def _advertised(self) -> list[str] | None:
        """The addresses our link-local record lists (None: the host's own responder
        publishes them, or we are not published)."""
        record = self.mdns.record
        return record.addresses if record and record.addresses else None

    def _sources(self, peer: PeerInfo) -> list[str] | None:
        """Our advertised addresses, to connect from (strict peers match them); none
        for a wide-area peer, which may be behind routers: the route picks the source,
        the one our DNS records list."""
        return None if peer.domain else self._advertised()

    def _local_addresses(self) -> list[str]:
        from xmppll.discovery.mdns.link import local_addresses

        return [a.address for a in local_addresses(self.config.interfaces or None)]

    def _key_pending(self) -> bool:
        """TLS is on and announce's child is still making our first key."""
        assert self.tls is not None
        return self.tls.on and self.tls.creds is None

    def _add_key(self) -> None:
        """Our credentials, and their fingerprint in our presence."""
        assert self.tls is not None
        creds = tls.Credentials.load_or_create(keymaker.key_dir(self.state), self.config.name)
        self.presence.extra = [(k, v) for k, v in self.presence.extra
                               if k.lower() != tls.TXT_KEY]
        self.presence.extra.append((tls.TXT_KEY, creds.pin))
        self.tls.creds = creds

    async def _key_made(self) -> bytes:
        """The TXT with the pin of the key announce's child made (agent/keymaker.py):
        awaited once the name is probed, so making it never delays the first probe."""
        await asyncio.get_running_loop().run_in_executor(None, keymaker.finish,
                                                          self.config.key_maker)
        self._add_key()
        return self.txt()

    async def _publish(self) -> None:
        final = asyncio.ensure_future(self._key_made()) if self._key_pending() else None
        published = await self.directory.publish(self.config.name, self.presence.port,
                                                  self.txt(), rename=self.config.rename,
                                                  final_txt=final)
        await self.control.start(published.name)
        self.emit({"event": "announced", "name": published.name, "host": published.host,
                   "addresses": published.addresses, "port": published.port,
                   **self._presence_json(), **self._wide_published()})
        sd_notify(f"READY=1\nSTATUS=announced {published.name} on port {published.port}")

    def _wide_published(self) -> dict[str, Any]:
        """What the announced event says of the DNS publication, when there is one."""
        wide = self.directory.members[1:]
        if not wide or not wide[0].published:
            return {}
        domains = wide[0].published["domains"]
        return {"domains": list(domains),
                "dns_host": next(iter(domains.values()))["host"].rstrip("."),
                "dns_addresses": wide[0].published["addresses"]}

    def _presence_json(self) -> dict[str, Any]:
        data = self.presence.to_json()
        data.pop("port")
        return data

    def _on_publish(self, event: dict[str, Any]) -> None:
        self.emit(event)
        if event["event"] == "renamed":
            asyncio.ensure_future(self.control.start(event["name"]))
        if event["event"] == "withdrawn":
            self.stop_event.set()

    def _on_peer(self, event: dict[str, Any]) -> None:
        if self.hub is not None and event["event"] in ("updated", "removed"):
            self.hub.peer_moved(event["name"], [] if event["event"] == "removed"
                                else event["addresses"])
        for queue, writer in list(self.subscribers.items()):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                # A follower this far behind has stopped reading: drop it here, since
                # raising into the peer view would lose this batch for everyone.
                del self.subscribers[queue]
                writer.transport.abort()

    def _install_signals(self) -> None:
        """Signals reach only the main thread; `listen` runs its agent in another one
        and stops it through `stop()`."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self._reload()))
        if os.environ.get("XMPPLL_TRACEMALLOC"):
            from xmppll.agent import memtrace  # a debugging aid: only when asked for

            loop.add_signal_handler(signal.SIGUSR2,
                                    memtrace.start(os.environ["XMPPLL_TRACEMALLOC"]))

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

    async def _shutdown(self) -> None:
        """Goodbyes first, so that `withdraw` can answer once peers have been told;
        the streams are closed and the goodbyes repeated after it (locks.py)."""
        sd_notify("STOPPING=1")
        if self._lock_fd is not None:
            locks.mark_withdrawing(self._lock_fd)
        await self.control.stop()  # commands started from now on find no agent
        name = self.mdns.record.name if self.mdns.record else None
        try:
            repeats = await self.directory.withdraw()
        finally:
            self.told.set()
        if name:
            self.emit({"event": "withdrawn", "name": name})
        if self.hub:
            await self.hub.close()
        await repeats
        await self.directory.close()
        for sock in self.listeners:
            sock.close()
        if self.inbox:
            self.inbox.close()

    async def op_info(self, req: dict, writer: asyncio.StreamWriter) -> None:
        rec = self.mdns.record
        await reply(writer, {"ok": True, "name": self.name, "pid": os.getpid(),
                              "port": self.presence.port,
                              "host": rec.server.rstrip(".") if rec else None,
                              "addresses": rec.addresses if rec else [],
                              **self._presence_json()})

    async def op_status(self, req: dict, writer: asyncio.StreamWriter) -> None:
        changes = {k: req[k] for k in ("status", "msg") if req.get(k) is not None}
        if req.get("avatar") is not None or req.get("no_avatar"):
            await self._set_picture(req)
        elif changes:
            await self._set_presence(changes)
        if changes or req.get("avatar") is not None or req.get("no_avatar"):
            self.emit({"event": "status", "name": self.name, **self._presence_json()})
        await self.op_info(req, writer)

    async def _set_picture(self, req: dict) -> None:
        """`status --avatar FILE` / `--no-avatar` (with any status change): the NULL
        record first, then one TXT update with the new `phsh`."""
        from xmppll.discovery.mdns import avatar

        new = None if req.get("no_avatar") else avatar.check_image(avatar.decode(req["avatar"]))
        old = self.mdns.picture
        self._picture(new)
        try:
            await self._set_presence({k: req[k] for k in ("status", "msg")
                                      if req.get(k) is not None})
        except XmpplError:
            self._picture(old)
            raise

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
        await self.directory.update(txt)

    def _peers_json(self) -> list[dict[str, Any]]:
        return [p.to_json() for p in sorted(self.directory.peers(),
                                            key=lambda p: p.name.lower())]

    async def op_peers(self, req: dict, writer: asyncio.StreamWriter) -> None:
        await reply(writer, {"ok": True, "peers": self._peers_json()})

    async def op_follow(self, req: dict, writer: asyncio.StreamWriter) -> None:
        """Streams `added` for every cached peer, then every change, until the client
        goes away; a client that stops reading is dropped, never blocks the agent."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=FOLLOW_BACKLOG)
        self.subscribers[queue] = writer
        try:
            await reply(writer, {"ok": True})
            for peer in self._peers_json():
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
            if req.get("chatstates"):
                self.live.add(queue)
            await reply(writer, {"ok": True, "seq": self.inbox.seq})
            async for record in catch_up(self.state, last):  # off the loop: no stall
                writer.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
                last = record["seq"]
                await writer.drain()
            while True:
                record = await queue.get()
                if record.get("direction") == "out" or record.get("seq", last + 1) <= last:
                    continue
                writer.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
                last = record.get("seq", last)
                await writer.drain()
        finally:
            self.inbox.subscribers.discard(queue)
            self.live.discard(queue)

    async def op_store(self, req: dict, writer: asyncio.StreamWriter) -> None:
        """A stanza that a one-shot `send` of ours received on its own connection (a
        peer answering on the stream we opened): stored here, once, like any other."""
        record = req.get("record")
        if not isinstance(record, dict):
            raise DataError("store: \"record\" must be an object")
        assert self.store is not None
        stored = await self.store.submit(record, message_key(record))
        await reply(writer, {"ok": True, "seq": (stored or {}).get("seq")})

    async def op_send(self, req: dict, writer: asyncio.StreamWriter) -> None:
        """Deliver one message as our published name (to every peer with
        "everyone"); the reply comes when the peer has it."""
        message = req.get("message")
        if not isinstance(message, dict):
            raise DataError("send: \"message\" must be an object")
        timeout = float(req.get("send_timeout") or MESSAGE_TIMEOUT)
        assert self.delivery is not None and self.hub is not None
        if req.get("everyone"):
            names = [p.name for p in self.directory.peers()]
            results = await self.delivery.send_to_all(message, names, timeout=timeout)
            await reply(writer, {"ok": True, "sent": [
                {"to": n, "id": r.id} if not isinstance(r, XmpplError) else
                {"to": n, "error": str(r), "code": r.exit_code}
                for n, r in zip(names, results, strict=True)]})
            return
        if not isinstance(message.get("to"), str):
            raise DataError("send: \"message\" must be an object with \"to\"")
        sent = await self.delivery.send(message, timeout=timeout,
                                        wait=float(req.get("wait") or 0),
                                        receipt=bool(req.get("receipt")))
        if message.get("body") is not None:
            self._to_live(self.sent.append(message, id_=sent.id, to=sent.to))
        await reply(writer, {"ok": True, "id": sent.id, "to": sent.to,
                              "streams_opened": self.hub.dialled})

    async def op_send_file(self, req: dict, writer: asyncio.StreamWriter) -> None:
        """Offer files (by path) to a peer or to everyone; streams progress lines,
        then the results (agent/file_ops.py)."""
        from xmppll.agent.file_ops import send_file

        assert self.delivery is not None
        names = [p.name for p in self.directory.peers()] if req.get("everyone") else None
        await send_file(self.delivery, self._advertised, req, writer, names)

    async def op_accept(self, req: dict, writer: asyncio.StreamWriter) -> None:
        """Accept a pending file offer; the reply is its `received` record."""
        assert self.downloads is not None
        record = await self.downloads.accept(str(req.get("id")), req.get("to"))
        await reply(writer, {"ok": True, "record": record})

    async def op_decline(self, req: dict, writer: asyncio.StreamWriter) -> None:
        assert self.downloads is not None
        record = await self.downloads.decline(str(req.get("id")), req.get("reason"))
        await reply(writer, {"ok": True, "record": record})

    async def op_avatar(self, req: dict, writer: asyncio.StreamWriter) -> None:
        """A peer's picture (the one its current `phsh` names), asked for if needed."""
        peer = await self.directory.resolve(str(req.get("peer")), 1.5)
        if peer is None:
            raise NoPeerError(f"no peer named {req.get('peer')} on the link")
        sha = peer.fields.get("avatar")
        data = await self.mdns.picture_of(peer.name, sha, float(req.get("wait") or 5)) \
            if sha else None
        if sha and data is None:
            raise TimeoutFailure(f"{peer.name} did not send its picture {sha}")
        await reply(writer, {"ok": True, "name": peer.name, "avatar": sha,
                              "data": base64.b64encode(data).decode() if data else None})

    async def op_conversation(self, req: dict, writer: asyncio.StreamWriter) -> None:
        """Streams what concerns one peer: its messages as stored, its chat states,
        what we sent it (from any client), and its presence changes."""
        from xmppll.agent.conversation import concerns

        assert self.inbox is not None
        name = str(req.get("peer"))
        queue: asyncio.Queue = asyncio.Queue(maxsize=FOLLOW_BACKLOG)
        self.inbox.subscribers.add(queue)
        self.live.add(queue)
        self.subscribers[queue] = writer
        try:
            peer = self.directory.find(name)
            await reply(writer, {"ok": True, "seq": self.inbox.seq,
                                  "peer": peer.to_json() if peer else None})
            while True:
                record = await queue.get()
                if concerns(record, name):
                    writer.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
                    await asyncio.wait_for(writer.drain(), 30)
        finally:
            self.inbox.subscribers.discard(queue)
            self.live.discard(queue)
            self.subscribers.pop(queue, None)

    async def op_withdraw(self, req: dict, writer: asyncio.StreamWriter) -> None:
        name = self.name
        self.stop_event.set()
        await self.told.wait()
        await reply(writer, {"ok": True, "name": name})


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
