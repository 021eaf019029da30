"""STARTTLS between xmppll peers, keys pinned in presence, trust on first use (#13), in
process over loopback, in the style of test_connections.py: each name has its own key;
a table of names stands in for discovery, with the pin each advertises.

The LAN test (a packet capture holds no body in clear, `listen` marks the messages) is
in test_tls_lan.py.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import stat
from pathlib import Path
from typing import Any

import pytest
from test_connections import LOOP, Events, Names, RawPeer, Side, run, wait_for

from xmppll.discovery.presence import TLS_KEY, Presence, decode_txt, encode_txt, peer_fields
from xmppll.errors import SecurityError, UnavailableError
from xmppll.xmpp import stanza as st
from xmppll.xmpp import tls
from xmppll.xmpp.connection import FLUSH_AT, stream_error
from xmppll.xmpp.hub import Hub
from xmppll.xmpp.stream import CLOSE, Stanza, StreamClose, StreamOpen, header


class PinNames(Names):
    """Discovery with TXT pins: name -> the fingerprint it advertises."""

    def __init__(self) -> None:
        super().__init__()
        self.pins: dict[str, str] = {}

    def add(self, name: str, port: int, caps: dict[str, Any] | None = None) -> None:
        super().add(name, port, caps)
        if name.lower() in self.pins:
            self.table[name.lower()].pin = self.pins[name.lower()]

    def advertise(self, name: str, pin: str | None) -> None:
        if pin is None:
            self.pins.pop(name.lower(), None)
        else:
            self.pins[name.lower()] = pin
        if name.lower() in self.table:
            self.table[name.lower()].pin = pin

    def pin(self, name: str) -> str | None:
        return self.pins.get(name.lower())


class TlsSide(Side):
    """A Side with a key of its own and a TLS policy; `known` is its known peers."""

    def __init__(self, name: str, names: PinNames, state: Path, *, policy: str = "prefer",
                 key_dir: Path | None = None, advertise: bool = True) -> None:
        self.creds = tls.Credentials.load_or_create(key_dir or state / "tls", name)
        if advertise and policy != "off":
            names.advertise(name, self.creds.pin)
        super().__init__(name, names, state)
        self.known = tls.KnownPeers(state / "known_peers")
        self.tls = tls.Tls(policy, self.creds if policy != "off" else None, self.known)
        self.hub = Hub(me=lambda: name, peers=names, dispatcher=self.dispatcher, tls=self.tls)
        self.delivery.hub = self.hub


@pytest.fixture
def names() -> PinNames:
    return PinNames()


def message(to: str, from_: str, body: str, id_: str = "m1") -> bytes:
    return (f"<message to='{to}' from='{from_}' type='chat' id='{id_}'>"
            f"<body>{body}</body></message>").encode()


# --- keys, pins, known peers --------------------------------------------------------------

def test_a_key_is_made_once_private_and_its_pin_fits_the_txt(tmp_path: Path) -> None:
    creds = tls.Credentials.load_or_create(tmp_path / "tls", "juliet@capulet")
    for path in (creds.key_path, creds.cert_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = tls.Credentials.load_or_create(tmp_path / "tls", "juliet@capulet")
    assert again.der == creds.der, "the key is made once, on first use"
    assert creds.pin.startswith("sha256:") and len(creds.pin) == 7 + 43
    presence = Presence(port=5298, extra=[(TLS_KEY, creds.pin)])
    fields = peer_fields(decode_txt(encode_txt(presence)))
    assert fields["tls"] == creds.pin
    assert peer_fields(decode_txt(encode_txt(Presence(port=5298))))["tls"] is None
    assert TLS_KEY == tls.TXT_KEY


def test_the_key_maker_child_and_the_agent_agree_on_one_key(tmp_path: Path) -> None:
    """announce starts a child making a new name's key (agent/keymaker.py) while the
    agent imports; the agent then loads that key. Makers racing (two announces, or
    the agent after a failed child) never pair one's key with the other's certificate."""
    from concurrent.futures import ThreadPoolExecutor

    from xmppll.agent import keymaker

    child = keymaker.start(tmp_path, "juliet@capulet")
    assert child is not None
    keymaker.finish(child)
    assert child.returncode == 0
    made = tls.Credentials.load(keymaker.key_dir(tmp_path))
    assert made is not None
    assert keymaker.start(tmp_path, "juliet@capulet") is None, "a name keeps its key"
    assert tls.Credentials.load_or_create(keymaker.key_dir(tmp_path), "x").der == made.der
    racing = tmp_path / "race"
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: tls.make_files(racing, "romeo@montague"), range(4)))
    creds = tls.Credentials.load(racing)
    assert creds is not None
    ctx = tls.server_context(creds)  # loading fails if key and certificate differ
    assert ctx is not None


def test_a_one_shot_send_uses_the_key_its_agent_made_and_makes_none(tmp_path: Path) -> None:
    """The transient presence of a one-shot `send` advertises the name's key when its
    agent made one (peers that met the agent would take a keyless presence for a
    downgrade), and the one-shot proves it; a name without a key gets none."""
    from xmppll.agent.sending import transient_presence

    assert tls.Credentials.load(tmp_path / "tls") is None
    assert not (tmp_path / "tls").exists(), "a one-shot send makes no key"
    assert peer_fields(decode_txt(encode_txt(transient_presence(5298, None))))["tls"] is None
    made = tls.Credentials.load_or_create(tmp_path / "tls", "juliet@capulet")
    loaded = tls.Credentials.load(tmp_path / "tls")
    assert loaded is not None and loaded.der == made.der
    fields = peer_fields(decode_txt(encode_txt(transient_presence(5298, loaded))))
    assert fields["tls"] == made.pin and fields["status"] == "avail"
    assert tls.Tls("prefer", loaded, tls.KnownPeers(tmp_path / "known")).offers


def test_known_peers_first_use_then_change_only_by_trust(tmp_path: Path) -> None:
    known = tls.KnownPeers(tmp_path / "known_peers")
    t = tls.Tls("prefer", None, known)
    assert t.expect("Bob Smith@h1", "sha256:A") == "sha256:A"  # first use: anything
    t.proven("Bob Smith@h1", "sha256:A")
    t.proven("bob smith@h1", "sha256:B")  # first use only: B does not replace A
    assert known.get("BOB SMITH@h1") == "sha256:A"
    with pytest.raises(SecurityError, match="xmppll trust Bob Smith@h1") as changed:
        t.expect("Bob Smith@h1", "sha256:B")
    assert changed.value.exit_code == 77
    with pytest.raises(SecurityError, match="downgrade"):
        t.expect("Bob Smith@h1", None)
    assert known.set("Bob Smith@h1", "sha256:B") == "sha256:A"
    assert t.expect("Bob Smith@h1", "sha256:B") == "sha256:B"
    assert (tmp_path / "known_peers").read_text() == "sha256:B Bob Smith@h1\n"
    assert stat.S_IMODE((tmp_path / "known_peers").stat().st_mode) == 0o600
    assert tls.Tls("off", None, known).expect("Bob Smith@h1", "sha256:C") is None


# --- xmppll <-> xmppll --------------------------------------------------------------------

@run
async def test_messages_and_receipts_go_over_tls_and_the_sender_is_verified_by_key(
        names: PinNames, tmp_path: Path) -> None:
    alice = await TlsSide("alice@h1", names, tmp_path / "a").start()
    bob = await TlsSide("bob@h2", names, tmp_path / "b").start()
    try:
        sent = await alice.send("bob@h2", "secret plans")  # waits for bob's receipt
        conn = alice.hub.usable("bob@h2")
        assert conn is not None and conn.secure and conn.proven == bob.creds.pin
        assert conn.writer.get_extra_info("ssl_object").version() == "TLSv1.3"
        [record] = await wait_for(bob.stored)
        assert (record["body"], record["id"], record["verified"], record["secure"]) == (
            "secret plans", sent.id, True, "tls")
        # The accepted side writes without Nagle: its restarted header waited ~40 ms for
        # a delayed ACK before (asyncio skips TCP_NODELAY on proto-0 sockets).
        accepted = bob.hub.usable("alice@h1")
        assert accepted is not None and not accepted.initiator
        sock = accepted.writer.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        # What the files code gets to require the same keys on a second connection.
        assert conn.peer_der == bob.creds.der and accepted.peer_der == alice.creds.der
        # Both remember the other's key on first use.
        assert alice.known.get("bob@h2") == bob.creds.pin
        assert bob.known.get("alice@h1") == alice.creds.pin
        # An answer goes back over the same encrypted connection.
        await bob.send("alice@h1", "ack")
        assert bob.hub.dialled == 0
        [back] = await wait_for(alice.stored)
        assert (back["body"], back["verified"], back["secure"]) == ("ack", True, "tls")
    finally:
        await alice.close()
        await bob.close()


@run
async def test_a_peer_presenting_another_key_for_the_name_is_refused(
        names: PinNames, tmp_path: Path) -> None:
    """A man in the middle: bob's pin is advertised, but whoever answers at bob's
    address holds another key."""
    alice = await TlsSide("alice@h1", names, tmp_path / "a").start()
    real = tls.Credentials.load_or_create(tmp_path / "real-bob", "bob@h2")
    mitm = await TlsSide("bob@h2", names, tmp_path / "m", advertise=False).start()
    names.advertise("bob@h2", real.pin)
    try:
        with pytest.raises(SecurityError, match="not the one it advertises") as refused:
            await alice.send("bob@h2", "for bob only")
        assert refused.value.exit_code == 77
        assert mitm.stored() == [], "nothing reaches the impostor"
        assert alice.known.get("bob@h2") is None, "a refused key is not remembered"
    finally:
        await alice.close()
        await mitm.close()


@pytest.mark.parametrize("answer", ["no-version", "no-starttls"])
@run
async def test_a_downgrade_is_refused(names: PinNames, tmp_path: Path, answer: str) -> None:
    """bob advertises a key but its stream offers no STARTTLS: plain text would be a
    downgrade anyone on the link could force by answering first."""
    got: list[Any] = []

    async def downgrader(reader: Any, writer: Any, events: Events) -> None:
        await events.next(StreamOpen)
        writer.write(header(from_="bob@h2", to="alice@h1",
                            version=None if answer == "no-version" else "1.0"))
        if answer == "no-starttls":
            writer.write(b"<stream:features/>")
        got.append(await events.next((Stanza, StreamClose)))

    names.advertise("bob@h2", "sha256:" + "A" * 43)
    bob = await RawPeer(names, "bob@h2", downgrader).start()
    alice = await TlsSide("alice@h1", names, tmp_path / "a").start()
    try:
        with pytest.raises(SecurityError, match="downgrade"):
            await alice.send("bob@h2", "not in clear")
        assert not any(isinstance(e, Stanza) for e in got), "no stanza went out in clear"
    finally:
        bob.close()
        await alice.close()


@run
async def test_a_changed_key_is_refused_until_trusted(names: PinNames, tmp_path: Path) -> None:
    alice = await TlsSide("alice@h1", names, tmp_path / "a").start()
    bob = await TlsSide("bob@h2", names, tmp_path / "b").start()
    await alice.send("bob@h2", "first")
    await bob.close()
    # bob comes back with a new key (a reinstall, or someone else using the name).
    bob = await TlsSide("bob@h2", names, tmp_path / "b2").start()
    try:
        await alice.hub.close()
        alice.hub._servers.clear()
        with pytest.raises(SecurityError, match="xmppll trust bob@h2") as refused:
            await alice.send("bob@h2", "second")
        assert refused.value.exit_code == 77 and "changed" in str(refused.value)
        assert bob.stored() == []
        alice.known.set("bob@h2", bob.creds.pin)  # what `xmppll trust bob@h2` does
        await alice.send("bob@h2", "third")
        assert [r["body"] for r in bob.stored()] == ["third"]
    finally:
        await alice.close()
        await bob.close()


@run
async def test_an_initiator_claiming_a_name_with_another_key_is_not_verified(
        names: PinNames, tmp_path: Path) -> None:
    """mallory claims alice's name: the stream is encrypted, but mallory cannot prove
    alice's key, so her message is stored as unverified (and refused under strict)."""
    alice_pin = tls.Credentials.load_or_create(tmp_path / "real-alice", "alice@h1").pin
    bob = await TlsSide("bob@h2", names, tmp_path / "b").start()
    mallory = await TlsSide("alice@h1", names, tmp_path / "m", advertise=False).start()
    names.advertise("alice@h1", alice_pin)
    try:
        await mallory.send("bob@h2", "i am alice")
        [record] = await wait_for(bob.stored)
        assert (record["verified"], record["secure"]) == (False, "tls")
        assert bob.hub.usable("alice@h1") is None, "bob never writes to the impostor"
        assert bob.known.get("alice@h1") is None
    finally:
        await mallory.close()
        await bob.close()


