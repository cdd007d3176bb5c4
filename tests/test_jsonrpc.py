"""JSON-RPC framing: the I/O-free protocol core."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from camservice import jsonrpc
from camservice.errors import INVALID_REQUEST, PARSE_ERROR


def single(text):
    frame = jsonrpc.parse_frame(text)
    assert not frame.batch and len(frame.items) == 1
    return frame.items[0]


def test_request_with_named_params():
    call = single('{"jsonrpc":"2.0","method":"get_camera_status","params":{"device":"camera0"},"id":7}')
    assert isinstance(call, jsonrpc.Call)
    assert (call.method, call.params, call.id) == ("get_camera_status", {"device": "camera0"}, 7)
    assert not call.is_notification


@pytest.mark.parametrize("request_id", ["abc", 0, -1, 2**70, 1.5, None, ""])
def test_every_id_type_is_echoed_unchanged(request_id):
    call = single(json.dumps({"jsonrpc": "2.0", "method": "ping", "id": request_id}))
    assert call.id == request_id and type(call.id) is type(request_id)
    reply = json.loads(jsonrpc.encode(jsonrpc.response(call.id, "pong")))
    assert reply == {"jsonrpc": "2.0", "result": "pong", "id": request_id}


def test_missing_id_is_a_notification_but_null_id_is_not():
    assert single('{"jsonrpc":"2.0","method":"ping"}').is_notification
    assert not single('{"jsonrpc":"2.0","method":"ping","id":null}').is_notification


@pytest.mark.parametrize("text", ["{", "not json", '{"a":NaN}', "[1,", "\udcff", b"\xff\xfe"])
def test_garbage_is_a_parse_error_with_null_id(text):
    item = single(text)
    assert item["error"]["code"] == PARSE_ERROR and item["id"] is None


@pytest.mark.parametrize(
    "text",
    [
        '{"jsonrpc":"2.0","method":"ping","id":"\\ud800"}',
        '{"jsonrpc":"2.0","method":"\\uDFFF","id":1}',
        '[{"jsonrpc":"2.0","method":"ping","params":{"device":"a\\udc00b"},"id":1}]',
    ],
)
def test_unpaired_surrogate_escapes_are_a_parse_error(text):
    # Echoed back (id, method, device), such a string makes the reply
    # unencodable as UTF-8, which used to cost the client its connection.
    item = single(text)
    assert item["error"]["code"] == PARSE_ERROR and item["id"] is None


def test_surrogate_pairs_and_escaped_backslashes_are_fine():
    call = single('{"jsonrpc":"2.0","method":"ping","id":"\\ud83d\\ude00 C:\\\\udir"}')
    assert call.id == "\U0001f600 C:\\udir"
    jsonrpc.encode(jsonrpc.response(call.id, "pong")).encode("utf-8")


def test_an_id_beyond_the_range_of_a_double_is_an_invalid_request():
    item = single('{"jsonrpc":"2.0","method":"ping","id":1e400}')
    assert item["error"]["code"] == INVALID_REQUEST and item["id"] is None
    jsonrpc.encode(item)


def test_deep_nesting_is_a_parse_error_not_a_crash():
    item = single("[" * 100_000 + "]" * 100_000)
    assert item["error"]["code"] == PARSE_ERROR


@pytest.mark.parametrize(
    "value,echo_id",
    [
        ('{"jsonrpc":"1.0","method":"ping","id":1}', 1),
        ('{"jsonrpc":"2.0","method":5,"id":"x"}', "x"),
        ('{"jsonrpc":"2.0","method":"ping","params":3,"id":2}', 2),
        ('{"jsonrpc":"2.0","method":"ping","id":{"a":1}}', None),
        ('{"jsonrpc":"2.0","method":"ping","id":true}', None),
        ("42", None),
        ('"ping"', None),
    ],
)
def test_invalid_requests(value, echo_id):
    item = single(value)
    assert item["error"]["code"] == INVALID_REQUEST
    assert item["id"] == echo_id


def test_empty_batch_is_one_invalid_request_not_an_array():
    frame = jsonrpc.parse_frame("[]")
    assert not frame.batch
    assert frame.items[0]["error"]["code"] == INVALID_REQUEST


def test_batch_mixes_calls_and_errors_in_order():
    frame = jsonrpc.parse_frame('[{"jsonrpc":"2.0","method":"ping","id":1}, 5, {"jsonrpc":"2.0","method":"x"}]')
    assert frame.batch
    first, second, third = frame.items
    assert isinstance(first, jsonrpc.Call) and first.id == 1
    assert second["error"]["code"] == INVALID_REQUEST
    assert isinstance(third, jsonrpc.Call) and third.is_notification


def test_batch_size_is_bounded():
    frame = jsonrpc.parse_frame(
        json.dumps([{"jsonrpc": "2.0", "method": "ping", "id": i} for i in range(11)]), max_batch=10
    )
    assert not frame.batch and frame.items[0]["error"]["code"] == INVALID_REQUEST


@given(
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda children: (
                st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
            ),
            max_leaves=20,
        ).map(json.dumps),
    )
)
def test_parse_never_raises_and_errors_encode(data):
    frame = jsonrpc.parse_frame(data)
    for item in frame.items:
        if isinstance(item, dict):
            json.loads(jsonrpc.encode(item))


def test_parse_benchmark(benchmark):
    text = '{"jsonrpc":"2.0","method":"get_camera_status","params":{"device":"camera0"},"id":12345}'
    frame = benchmark(jsonrpc.parse_frame, text)
    assert frame.items[0].method == "get_camera_status"
