"""Publish N presence instances in a DNS-SD zone with signed UPDATEs (50 per message,
over TCP): the bench's wide-area population, as xmppll's own update module builds them.

    python dns_publish_many.py SERVER KEYFILE ZONE N ADDRESS [TTL]
"""

import sys

import dns.name
import dns.query
import dns.tsig

from xmppll.discovery.presence import Presence, encode_txt
from xmppll.discovery.widearea import config, records, update

server, keyfile, zone, count, address = sys.argv[1:6]
ttl = int(sys.argv[6]) if len(sys.argv) > 6 else 60
key = config.load_key(keyfile)
txt = records.with_seen(encode_txt(Presence(port=5298, msg="bench")), ttl)
host = dns.name.from_text(f"bench.{zone}")
for start in range(0, int(count), 50):
    message = None
    for i in range(start, min(start + 50, int(count))):
        one = update.publication(zone, None, name=f"peer{i:04d}@bench", host=host,
                                 addresses=[address], port=5298 + i, txt=txt, ttl=ttl,
                                 own_host=(i == 0))
        if message is None:
            message = one
        else:
            message.update.extend(one.update)
    message.use_tsig(dns.tsig.Key(key.name, key.secret, key.algorithm))
    response = dns.query.tcp(message, server, timeout=10)
    assert response.rcode() == 0, response
print("published", count, flush=True)
