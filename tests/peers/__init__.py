"""Real peers in the virtual LAN, headless, one module per peer.

Every process here runs inside a host of a `lan.Lan` (never in the machine's own
network namespace: mDNS must not reach a real network):

- `common`: a private D-Bus daemon per host (`Bus`), bounded waits, package versions.
- `avahi`: `AvahiDaemon(host)`, avahi-daemon on the host's private system bus.
- `finch`: `Finch(host, avahi)`, libpurple's Bonjour, driven with dbus-send.
- `salut`: `Salut(host, avahi)`, telepathy-salut, driven over the Telepathy D-Bus API
  by a long-running helper (tests/helpers/salut_driver.py).
- `sniffer`: `Sniffer(host, out)`, a packet capture of eth0, and `tcp_transcripts`.

Everything is re-exported here, so `from peers import AvahiDaemon, Finch` keeps working.
Plain modules, no pytest, like lan.py.
"""

from peers.avahi import (
    AVAHI_READY,
    PUBLISH_READY,
    AvahiDaemon,
    avahi_unescape,
    missing_avahi,
    parse_browse_line,
)
from peers.common import (
    ARTIFACTS,
    DBUS_CALL_TIMEOUT,
    INSTALL_HINT,
    Bus,
    _terminate,
    _wait,
    package_versions,
)
from peers.finch import FINCH_READY, STATUS_PRIMITIVES, Finch, StaleHandle, missing_finch
from peers.salut import SALUT_BINARY, Salut, SalutError, missing_salut
from peers.sniffer import Sniffer, tcp_transcripts

__all__ = [
    "ARTIFACTS", "AVAHI_READY", "DBUS_CALL_TIMEOUT", "FINCH_READY", "INSTALL_HINT",
    "PUBLISH_READY", "SALUT_BINARY", "STATUS_PRIMITIVES", "AvahiDaemon", "Bus", "Finch",
    "Salut", "SalutError", "Sniffer", "StaleHandle", "_terminate", "_wait",
    "avahi_unescape", "missing_avahi", "missing_finch", "missing_salut", "package_versions",
    "parse_browse_line", "tcp_transcripts",
]
