"""Peers published by python-zeroconf from one process, for the agent's cache tests.

Run inside a host of the virtual LAN (never in the machine's own namespace):

    python tests/helpers/zc_peers.py COUNT [--prefix peer] [--server LABEL]
                                     [--host-ttl S] [--msg-bytes N] [--port P]

Publishes `<prefix><i>@<host label>` for i in 0..COUNT-1 (zero-padded) with SRV target
`<LABEL>.local.` (default: the host label) and this host's addresses, TXT in the
XEP-0174 shape (txtvers=1 first). `--host-ttl` sets the TTL of SRV and A/AAAA only:
PTR and TXT keep python-zeroconf's long default (4500 s), as a real peer's do, so a
test can tell "dropped when SRV/A expired" from "dropped when the PTR did".

Registration skips probing (cooperating_responders=True), so 1000 names are up within
a second or two. Prints `ready N` once all are announced. On SIGTERM/SIGINT it sends
goodbyes for all of them, prints `withdrawn N` and exits; SIGKILL leaves them as ghosts.
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


def txt(port: int, index: int, msg_bytes: int) -> bytes:
    msg = f"peer {index} ".ljust(msg_bytes, "x")[:250] if msg_bytes else f"peer {index}"
    strings = [b"txtvers=1", b"status=avail", f"port.p2pj={port}".encode(),
               f"1st=Peer{index}".encode(), b"last=Many", f"msg={msg}".encode()]
    return b"".join(bytes((len(s),)) + s for s in strings)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("count", type=int)
    parser.add_argument("--prefix", default="peer")
    parser.add_argument("--server", help="SRV target label [default: the host label]")
    parser.add_argument("--host-ttl", type=int, default=120)
    parser.add_argument("--msg-bytes", type=int, default=0)
    parser.add_argument("--port", type=int, default=20000)
    args = parser.parse_args()
    label = socket.gethostname().split(".")[0]
    server = f"{args.server or label}.local."
    addrs = addresses()
    width = len(str(max(args.count - 1, 0)))
    azc = AsyncZeroconf(ip_version=IPVersion.All)
    # The burst test is about the receiver's buffer, not ours.
    for reader in azc.zeroconf.engine.readers:
        reader.sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 4 << 20)
    infos = [
        ServiceInfo(
            SERVICE_TYPE,
            f"{args.prefix}{i:0{width}d}@{label}.{SERVICE_TYPE}",
            port=args.port + i,
            properties=txt(args.port + i, i, args.msg_bytes),
            server=server,
            parsed_addresses=addrs,
            host_ttl=args.host_ttl,
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
    print(f"withdrawn {len(infos)}", flush=True)
    await azc.async_close()


if __name__ == "__main__":
    asyncio.run(main())
