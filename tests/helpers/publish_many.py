"""Publish many `_presence._tcp` names from one process, as another implementation would.

Run inside a host of the virtual LAN (never in the machine's own namespace):

    python tests/helpers/publish_many.py COUNT [--prefix peer] [--port 5298]

Names are `<prefix><i>@<host label>` (i = 0..COUNT-1, zero-padded), each with its own
SRV port, the SRV target `<host label>.local.` and this host's addresses, and a TXT
record in the XEP-0174 order (txtvers=1 first). Registration skips python-zeroconf's
probing (cooperating_responders=True) so 200 names are up in well under a second.
Prints `ready N` once every name is registered and announced, then stays until
SIGTERM/SIGINT, and says goodbye on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import signal
import socket

import ifaddr
from zeroconf import IPVersion, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

SERVICE_TYPE = "_presence._tcp.local."


def addresses() -> list[str]:
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            if not ipaddress.ip_address(text).is_loopback:
                found.append(text)
    return found


def txt(port: int, index: int) -> bytes:
    strings = [b"txtvers=1", b"status=avail", f"port.p2pj={port}".encode(),
               f"1st=Peer{index}".encode(), b"last=Many", f"msg=peer {index}".encode()]
    return b"".join(bytes((len(s),)) + s for s in strings)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("count", type=int)
    parser.add_argument("--prefix", default="peer")
    parser.add_argument("--port", type=int, default=5298)
    args = parser.parse_args()
    label = socket.gethostname().split(".")[0]
    server = f"{label}.local."
    addrs = addresses()
    width = len(str(max(args.count - 1, 0)))
    azc = AsyncZeroconf(ip_version=IPVersion.All)
    infos = [
        ServiceInfo(
            SERVICE_TYPE,
            f"{args.prefix}{i:0{width}d}@{label}.{SERVICE_TYPE}",
            port=args.port + i,
            properties=txt(args.port + i, i),
            server=server,
            parsed_addresses=addrs,
        )
        for i in range(args.count)
    ]
    tasks = await asyncio.gather(
        *(azc.async_register_service(info, cooperating_responders=True) for info in infos)
    )
    await asyncio.gather(*tasks)
    print(f"ready {len(infos)}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await azc.async_unregister_all_services()
    await azc.async_close()


if __name__ == "__main__":
    asyncio.run(main())
