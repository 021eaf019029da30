"""The TXT codec (xmppll/presence.py): strict on what we publish, lenient on what we read.

Property tests cover the large input spaces (any presence, any bytes off the wire);
the examples pin each rule of the record format that peers depend on.
"""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xmppll.discovery.presence import (
    MAX_RECORD,
    MAX_STRING,
    STATUSES,
    Presence,
    TruncatedWarning,
    check_status,
    decode_txt,
    encode_txt,
    parse_txt_option,
    peer_fields,
    split_txt,
)
from xmppll.errors import DataError, UsageError

CAPS = ("https://github.com/xmppll/xmppll", "sha-1", "3BmHSIR757S3gbiPT9uGOptresE=")
RESERVED = {"txtvers", "status", "port.p2pj", "msg", "node", "hash", "ver",
            "1st", "last", "nick", "email", "jid"}


def rdata(*strings: bytes) -> bytes:
    """A TXT rdata from character-strings, as they appear on the wire."""
    return b"".join(bytes((len(s),)) + s for s in strings)


def encode_quietly(presence: Presence, caps: tuple[str, str, str] | None = None) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncatedWarning)
        return encode_txt(presence, caps)


# --- strategies ----------------------------------------------------------------------

# Any text that can be encoded as UTF-8 (no lone surrogates).
texts = st.text(st.characters(exclude_categories=("Cs",)))
short_texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=8)
ports = st.integers(1, 65535)
# Keys `--txt` accepts: printable ASCII, no '=', not set by another option.
extra_keys = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="="),
    min_size=1, max_size=10,
).filter(lambda k: k.lower() not in RESERVED)


@st.composite
def presences(draw: st.DrawFn, value: st.SearchStrategy[str] = texts) -> Presence:
    maybe = st.none() | value
    return Presence(
        port=draw(ports),
        status=draw(st.sampled_from(STATUSES)),
        msg=draw(maybe),
        nick=draw(maybe),
        first=draw(maybe),
        last=draw(maybe),
        email=draw(maybe),
        jid=draw(maybe),
        extra=draw(st.lists(st.tuples(extra_keys, st.none() | value), max_size=4)),
        personal=draw(st.booleans()),
    )


def expected_txt(p: Presence, caps: tuple[str, str, str] | None) -> dict[str, str | None]:
    """What a reader must decode from our record (msg aside)."""
    txt: dict[str, str | None] = {"txtvers": "1", "status": p.status, "port.p2pj": str(p.port)}
    if p.personal:
        txt["1st"] = p.first or ""
        txt["last"] = p.last or ""
        for key, value in (("nick", p.nick), ("email", p.email), ("jid", p.jid)):
            if value is not None:
                txt[key] = value
    if caps:
        txt.update(node=caps[0], hash=caps[1], ver=caps[2])
    for key, value in p.extra:
        txt.setdefault(key.lower(), value)
    return txt


# --- encode: properties ----------------------------------------------------------------


@given(presences(short_texts), st.none() | st.just(CAPS))
def test_round_trip_of_values_that_fit(p: Presence, caps: tuple[str, str, str] | None) -> None:
    record = encode_quietly(p, caps)
    txt = decode_txt(record)
    want = expected_txt(p, caps)
    if p.msg is not None:
        want["msg"] = p.msg
    assert {k: txt[k] for k in want} == want
    assert set(txt) == set(want)
    fields = peer_fields(txt)
    assert fields["status"] == p.status
    assert fields["msg"] == p.msg
    if p.personal:
        assert (fields["first"], fields["last"]) == (p.first or "", p.last or "")
        assert (fields["nick"], fields["email"], fields["jid"]) == (p.nick, p.email, p.jid)
    else:
        assert fields["first"] is fields["last"] is fields["nick"] is None
        assert fields["email"] is fields["jid"] is None
    assert fields["caps"] == (dict(zip(("node", "hash", "ver"), caps, strict=True))
                              if caps else None)


