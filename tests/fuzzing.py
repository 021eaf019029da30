"""Fuzz targets shared by the CI fuzz tests (small fixed budget) and bench/fuzz.py
(long runs): each takes bytes and must either succeed or fail the documented way.

A target that raises anything else has found a bug; the input is saved under
tests/fuzz_corpus/ and replayed by the regression test forever after.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from xmppll.discovery.presence import decode_txt, peer_fields
from xmppll.errors import XmpplError
from xmppll.xmpp.stanza import to_json
from xmppll.xmpp.stream import Stanza, StreamParser

CORPUS = Path(__file__).parent / "fuzz_corpus"
SEEDS = Path(__file__).parent / "fixtures" / "libpurple"
HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' from='a@b' to='c@d'>")


def stream_target(data: bytes, chunk: int = 7) -> None:
    """Feed `data` in small chunks; a StreamError (or any XmpplError) is the only way
    to refuse. Every stanza that comes out must turn into a JSON record."""
    parser = StreamParser(max_stanza_bytes=64 * 1024, max_depth=32)
    try:
        for start in range(0, len(data), chunk):
            for event in parser.feed(data[start : start + chunk]):
                if isinstance(event, Stanza):
                    to_json(event.element, event.xml)
    except XmpplError:
        return


def txt_target(data: bytes) -> None:
    """Any TXT rdata decodes to str keys and str-or-None values."""
    txt = decode_txt(data)
    assert all(isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in txt.items())
    peer_fields(txt)


TARGETS: dict[str, Callable[[bytes], None]] = {"stream": stream_target, "txt": txt_target}


def seeds(target: str) -> list[bytes]:
    """Inputs to mutate: real libpurple streams for the parser, real TXT records."""
    if target == "stream":
        return [p.read_bytes() for p in sorted(SEEDS.glob("*.xml"))] + [
            HEADER + b"<message to='x'><body>hi &amp; &#233;</body></message></stream:stream>"
        ]
    return [b"\x09txtvers=1\x0cstatus=avail\x0emsg=Out \xc3\xa9\x05nick=", b"\x00"]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random edit: flip, insert, delete, duplicate a slice, or splice in a token
    that XML parsers treat specially."""
    tokens = [b"<!DOCTYPE x [<!ENTITY a 'b'>]>", b"&a;", b"<?pi x?>", b"\x00", b"\xff\xfe",
              b"]]>", b"<![CDATA[", b"</stream:stream>", b"<stream:stream>", b"\xc3", b"=",
              b"\xff"]
    data = bytearray(data)
    op = rng.randrange(5)
    pos = rng.randrange(len(data) + 1)
    if op == 0 and data:
        data[min(pos, len(data) - 1)] ^= 1 << rng.randrange(8)
    elif op == 1:
        data[pos:pos] = bytes([rng.randrange(256)])
    elif op == 2 and data:
        del data[pos : pos + rng.randrange(1, 16)]
    elif op == 3 and data:
        end = min(len(data), pos + rng.randrange(1, 64))
        data[pos:pos] = data[pos:end] * rng.randrange(1, 4)
    else:
        data[pos:pos] = rng.choice(tokens)
    return bytes(data)


def run(target: str, iterations: int, seed: int = 0) -> int:
    """Mutation fuzzing; returns the number of inputs tried. A crash is saved to the
    corpus (so it becomes a regression test) and re-raised."""
    rng = random.Random(seed)
    pool = seeds(target)
    check = TARGETS[target]
    for i in range(iterations):
        data = pool[rng.randrange(len(pool))]
        for _ in range(rng.randrange(1, 4)):
            data = mutate(data, rng)
        try:
            check(data)
        except Exception:
            CORPUS.mkdir(exist_ok=True)
            (CORPUS / f"{target}-{seed}-{i}.bin").write_bytes(data)
            raise
        if len(pool) < 64 and rng.random() < 0.05:
            pool.append(data)
    return iterations