# --- peers that cannot encrypt ------------------------------------------------------------

def purple_script(bodies: list[str], firsts: list[bytes]) -> Any:
    """libpurple as responder: no version, no features, plain text."""
    async def purple(reader: Any, writer: Any, events: Events) -> None:
        await events.next(StreamOpen)
        writer.write(header(from_=None, to=None, version=None))
        while True:
            event = await events.next((Stanza, StreamClose))
            if not isinstance(event, Stanza):
                return
            bodies.append(event.element.findtext("{jabber:client}body"))
    return purple


@pytest.mark.parametrize("policy", ["prefer", "require", "off"])
@run
async def test_peers_without_a_key_get_plain_text_unless_tls_is_required(
        names: PinNames, tmp_path: Path, policy: str) -> None:
    bodies: list[str] = []
    purple = await RawPeer(names, "romeo@h3", purple_script(bodies, []),
                           caps={"node": "libpurple", "ver": "2.14.12"}).start()
    me = await TlsSide("juliet@h2", names, tmp_path / "j", policy=policy).start()
    try:
        if policy == "require":
            with pytest.raises(SecurityError, match="libpurple") as refused:
                await me.send("romeo@h3", "hi")
            assert refused.value.exit_code == 77 and purple.connections == 0
        else:
            await me.send("romeo@h3", "hi")
            assert bodies == ["hi"]
    finally:
        purple.close()
        await me.close()


