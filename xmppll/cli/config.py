"""Defaults from `$XDG_CONFIG_HOME/xmppll/config.toml`.

Precedence is flags > environment (`XMPPLL_*`) > this file > built-in defaults, which is
exactly click's own order for an option with `envvar=` and a `default_map`; so this module
only reads and checks the file and says where each setting came from.

    name = "juliet@capulet"     # default instance name
    nick = "JuliC"
    first = "Juliet"
    last = "Capulet"
    email = "juliet@example.org"
    jid = "juliet@example.org"
    msg = "Hanging out"
    status = "avail"            # avail | away | dnd
    port = 5298
    interfaces = ["eth0"]
    verify = "mark"             # strict | mark | off
    domains = ["lan.example"]   # wide-area DNS-SD domains (RFC 6763), "auto": from DNS
    dns_server = "192.0.2.53"   # default: the zone's primary (SOA), via resolv.conf
    tsig_key = "~/.config/xmppll/tsig.key"  # `tsig-keygen` output, mode 0600
    dns_ttl = 60                # s: record TTL and heartbeat period
    dns_host = "host.lan.example"  # an existing name for our SRV (default: our own)
    keep_days = 30              # inbox: read messages older than this may go
    keep_size = "256M"          # inbox: read history kept in all
    accept_files = "ask"        # never | ask | verified | always
    download_dir = "~/Downloads/xmppll"
    max_file_size = 1073741824  # bytes
    tls = "prefer"              # prefer | require | off
    avatar = "~/.face.png"      # picture to publish (PNG or JPEG)
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from xmppll.defaults import STATUSES, VERIFY_POLICIES
from xmppll.errors import DataError

SETTINGS: dict[str, type] = {
    "name": str, "nick": str, "first": str, "last": str, "email": str, "jid": str,
    "msg": str, "status": str, "port": int, "interfaces": list, "verify": str, "tls": str,
    "domains": list, "dns_server": str, "tsig_key": str, "dns_ttl": int, "dns_host": str,
    "keep_days": int, "keep_size": str,
    "accept_files": str, "download_dir": str, "max_file_size": int, "avatar": str,
}
CHOICES = {"status": STATUSES, "verify": VERIFY_POLICIES,
           "accept_files": ("never", "ask", "verified", "always"),
           "tls": ("prefer", "require", "off")}
# The commands each setting is a default for (its option has the same name there).
COMMANDS = {
    "name": ("announce", "listen", "inbox"),
    "nick": ("announce",), "first": ("announce",), "last": ("announce",),
    "email": ("announce",), "jid": ("announce",), "msg": ("announce",),
    "status": ("announce",), "port": ("announce", "listen"),
    "interfaces": ("announce", "browse", "send", "listen", "status", "withdraw"),
    "verify": ("listen",),
    "domains": ("announce", "browse", "send", "withdraw"),
    "dns_server": ("announce", "browse", "send", "withdraw"),
    "tsig_key": ("announce", "withdraw"),
    "dns_ttl": ("announce",), "dns_host": ("announce",),
    "keep_days": ("announce", "listen", "inbox"), "keep_size": ("announce", "listen", "inbox"),
    "accept_files": ("announce", "listen"),
    "download_dir": ("announce", "listen"),
    "max_file_size": ("announce", "listen"),
    "tls": ("announce", "listen", "send"),
    "avatar": ("announce",),
}


def envvar(key: str) -> str:
    return f"XMPPLL_{key.upper()}"


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "xmppll" / "config.toml"


def _line_of(text: str, key: str) -> int:
    # [ \t], not \s: \s would run over blank lines and report the line above.
    match = re.search(rf"^[ \t]*[\"']?{re.escape(key)}[\"']?[ \t]*=", text, re.MULTILINE)
    return text.count("\n", 0, match.start()) + 1 if match else 0


def load(path: Path | None = None) -> dict[str, Any]:
    """The settings in the file (none when it does not exist). A bad file is an error
    naming the file and the line, never silently ignored."""
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{path}: {exc}") from None
    for key, value in data.items():
        where = f"{path} line {_line_of(text, key)}"
        if key not in SETTINGS:
            raise DataError(f"{where}: unknown setting {key!r} "
                            f"(known: {', '.join(sorted(SETTINGS))})")
        kind = SETTINGS[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            kinds = {str: "a string", int: "an integer", list: "a list"}
            raise DataError(f"{where}: {key} must be {kinds[kind]}")
        if key in CHOICES and value not in CHOICES[key]:
            raise DataError(f"{where}: {key} must be one of {', '.join(CHOICES[key])}")
        if key == "interfaces" and not all(isinstance(i, str) for i in value):
            raise DataError(f"{where}: interfaces must be a list of interface names")
        if key == "domains" and not all(isinstance(i, str) for i in value):
            raise DataError(f"{where}: domains must be a list of DNS domain names")
    return data


def default_map(settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """click's default_map: per command, the option defaults the file provides."""
    commands: dict[str, dict[str, Any]] = {}
    for key, value in settings.items():
        for command in COMMANDS[key]:
            commands.setdefault(command, {})[key] = value
    return commands
