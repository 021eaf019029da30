"""Registration by RFC 2136 DNS UPDATE, signed with TSIG (RFC 8945).

One message publishes the whole presence (host addresses, SRV, TXT, and the PTR that
lists the instance under _presence._tcp.D): the server applies it atomically, so a
browser never sees an SRV without its TXT. The heartbeat re-sends the same message
(replacing is idempotent); withdrawal deletes the PTR rdata and the instance.
"""

from __future__ import annotations

import ipaddress

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.tsig
import dns.update

from xmppll.discovery.widearea.config import Server, TsigKey
from xmppll.discovery.widearea.records import (
    instance_name,
    service_name,
    txt_strings,
    zone_name,
)
from xmppll.errors import PermissionFailure, TimeoutFailure, UnavailableError, XmpplError

TIMEOUT = 5.0  # s for one UPDATE round trip (measured: 3-6 ms on a LAN)


def _message(domain: str, key: TsigKey | None) -> dns.update.UpdateMessage:
    update = dns.update.UpdateMessage(zone_name(domain))
    if key is not None:
        update.use_tsig(dns.tsig.Key(key.name, key.secret, key.algorithm))
    return update


def publication(domain: str, key: TsigKey | None, *, name: str, host: dns.name.Name,
                addresses: list[str], port: int, txt: bytes, ttl: int,
                own_host: bool) -> dns.update.UpdateMessage:
    """Everything a browser needs, in one atomic UPDATE. `own_host`: the host name is
    ours to publish (its A/AAAA are replaced), else it already exists (--dns-host)."""
    update = _message(domain, key)
    instance = instance_name(name, domain)
    if own_host:
        v4 = [a for a in addresses if ipaddress.ip_address(a).version == 4]
        v6 = [a for a in addresses if ipaddress.ip_address(a).version == 6]
        for rdtype, found in (("A", v4), ("AAAA", v6)):
            if found:
                update.replace(host, ttl, rdtype, *found)
            else:
                update.delete(host, rdtype)
    update.replace(instance, ttl, "SRV", f"0 0 {port} {host.to_text()}")
    update.replace(instance, ttl, dns.rdtypes.ANY.TXT.TXT(
        dns.rdataclass.IN, dns.rdatatype.TXT, txt_strings(txt)))
    update.add(service_name(domain), ttl, "PTR", instance.to_text())
    return update


def removal(domain: str, key: TsigKey | None, *, name: str,
            host: dns.name.Name | None) -> dns.update.UpdateMessage:
    """Delete the PTR that lists `name`, every record at its instance name and, when
    we published it, the host's address records."""
    update = _message(domain, key)
    instance = instance_name(name, domain)
    update.delete(service_name(domain), "PTR", instance.to_text())
    update.delete(instance)
    if host is not None:
        update.delete(host, "A")
        update.delete(host, "AAAA")
    return update


def send(update: dns.message.Message, server: Server, domain: str, key: TsigKey | None,
         timeout: float = TIMEOUT) -> None:
    """Send one UPDATE; every way it can fail is one sentence and an exit code."""
    where = f"DNS server {server}"
    keyname = f"TSIG key {key.name!r}" if key else "no TSIG key"
    try:
        response = dns.query.udp(update, server.address, timeout=timeout, port=server.port)
        if response.flags & dns.flags.TC:
            response = dns.query.tcp(update, server.address, timeout=timeout,
                                     port=server.port)
    except dns.exception.Timeout:
        raise TimeoutFailure(f"{domain}: no answer from the {where} in {timeout:g} s") \
            from None
    except dns.tsig.PeerBadKey:
        raise PermissionFailure(f"{domain}: the {where} does not know {keyname} (BADKEY)") \
            from None
    except dns.tsig.PeerBadSignature:
        raise PermissionFailure(f"{domain}: the {where} rejected the signature of "
                                f"{keyname}: wrong secret or algorithm (BADSIG)") from None
    except dns.tsig.PeerBadTime:
        raise PermissionFailure(f"{domain}: the {where} rejected the time of the signature "
                                "(BADTIME): check this machine's clock") from None
    except (dns.exception.DNSException, ValueError) as exc:
        raise UnavailableError(f"{domain}: bad answer from the {where}: {exc}") from None
    except OSError as exc:
        raise UnavailableError(f"{domain}: cannot reach the {where}: "
                               f"{exc.strerror or exc}") from None
    rcode = response.rcode()
    if rcode == dns.rcode.NOERROR:
        return
    text = dns.rcode.to_text(rcode)
    if rcode == dns.rcode.REFUSED:
        why = "the update is unsigned" if key is None else \
            f"{keyname} may not update this zone"
        raise PermissionFailure(f"{domain}: the {where} refused the update (REFUSED: {why})")
    if rcode == dns.rcode.NOTAUTH:
        raise PermissionFailure(f"{domain}: the {where} is not authoritative for the zone "
                                f"or did not accept {keyname} (NOTAUTH)")
    if rcode == dns.rcode.NOTZONE:
        raise PermissionFailure(f"{domain}: a record is outside the zone (NOTZONE): "
                                "check --dns-host")
    raise XmpplError(f"{domain}: the {where} failed the update ({text})",
                     UnavailableError.exit_code)