@run
async def test_the_responder_offers_starttls_only_to_xmpp_1_0_initiators(
        names: PinNames, tmp_path: Path) -> None:
    """libpurple sends no version and crashes on features it did not ask for: it gets
    our header alone, then talks plain text as before."""
    me = await TlsSide("juliet@h2", names, tmp_path / "j").start()
    try:
        for version, offered in ((None, False), ("1.0", True)):
            reader, writer = await asyncio.open_connection(LOOP, me.port)
            writer.write(header(from_="romeo@h3", to="juliet@h2", version=version))
            events = Events(reader)
            await events.next(StreamOpen)
            if version is None:
                writer.write(message("juliet@h2", "romeo@h3", "plain purple"))
                writer.write(CLOSE)
                assert await events.next((Stanza, StreamClose)) == StreamClose()
            else:
                features = (await events.next(Stanza)).element
                assert features.find(f"{{{tls.TLS_NS}}}starttls") is not None
            assert offered == (version is not None)
            writer.close()
        [record] = await wait_for(me.stored)
        assert (record["body"], record["secure"]) == ("plain purple", None)
    finally:
        await me.close()


@run
async def test_require_refuses_a_plain_text_sender(names: PinNames, tmp_path: Path) -> None:
    me = await TlsSide("juliet@h2", names, tmp_path / "j", policy="require").start()
    try:
        reader, writer = await asyncio.open_connection(LOOP, me.port)
        writer.write(header(from_="romeo@h3", to="juliet@h2", version=None))
        writer.write(message("juliet@h2", "romeo@h3", "plain"))
        events = Events(reader)
        await events.next(StreamOpen)
        error = (await events.next(Stanza)).element
        assert "not-authorized" in [child.tag.split("}")[1] for child in error]
        assert "libpurple" in (error.findtext(
            "{urn:ietf:params:xml:ns:xmpp-streams}text") or "")
        writer.close()
        assert me.stored() == []
    finally:
        await me.close()


