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

from lanpeer import host_label, numbered_infos, peer_txt, register_all, until_signal
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncZeroconf


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("count", type=int)
    parser.add_argument("--prefix", default="peer")
    parser.add_argument("--port", type=int, default=5298)
    args = parser.parse_args()
    azc = AsyncZeroconf(ip_version=IPVersion.All)
    infos = numbered_infos(args.count, args.prefix, args.port, f"{host_label()}.local.",
                           peer_txt)
    await register_all(azc, infos)
    print(f"ready {len(infos)}", flush=True)
    await until_signal()
    await azc.async_unregister_all_services()
    await azc.async_close()


if __name__ == "__main__":
    asyncio.run(main())
