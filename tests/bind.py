"""bind9 (named) as an authoritative server for a test zone, inside a LAN host.

Following beyond-one-link-facts.md: `named -g` in the foreground with its own
directory, pid and lock files, IPv4 only, one worker thread, `recursion no`, the zone
updatable with one TSIG key (`tsig-keygen -a hmac-sha256`). The zone holds the
b/lb/r._dns-sd._udp pointers (RFC 6763 §11), so browse domains can be discovered.

Never in the machine's own namespace: only `host.popen`, which runs in the host's.
Plain module, no pytest.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from lan import Host, Lines

INSTALL_HINT = "apt-get install bind9 bind9-utils bind9-dnsutils"
NAMED_READY = 15.0  # s; measured ~0.3 s

_CONF = """options {{
    directory "{dir}";
    pid-file "{dir}/named.pid";
    lock-file "{dir}/named.lock";
    listen-on {{ {address}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    allow-query {{ any; }};
    dnssec-validation no;
    notify no;
    // bind 9.18.28+ refuses an RRset of more than 100 records (SERVFAIL on UPDATE):
    // the PTR RRset lists every peer of the domain, so lift the cap for big domains.
    max-records-per-type {max_records};
}};
{key}
{zones}"""

_ZONE_CONF = """zone "{zone}" {{
    type primary;
    file "{dir}/{zone}.db";
    journal "{dir}/{zone}.db.jnl";
    allow-update {{ key "{keyname}"; }};
}};
"""

_ZONE = """$TTL 60
@   IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 10
@   IN NS  ns.{zone}.
ns  IN A   {address}
b._dns-sd._udp  IN PTR @
lb._dns-sd._udp IN PTR @
r._dns-sd._udp  IN PTR @
"""


def missing_bind() -> str | None:
    for tool in ("named", "tsig-keygen", "dig", "nsupdate"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"`{tool}` ({INSTALL_HINT})"
    return None


class Named:
    """named authoritative for `zone` on `host`; `key_file` is the TSIG key (0600)."""

    def __init__(self, host: Host, zone: str = "lan.test", keyname: str = "xmppll-key",
                 *, more_zones: tuple[str, ...] = (), max_records: int = 100) -> None:
        self.host = host
        self.zone = zone
        self.keyname = keyname
        self.address = host.ipv4
        self.dir = host.home / "named"
        self.dir.mkdir(parents=True, exist_ok=True)
        # named drops to no user here (-u not given) and runs as root in the namespace.
        key = subprocess.run(["tsig-keygen", "-a", "hmac-sha256", keyname],
                             capture_output=True, text=True, check=True).stdout
        self.key_file = self.dir / "xmppll.key"
        self.key_file.write_text(key)
        self.key_file.chmod(0o600)
        zones = ""
        for name in (zone, *more_zones):
            (self.dir / f"{name}.db").write_text(_ZONE.format(zone=name, address=self.address))
            zones += _ZONE_CONF.format(zone=name, dir=self.dir, keyname=keyname)
        self.conf = self.dir / "named.conf"
        self.conf.write_text(_CONF.format(dir=self.dir, address=self.address, key=key,
                                          zones=zones, max_records=max_records))
        t0 = time.monotonic()
        self.proc = host.popen(["named", "-g", "-4", "-n", "1", "-c", str(self.conf)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.log = Lines(self.proc.stderr)
        self.log.wait_for("running", NAMED_READY)
        self.startup_seconds = time.monotonic() - t0

    def dig(self, host: Host, name: str, rdtype: str = "ANY") -> list[str]:
        """`dig +short` against this server, from `host`."""
        done = host.run(["dig", "+short", "+tries=2", "+time=2", f"@{self.address}", name,
                         rdtype], timeout=15)
        return done.stdout.splitlines()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