@run
async def test_tls_off_neither_offers_nor_asks(names: PinNames, tmp_path: Path) -> None:
    a = await TlsSide("a@h1", names, tmp_path / "a", policy="off").start()
    b = await TlsSide("b@h2", names, tmp_path / "b", policy="off").start()
    try:
        await a.send("b@h2", "clear")
        [record] = await wait_for(b.stored)
        assert (record["secure"], record["verified"]) == (None, True)
    finally:
        await a.close()
        await b.close()


@run
async def test_a_one_shot_sender_without_a_key_is_encrypted_but_not_verified_by_key(
        names: PinNames, tmp_path: Path) -> None:
    """A standalone `send` has no published key: its stream is still encrypted, and
    bob's key is checked; the sender's name is checked by address as before."""
    bob = await TlsSide("bob@h2", names, tmp_path / "b").start()
    shot = await TlsSide("shot@h9", names, tmp_path / "s", advertise=False).start()
    shot.tls.creds = None
    try:
        await shot.send("bob@h2", "one shot")
        [record] = await wait_for(bob.stored)
        assert record["secure"] == "tls"
        assert record["verified"] is True  # by address: shot@h9 is in the table
    finally:
        await shot.close()
        await bob.close()


def test_contexts_are_tls_1_3_only(tmp_path: Path) -> None:
    creds = tls.Credentials.load_or_create(tmp_path, "x@y")
    for ctx in (tls.client_context(creds), tls.server_context(creds, creds.der)):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3


