"""JSON for the commands that only talk to a running agent, without the json package's
import cost.

`import json` pulls in re and enum: about 5 ms on this project's machines, half of the
10 ms a command through the agent may take beyond the interpreter's own start
(issue 14). The codec itself is C, in _json, and needs neither: this module drives it
the way json.JSONDecoder and json.JSONEncoder do (json.decoder.py and json.encoder.py
set the same attributes and arguments), and uses the json package when this
interpreter's _json is missing or differs. Output is byte for byte json.dumps's.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_CONSTANTS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


class _Decoding:
    """The attributes _json.make_scanner reads from a json.JSONDecoder."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_CONSTANTS.__getitem__)


def _unserializable(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _c_codec() -> tuple[Any, Any, Any] | None:
    """(scan, encode, encode_ascii) from _json, or None when it cannot be used here."""
    try:
        import _json

        scan = _json.make_scanner(_Decoding())
        encoders = tuple(
            _json.make_encoder(None, _unserializable, strings, None, ": ", ", ",
                               False, False, True)
            for strings in (_json.encode_basestring, _json.encode_basestring_ascii))
        if "".join(encoders[0]({"a": [1, 2.5, None, "é"]}, 0)) != '{"a": [1, 2.5, null, "é"]}':
            return None
        return scan, *encoders
    except (ImportError, AttributeError, TypeError):
        return None


_C = _c_codec()
_SPACE = " \t\n\r"


def loads(text: str | bytes) -> Any:
    """json.loads for one document; ValueError (json.JSONDecodeError from the json
    package) when it is not one."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if _C is None:
        import json

        return json.loads(text)
    doc = text.strip(_SPACE)
    try:
        value, end = _C[0](doc, 0)
    except StopIteration:
        end = -1
    if end != len(doc):
        import json

        return json.loads(text)  # raises, saying where and why
    return value


def dumps(value: Any, *, ensure_ascii: bool = True) -> str:
    """json.dumps with its default separators."""
    if _C is None:
        import json

        return json.dumps(value, ensure_ascii=ensure_ascii)
    return "".join(_C[2 if ensure_ascii else 1](value, 0))
