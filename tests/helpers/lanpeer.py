"""What the helpers that publish `_presence._tcp` peers with python-zeroconf share: this
host's label and addresses, XEP-0174 TXT rdata, numbered peers, registration without
probing, and waiting for SIGTERM/SIGINT. Imported by `publish_many.py`, `zc_peers.py`,
`raw_peer.py` and `dying_peer.py` (their folder is on sys.path when they run); run those
inside a host of the virtual LAN only.

ifaddr and zeroconf are imported where they are used, so a helper that does not publish
does not pay for them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import socket
from collections.abc import Callable, Iterable
from typing import Any

SERVICE_TYPE = "_presence._tcp.local."


def host_label() -> str:
    return socket.gethostname().split(".")[0]


def addresses() -> list[str]:
    """This host's addresses, IPv4 and IPv6, loopback left out."""
    import ifaddr

    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            if not ipaddress.ip_address(text).is_loopback:
                found.append(text)
    return found


def txt_rdata(strings: Iterable[bytes]) -> bytes:
    """TXT rdata: each string behind its length byte."""
    return b"".join(bytes((len(s),)) + s for s in strings)


def peer_txt(port: int, index: int, msg_bytes: int = 0) -> bytes:
    """The TXT of numbered peer `index`, XEP-0174 order (txtvers=1 first); with
    `msg_bytes`, its msg padded to that many bytes (at most 250)."""
    msg = f"peer {index} ".ljust(msg_bytes, "x")[:250] if msg_bytes else f"peer {index}"
    return txt_rdata([b"txtvers=1", b"status=avail", f"port.p2pj={port}".encode(),
                      f"1st=Peer{index}".encode(), b"last=Many", f"msg={msg}".encode()])


def numbered_infos(count: int, prefix: str, port: int, server: str,
                   txt: Callable[[int, int], bytes], **extra: Any) -> list[Any]:
    """ServiceInfos for `<prefix><i>@<host label>`, i zero-padded, on port `port + i`."""
    from zeroconf import ServiceInfo

    label = host_label()
    addrs = addresses()
    width = len(str(max(count - 1, 0)))
    return [
        ServiceInfo(
            SERVICE_TYPE,
            f"{prefix}{i:0{width}d}@{label}.{SERVICE_TYPE}",
            port=port + i,
            properties=txt(port + i, i),
            server=server,
            parsed_addresses=addrs,
            **extra,
        )
        for i in range(count)
    ]


async def register_all(azc: Any, infos: list[Any]) -> None:
    """Register and announce every info, skipping probing (cooperating_responders)."""
    tasks = await asyncio.gather(
        *(azc.async_register_service(info, cooperating_responders=True) for info in infos)
    )
    await asyncio.gather(*tasks)


async def until_signal() -> None:
    """Return once SIGTERM or SIGINT arrives."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
