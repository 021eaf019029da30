"""Private streams between xmppll peers: STARTTLS, keys pinned in presence, trust on
first use.

Each published name has a key pair and a self-signed certificate (made once, kept 0600
in its state directory). Its TXT record carries the certificate's fingerprint under
TXT_KEY (`x-xmppll-tls=sha256:<base64url>`); that key's presence says "I speak
STARTTLS". libpurple and telepathy-salut ignore keys they do not know.

The fingerprint is the trust: certificates are self-signed, so nothing but the pin
says whose key it is, and the standard library checks nothing here (CERT_NONE on the
initiating side); `check` compares the peer's DER certificate with the pin instead.

The initiator proves its own key inside the TLS handshake: it sends its certificate
(public, its fingerprint is in its TXT anyway) in the `<starttls/>` element; the
responder checks that certificate against the initiator's advertised pin and, if it
matches, makes it the one trust anchor of a server context that requires a client
certificate. The standard library cannot accept an unknown self-signed client
certificate (it has no verify callback), so the certificate must be known before the
handshake; TLS 1.3 post-handshake authentication (tls-facts.md) would also work, but
it leaves stanzas the initiator pipelines behind its restarted header unproven until
a later read, and costs as much.

Known peers (KnownPeers): the fingerprint each name showed the first time is kept in
one file per user, like ssh's known_hosts; a name that later advertises another key,
or none, is refused until the user runs `xmppll trust NAME`.

For the files code (bytestreams or an OOB URL between xmppll peers), the API is:

- `Tls.client_context()` / `Tls.server_context(client_der)`: the ssl contexts;
- `Tls.expect(name, advertised)`: the pin a connection to `name` must show (checked
  against known peers; raises SecurityError on a changed key);
- `Tls.check(name, pin, der)`: raises SecurityError unless the peer's certificate
  (`ssl_object.getpeercert(binary_form=True)`) matches the pin; `Tls.proven(name,
  pin)` then remembers it;
- on a stream: `Connection.secure`, `Connection.proven` (the fingerprint the peer
  proved) and `Connection.peer_der` (its certificate: `server_context(conn.peer_der)`
  requires the same key on a second connection, e.g. a bytestream it opens to us).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import fcntl
import hashlib
import os
import ssl
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from xmppll.errors import SecurityError

TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
CERT_NS = "urn:xmppll:tls:0"  # our certificate, inside <starttls/>
TXT_KEY = "x-xmppll-tls"
POLICIES = ("prefer", "require", "off")
MAX_CERT = 4096  # bytes of DER a peer may send us in <starttls/>
_CONTEXTS = 256  # server contexts kept, one per initiator certificate
PLAIN_PEERS = "libpurple (Pidgin, finch), telepathy-salut and xmppll with tls = off"


PIN_SHAPE = "sha256:" + "A" * 43  # as long as any fingerprint (a TXT size check's stand-in)


def fingerprint(der: bytes) -> str:
    """`sha256:` and the unpadded base64url SHA-256 of a DER certificate (43 chars)."""
    digest = hashlib.sha256(der).digest()
    return "sha256:" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def advertised(txt: dict[str, str | None] | None) -> str | None:
    """The pin a peer's TXT record advertises, or None (a peer that cannot encrypt).
    An empty or boolean key still says "I speak STARTTLS": its pin then matches no
    certificate, so a stream to it is refused instead of going out in plain text."""
    if not txt or TXT_KEY not in txt:
        return None
    return txt[TXT_KEY] or "sha256:"


def trust_hint(name: str) -> str:
    return f"if you expected this, accept its new key with: xmppll trust {name}"


# --- our key and certificate ------------------------------------------------------------

@dataclass
class Credentials:
    """One name's key pair and self-signed certificate, in files."""

    cert_path: Path
    key_path: Path
    der: bytes

    @property
    def pin(self) -> str:
        return fingerprint(self.der)

    @classmethod
    def load_or_create(cls, directory: Path, name: str) -> Credentials:
        """The certificate in `directory` (cert.pem, key.pem), made on first use."""
        make_files(directory, name)
        cert_path = directory / "cert.pem"
        der = ssl.PEM_cert_to_DER_cert(cert_path.read_text())
        return cls(cert_path, directory / "key.pem", der)

    @classmethod
    def load(cls, directory: Path) -> Credentials | None:
        """The certificate in `directory` if the name has one (its agent made it), else
        None: a one-shot `send` proves the key its name advertised, never makes one."""
        cert_path, key_path = directory / "cert.pem", directory / "key.pem"
        try:
            der = ssl.PEM_cert_to_DER_cert(cert_path.read_text())
            if not key_path.is_file():
                return None
        except (OSError, ValueError):
            return None
        return cls(cert_path, key_path, der)


def make_files(directory: Path, name: str) -> None:
    """key.pem and cert.pem in `directory`, unless both are there. Under a lock: a
    key maker started by `announce` (agent/keymaker.py) and an agent, or two
    agents' makers, must not leave one's key beside the other's certificate."""
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.exists() and key_path.exists():
        return
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / "make.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if cert_path.exists() and key_path.exists():
            return
        key_pem, cert_pem = make_certificate(name)
        _write_private(key_path, key_pem)
        _write_private(cert_path, cert_pem)
    finally:
        os.close(fd)


