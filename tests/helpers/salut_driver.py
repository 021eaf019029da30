"""Drive telepathy-salut over the Telepathy D-Bus API, for tests/peers/salut.py.

Runs with Debian's /usr/bin/python3 (python3-dbus, python3-gi: the test venv has
neither), inside a host of the virtual LAN, with DBUS_SESSION_BUS_ADDRESS naming the
host's private session bus where telepathy-salut runs:

    /usr/bin/python3 tests/helpers/salut_driver.py EVENTS.jsonl

A long-running process: one JSON command per line on stdin, one JSON reply per line
on stdout, in order:

    -> {"id": 1, "cmd": "connect", "first": "Alice", "last": "Liddell",
        "published_name": "alice"}
    <- {"id": 1, "ok": true, "result": {"self_id": "alice@h3", ...}}
    <- {"id": 2, "ok": false, "error": "org.freedesktop.Telepathy.Error...: ..."}

Everything that happens on its own (messages received, delivery reports, contacts'
presence, connection status, new channels) is appended to EVENTS.jsonl, one JSON object
per line with an "event" key and a wall-clock "t", flushed at once, so a test can wait
on it with a bounded timeout. Commands: see `Driver.cmd_*`; new features (files,
avatars) add a `cmd_<name>` method and, if needed, signal handlers in `_subscribe`.

Telepathy names used: ConnectionManager `salut`, protocol `local-xmpp`, Connection
(+ Requests, SimplePresence, ContactList, Contacts), Channel.Type.Text with
Channel.Interface.Messages, Channel.Type.FileTransfer (salut moves files by
jabber:iq:oob over HTTP; the bytes reach this driver through a unix socket salut
opens, read or written by a thread here). File-transfer channels are never closed
here: salut 0.8.1 aborts when its client closes one (file-transfer-facts.md).
"""

import base64
import contextlib
import json
import os
import socket
import sys
import threading
import time
import traceback

import dbus
import dbus.mainloop.glib
from gi.repository import GLib

TP = "org.freedesktop.Telepathy"
CM_BUS = TP + ".ConnectionManager.salut"
CM_PATH = "/org/freedesktop/Telepathy/ConnectionManager/salut"
CM_IFACE = TP + ".ConnectionManager"
CONN = TP + ".Connection"
REQUESTS = CONN + ".Interface.Requests"
PRESENCE = CONN + ".Interface.SimplePresence"
CONTACT_LIST = CONN + ".Interface.ContactList"
AVATARS = CONN + ".Interface.Avatars"
CHANNEL = TP + ".Channel"
TEXT = CHANNEL + ".Type.Text"
MESSAGES = CHANNEL + ".Interface.Messages"
FT = CHANNEL + ".Type.FileTransfer"
FT_STATES = {0: "none", 1: "pending", 2: "accepted", 3: "open", 4: "completed",
             5: "cancelled"}
SOCKET_UNIX, ACCESS_LOCALHOST = 0, 0  # Socket_Address_Type, Socket_Access_Control
PROPS = "org.freedesktop.DBus.Properties"
HANDLE_CONTACT = 1
STATUS = {0: "connected", 1: "connecting", 2: "disconnected"}
MESSAGE_TYPES = {0: "normal", 1: "action", 2: "notice", 3: "auto-reply",
                 4: "delivery-report"}
CALL_TIMEOUT = 10.0  # seconds, for each D-Bus call
CONNECT_TIMEOUT = 20.0  # the CM appearing on the bus, then Connected


def plain(value):
    """dbus-python values as JSON-able Python values."""
    if isinstance(value, (dbus.ByteArray, bytes)):
        return {"base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dbus.Boolean):
        return bool(value)
    if isinstance(value, (dbus.String, dbus.ObjectPath, dbus.Signature, str)):
        return str(value)
    if isinstance(value, (dbus.Byte, dbus.Int16, dbus.Int32, dbus.Int64, dbus.UInt16,
                          dbus.UInt32, dbus.UInt64, int)):
        return int(value)
    if isinstance(value, (dbus.Double, float)):
        return float(value)
    if isinstance(value, dict):
        return {str(plain(k)): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, dbus.Array, dbus.Struct)):
        return [plain(v) for v in value]
    return repr(value)


