"""Wide-area settings and the TSIG key file.

The key file is what bind's `tsig-keygen -a hmac-sha256 NAME > FILE` writes:

    key "NAME" {
            algorithm hmac-sha256;
            secret "BASE64";
    };

A key anyone else on the machine can read is a key anyone can publish with, so such a
file is refused (exit 78) rather than used.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from xmppll.errors import ConfigError, UsageError

DEFAULT_TTL = 60  # s: how long caches may keep our records; also the heartbeat period
MIN_TTL = 1
_KEY = re.compile(
    r'key\s+"?(?P<name>[^"\s{]+)"?\s*\{(?P<body>.*?)\}\s*;', re.DOTALL | re.IGNORECASE)
_ALGORITHM = re.compile(r"algorithm\s+\"?(?P<alg>[\w.-]+)\"?\s*;", re.IGNORECASE)
_SECRET = re.compile(r'secret\s+"(?P<secret>[^"]*)"\s*;', re.IGNORECASE)
ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1",
              "hmac-md5")


@dataclass(frozen=True)
class TsigKey:
    name: str
    algorithm: str
    secret: bytes


@dataclass
class Server:
    address: str
    port: int = 53

    def __str__(self) -> str:
        return self.address if self.port == 53 else f"{self.address}#{self.port}"


@dataclass
class WideAreaSettings:
    """What the wide-area directory needs; `server` None means: the zone's primary
    from its SOA, found through the system resolver."""

    domains: list[str]
    server: Server | None = None
    key: TsigKey | None = None
    ttl: int = DEFAULT_TTL
    host: str | None = None  # --dns-host: an existing name; else <host label>.<zone>
    resolv_conf: str = "/etc/resolv.conf"
    discover: bool = False  # `--domain auto`: also the b/lb domains of the search list


def check_domain(text: str) -> str:
    """A zone name as given: lower-cased, no trailing dot, not 'local' (that is mDNS)."""
    domain = text.strip().rstrip(".").lower()
    if not domain or domain == "local" or domain.endswith(".local") or len(domain) > 253 \
            or any(not label or len(label) > 63 for label in domain.split(".")):
        raise UsageError(f"invalid --domain {text!r}: give a DNS zone such as example.org "
                         "(.local is the link, browsed over mDNS anyway)")
    return domain


def parse_server(text: str) -> Server:
    """`ADDRESS` or `ADDRESS#PORT` (bind's notation), IPv4 or IPv6."""
    address, sep, port_text = text.strip().partition("#")
    try:
        ipaddress.ip_address(address)
        port = int(port_text) if sep else 53
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise UsageError(f"invalid --dns-server {text!r}: give an IP address, "
                         "optionally with #PORT (192.0.2.53#5353)") from None
    return Server(address, port)


def load_key(path: str | Path) -> TsigKey:
    """The first key in a bind key file; refused when others may read it."""
    path = Path(path).expanduser()
    try:
        info = path.stat()
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read TSIG key file {path}: "
                          f"{exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"TSIG key file {path} is not text (expected tsig-keygen's "
                          "output)") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"TSIG key file {path} is accessible by others (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); anyone who reads it can publish in the "
            f"zone: chmod 600 {path}")
    match = _KEY.search(text)
    if match is None:
        raise ConfigError(f"TSIG key file {path}: no 'key \"NAME\" {{ ... }};' clause "
                          "(expected tsig-keygen's output)")
    body = match["body"]
    alg = _ALGORITHM.search(body)
    secret = _SECRET.search(body)
    if alg is None or secret is None:
        raise ConfigError(f"TSIG key file {path}: key {match['name']!r} needs both "
                          "'algorithm' and 'secret'")
    algorithm = alg["alg"].lower()
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"TSIG key file {path}: unsupported algorithm {algorithm!r} "
                          f"(use one of {', '.join(ALGORITHMS)})")
    try:
        raw = base64.b64decode(secret["secret"], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"TSIG key file {path}: the secret is not base64") from None
    if not raw:
        raise ConfigError(f"TSIG key file {path}: the secret is empty")
    return TsigKey(match["name"], algorithm, raw)


def settings(domains: tuple[str, ...] | list[str], *, dns_server: str | None = None,
             tsig_key: str | None = None, dns_ttl: int | None = None,
             dns_host: str | None = None, need_key: bool = False) -> WideAreaSettings | None:
    """The settings from the options, checked; None when no domain is given."""
    names: list[str] = []
    discover = False
    for given in domains:
        for word in given.replace(",", " ").split():  # XMPPLL_DOMAINS="a.org b.org"
            if word.lower() == "auto":
                discover = True
                continue
            domain = check_domain(word)
            if domain not in names:
                names.append(domain)
    if not names and not discover:
        return None
    ttl = DEFAULT_TTL if dns_ttl is None else int(dns_ttl)
    if ttl < MIN_TTL:
        raise UsageError(f"invalid --dns-ttl {dns_ttl}: use at least {MIN_TTL} second")
    if need_key and not tsig_key:
        raise UsageError("--domain publishes with a signed DNS UPDATE: give --tsig-key FILE "
                         "(bind's tsig-keygen output), or set tsig_key in the config file")
    host = dns_host.rstrip(".").lower() if dns_host else None
    return WideAreaSettings(
        names, parse_server(dns_server) if dns_server else None,
        load_key(tsig_key) if tsig_key else None, ttl, host, discover=discover)
