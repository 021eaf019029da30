"""Impaired links for the virtual LAN: loss with nftables, delay (and loss, duplication,
reordering, partitions) with a user-space hub.

The kernel of the test machines has no netem (nor prio/ingress qdiscs), so `tc` cannot
impair a link. Two tools that work instead, both confined to the LAN's namespaces:

- `nft_loss(host, percent)`: an nftables rule in the host's own namespace dropping that
  share of its packets at random (input and/or output hook);
- `HubLan`: a Lan whose hosts' `eth0` are TAP devices joined by tests/nethub.py (running
  in the LAN's bridge namespace) instead of veths on a bridge; it delays, drops,
  duplicates and reorders every frame as told, and can cut the LAN into partitions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from lan import IFNAME, Host, Lan, Lines, _ip_batch, _quote

NETHUB = str(Path(__file__).with_name("nethub.py"))
NFT_TABLE = "xmppll_impair"
HUB_START = 10.0  # seconds for the hub to create its TAPs


def nft_loss(host: Host, percent: int, hooks: tuple[str, ...] = ("input",)) -> None:
    """Drop `percent` % of the packets `host` receives (hook input) and/or sends
    (output), at random, in its own namespace only. Replaces an earlier rule."""
    if not 0 <= percent <= 100:
        raise ValueError("percent must be 0..100")
    chains = "".join(
        f"  chain {hook} {{ type filter hook {hook} priority 0; policy accept;\n"
        f"    numgen random mod 100 < {percent} counter drop\n  }}\n"
        for hook in hooks
    )
    script = (f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
              f"table inet {NFT_TABLE} {{\n{chains}}}\n")
    done = subprocess.run(["ip", "netns", "exec", host.netns, "nft", "-f", "-"],
                          input=script, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"nft on {host.name}: {done.stderr.strip()}")


def nft_clear(host: Host) -> None:
    """Remove `nft_loss` rules from `host` (nothing happens if there are none)."""
    subprocess.run(["ip", "netns", "exec", host.netns, "nft", "-f", "-"],
                   input=f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n",
                   capture_output=True, text=True)


def nft_dropped(host: Host) -> int:
    """Packets the `nft_loss` rules of `host` dropped so far."""
    done = subprocess.run(["ip", "netns", "exec", host.netns, "nft", "-j", "list", "table",
                           "inet", NFT_TABLE], capture_output=True, text=True)
    if done.returncode:
        return 0
    total = 0
    for item in json.loads(done.stdout)["nftables"]:
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                total += expr["counter"]["packets"]
    return total


class HubLan(Lan):
    """Hosts h1..hN whose `eth0` are TAPs on a user-space hub (tests/nethub.py).

    Same API as Lan; `impair(...)` changes the link while tests run and `hub_stats()`
    says what the hub did. Everything the hub does happens between the LAN's own
    namespaces: its TAPs are created in the bridge namespace and moved into the hosts.
    """

    def __init__(self, n_hosts: int = 3, *, delay: float = 0.0, jitter: float = 0.0,
                 loss: float = 0.0, dup: float = 0.0, reorder: float = 0.0,
                 **kw: Any) -> None:
        self.hub_settings = {"delay": delay, "jitter": jitter, "loss": loss, "dup": dup,
                             "reorder": reorder}
        self.hub: subprocess.Popen[str] | None = None
        self.hub_out: Lines | None = None
        super().__init__(n_hosts, **kw)

    def add_host(self) -> Host:
        raise NotImplementedError("a HubLan has a fixed set of ports")

    def _add_hosts(self, count: int, *, first: bool) -> list[Host]:
        assert first, "HubLan builds all of its hosts at once"
        if count > 254:
            raise ValueError("a /24 holds at most 254 hosts")
        new = [Host(self, i) for i in range(1, count + 1)]
        for h in new:
            h.veth = f"t{self.runid}{h.name[1:]}"  # the TAP's name until it is eth0
        self.hosts.extend(new)
        br = self.bridge_netns
        lines = [f"netns add {br}",
                 f"netns exec {br} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
                 "net.ipv6.conf.default.disable_ipv6=1"]
        for h in new:
            lines += [f"netns add {h.netns}",
                      f"netns exec {h.netns} sysctl -qw net.ipv6.conf.all.accept_dad=0 "
                      "net.ipv6.conf.default.accept_dad=0"]
        _ip_batch(lines)
        self._start_hub([h.veth for h in new])
        br_file = self.tmp / ".br.ip"
        br_file.write_text("".join(f"link set {h.veth} netns {h.netns}\n" for h in new))
        lines = [f"netns exec {br} ip -batch {_quote(br_file)}"]
        for h in new:
            h_file = self.tmp / f".{h.name}.ip"
            h_file.write_text("\n".join([
                "link set lo up",
                f"link set {h.veth} name {IFNAME}",
                f"addr add {h.ipv4}/24 dev {IFNAME}",
                f"link set {IFNAME} up",
                f"route add 224.0.0.0/4 dev {IFNAME}",
            ]) + "\n")
            lines += [
                f"netns exec {h.netns} sysctl -qw net.ipv6.conf.{h.veth}.accept_dad=0",
                f"netns exec {h.netns} ip -batch {_quote(h_file)}",
            ]
        _ip_batch(lines)
        self._wait_link_local(new)
        return new

    def _start_hub(self, taps: list[str]) -> None:
        s = self.hub_settings
        argv = ["ip", "netns", "exec", self.bridge_netns, sys.executable, NETHUB, *taps,
                *(f"--{key}={value}" for key, value in s.items())]
        self.hub = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        self.procs.append(self.hub)
        assert self.hub.stdout is not None
        self.hub_out = Lines(self.hub.stdout)
        try:
            self.hub_out.wait_for("ready", HUB_START)
        except AssertionError:
            err = self.hub.stderr.read() if self.hub.poll() is not None else ""
            raise RuntimeError(f"nethub did not start: {err.strip()}") from None

    def _hub_command(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.hub is not None and self.hub.stdin is not None and self.hub_out
        self.hub.stdin.write(json.dumps(req) + "\n")
        self.hub.stdin.flush()
        return self.hub_out.wait_json(lambda r: "ok" in r or "stats" in r or "error" in r, 5)

    def impair(self, **settings: Any) -> dict[str, Any]:
        """Change delay/jitter/loss/dup/reorder (seconds, probabilities), or
        `partition=[[1, 2], [3]]` (host numbers; None heals)."""
        reply = self._hub_command(settings)
        if "error" in reply:
            raise ValueError(reply["error"])
        return reply["ok"]

    def hub_stats(self) -> dict[str, int]:
        return self._hub_command({"stats": True})["stats"]
