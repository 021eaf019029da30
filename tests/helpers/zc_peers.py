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
import socket
from functools import partial

from lanpeer import host_label, numbered_infos, peer_txt, register_all, until_signal
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncZeroconf


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("count", type=int)
    parser.add_argument("--prefix", default="peer")
    parser.add_argument("--server", help="SRV target label [default: the host label]")
    parser.add_argument("--host-ttl", type=int, default=120)
    parser.add_argument("--msg-bytes", type=int, default=0)
    parser.add_argument("--port", type=int, default=20000)
    args = parser.parse_args()
    azc = AsyncZeroconf(ip_version=IPVersion.All)
    # The burst test is about the receiver's buffer, not ours.
    for reader in azc.zeroconf.engine.readers:
        reader.sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 4 << 20)
    infos = numbered_infos(args.count, args.prefix, args.port,
                           f"{args.server or host_label()}.local.",
                           partial(peer_txt, msg_bytes=args.msg_bytes), host_ttl=args.host_ttl)
    await register_all(azc, infos)
    print(f"ready {len(infos)}", flush=True)
    await until_signal()
    await azc.async_unregister_all_services()
    print(f"withdrawn {len(infos)}", flush=True)
    await azc.async_close()


if __name__ == "__main__":
    asyncio.run(main())
