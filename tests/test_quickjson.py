"""quickjson: the C codec of the json package without its import cost (issue 14) must
read and write exactly what json does, and say why a document is not JSON."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xmppll import quickjson

SCALARS = (st.none() | st.booleans() | st.integers() | st.text()
           | st.floats(allow_nan=False, allow_infinity=True))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(), inner, max_size=4), max_leaves=20)


@pytest.fixture(params=["C codec", "json package"])
def codec(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "json package":
        monkeypatch.setattr(quickjson, "_C", None)  # an interpreter whose _json differs
    else:
        assert quickjson._C is not None, "this interpreter's _json was not usable"
    return request.param


@given(value=VALUES)
def test_writes_and_reads_what_json_does(value: object) -> None:
    for ascii_only in (True, False):
        text = quickjson.dumps(value, ensure_ascii=ascii_only)
        assert text == json.dumps(value, ensure_ascii=ascii_only)
        assert quickjson.loads(text + "\n") == json.loads(text)
        assert quickjson.loads(text.encode()) == json.loads(text)


def test_the_fallback_agrees(codec: str) -> None:
    record = {"body": "é <&> \u2028 😀", "seq": 3, "ok": True, "x": None, "f": 2.5}
    assert quickjson.dumps(record, ensure_ascii=False) == json.dumps(record, ensure_ascii=False)
    assert quickjson.loads(json.dumps(record)) == record
    assert math.isnan(quickjson.loads('{"a": NaN}')["a"])


@pytest.mark.parametrize("bad", ["", "{", '{"a": 1} x', "nul", '"\x01"', "[1,]"])
def test_not_json_is_a_value_error_saying_where(codec: str, bad: str) -> None:
    with pytest.raises(ValueError, match=r"line 1 column"):
        quickjson.loads(bad)


def test_what_json_cannot_write_is_a_type_error(codec: str) -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        quickjson.dumps({"a": object()})