class CommandError(Exception):
    pass


class Driver:
    def __init__(self, events_path):
        dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
        self.bus = dbus.SessionBus()
        self.loop = GLib.MainLoop()
        # Open for the process's lifetime; line-buffered, so each event is on disk at once.
        self.events = open(events_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self.conn = None  # dbus proxy of the Connection
        self.conn_path = None
        self.status = None
        self.self_id = None
        self.channels = {}  # contact id -> channel path
        self.seen = set()  # (channel path, pending-message-id): PendingMessages vs signal
        self.known = {}  # contact id -> presence, from PresencesChanged
        self.buffer = b""
        self.emit_lock = threading.Lock()  # file threads emit too
        self.accept_folder = None  # incoming files are accepted into it when set
        self.offers = {}  # incoming file-transfer channel path -> its properties

    # -- plumbing
    def emit(self, event, **fields):
        fields = {"event": event, "t": time.time(), **fields}
        with self.emit_lock:
            self.events.write(json.dumps(fields, ensure_ascii=False) + "\n")

    def reply(self, obj):
        sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def iterate_until(self, check, timeout, what):
        """Run the main loop (signals keep arriving) until check() is truthy."""
        deadline = time.monotonic() + timeout
        ctx = GLib.MainContext.default()
        tick = GLib.timeout_add(50, lambda: True)  # wakes the loop to look again
        try:
            while True:
                found = check()
                if found:
                    return found
                if time.monotonic() >= deadline:
                    raise CommandError(f"timed out after {timeout} s waiting for {what}")
                ctx.iteration(True)
        finally:
            GLib.source_remove(tick)

    def proxy(self, path, bus_name=None):
        return self.bus.get_object(bus_name or self.conn_bus, path)

    def on_stdin(self, fd, condition):
        data = os.read(fd, 65536)
        if not data:
            self.shutdown()
            return False
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.strip():
                self.handle(line)
        return True

    def handle(self, line):
        req = {}
        try:
            req = json.loads(line)
            method = getattr(self, "cmd_" + req["cmd"].replace("-", "_"), None)
            if method is None:
                raise CommandError(f"unknown command {req['cmd']!r}")
            args = {k: v for k, v in req.items() if k not in ("id", "cmd")}
            result = method(**args)
            self.reply({"id": req.get("id"), "ok": True, "result": result})
        except Exception as exc:  # every failure is an answer, never a dead driver
            self.reply({"id": req.get("id"), "ok": False,
                        "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc()})

    def shutdown(self):
        if self.conn is not None and self.status == 0:
            with contextlib.suppress(dbus.DBusException):
                self.conn.Disconnect(dbus_interface=CONN, timeout=CALL_TIMEOUT)
        self.loop.quit()

    def run(self):
        GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_IN | GLib.IO_HUP, self.on_stdin)
        self.reply({"id": None, "ok": True, "result": "ready"})
        self.loop.run()

    # -- signals
    def _subscribe(self):
        b = self.bus
        b.add_signal_receiver(self.on_status, "StatusChanged", CONN, path=self.conn_path)
        b.add_signal_receiver(self.on_presences, "PresencesChanged", PRESENCE,
                              path=self.conn_path)
        b.add_signal_receiver(self.on_new_channels, "NewChannels", REQUESTS,
                              path=self.conn_path)
        # Every channel of this connection: its paths start with the connection's.
        b.add_signal_receiver(self.on_message, "MessageReceived", MESSAGES,
                              path_keyword="path")
        b.add_signal_receiver(self.on_sent, "MessageSent", MESSAGES, path_keyword="path")
        b.add_signal_receiver(self.on_closed, "Closed", CHANNEL, path_keyword="path")
        b.add_signal_receiver(self.on_avatar_updated, "AvatarUpdated", AVATARS,
                              path=self.conn_path)
        b.add_signal_receiver(self.on_avatar_retrieved, "AvatarRetrieved", AVATARS,
                              path=self.conn_path)

        b.add_signal_receiver(self.on_ft_state, "FileTransferStateChanged", FT,
                              path_keyword="path")

    def on_status(self, status, reason):
        self.status = int(status)
        self.emit("status", status=STATUS.get(int(status), int(status)), reason=int(reason))

    def contact_ids(self, handles):
        if not handles:
            return {}
        attrs = self.conn.GetContactAttributes(
            dbus.Array(handles, signature="u"), dbus.Array([], signature="s"), False,
            dbus_interface=CONN + ".Interface.Contacts", timeout=CALL_TIMEOUT)
        return {int(h): str(a.get(CONN + "/contact-id", "")) for h, a in attrs.items()}

    def on_presences(self, presences):
        try:
            ids = self.contact_ids(list(presences.keys()))
        except dbus.DBusException:
            ids = {}
        for handle, (kind, status, message) in presences.items():
            cid = ids.get(int(handle), str(int(handle)))
            self.known[cid] = {"type": int(kind), "status": str(status),
                               "message": str(message)}
            self.emit("presence", id=cid, **self.known[cid])

    def on_new_channels(self, channels):
        for path, props in channels:
            props = plain(props)
            target = props.get(CHANNEL + ".TargetID")
            self.emit("channel", path=str(path), type=props.get(CHANNEL + ".ChannelType"),
                      target=target, requested=props.get(CHANNEL + ".Requested"))
            if props.get(CHANNEL + ".ChannelType") == FT and not props.get(
                    CHANNEL + ".Requested"):
                self.offers[str(path)] = props
                self.emit("file-offer", path=str(path), target=target,
                          name=props.get(FT + ".Filename"), size=props.get(FT + ".Size"),
                          mime=props.get(FT + ".ContentType"))
                if self.accept_folder is not None:
                    self.accept_file(str(path))
            if props.get(CHANNEL + ".ChannelType") == TEXT:
                self.channels.setdefault(target, str(path))
                # Messages that arrived before our MessageReceived match was in place.
                try:
                    pending = self.proxy(path).Get(MESSAGES, "PendingMessages",
                                                   dbus_interface=PROPS, timeout=CALL_TIMEOUT)
                except dbus.DBusException:
                    pending = []
                for parts in pending:
                    self.on_message(parts, path=str(path))

    def on_message(self, parts, path=None):
        if self.conn_path is None or not str(path).startswith(self.conn_path):
            return
        parts = plain(parts)
        header = parts[0] if parts else {}
        key = (str(path), header.get("pending-message-id"))
        if key in self.seen:
            return
        self.seen.add(key)
        kind = MESSAGE_TYPES.get(header.get("message-type", 0), header.get("message-type"))
        text = "".join(p.get("content", "") for p in parts[1:]
                       if p.get("content-type") == "text/plain"
                       and isinstance(p.get("content"), str))
        html = [p.get("content") for p in parts[1:] if p.get("content-type") == "text/html"]
        event = "delivery-report" if kind == "delivery-report" else "message"
        sender = header.get("message-sender-id")
        if sender is None and header.get("message-sender"):
            try:
                sender = self.contact_ids([header["message-sender"]]).get(
                    header["message-sender"])
            except dbus.DBusException:
                sender = None
        self.emit(event, channel=str(path), **{"from": sender},
                  type=kind, text=text, html=html, parts=parts)
        # Acknowledge, so the queue stays empty (salut would keep them pending forever).
        pmid = header.get("pending-message-id")
        if pmid is not None:
            try:
                self.proxy(path).AcknowledgePendingMessages(
                    dbus.Array([pmid], signature="u"), dbus_interface=TEXT,
                    timeout=CALL_TIMEOUT)
            except dbus.DBusException as exc:
                self.emit("warning", what="acknowledge", error=str(exc))

    def on_sent(self, parts, flags, token, path=None):
        if self.conn_path is None or not str(path).startswith(self.conn_path):
            return
        parts = plain(parts)
        text = "".join(p.get("content", "") for p in parts[1:]
                       if p.get("content-type") == "text/plain")
        self.emit("sent", channel=str(path), token=str(token), text=text)

    def on_closed(self, path=None):
        if self.conn_path is None or not str(path).startswith(self.conn_path):
            return
        for target, chan in list(self.channels.items()):
            if chan == str(path):
                del self.channels[target]
        self.emit("channel-closed", path=str(path))

    def on_ft_state(self, state, reason, path=None):
        if self.conn_path is None or not str(path).startswith(self.conn_path):
            return
        self.emit("file-state", path=str(path), state=FT_STATES.get(int(state), int(state)),
                  reason=int(reason))

    # -- files: the bytes go through a unix socket salut opens, on a thread of ours
    def accept_file(self, path):
        """AcceptFile on an incoming channel; a thread reads the file from salut's
        socket (salut GETs the URL only once we connect) into accept_folder."""
        props = self.offers.pop(path, None)
        if props is None:
            return
        name = os.path.basename(props.get(FT + ".Filename") or "") or "unnamed"
        target = os.path.join(self.accept_folder, name)
        try:
            address = self.proxy(path).AcceptFile(
                dbus.UInt32(SOCKET_UNIX), dbus.UInt32(ACCESS_LOCALHOST), "", dbus.UInt64(0),
                dbus_interface=FT, timeout=CALL_TIMEOUT)
        except dbus.DBusException as exc:
            self.emit("file-error", path=path, error=str(exc))
            return
        threading.Thread(target=self._read_file, daemon=True,
                         args=(path, bytes(address), target)).start()

    def _read_file(self, path, address, target):
        got = 0
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock, \
                    open(target, "wb") as out:
                sock.connect(address)
                while True:
                    data = sock.recv(1 << 20)
                    if not data:
                        break
                    out.write(data)
                    got += len(data)
            self.emit("file-received", path=path, file=target, size=got)
        except OSError as exc:
            self.emit("file-error", path=path, error=str(exc), size=got)

    def _write_file(self, path, address, source):
        sent = 0
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock, \
                    open(source, "rb") as fh:
                sock.connect(address)
                sent = sock.sendfile(fh)
            self.emit("file-provided", path=path, size=sent)
        except OSError as exc:
            self.emit("file-error", path=path, error=str(exc), size=sent)

    # -- commands
    def cmd_ping(self):
        return "pong"

    def cmd_connect(self, first, last, published_name=None, nickname=None, email=None,
                    jid=None, timeout=CONNECT_TIMEOUT):
        """RequestConnection("local-xmpp") + Connect; returns once Connected."""
        dbus_iface = self.bus.get_object("org.freedesktop.DBus", "/org/freedesktop/DBus")
        self.iterate_until(lambda: dbus_iface.NameHasOwner(CM_BUS), timeout,
                           f"{CM_BUS} on the session bus")
        params = {"first-name": first, "last-name": last}
        for key, value in (("published-name", published_name), ("nickname", nickname),
                           ("email", email), ("jid", jid)):
            if value:
                params[key] = value
        cm = self.bus.get_object(CM_BUS, CM_PATH)
        bus_name, path = cm.RequestConnection(
            "local-xmpp", dbus.Dictionary(params, signature="sv"),
            dbus_interface=CM_IFACE, timeout=CALL_TIMEOUT)
        self.conn_bus, self.conn_path = str(bus_name), str(path)
        self.conn = self.proxy(self.conn_path)
        self._subscribe()
        self.conn.Connect(dbus_interface=CONN, timeout=CALL_TIMEOUT)
        self.iterate_until(lambda: self.status == 0 or self._poll_status() == 0, timeout,
                           "the connection to be Connected")
        handle = self.conn.Get(CONN, "SelfHandle", dbus_interface=PROPS, timeout=CALL_TIMEOUT)
        self.self_id = self.contact_ids([int(handle)]).get(int(handle))
        return {"self_id": self.self_id, "bus_name": self.conn_bus, "path": self.conn_path,
                "params": params}

    def _poll_status(self):
        with contextlib.suppress(dbus.DBusException):
            self.status = int(self.conn.GetStatus(dbus_interface=CONN, timeout=CALL_TIMEOUT))
        return self.status

    def _need_conn(self):
        if self.conn is None:
            raise CommandError("not connected (send connect first)")

    def cmd_disconnect(self):
        self._need_conn()
        self.conn.Disconnect(dbus_interface=CONN, timeout=CALL_TIMEOUT)
        self.iterate_until(lambda: self.status == 2, CALL_TIMEOUT, "Disconnected")
        return None

    def cmd_statuses(self):
        """The presence statuses salut offers (name -> [type, may set, has message])."""
        self._need_conn()
        return plain(self.conn.Get(PRESENCE, "Statuses", dbus_interface=PROPS,
                                   timeout=CALL_TIMEOUT))

    def cmd_set_presence(self, status, message=""):
        """status: available, away or dnd (salut's name for busy)."""
        self._need_conn()
        status = {"busy": "dnd"}.get(status, status)
        self.conn.SetPresence(status, message, dbus_interface=PRESENCE, timeout=CALL_TIMEOUT)
        return None

    def cmd_contacts(self):
        """Every contact salut knows: id -> {"type", "status", "message"}. From the
        ContactList interface, or, while salut says its list is "not downloaded yet",
        from the PresencesChanged signals seen so far."""
        self._need_conn()
        try:
            attrs = self.conn.GetContactListAttributes(
                dbus.Array([PRESENCE], signature="s"), False,
                dbus_interface=CONTACT_LIST, timeout=CALL_TIMEOUT)
        except dbus.DBusException as exc:
            if exc.get_dbus_name() != TP + ".Error.NotYet":
                raise
            return dict(self.known)
        out = {}
        for _handle, a in attrs.items():
            cid = str(a.get(CONN + "/contact-id", ""))
            kind, status, message = a.get(PRESENCE + "/presence", (0, "unknown", ""))
            out[cid] = {"type": int(kind), "status": str(status), "message": str(message)}
        return out

    def cmd_presence(self, contact):
        """One contact's presence as salut shows it now (SimplePresence.GetPresences);
        status "unknown" or "offline" when salut does not see it."""
        self._need_conn()
        (handle,) = self.conn.RequestHandles(dbus.UInt32(HANDLE_CONTACT), [contact],
                                             dbus_interface=CONN, timeout=CALL_TIMEOUT)
        found = self.conn.GetPresences(dbus.Array([handle], signature="u"),
                                       dbus_interface=PRESENCE, timeout=CALL_TIMEOUT)
        kind, status, message = found.get(handle, (0, "unknown", ""))
        return {"type": int(kind), "status": str(status), "message": str(message)}

    def text_channel(self, contact):
        """The Text channel to `contact` (EnsureChannel: one per contact)."""
        self._need_conn()
        request = dbus.Dictionary({
            CHANNEL + ".ChannelType": TEXT,
            CHANNEL + ".TargetHandleType": dbus.UInt32(HANDLE_CONTACT),
            CHANNEL + ".TargetID": contact,
        }, signature="sv")
        _yours, path, _props = self.conn.EnsureChannel(
            request, dbus_interface=REQUESTS, timeout=CALL_TIMEOUT)
        self.channels[contact] = str(path)
        return str(path)

    def cmd_send(self, to, text):
        """Messages.SendMessage of one text/plain part; returns the message token. A
        failure to deliver comes later, as a delivery-report event."""
        path = self.text_channel(to)
        parts = dbus.Array([
            dbus.Dictionary({"message-type": dbus.UInt32(0)}, signature="sv"),
            dbus.Dictionary({"content-type": "text/plain", "content": text},
                            signature="sv"),
        ], signature="a{sv}")
        token = self.proxy(path).SendMessage(parts, dbus.UInt32(0), dbus_interface=MESSAGES,
                                             timeout=CALL_TIMEOUT)
        return {"token": str(token), "channel": path}

    def cmd_close_channel(self, contact):
        """Close the Text channel to `contact`: salut no longer holds its connection."""
        path = self.channels.get(contact)
        if path is None:
            return False
        self.proxy(path).Close(dbus_interface=CHANNEL, timeout=CALL_TIMEOUT)
        return True

    # -- avatars (Connection.Interface.Avatars)
    def _contact_handle(self, contact):
        (handle,) = self.conn.RequestHandles(dbus.UInt32(HANDLE_CONTACT), [contact],
                                             dbus_interface=CONN, timeout=CALL_TIMEOUT)
        return int(handle)

    def on_avatar_updated(self, handle, token):
        try:
            cid = self.contact_ids([int(handle)]).get(int(handle), str(int(handle)))
        except dbus.DBusException:
            cid = str(int(handle))
        self.emit("avatar-updated", id=cid, token=str(token))

    def on_avatar_retrieved(self, handle, token, data, mime):
        try:
            cid = self.contact_ids([int(handle)]).get(int(handle), str(int(handle)))
        except dbus.DBusException:
            cid = str(int(handle))
        self.emit("avatar", id=cid, token=str(token), mime=str(mime),
                  data=base64.b64encode(bytes(data)).decode("ascii"))

    def cmd_set_avatar(self, data, mime="image/png"):
        """Publish our avatar (base64 `data`); returns salut's token for it."""
        self._need_conn()
        token = self.conn.SetAvatar(dbus.ByteArray(base64.b64decode(data)), mime,
                                    dbus_interface=AVATARS, timeout=CALL_TIMEOUT)
        return str(token)

    def cmd_clear_avatar(self):
        self._need_conn()
        self.conn.ClearAvatar(dbus_interface=AVATARS, timeout=CALL_TIMEOUT)

    def cmd_avatar_token(self, contact):
        """The token (salut: the SHA-1) of the avatar salut knows for `contact`."""
        self._need_conn()
        handle = self._contact_handle(contact)
        tokens = self.conn.GetKnownAvatarTokens(dbus.Array([handle], signature="u"),
                                                dbus_interface=AVATARS, timeout=CALL_TIMEOUT)
        return str(tokens.get(handle, ""))

    def cmd_request_avatar(self, contact):
        """Ask salut for the contact's avatar; it comes as an "avatar" event."""
        self._need_conn()
        self.conn.RequestAvatars(dbus.Array([self._contact_handle(contact)], signature="u"),
                                 dbus_interface=AVATARS, timeout=CALL_TIMEOUT)

    def cmd_accept_files(self, folder):
        """From now on accept every incoming file into `folder` (and the offers
        already waiting); each ends as a file-received (or file-error) event."""
        self._need_conn()
        self.accept_folder = folder
        for path in list(self.offers):
            self.accept_file(path)
        return None

    def cmd_send_file(self, to, file, name=None, mime="application/octet-stream"):
        """Offer the file at `file` to `to` (a FileTransfer channel, then
        ProvideFile); a thread writes it to salut's socket. Returns the channel path;
        progress comes as file-state events (completed once the receiver confirmed)."""
        self._need_conn()
        request = dbus.Dictionary({
            CHANNEL + ".ChannelType": FT,
            CHANNEL + ".TargetHandleType": dbus.UInt32(HANDLE_CONTACT),
            CHANNEL + ".TargetID": to,
            FT + ".Filename": name or os.path.basename(file),
            FT + ".Size": dbus.UInt64(os.path.getsize(file)),
            FT + ".ContentType": mime,
        }, signature="sv")
        path, _props = self.conn.CreateChannel(request, dbus_interface=REQUESTS,
                                               timeout=CALL_TIMEOUT)
        address = self.proxy(path).ProvideFile(
            dbus.UInt32(SOCKET_UNIX), dbus.UInt32(ACCESS_LOCALHOST), "",
            dbus_interface=FT, timeout=CALL_TIMEOUT)
        threading.Thread(target=self._write_file, daemon=True,
                         args=(str(path), bytes(address), file)).start()
        return str(path)

    def cmd_quit(self):
        GLib.idle_add(self.shutdown)
        return None


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: salut_driver.py EVENTS.jsonl")
    Driver(sys.argv[1]).run()


if __name__ == "__main__":
    main()
