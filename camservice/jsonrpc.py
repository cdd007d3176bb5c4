"""JSON-RPC 2.0 framing, free of I/O.

:func:`parse_frame` turns one WebSocket frame into :class:`Call` objects and
ready-made error responses; :func:`response` and :func:`error_response`
build replies; :func:`encode` serialises them. Nothing here knows about
sockets, so it is unit-tested and benchmarked on its own
(``tests/test_jsonrpc.py``), the way the ``websockets`` library keeps its
protocol core apart from its asyncio layer.

Where orjson is installed (the ``fast`` extra) it decodes and encodes on a
fast path that gives the same results and the same errors as the standard
library, because everything it would treat differently goes to the
standard library instead: any frame holding a float (orjson reads integers
beyond 64 bits as floats), anything orjson refuses (NaN and
Infinity, 1e400, unpaired surrogates, nesting too deep, non-string keys,
integers beyond 64 bits, ``str``/``int``/``dict``/``list`` subclasses,
dataclasses, dates) and any encoding that printed a ``null`` (orjson writes
NaN and infinities as ``null`` where json refuses them). Encoded text may
spell a float differently (``1e-05`` against ``0.00001``): the same number.
Out of scope: ``enum.Enum`` members and ``uuid.UUID`` objects, which
orjson encodes and json refuses; no message carries one (results are
msgpack-decoded or built from plain types). ``tests/test_jsonrpc_orjson.py``
checks both paths against each other with hypothesis.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from .errors import INVALID_REQUEST, PARSE_ERROR, RpcError

try:
    import orjson
except ImportError:  # optional: the standard library does all of it, more slowly
    orjson = None  # type: ignore[assignment]

#: Marks a call without ``id`` (a notification): nothing is sent back.
NO_ID = object()


@dataclass(slots=True)
class Call:
    """One well-formed request of a frame."""

    method: str
    params: Any  # dict, list or None; validated later against the method
    id: Any = NO_ID  # str, int, float, None, or NO_ID for a notification

    @property
    def is_notification(self) -> bool:
        return self.id is NO_ID


@dataclass(slots=True)
class Frame:
    """What one incoming frame asks for.

    ``items`` holds, in order, a :class:`Call` or an error response dict for
    every request in the frame; ``batch`` says whether replies go back as an
    array. A frame that failed to parse has one error item and ``batch`` False.
    """

    items: list
    batch: bool


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; echoing them back would produce invalid JSON.
    raise ValueError(f"{name} is not valid JSON")


_decoder = json.JSONDecoder(parse_constant=_reject_constant)
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
#: Encodes a parsed frame back only to find strings UTF-8 cannot carry.
_utf8_probe = json.JSONEncoder(ensure_ascii=False, check_circular=False)


def _has_lone_surrogate(text: str, value: Any) -> bool:
    """Whether a ``\\uD800``-``\\uDFFF`` escape left half a surrogate pair in ``value``.

    Such a string is not Unicode text: it cannot be sent back in a UTF-8
    frame, so echoing it (an ``id``, a method name, a device) would make the
    reply unencodable and cost the client its connection. Only an escape
    can put one there (UTF-8 cannot carry a surrogate), so the substring
    test spares nearly every frame the re-encoding.
    """
    if "\\ud" not in text and "\\uD" not in text:
        return False
    try:
        _utf8_probe.encode(value).encode("utf-8")
    except UnicodeEncodeError:
        return True
    except RecursionError:  # nested too deep to check: refuse rather than risk it
        return True
    return False


#: What _fast_loads returns when the standard library must decide.
_SLOW = object()


def _has_float(value: Any) -> bool:
    """Whether a float is anywhere in ``value`` (dicts and lists as orjson returns them)."""
    if type(value) is dict:
        items: Any = value.values()
    elif type(value) is list:
        items = value
    else:
        return type(value) is float
    for item in items:
        kind = type(item)
        if kind is float or ((kind is dict or kind is list) and _has_float(item)):
            return True
    return False


def _fast_loads(data: str | bytes) -> Any:
    """orjson's reading of ``data``, or ``_SLOW`` when it might differ from json's or fails.

    Any float sends the frame to the standard library: orjson reads an
    integer beyond 64 bits as a float, and the two need not round every
    float literal alike. Requests hardly ever carry floats; checking the
    parsed value costs less than scanning the text for long numbers.
    """
    if orjson is None:
        return _SLOW
    try:
        value = orjson.loads(data)
        return _SLOW if _has_float(value) else value
    except Exception:  # noqa: BLE001  (whatever orjson refuses, json decides; RecursionError of a deep value too)
        return _SLOW


def parse_frame(data: str | bytes, max_batch: int = 1000) -> Frame:
    """Parse one frame; never raises."""
    value = _fast_loads(data)
    # orjson refuses unpaired surrogate escapes, so only the standard library's reading needs the check.
    if value is _SLOW:
        try:
            if isinstance(data, bytes):
                data = data.decode("utf-8")
            value = _decoder.decode(data)
        except (ValueError, RecursionError, UnicodeDecodeError):
            return Frame([error_response(None, RpcError(PARSE_ERROR))], batch=False)
        lone = _has_lone_surrogate(data, value)
    else:
        lone = False
    if lone:
        return Frame(
            [
                error_response(
                    None, RpcError(PARSE_ERROR, data={"reason": "string with an unpaired UTF-16 surrogate escape"})
                )
            ],
            batch=False,
        )
    if isinstance(value, list):
        if not value:
            return Frame([error_response(None, RpcError(INVALID_REQUEST, data={"reason": "empty batch"}))], batch=False)
        if len(value) > max_batch:
            return Frame(
                [
                    error_response(
                        None, RpcError(INVALID_REQUEST, data={"reason": f"batch larger than {max_batch} requests"})
                    )
                ],
                batch=False,
            )
        return Frame([_parse_request(item) for item in value], batch=True)
    return Frame([_parse_request(value)], batch=False)


def _parse_request(value: Any) -> Call | dict:
    if not isinstance(value, dict):
        return error_response(None, RpcError(INVALID_REQUEST, data={"reason": "a request must be an object"}))
    request_id = value.get("id", NO_ID)
    if request_id is not NO_ID and not _valid_id(request_id):
        return error_response(None, RpcError(INVALID_REQUEST, data={"reason": "id must be a string, number or null"}))
    reply_id = None if request_id is NO_ID else request_id
    if value.get("jsonrpc") != "2.0":
        return error_response(reply_id, RpcError(INVALID_REQUEST, data={"reason": 'jsonrpc must be "2.0"'}))
    method = value.get("method")
    if not isinstance(method, str):
        return error_response(reply_id, RpcError(INVALID_REQUEST, data={"reason": "method must be a string"}))
    params = value.get("params")
    if params is not None and not isinstance(params, (dict, list)):
        return error_response(reply_id, RpcError(INVALID_REQUEST, data={"reason": "params must be an object or array"}))
    return Call(method, params, request_id)


def _valid_id(value: Any) -> bool:
    # bool is an int subclass in Python but not a JSON number. A literal
    # beyond a double's range (1e400) parses as infinity, which cannot be
    # echoed back as JSON: refused here rather than failing the reply.
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or (isinstance(value, (str, int)) and not isinstance(value, bool))


class Raw(str):
    """A result that is already JSON text, spliced into the response verbatim.

    The gateway's hottest answers (camera status and list) come from a
    replica that changes rarely; encoding them once per change instead of
    once per request is most of what those calls cost.
    """

    __slots__ = ()


def response(request_id: Any, result: Any) -> dict:
    return {"jsonrpc": "2.0", "result": result, "id": request_id}


def error_response(request_id: Any, error: RpcError) -> dict:
    return {"jsonrpc": "2.0", "error": error.to_dict(), "id": request_id}


def notification(method: str, params: Any) -> dict:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def _refuse(value: Any) -> Any:
    raise TypeError(type(value).__name__)  # orjson: leave it to json (and json's verdict)


if orjson is not None:
    _ORJSON_OPTIONS = (
        orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
    )


def dumps(value: Any) -> str:
    """Compact JSON text of ``value``: orjson's when it is sure to mean what json's would, else json's.

    Raises what ``json.JSONEncoder(separators=(",", ":"), ensure_ascii=False,
    allow_nan=False).encode`` raises (TypeError, ValueError), because every
    value orjson refuses or might encode differently goes to that encoder.
    Workers encode their results with it too.
    """
    if orjson is not None:
        try:
            out = orjson.dumps(value, default=_refuse, option=_ORJSON_OPTIONS)
        except TypeError:  # orjson.JSONEncodeError included
            pass
        else:
            if b"null" not in out:  # a null may be a NaN or an infinity that json refuses
                return out.decode()
    return _encoder.encode(value)


def encode(message: Any) -> str:
    """Serialise a response, batch or notification to compact JSON text."""
    if isinstance(message, dict):
        result = message.get("result")
        if isinstance(result, Raw):
            return f'{{"jsonrpc":"2.0","result":{result},"id":{dumps(message["id"])}}}'
        return dumps(message)
    if isinstance(message, list):
        return "[" + ",".join(encode(item) for item in message) + "]"
    return dumps(message)
