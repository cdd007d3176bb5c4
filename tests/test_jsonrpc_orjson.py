"""The JSON-RPC layer's orjson fast path against the standard library's: same results, same errors.

Every input is parsed (and every message encoded) twice, once with orjson
and once with ``jsonrpc.orjson`` set to None (the standard library only);
the two must agree exactly: the same calls and error responses (compared
by ``repr``, so ``1``, ``1.0`` and ``True`` differ), and for encoding the
same exception or texts that read back as the same value.
"""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from camservice import jsonrpc

orjson = pytest.importorskip("orjson")

ODD_LITERALS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "1e-400",
    "-0",
    "-0.0",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "123456789012345678901234567890",
    "1.00000000000000000000001",
    "2.4703282292062327e-324",
    "1.7976931348623157e308",
    '"\\ud800"',
    '"\\udc00x"',
    '"\\ud83d\\ude00"',
    '"\\u0000"',
    '"\\u2028"',
    '"a\\\\ud800"',
    "[]",
    "{}",
    "true",
    "null",
]


def both(fn, *args):
    """``fn(*args)`` with orjson, then with the standard library only."""
    fast = _outcome(fn, *args)
    saved = jsonrpc.orjson
    jsonrpc.orjson = None
    try:
        slow = _outcome(fn, *args)
    finally:
        jsonrpc.orjson = saved
    return fast, slow


def _outcome(fn, *args):
    try:
        return "ok", fn(*args)
    except Exception as exc:  # noqa: BLE001  (the error itself is what is compared)
        return "raised", (type(exc), str(exc))


def frame_repr(frame: jsonrpc.Frame) -> str:
    return repr((frame.batch, frame.items))


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text()
    | st.sampled_from(["camera0", "get_camera_status", "2.0", "\ud800", "\u2028"])
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)


def _literal(value) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (ValueError, TypeError):
        return "null"


@st.composite
def json_texts(draw) -> str:
    """Text that is JSON, nearly JSON, or JSON with the literals the two parsers might read differently."""
    kind = draw(st.sampled_from(["request", "batch", "value", "odd", "object", "garbage"]))
    if kind == "request":
        request = {
            "jsonrpc": draw(st.sampled_from(["2.0", "2.0", "1.0", 2])),
            "method": draw(st.sampled_from(["ping", "get_camera_status"]) | values),
        }
        if draw(st.booleans()):
            request["params"] = draw(values)
        if draw(st.booleans()):
            request["id"] = draw(values)
        return json.dumps(request, ensure_ascii=draw(st.booleans()), allow_nan=True)
    if kind == "batch":
        items = draw(st.lists(json_texts(), max_size=3))
        return "[" + ",".join(items) + "]"
    if kind == "value":
        return json.dumps(draw(values), ensure_ascii=draw(st.booleans()), allow_nan=True)
    if kind == "odd":
        literal = draw(st.sampled_from(ODD_LITERALS))
        shape = draw(st.sampled_from(['{"jsonrpc":"2.0","method":"ping","id":%s}', '{"params":%s}', "[%s]", "%s"]))
        return shape % literal
    if kind == "object":  # duplicate keys, any order
        keys = draw(st.lists(st.sampled_from(["jsonrpc", "method", "id", "params", "a"]), max_size=6))
        parts = [f'"{k}":{draw(st.sampled_from(ODD_LITERALS) | values.map(_literal))}' for k in keys]
        return "{" + ",".join(parts) + "}"
    return draw(st.text(max_size=30))


@settings(max_examples=600, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_texts(), st.booleans())
def test_parse_frame_agrees_with_the_standard_library(text, as_bytes):
    data = text.encode("utf-8", "surrogatepass") if as_bytes else text
    fast, slow = both(jsonrpc.parse_frame, data)
    assert fast[0] == slow[0] == "ok"  # parse_frame never raises
    assert frame_repr(fast[1]) == frame_repr(slow[1])