def make_certificate(name: str) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM): P-256 (the fastest handshake, tls-facts.md),
    self-signed, subject CN=name, valid from yesterday to 9999-12-31 (RFC 5280's "no
    well-defined expiration": the pin, not a date, says whether it is trusted)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(datetime.datetime(9999, 12, 31, 23, 59, 59,
                                               tzinfo=datetime.UTC))
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def _write_private(path: Path, data: bytes) -> None:
    """Written 0600 from the start, then renamed into place (never half a key)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# --- ssl contexts -------------------------------------------------------------------------

def client_context(creds: Credentials | None) -> ssl.SSLContext:
    """TLS 1.3; the server's certificate is checked against its pin by `check`, not by
    a CA; ours is loaded so the responder can require it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if creds is not None:
        ctx.load_cert_chain(creds.cert_path, creds.key_path)
    return ctx


def server_context(creds: Credentials, client_der: bytes | None = None) -> ssl.SSLContext:
    """TLS 1.3 with our certificate; with `client_der`, the initiator must prove it
    holds that certificate's key (it is the context's only trust anchor)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(creds.cert_path, creds.key_path)
    if client_der is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=client_der)
    return ctx


# --- known peers ---------------------------------------------------------------------------

class KnownPeers:
    """name -> the fingerprint it showed first. One line per name, `FINGERPRINT NAME`
    (the name last: instance names may hold spaces), names compared case-insensitively.
    Every change rewrites the file under a lock, so agents and one-shot sends of one
    user can share it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cached: tuple[tuple[int, int, int], dict[str, tuple[str, str]]] | None = None

    def all(self) -> dict[str, tuple[str, str]]:
        """lower-cased name -> (name, fingerprint). Read again only when the file
        changed: the hub asks before every stanza it writes to a peer."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._cached is not None and self._cached[0] == stamp:
            return dict(self._cached[1])
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        known: dict[str, tuple[str, str]] = {}
        for line in text.splitlines():
            pin, _, name = line.strip().partition(" ")
            if pin.startswith("sha256:") and name:
                known[name.lower()] = (name, pin)
        self._cached = (stamp, known)
        return dict(known)

    def get(self, name: str) -> str | None:
        entry = self.all().get(name.lower())
        return entry[1] if entry else None

    def remember(self, name: str, pin: str) -> None:
        """Keep `pin` for `name` unless it has one already (first use)."""
        self._change(name, pin, replace=False)

    def set(self, name: str, pin: str | None) -> str | None:
        """Trust `pin` for `name` from now on (None: forget it); returns the old one."""
        return self._change(name, pin, replace=True)

    def _change(self, name: str, pin: str | None, *, replace: bool) -> str | None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.path.with_name(self.path.name + ".lock"),
                       os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            known = self.all()
            old = known.get(name.lower())
            if old is not None and not replace:
                return old[1]
            if pin is None:
                known.pop(name.lower(), None)
            else:
                known[name.lower()] = (name, pin)
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w",
                      encoding="utf-8") as fh:
                for entry_name, entry_pin in sorted(known.values(), key=lambda e: e[0].lower()):
                    fh.write(f"{entry_pin} {entry_name}\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            return old[1] if old else None
        finally:
            os.close(lock)


# --- the policy a hub applies --------------------------------------------------------------

class Tls:
    """What a hub needs to encrypt: the policy, our credentials (None for a one-shot
    send from a name that never had an agent: it proves no key, and its name
    advertises none) and the known peers."""

    def __init__(self, policy: str, creds: Credentials | None, known: KnownPeers) -> None:
        if policy not in POLICIES:
            raise ValueError(f"tls policy {policy!r}")
        self.policy = policy
        self.creds = creds
        self.known = known
        self._client: ssl.SSLContext | None = None
        self._servers: OrderedDict[bytes | None, ssl.SSLContext] = OrderedDict()

    @property
    def on(self) -> bool:
        return self.policy != "off"

    @property
    def required(self) -> bool:
        return self.policy == "require"

    @property
    def offers(self) -> bool:
        """We offer STARTTLS to initiators that speak XMPP 1.0."""
        return self.on and self.creds is not None

    def expect(self, name: str, advertised_pin: str | None) -> str | None:
        """The fingerprint a stream with `name` must show, from its TXT, checked against
        the one it showed before: SecurityError when that changed or went away."""
        if not self.on:
            return None
        known = self.known.get(name)
        if known is not None and advertised_pin != known:
            if advertised_pin is None:
                raise SecurityError(
                    f"{name} used TLS before (key {known}) and now advertises none: "
                    f"refused as a downgrade; {trust_hint(name)}")
            raise SecurityError(
                f"the key of {name} changed: it advertises {advertised_pin}, "
                f"{known} was seen before; refused (someone else may be using the name); "
                f"{trust_hint(name)}")
        return advertised_pin

    def check(self, name: str, pin: str, der: bytes | None) -> None:
        """The peer's certificate must be the pinned one."""
        shown = fingerprint(der) if der else "no certificate"
        if shown != pin:
            raise SecurityError(
                f"{name} presented a key ({shown}) that is not the one it advertises "
                f"({pin}): refused (another host may be answering for the name)")

    def proven(self, name: str, pin: str) -> None:
        """`name` proved `pin`: remember it on first use."""
        with contextlib.suppress(OSError):
            self.known.remember(name, pin)

    def client_context(self) -> ssl.SSLContext:
        if self._client is None:
            self._client = client_context(self.creds)
        return self._client

    def server_context(self, client_der: bytes | None = None) -> ssl.SSLContext:
        assert self.creds is not None
        ctx = self._servers.get(client_der)
        if ctx is None:
            ctx = self._servers[client_der] = server_context(self.creds, client_der)
            if len(self._servers) > _CONTEXTS:
                self._servers.popitem(last=False)
        else:
            self._servers.move_to_end(client_der)
        return ctx