def test_trust_command_sets_and_forgets_a_key_without_the_network(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path)}

    def xmppll(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "xmppll", "trust", *args, "--json"],
                              capture_output=True, text=True, env=env, timeout=30)

    pin = "sha256:" + "A" * 43
    done = xmppll("bob@h2", "--fingerprint", pin)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"name": "bob@h2", "tls": pin, "was": None}
    assert tls.KnownPeers(tmp_path / "xmppll" / "known_peers").get("bob@h2") == pin
    done = xmppll("bob@h2", "--forget")
    assert json.loads(done.stdout) == {"name": "bob@h2", "tls": None, "was": pin}
    assert xmppll("bob@h2", "--fingerprint", "md5:xx").returncode == 64


# --- the ordered write path: one write per turn, nothing reordered or lost -------------

@pytest.mark.parametrize("policy", ["prefer", "off"])
@pytest.mark.parametrize("end", ["close", "stream-error"])
@run
async def test_stanzas_written_in_one_turn_go_out_together_in_order_before_the_end(
        names: PinNames, tmp_path: Path, policy: str, end: str) -> None:
    """Many sends in one turn of the loop leave in a few transport writes (over TLS one
    record each, not one per stanza), in the order they were made; the closing tag or
    a stream error made in the same turn goes out after all of them."""
    alice = await TlsSide("alice@h1", names, tmp_path / "a", policy=policy).start()
    bob = await TlsSide("bob@h2", names, tmp_path / "b", policy=policy).start()
    try:
        conn = await alice.hub.dial(names.table["bob@h2"].target, timeout=5, sources=None)
        assert conn.secure == (policy == "prefer")
        accepted = await wait_for(lambda: bob.hub.usable("alice@h1"))
        writes: list[int] = []
        write = conn.writer.write
        conn.writer.write = lambda data: (writes.append(len(data)), write(data))[1]
        count = 400
        body = "in order " + "x" * 100
        tasks = [asyncio.ensure_future(conn.send([st.message_from_json(
            {"to": "bob@h2", "body": body, "id": f"m{i}"}, from_="alice@h1")]))
            for i in range(count)]
        if end == "close":
            tasks.append(asyncio.ensure_future(conn.finish(5, tag_expected=True)))
        else:
            tasks.append(asyncio.ensure_future(
                conn._send_quietly(stream_error("policy-violation", "enough"))))
        await asyncio.gather(*tasks)
        await wait_for(lambda: accepted.done.is_set())
        stored = bob.stored()
        assert [r["id"] for r in stored] == [f"m{i}" for i in range(count)]
        assert accepted.close_tag
        assert accepted.error == (None if end == "close" else "policy-violation")
        # ~60 KB in writes of at least FLUSH_AT bytes, not 401 writes.
        assert sum(writes) > count * 100 and len(writes) <= sum(writes) // FLUSH_AT + 1
        with pytest.raises(UnavailableError):  # nothing more may follow our end
            await conn.send([st.message_from_json({"to": "bob@h2", "body": "late"},
                                                  from_="alice@h1")])
    finally:
        await alice.close()
        await bob.close()
