"""Dialling a peer: TCP to the addresses it advertises, from one of ours.

Strict peers (libpurple, `listen --verify strict`) accept a connection only from an
address our own record advertises, so the source address is chosen to match.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from xmppll.errors import TimeoutFailure, UnavailableError, XmpplError

CONNECT_AGAIN = 1.0  # s: a fresh connection attempt while the earlier ones get no answer
CONNECT_ATTEMPTS = 4  # at most this many attempts at once to one address
READ_LIMIT = 4 * 65536


class ConnectFailed(XmpplError):
    """No advertised address took the TCP connection: refused (69) or silent (75).
    The address may be stale, so the agent re-resolves and tries again."""


@dataclass
class Target:
    name: str
    addresses: list[str]
    port: int
    pin: str | None = None  # the TLS key it advertises (xmppll.xmpp.tls)


def _order(addresses: list[str]) -> list[str]:
    """IPv4 first: it needs no scope and every peer listens on it; then IPv6."""
    return sorted(addresses, key=lambda a: ":" in a)


def _source_for(address: str, sources: list[str]) -> str | None:
    """One of our advertised addresses in the same family (and for link-local, on the
    same interface), so strict peers that match the source to our record accept us."""
    v6 = ":" in address
    scope = address.partition("%")[2]
    for src in sources:
        if (":" in src) != v6:
            continue
        if v6 and src.lower().startswith("fe80") and scope and src.partition("%")[2] not in (
            "", scope
        ):
            continue
        return src.partition("%")[0] + (f"%{scope}" if v6 and scope and
                                         src.lower().startswith("fe80") else "")
    return None


async def connect(target: Target, *, timeout: float,
                  sources: list[str] | None = None
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """TCP to each advertised address in turn; the first that answers wins."""
    errors: list[str] = []
    refused = False
    for address in _order(target.addresses):
        local = _source_for(address, sources or [])
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                address, target.port, type=socket.SOCK_STREAM)
            local_addr = None
            if local:
                local_infos = await asyncio.get_running_loop().getaddrinfo(
                    local, 0, type=socket.SOCK_STREAM)
                local_addr = local_infos[0][4]
            family = infos[0][0]
            # `address`, not the resolved sockaddr[0]: that drops the `%scope` of a
            # link-local IPv6 address (the scope is in sockaddr[3]), and connect()
            # then fails with EINVAL.
            return await _open(address, target.port, family=family,
                               local_addr=local_addr or None, timeout=timeout)
        except ConnectionRefusedError:
            refused = True
            errors.append(f"{address}: refused")
        except TimeoutError:
            errors.append(f"{address}: no answer")
        except OSError as exc:
            errors.append(f"{address}: {exc.strerror or exc}")
    detail = "; ".join(errors) or "no address advertised"
    if refused:
        raise ConnectFailed(f"{target.name} refused the connection on port "
                            f"{target.port} ({detail})", UnavailableError.exit_code)
    raise ConnectFailed(f"cannot reach {target.name} on port {target.port} ({detail})",
                        TimeoutFailure.exit_code)


async def _open(address: str, port: int, *, family: int, local_addr: tuple | None,
                timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """open_connection, with a fresh attempt every CONNECT_AGAIN seconds while the
    earlier ones are unanswered; the first to connect wins. The kernel retries a lost
    SYN only after 1, 3, 7, 15 s: at 20 % loss each way about one connection in 60
    took longer than send's 10 s; with attempts side by side the wait stays near the
    round trip. A refusal is final at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    attempts: set[asyncio.Task] = set()
    failure: BaseException | None = None
    try:
        while True:
            if len(attempts) < CONNECT_ATTEMPTS:
                attempts.add(asyncio.ensure_future(asyncio.open_connection(
                    address, port, family=family, local_addr=local_addr,
                    limit=READ_LIMIT)))
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            done, attempts = await asyncio.wait(attempts, timeout=min(CONNECT_AGAIN, remaining),
                                                return_when=asyncio.FIRST_COMPLETED)
            won = None
            for task in done:
                exc = task.exception()
                if exc is None and won is None:
                    won = task.result()
                elif exc is None:
                    task.result()[1].close()
                elif isinstance(exc, ConnectionRefusedError):
                    raise exc
                else:
                    failure = exc
            if won is not None:
                return won
            if failure is not None and not attempts:
                raise failure
    finally:
        for task in attempts:
            task.cancel()
