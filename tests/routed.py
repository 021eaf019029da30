"""Two virtual LANs joined by a router: what mDNS cannot cross.

Segment A (hosts a1, a2, ...) and segment B (b1, b2, ...) are each a `lan.Lan` (own
bridge, own /24, distinct host names: reflected segments share one `.local`). A router
namespace has one veth into each bridge, `.254` on each side, `ip_forward=1`, no NAT
and no multicast routing, so unicast crosses and multicast does not. Every host gets a
default route via its side's `.254`.

`router` is a `lan.Host` whose namespace is the router's, so the helpers that start
daemons in a host (peers.AvahiDaemon for the reflector) work there too; its `ifname`
lists both sides.

Plain module, no pytest, like lan.py.
"""

from __future__ import annotations

import random
import subprocess

from lan import Host, Lan, _ip_batch


class Segments:
    def __init__(self, hosts_a: int = 2, hosts_b: int = 2, *, user: str = "tester") -> None:
        first = random.randrange(1, 253)
        self.a = Lan(hosts_a, user=user, prefix="a", subnet=first)
        try:
            self.b = Lan(hosts_b, user=user, prefix="b", subnet=first + 1)
            self.router = Host(self.a, 254)
            self.router.name = "router"
            self.router.netns = f"xl{self.a.runid}-rt"
            self.router.ifname = "ethA,ethB"
            self._build()
        except BaseException:
            self.a.close()
            if hasattr(self, "b"):
                self.b.close()
            raise

    def _build(self) -> None:
        rt = self.router.netns
        lines = [f"netns add {rt}",
                 f"netns exec {rt} sysctl -qw net.ipv4.ip_forward=1 "
                 "net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0"]
        for side, lan in (("A", self.a), ("B", self.b)):
            peer = f"r{lan.runid}{side}"
            lines += [
                f"link add eth{side} netns {rt} type veth peer name {peer} "
                f"netns {lan.bridge_netns}",
                f"netns exec {lan.bridge_netns} ip link set {peer} master br0 up",
                f"netns exec {rt} ip addr add 10.77.{lan.subnet}.254/24 dev eth{side}",
                f"netns exec {rt} ip link set eth{side} up",
            ]
            lines += [f"netns exec {h.netns} ip route add default via 10.77.{lan.subnet}.254"
                      for h in lan.hosts]
        lines.append(f"netns exec {rt} ip link set lo up")
        _ip_batch(lines)

    @property
    def hosts(self) -> list[Host]:
        return [*self.a.hosts, *self.b.hosts]

    def close(self) -> None:
        pids = subprocess.run(["ip", "netns", "pids", self.router.netns],
                              capture_output=True, text=True).stdout.split()
        for pid in pids:
            subprocess.run(["kill", "-9", pid], capture_output=True)
        self.a.close()
        self.b.close()
        _ip_batch([f"netns del {self.router.netns}"], force=True)

    def __enter__(self) -> Segments:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