@pytest.mark.parametrize("literal", ODD_LITERALS)
@pytest.mark.parametrize(
    "shape", ['{"jsonrpc":"2.0","method":"ping","id":%s}', '{"jsonrpc":"2.0","method":%s,"id":1}', "[%s]"]
)
def test_parse_frame_agrees_on_each_odd_literal(shape, literal):
    fast, slow = both(jsonrpc.parse_frame, shape % literal)
    assert frame_repr(fast[1]) == frame_repr(slow[1])


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.binary(max_size=40))
def test_parse_frame_agrees_on_arbitrary_bytes(data):
    fast, slow = both(jsonrpc.parse_frame, data)
    assert frame_repr(fast[1]) == frame_repr(slow[1])


class Tag(str):
    """A str subclass, as a result of the service might hold."""


keys = st.text(max_size=4) | st.integers() | st.floats() | st.booleans() | st.none() | st.builds(Tag, st.text())
messages = st.recursive(
    scalars | st.builds(Tag, st.text()) | st.builds(jsonrpc.Raw, st.sampled_from(["{}", "[1,2]", '"x"'])),
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=12,
)


def _read_back(outcome):
    kind, value = outcome
    return (kind, repr(json.loads(value))) if kind == "ok" else outcome


@settings(max_examples=600, derandomize=True, deadline=None)
@given(st.sampled_from(["response", "raw", "error", "batch", "bare"]), messages, messages)
def test_encode_agrees_with_the_standard_library(shape, result, request_id):
    if shape == "response":
        message = jsonrpc.response(request_id, result)
    elif shape == "raw":
        message = jsonrpc.response(request_id, jsonrpc.Raw('{"status":"CONNECTED"}'))
    elif shape == "error":
        message = {"jsonrpc": "2.0", "error": {"code": -32602, "message": "x", "data": result}, "id": request_id}
    elif shape == "batch":
        message = [jsonrpc.response(request_id, result), jsonrpc.response(1, jsonrpc.Raw("[]"))]
    else:
        message = result
    fast, slow = both(jsonrpc.encode, message)
    assert fast[0] == slow[0]
    if fast[0] == "raised":
        assert fast == slow
    else:
        try:
            assert _read_back(fast) == _read_back(slow)
        except ValueError:  # text json cannot read back (a lone surrogate): then it must be the very same text
            assert fast == slow


@pytest.mark.parametrize(
    "message",
    [
        {"jsonrpc": "2.0", "result": float("nan"), "id": 1},
        {"jsonrpc": "2.0", "result": [float("inf")], "id": 1},
        {"jsonrpc": "2.0", "result": {1: "int key"}, "id": 1},
        {"jsonrpc": "2.0", "result": 2**64, "id": 1},
        {"jsonrpc": "2.0", "result": b"bytes", "id": 1},
    ],
)
def test_what_orjson_would_treat_differently_gets_the_standard_librarys_verdict(message):
    fast, slow = both(jsonrpc.encode, message)
    assert fast == slow


def test_the_fast_path_is_taken_for_plain_messages(monkeypatch):
    # Not dead code: with orjson installed a plain reply never reaches the standard library's encoder.
    def refuse(value):
        raise AssertionError("the standard library's encoder was used")

    monkeypatch.setattr(jsonrpc._encoder, "encode", refuse)
    text = jsonrpc.encode(jsonrpc.response("~1", {"formats": ["YUYV"], "frame_rates": {"640x480": [30, 15]}}))
    assert json.loads(text)["result"]["frame_rates"] == {"640x480": [30, 15]}


@settings(max_examples=400, derandomize=True, deadline=None)
@given(messages)
def test_dumps_the_workers_result_encoder_agrees_with_the_standard_library(value):
    fast, slow = both(jsonrpc.dumps, value)
    assert fast[0] == slow[0]
    if fast[0] == "raised":
        assert fast == slow
    else:
        try:
            assert _read_back(fast) == _read_back(slow)
        except ValueError:
            assert fast == slow
