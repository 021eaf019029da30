"""Who I am on the link: my instance name, my host label, and where my files live.

XEP-0174 names a peer `user@machine`, where `machine` doubles as the mDNS host label, so
both halves are validated here once and every command agrees on them.
"""

from __future__ import annotations

import os

from xmppll.errors import DataError

# Commands through the agent import this: no re, socket or pathlib at import (issue 14).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

MAX_INSTANCE_BYTES = 63  # one DNS label (RFC 6763 §4.1.1)
_LABEL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")


def host_label() -> str:
    """The mDNS host label of this machine: the short host name, reduced to what a DNS
    label may hold, because it is published as `<label>.local` (ASCII by XEP-0174):
    each run of other characters becomes one '-'."""
    raw = os.uname().nodename.split(".")[0]  # gethostname(2) reads the same field
    label = "".join(ch if ch in _LABEL_CHARS else " " for ch in raw)
    label = "-".join(label.split()).strip("-")[:63].strip("-")
    return label or "localhost"


def _is_host_label(text: str) -> bool:
    """A DNS label of letters, digits and inner '-', at most 63 characters."""
    return (0 < len(text) <= 63 and set(text) <= _LABEL_CHARS
            and text[0] != "-" and text[-1] != "-")


def user_label() -> str:
    try:
        user = os.environ.get("USER") or _getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return user.replace(".", "_") or f"uid{os.getuid()}"


def default_name() -> str:
    return f"{user_label()}@{host_label()}"


def _unprintable(text: str) -> str | None:
    for ch in text:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            return f"U+{ord(ch):04X}"
    return None


def check_instance_name(name: str, *, machine: str | None = None) -> str:
    """Validate (and complete) a name for publishing; returns the name to use.

    A bare user part gets this machine's label appended, as XEP-0174 builds names.
    Names with a dot are refused: python-zeroconf would split them into several DNS
    labels on the wire, and no other implementation would see the name we meant.
    """
    if "@" not in name:
        name = f"{name}@{machine or host_label()}"
    user, _, host = name.rpartition("@")
    if not user:
        raise DataError(f"invalid name {name!r}: the user part before '@' is empty")
    bad = _unprintable(name)
    if bad:
        raise DataError(f"invalid name {name!r}: it contains the control character {bad}")
    if "." in name:
        suggestion = f"{user.replace('.', '_')}@{host.split('.')[0]}"
        raise DataError(
            f"invalid name {name!r}: a '.' cannot be published correctly "
            f"(python-zeroconf splits it into DNS labels); try {suggestion!r}"
        )
    if not _is_host_label(host):
        raise DataError(
            f"invalid name {name!r}: the machine part {host!r} must be ASCII letters, "
            "digits and '-' (it is also the mDNS host label)"
        )
    size = len(name.encode("utf-8"))
    if size > MAX_INSTANCE_BYTES:
        raise DataError(
            f"invalid name {name!r}: {size} bytes of UTF-8, the limit is "
            f"{MAX_INSTANCE_BYTES} (one DNS label)"
        )
    return name


def _fs_name(name: str) -> str:
    """A file name for an instance name: '/' may appear in a DNS-SD instance."""
    return name.replace("%", "%25").replace("/", "%2F")


def state_path(name: str) -> str:
    """Durable per-name state (the inbox, the published record): survives reboots."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "xmppll", _fs_name(name))


def state_dir(name: str) -> Path:
    """state_path as a Path, for the agent; `listen` through an agent needs no pathlib."""
    from pathlib import Path

    return Path(state_path(name))


def known_peers_path() -> Path:
    """The TLS keys each peer name showed first (trust on first use), for all of this
    user's names, like ssh's known_hosts."""
    return state_dir("x").parent / "known_peers"


def runtime_dir() -> str:
    """Where agents put their control sockets: private to this user (0700)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(base, "xmppll") if base else f"/tmp/xmppll-{os.getuid()}"


def socket_path(name: str) -> str:
    return os.path.join(runtime_dir(), f"{_fs_name(name)}.sock")


def name_from_socket(file_name: str) -> str:
    """The name whose socket is `file_name` (a name in runtime_dir(), not a path)."""
    return file_name[: -len(".sock")].replace("%2F", "/").replace("%25", "%")


def _getuser() -> str:
    import getpass  # rarely needed ($USER is set): not on every command's start

    return getpass.getuser()