@settings(max_examples=300)
@given(presences(), st.none() | st.just(CAPS))
def test_any_presence_is_published_within_limits_or_refused(
    p: Presence, caps: tuple[str, str, str] | None
) -> None:
    """Whatever the user types: a well-formed record, or a DataError, never a mangled
    record; only msg may shrink, at a character boundary, with a warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            record = encode_txt(p, caps)
        except DataError as exc:
            message = str(exc)
            assert str(MAX_STRING) in message or str(MAX_RECORD) in message, message
            return
    strings = split_txt(record)
    assert len(record) <= MAX_RECORD
    assert record == rdata(*strings), "every length byte must match its string"
    assert all(len(s) <= MAX_STRING for s in strings)
    assert strings[:3] == [b"txtvers=1", f"status={p.status}".encode(),
                           f"port.p2pj={p.port}".encode()]
    txt = decode_txt(record)
    want = expected_txt(p, caps)
    assert {k: txt.get(k, "<missing>") for k in want} == want
    truncated = [w for w in caught if issubclass(w.category, TruncatedWarning)]
    if p.msg is None:
        assert "msg" not in txt
        assert not truncated
    else:
        raw = next(s for s in strings if s.startswith(b"msg="))[4:]
        got = raw.decode("utf-8")  # strict: never cut inside a character
        assert txt["msg"] == got
        assert p.msg.startswith(got)
        assert (got != p.msg) == bool(truncated)


@given(st.sampled_from(["nick", "1st", "last", "email", "jid"]), st.integers(0, 150))
def test_a_string_over_255_bytes_is_refused_naming_its_key(key: str, over: int) -> None:
    field = {"1st": "first"}.get(key, key)
    size = MAX_STRING - len(f"{key}=") + 1 + over  # key=value is 256 bytes or more
    p = Presence(port=5298, **{field: "x" * size})
    with pytest.raises(DataError, match=f"'{key}'.*255") as caught:
        encode_txt(p)
    assert caught.value.exit_code == 65


def test_limit_is_in_bytes_with_the_key() -> None:
    fits = "é" * 125 + "x"  # "nick=" + 251 bytes = 256: one byte too many
    with pytest.raises(DataError, match="'nick'"):
        encode_txt(Presence(port=1, nick=fits))
    record = encode_txt(Presence(port=1, nick="é" * 125))  # 5 + 250 = 255
    assert decode_txt(record)["nick"] == "é" * 125


def test_an_extra_value_over_255_bytes_is_refused_naming_its_key() -> None:
    p = Presence(port=5298, extra=[("k", "v" * 300)])
    with pytest.raises(DataError, match="'k'"):
        encode_txt(p)


def test_a_long_msg_is_cut_at_a_utf8_boundary_with_a_warning() -> None:
    msg = "🎉" * 100  # 400 bytes, 4 per character
    with pytest.warns(TruncatedWarning, match="cut"):
        record = encode_txt(Presence(port=5298, msg=msg))
    strings = split_txt(record)
    cut = next(s for s in strings if s.startswith(b"msg="))
    assert len(cut) <= MAX_STRING
    text = cut[4:].decode("utf-8")  # strict: no half character left
    assert msg.startswith(text)
    assert len(text) == (MAX_STRING - 4) // 4


def test_msg_is_cut_to_the_room_the_record_has_left() -> None:
    p = Presence(port=5298, first="F" * 150, last="L" * 150, msg="m" * 200)
    with pytest.warns(TruncatedWarning):
        record = encode_txt(p)
    assert len(record) == MAX_RECORD
    assert decode_txt(record)["msg"] == "m" * (MAX_RECORD - len(encode_txt(
        Presence(port=5298, first="F" * 150, last="L" * 150))) - 1 - 4)


def test_no_room_at_all_for_msg_is_refused_with_the_limit() -> None:
    """Found by hypothesis: the other fields leave fewer than the 4 bytes of `msg=`."""
    fill = Presence(port=5298, first="F" * 150, last="L" * 150)
    used = len(encode_txt(fill))
    fill.nick = "n" * (MAX_RECORD - used - len("nick=") - 1 - 2)  # 2 bytes left
    assert len(encode_txt(fill)) == MAX_RECORD - 2
    fill.msg = "hello"
    with pytest.raises(DataError, match="400") as caught:
        encode_txt(fill)
    assert caught.value.exit_code == 65


def test_a_msg_that_fits_is_not_cut() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record = encode_txt(Presence(port=5298, msg="m" * 200))
    assert decode_txt(record)["msg"] == "m" * 200


def test_a_record_over_400_bytes_is_refused() -> None:
    p = Presence(port=5298, nick="n" * 200, email="e" * 200)
    with pytest.raises(DataError, match="400") as caught:
        encode_txt(p)
    assert caught.value.exit_code == 65


def test_order_is_txtvers_status_port_then_the_rest() -> None:
    p = Presence(port=5562, status="dnd", msg="busy", nick="Jul", first="Juliet",
                 last="Capulet", email="j@c", jid="j@x", extra=[("Vc", "!"), ("flag", None)])
    strings = split_txt(encode_txt(p, CAPS))
    keys = [s.split(b"=")[0].decode() for s in strings]
    assert keys[:3] == ["txtvers", "status", "port.p2pj"]
    assert strings[:3] == [b"txtvers=1", b"status=dnd", b"port.p2pj=5562"]
    assert set(keys) == {"txtvers", "status", "port.p2pj", "1st", "last", "nick", "msg",
                         "email", "jid", "node", "hash", "ver", "Vc", "flag"}
    assert b"flag" in strings, "a bare key is a boolean attribute, sent without '='"


def test_no_personal_drops_personal_data() -> None:
    p = Presence(port=5298, nick="n", first="f", last="l", email="e", jid="j",
                 msg="hi", personal=False)
    txt = decode_txt(encode_txt(p))
    assert set(txt) == {"txtvers", "status", "port.p2pj", "msg"}


def test_first_and_last_are_always_there_when_personal() -> None:
    txt = decode_txt(encode_txt(Presence(port=5298)))
    assert txt == {"txtvers": "1", "status": "avail", "port.p2pj": "5298", "1st": "",
                   "last": ""}


# --- options and status words ----------------------------------------------------------


@pytest.mark.parametrize("word", ["avail", "AWAY", " dnd "])
def test_status_words(word: str) -> None:
    assert check_status(word) == word.strip().lower()


@pytest.mark.parametrize("word", ["bogus", "", "available", "xa"])
def test_invalid_status_is_a_usage_error(word: str) -> None:
    with pytest.raises(UsageError, match="avail, away, dnd") as caught:
        Presence(port=1, status=word)
    assert caught.value.exit_code == 64


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("k=v", ("k", "v")), ("k=", ("k", "")), ("k", ("k", None)), ("k=a=b", ("k", "a=b")),
     ("Vc=!", ("Vc", "!"))],
)
def test_txt_option(text: str, parsed: tuple[str, str | None]) -> None:
    assert parse_txt_option(text) == parsed


@pytest.mark.parametrize("text", ["=x", "", "k y=1", "ké=1", "status=away", "MSG=x",
                                  "port.p2pj=1"])
def test_malformed_or_reserved_txt_option_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_txt_option(text)
    assert caught.value.exit_code == 64


# --- decode ----------------------------------------------------------------------------


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_decode_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    txt = decode_txt(data)
    for key, value in txt.items():
        assert isinstance(key, str) and key
        assert key == key.lower()
        assert value is None or isinstance(value, str)
    fields = peer_fields(txt)
    assert fields["status"] in STATUSES


@given(st.lists(st.binary(min_size=0, max_size=255), max_size=20))
def test_decode_of_well_formed_strings(strings: list[bytes]) -> None:
    """First occurrence of each (lower-cased) key wins; strings without a key vanish."""
    txt = decode_txt(rdata(*strings))
    want: dict[str, str | None] = {}
    for s in strings:
        key, sep, value = s.partition(b"=")
        if key:
            name = key.decode("utf-8", "backslashreplace").lower()
            want.setdefault(name, value.decode("utf-8", "backslashreplace") if sep else None)
    assert txt == want


def test_keys_are_case_insensitive() -> None:
    txt = decode_txt(rdata(b"TxtVers=1", b"STATUS=away", b"Port.P2PJ=5298"))
    assert txt == {"txtvers": "1", "status": "away", "port.p2pj": "5298"}
    assert peer_fields(txt)["status"] == "away"


def test_first_occurrence_wins_whatever_the_case() -> None:
    txt = decode_txt(rdata(b"Status=away", b"status=dnd", b"STATUS=avail"))
    assert txt == {"status": "away"}


def test_bare_key_and_empty_value_are_kept_apart() -> None:
    txt = decode_txt(rdata(b"flag", b"msg="))
    assert txt == {"flag": None, "msg": ""}
    assert peer_fields(txt)["msg"] == ""


def test_values_that_are_not_utf8_never_crash() -> None:
    txt = decode_txt(rdata(b"msg=\xff\xfehi", b"1st=Jos\xe9", b"n\xffck=x"))
    assert txt["msg"].endswith("hi")
    assert txt["1st"].startswith("Jos")
    assert len(txt) == 3


def test_unknown_keys_are_kept() -> None:
    txt = decode_txt(rdata(b"txtvers=1", b"vc=!", b"phsh=abc", b"x-custom=1"))
    assert peer_fields(txt)["txt"] == {"txtvers": "1", "vc": "!", "phsh": "abc",
                                       "x-custom": "1"}


def test_strings_starting_with_equals_are_ignored() -> None:
    assert decode_txt(rdata(b"=orphan", b"status=away", b"=")) == {"status": "away"}


@pytest.mark.parametrize("data", [b"\x00", b"", b"\x00\x00\x00"])
def test_empty_records_decode_to_nothing(data: bytes) -> None:
    assert decode_txt(data) == {}


def test_a_truncated_last_string_is_kept_as_far_as_it_goes() -> None:
    assert decode_txt(b"\x09txtvers=1\x0cstatus=aw") == {"txtvers": "1", "status": "aw"}


def test_missing_or_unknown_status_is_avail() -> None:
    assert peer_fields({})["status"] == "avail"
    assert peer_fields({"status": "xa"})["status"] == "avail"
    assert peer_fields({"status": None})["status"] == "avail"
    assert peer_fields({"status": "DND"})["status"] == "dnd"


def test_libpurple_wire_order_decodes() -> None:
    """libpurple sends txtvers last and caps as node/ver without hash (transcript
    libpurple-txt-wire-order.txt, sniffed from finch)."""
    record = rdata(b"msg=Out to lunch", b"vc=!", b"ver=2.14.12", b"node=libpurple",
                   b"status=dnd", b"port.p2pj=54283", b"last=Montague", b"1st=Romeo",
                   b"txtvers=1")
    fields = peer_fields(decode_txt(record))
    assert fields["status"] == "dnd"
    assert fields["msg"] == "Out to lunch"
    assert (fields["first"], fields["last"]) == ("Romeo", "Montague")
    assert fields["nick"] is fields["email"] is fields["jid"] is None
    assert fields["caps"] == {"node": "libpurple", "hash": None, "ver": "2.14.12"}
    assert fields["txt"]["txtvers"] == "1"
    assert fields["txt"]["port.p2pj"] == "54283"
    assert fields["txt"]["vc"] == "!"
    assert list(fields["txt"])[0] == "msg", "wire order is kept in the raw txt"
