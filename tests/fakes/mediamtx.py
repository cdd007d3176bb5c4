"""The project's one fake MediaMTX: its control API (v3), checked against the spec.

:class:`FakeMediaMTX` is a real HTTP server on 127.0.0.1 (its own thread,
port chosen by the kernel) that keeps path configurations, live path state
and recording segments the way MediaMTX does, and checks every request
against ``mediamtx_openapi.yaml`` (MediaMTX's published OpenAPI document)::

    fake = FakeMediaMTX().start()
    client = MediaMTXClient(fake.url)
    ...
    assert fake.violations == []
    fake.stop()

What is checked, and how a failure is answered:

* The method and path must be an operation of the spec; otherwise 404 with
  an ``Error`` body.
* Query parameters must be declared by the operation, appear once, parse as
  their declared type and pass its schema; required ones must be present.
* A JSON body is required exactly where the spec declares one and must
  validate against the referenced schema. Object schemas are treated as
  closed (no unknown properties), because MediaMTX decodes bodies with
  unknown fields disallowed (``jsonwrapper.Decode``). OpenAPI's ``nullable``
  becomes ``null`` allowed; ``format: uint64`` becomes ``minimum: 0``.
* Values the spec only types as strings are checked as MediaMTX checks them
  after decoding: path names, durations (``10s``, ``1h30m``, ``1d``), the
  combination rules of ``conf.Path.validate`` (``runOnDemand`` needs
  ``source: publisher``, ``recordPath`` needs ``%path`` and time fields...).

Each of those failures is answered 400 (404 for an unknown operation) with
the spec's ``Error`` body and is recorded in :attr:`FakeMediaMTX.violations`;
tests assert that list is empty. State conflicts are ordinary answers, not
violations: adding a path that exists (400 ``path already exists``),
patching or deleting one that does not (404 ``path not found``).

Every answer is itself validated against the operation's response schema;
problems land in :attr:`FakeMediaMTX.response_errors` (a bug in the fake).

"Down" is simulated by :meth:`FakeMediaMTX.stop` and a later
:meth:`FakeMediaMTX.start`, which binds the same port again; a real MediaMTX
restart forgets paths added through the API, which :meth:`FakeMediaMTX.reset`
reproduces.
"""

from __future__ import annotations

import copy
import json
import re
import socket
import sys
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jsonschema
import yaml

SPEC_FILE = Path(__file__).with_name("mediamtx_openapi.yaml")


# --- the spec -------------------------------------------------------------------------


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans.

    PyYAML implements YAML 1.1, where ``no`` is false: the spec's
    ``Encryption`` enum ``[no, optional, strict]`` would become
    ``[False, 'optional', 'strict']``. Only ``true``/``false`` are booleans here.
    """


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_spec(path: Path = SPEC_FILE) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=_Yaml12Loader)


# OpenAPI keywords JSON Schema does not know, or that mean something else there.
_DROPPED = {
    "nullable",
    "deprecated",
    "format",
    "description",
    "example",
    "externalDocs",
    "xml",
    "discriminator",
    "readOnly",
    "writeOnly",
}


def _to_json_schema(node: Any, closed: bool) -> Any:
    """Translate one OpenAPI 3.0 schema object into JSON Schema 2020-12."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref":
            out["$ref"] = "#/$defs/" + value.rsplit("/", 1)[-1]
        elif key in _DROPPED:
            continue
        elif key == "properties":
            out[key] = {name: _to_json_schema(s, closed) for name, s in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = _to_json_schema(value, closed)
        elif key in ("allOf", "oneOf", "anyOf"):
            out[key] = [_to_json_schema(s, closed) for s in value]
        else:
            out[key] = value
    if node.get("type") == "integer" and str(node.get("format", "")).startswith("uint"):
        out.setdefault("minimum", 0)
    if closed and "properties" in node and "additionalProperties" not in node:
        out["additionalProperties"] = False
    if node.get("nullable"):
        # 3.0's nullable widens the whole schema, allOf/enum included.
        out = {"anyOf": [{"type": "null"}, out]}
    return out


@dataclass
class Operation:
    method: str
    template: str
    operation_id: str
    pattern: re.Pattern
    parameters: dict[str, dict[str, Any]]  # name -> OpenAPI parameter object
    body_schema: dict[str, Any] | None
    body_required: bool
    responses: dict[str, dict[str, Any] | None]  # status -> schema (None: no body)


class Spec:
    """The OpenAPI document as operations to match and schemas to validate with."""

    def __init__(self, document: dict[str, Any] | None = None):
        self.document = document if document is not None else load_spec()
        self.components: dict[str, Any] = self.document["components"]["schemas"]
        self._defs = {name: _to_json_schema(s, closed=True) for name, s in self.components.items()}
        self._validators: dict[str, jsonschema.Draft202012Validator] = {}
        self.operations: list[Operation] = []
        for template, item in self.document["paths"].items():
            for method, op in item.items():
                if method.lower() not in ("get", "post", "patch", "put", "delete"):
                    continue
                self.operations.append(self._operation(method.upper(), template, op))

    def _operation(self, method: str, template: str, op: dict[str, Any]) -> Operation:
        def segment(match: re.Match) -> str:
            # MediaMTX routes names as gin wildcards (/get/*name): a path name may contain '/'.
            name = match.group(1)
            return f"(?P<{name}>.+)" if name == "name" else f"(?P<{name}>[^/]+)"

        pattern = re.compile("^" + re.sub(r"\\\{(\w+)\\\}", segment, re.escape(template)) + "$")
        body = op.get("requestBody")
        body_schema = body["content"]["application/json"]["schema"] if body else None
        responses = {}
        for status, response in op.get("responses", {}).items():
            content = (response or {}).get("content", {}).get("application/json")
            responses[str(status)] = content["schema"] if content else None
        return Operation(
            method,
            template,
            op["operationId"],
            pattern,
            {p["name"]: p for p in op.get("parameters", [])},
            body_schema,
            bool(body and body.get("required")),
            responses,
        )

    def find(self, method: str, path: str) -> tuple[Operation | None, dict[str, str], bool]:
        """The operation serving ``method path``, its path parameters, and whether the path is known."""
        known = False
        for op in self.operations:
            match = op.pattern.fullmatch(path)
            if match:
                known = True
                if op.method == method:
                    return op, match.groupdict(), True
        return None, {}, known

    def validator(self, schema: str | dict[str, Any]) -> jsonschema.Draft202012Validator:
        """A validator for a component (by name) or an OpenAPI schema object."""
        key = schema if isinstance(schema, str) else json.dumps(schema, sort_keys=True)
        if key not in self._validators:
            root = {"$ref": f"#/$defs/{schema}"} if isinstance(schema, str) else _to_json_schema(schema, True)
            self._validators[key] = jsonschema.Draft202012Validator({**root, "$defs": self._defs})
        return self._validators[key]

    def errors(self, schema: str | dict[str, Any], instance: Any) -> list[str]:
        """Every reason ``instance`` does not match; empty when it does."""
        problems = []
        for error in sorted(self.validator(schema).iter_errors(instance), key=lambda e: list(e.path)):
            if error.context:  # anyOf/oneOf: the closest branch says more than "not valid under any"
                error = jsonschema.exceptions.best_match(error.context)
            where = "/".join(str(p) for p in error.absolute_path) or "<root>"
            problems.append(f"{where}: {error.message}")
        return problems

    def zero(self, schema: dict[str, Any]) -> Any:
        """The value Go's zero value serialises to for ``schema``, deprecated fields left out."""
        if "$ref" in schema:
            return self.zero(self.components[schema["$ref"].rsplit("/", 1)[-1]])
        if "enum" in schema:
            return schema["enum"][0]
        if "allOf" in schema and "type" not in schema:
            return self.zero(schema["allOf"][0])
        kind = schema.get("type")
        if kind == "object" or "properties" in schema:
            return {
                name: self.zero(prop)
                for name, prop in schema.get("properties", {}).items()
                if not prop.get("deprecated")
            }
        if kind == "array":
            return [self.zero(schema["items"]) for _ in range(schema.get("minItems", 0))]
        return {"string": "", "boolean": False, "integer": 0, "number": 0.0}.get(kind)


# --- MediaMTX's own value rules -------------------------------------------------------

_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DAY = 86_400_000_000_000


def parse_duration(text: str) -> int:
    """Nanoseconds of a MediaMTX duration (Go's ParseDuration plus a leading ``Nd``)."""
    days = 0
    match = re.match(r"^(-?\d+)d", text)
    if match:
        days, text = int(match.group(1)), text[match.end() :]
    if text in ("", "0"):
        rest = 0
    else:
        sign = -1 if text.startswith("-") else 1
        body = text[1:] if text[:1] in "+-" else text
        pos, total = 0, Fraction(0)
        while pos < len(body):
            part = _DURATION_PART.match(body, pos)
            if not part:
                raise ValueError(f'time: invalid duration "{text}"')
            total += Fraction(part.group(1)) * _NS[part.group(2)]
            pos = part.end()
        if not body:
            raise ValueError(f'time: invalid duration "{text}"')
        rest = sign * int(total)
    nanos = abs(days) * _DAY + abs(rest)
    return -nanos if days < 0 or rest < 0 else nanos


def _go_string(nanos: int) -> str:
    """Go's time.Duration.String() of a non-negative duration."""
    if nanos == 0:
        return "0s"
    if nanos < 1_000:
        return f"{nanos}ns"
    if nanos < 1_000_000_000:
        unit, scale = ("µs", 1_000) if nanos < 1_000_000 else ("ms", 1_000_000)
        whole, frac = divmod(nanos, scale)
        digits = str(frac).rjust(len(str(scale)) - 1, "0").rstrip("0")
        return f"{whole}{'.' + digits if digits else ''}{unit}"
    seconds, frac = divmod(nanos, 1_000_000_000)
    digits = str(frac).rjust(9, "0").rstrip("0")
    text = f"{seconds % 60}{'.' + digits if digits else ''}s"
    minutes = seconds // 60
    if minutes:
        hours = minutes // 60
        text = (f"{hours}h" if hours else "") + f"{minutes % 60}m" + text
    return text


def format_duration(nanos: int) -> str:
    """How MediaMTX writes a duration back (conf.Duration.MarshalJSON): days split off, zero is empty."""
    sign = "-" if nanos < 0 else ""
    days, rest = divmod(abs(nanos), _DAY)
    return sign + (f"{days}d" if days else "") + (_go_string(rest) if rest else "")


PATH_DURATIONS = (
    "sourceOnDemandStartTimeout",
    "sourceOnDemandCloseAfter",
    "recordPartDuration",
    "recordSegmentDuration",
    "recordDeleteAfter",
    "runOnDemandStartTimeout",
    "runOnDemandCloseAfter",
    "whepSTUNGatherTimeout",
    "whepHandshakeTimeout",
    "whepTrackGatherTimeout",
)
GLOBAL_DURATIONS = (
    "readTimeout",
    "writeTimeout",
    "hlsSegmentDuration",
    "hlsPartDuration",
    "hlsMuxerCloseAfter",
    "webrtcSTUNGatherTimeout",
    "webrtcHandshakeTimeout",
    "webrtcTrackGatherTimeout",
)

#: conf.Path.setDefaults() of MediaMTX 1.17 (what pathDefaults holds with an empty mediamtx.yml).
PATH_DEFAULTS: dict[str, Any] = {
    "source": "publisher",
    "sourceOnDemandStartTimeout": "10s",
    "sourceOnDemandCloseAfter": "10s",
    "recordPath": "./recordings/%path/%Y-%m-%d_%H-%M-%S-%f",
    "recordFormat": "fmp4",
    "recordPartDuration": "1s",
    "recordMaxPartSize": "50M",
    "recordSegmentDuration": "1h0m0s",
    "recordDeleteAfter": "1d",
    "overridePublisher": True,
    "rtspTransport": "automatic",
    "rpiCameraWidth": 1920,
    "rpiCameraHeight": 1080,
    "rpiCameraFPS": 30.0,
    "runOnDemandStartTimeout": "10s",
    "runOnDemandCloseAfter": "10s",
}

#: The global settings of MediaMTX's default mediamtx.yml that clients look at.
GLOBAL_DEFAULTS: dict[str, Any] = {
    "logLevel": "info",
    "logDestinations": ["stdout"],
    "readTimeout": "10s",
    "writeTimeout": "10s",
    "writeQueueSize": 512,
    "udpMaxPayloadSize": 1472,
    "authMethod": "internal",
    "api": True,
    "apiAddress": ":9997",
    "metricsAddress": ":9998",
    "pprofAddress": ":9999",
    "playbackAddress": ":9996",
    "rtsp": True,
    "rtspTransports": ["udp", "multicast", "tcp"],
    "rtspEncryption": "no",
    "rtspAddress": ":8554",
    "rtspsAddress": ":8322",
    "rtpAddress": ":8000",
    "rtcpAddress": ":8001",
    "rtspAuthMethods": ["basic"],
    "rtmp": True,
    "rtmpAddress": ":1935",
    "rtmpEncryption": "no",
    "hls": True,
    "hlsAddress": ":8888",
    "hlsVariant": "lowLatency",
    "hlsSegmentCount": 7,
    "hlsSegmentDuration": "1s",
    "hlsPartDuration": "200ms",
    "hlsSegmentMaxSize": "50M",
    "hlsMuxerCloseAfter": "1m0s",
    "webrtc": True,
    "webrtcAddress": ":8889",
    "webrtcLocalUDPAddress": ":8189",
    "webrtcIPsFromInterfaces": True,
    "webrtcSTUNGatherTimeout": "5s",
    "webrtcHandshakeTimeout": "10s",
    "webrtcTrackGatherTimeout": "2s",
    "srt": True,
    "srtAddress": ":8890",
}

_PATH_NAME = re.compile(r"^[0-9a-zA-Z_\-/.~:]+$")
_STATIC_SOURCES = (
    "rtsp://",
    "rtsps://",
    "rtmp://",
    "rtmps://",
    "http://",
    "https://",
    "udp://",
    "srt://",
    "whep://",
    "wheps://",
)


def path_name_error(name: str) -> str | None:
    """conf.IsValidPathName, worded as MediaMTX words it."""
    if name == "":
        problem = "cannot be empty"
    elif name[0] == "/":
        problem = "can't begin with a slash"
    elif name[-1] == "/":
        problem = "can't end with a slash"
    elif not _PATH_NAME.fullmatch(name):
        problem = "can contain only alphanumeric characters, underscore, dot, tilde, minus, slash, colon"
    else:
        return None
    return f"invalid path name '{name}': {problem}"


def _name_regexp(name: str) -> re.Pattern | None:
    if name in ("all", "all_others"):
        return re.compile(r"^.*$")
    if name.startswith("~"):
        return re.compile(name[1:])
    return None


def path_conf_error(name: str, conf: dict[str, Any], playback: bool = False) -> str | None:
    """The checks of conf.Path.validate that a camera service can trip over."""
    regexp = None
    if name.startswith("~"):
        try:
            regexp = _name_regexp(name)
        except re.error:
            return f"invalid regular expression: {name[1:]}"
    elif name not in ("all", "all_others"):
        problem = path_name_error(name)
        if problem:
            return problem
    else:
        regexp = _name_regexp(name)
    source = conf["source"]
    if source not in ("publisher", "redirect", "rpiCamera") and not source.startswith(_STATIC_SOURCES):
        return f"invalid source: '{source}'"
    if source not in ("publisher", "redirect") and regexp is not None and not conf["sourceOnDemand"]:
        return (
            "a path with a regular expression (or path 'all') and a static source"
            " must have 'sourceOnDemand' set to true"
        )
    if conf["sourceOnDemand"] and source == "publisher":
        return "'sourceOnDemand' is useless when source is 'publisher'"
    if source != "redirect" and conf["sourceRedirect"]:
        return "'sourceRedirect' is useless when source is not 'redirect'"
    if source == "redirect" and not conf["sourceRedirect"]:
        return "source redirect must be filled"
    record_path = conf["recordPath"]
    if "%path" not in record_path:
        return "'recordPath' must contain %path"
    if "%s" not in record_path and not all(f"%{c}" in record_path for c in "YmdHMS"):
        return "'recordPath' must contain either %s or %Y %m %d %H %M %S"
    if playback and "%f" not in record_path:
        return "'recordPath' must contain %f"
    segment = parse_duration(conf["recordSegmentDuration"])
    if segment > _DAY:
        return "maximum segment duration is 1 day"
    delete_after = parse_duration(conf["recordDeleteAfter"])
    if delete_after != 0 and delete_after < segment:
        return "'recordDeleteAfter' cannot be lower than 'recordSegmentDuration'"
    if conf["runOnInit"] and regexp is not None:
        return "a path with a regular expression (or path 'all') does not support option 'runOnInit'; use another path"
    if (conf["runOnDemand"] or conf["runOnUnDemand"]) and source != "publisher":
        return "'runOnDemand' and 'runOnUnDemand' can be used only when source is 'publisher'"
    return None


def _normalize_durations(values: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """Parse and re-serialise durations as MediaMTX does; raises ValueError on a bad one."""
    out = dict(values)
    for key in keys:
        if isinstance(out.get(key), str):
            try:
                out[key] = format_duration(parse_duration(out[key]))
            except ValueError as exc:
                raise ValueError(f"json: invalid value for '{key}': {exc}") from None
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


# --- the server ------------------------------------------------------------------------


class ApiError(Exception):
    """An error answer; ``violation`` marks a malformed request (recorded for tests)."""

    def __init__(self, status: int, message: str, violation: bool = False):
        super().__init__(message)
        self.status, self.message, self.violation = status, message, violation


@dataclass
class LiveState:
    """What a test says is happening on a path (MediaMTX would learn it from publishers)."""

    ready: bool = False
    inbound_bytes: int = 0
    outbound_bytes: int = 0
    readers: int = 0
    since: str = field(default_factory=_now)
    source_id: str = field(default_factory=lambda: str(uuid.uuid4()))


class FakeMediaMTX:
    """A MediaMTX control API on 127.0.0.1 that validates what it is sent.

    Test controls: :attr:`violations`, :attr:`response_errors`, :attr:`requests`
    (``(method, path?query)`` in arrival order), :meth:`set_path_state`,
    :meth:`add_recording`, :meth:`fail_next` and :attr:`delay` (seconds every
    answer waits, to provoke client timeouts).
    """

    def __init__(self, spec: Spec | None = None):
        self.spec = spec or Spec()
        self.violations: list[str] = []
        self.response_errors: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.delay = 0.0
        self.port = 0
        self._connections = 0  # accepted by servers already stopped
        self._lock = threading.RLock()
        self._answered = threading.Condition(self._lock)  # notified after every request
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._released = threading.Event()  # set by stop(): cuts any delay short
        self._injected: list[tuple[int, str]] = []
        self.reset()

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> FakeMediaMTX:
        """Serve; after a :meth:`stop`, on the same port as before."""
        if self._server is not None:
            return self
        handler = type("Handler", (_Handler,), {"fake": self})
        server = _Server(("127.0.0.1", self.port), handler)
        server.daemon_threads = True
        server.block_on_close = False  # a delayed answer must not hold up stop()
        self._server, self.port = server, server.server_address[1]
        self._released.clear()
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"fake-mediamtx-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering: connections are refused until :meth:`start`. State is kept."""
        if self._server is None:
            return
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._connections += self._server.accepted
        self._server.close_connections()
        self._thread.join()
        self._server = self._thread = None

    def reset(self) -> None:
        """Back to a freshly started MediaMTX with the default mediamtx.yml (paths: all_others)."""
        with self._lock:
            self.started = _now()
            self.global_conf = {**self.spec.zero(self.spec.components["GlobalConf"]), **GLOBAL_DEFAULTS}
            self.path_defaults = {**self.spec.zero(self.spec.components["PathConf"]), **PATH_DEFAULTS}
            self.path_defaults.pop("name", None)
            self.paths: dict[str, dict[str, Any]] = {"all_others": {}}  # name -> values given (OptionalPath)
            self.live: dict[str, LiveState] = {}
            self.recordings: dict[str, list[str]] = {}

    @property
    def connections(self) -> int:
        """TCP connections accepted since the fake was made (across restarts)."""
        return self._connections + (self._server.accepted if self._server is not None else 0)

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeMediaMTX:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- test controls ---------------------------------------------------------------

    def path_conf(self, name: str) -> dict[str, Any]:
        """The full configuration of a path, as /v3/config/paths/get answers it."""
        with self._lock:
            return {"name": name, **self.path_defaults, **self.paths[name]}

    def set_path_state(
        self, name: str, ready: bool = True, inbound_bytes: int = 0, outbound_bytes: int = 0, readers: int = 0
    ) -> None:
        with self._lock:
            self.live[name] = LiveState(ready, inbound_bytes, outbound_bytes, readers)

    def add_recording(self, name: str, *starts: str) -> None:
        """Pretend MediaMTX recorded segments of path ``name`` starting at ``starts`` (RFC 3339)."""
        with self._lock:
            self.recordings.setdefault(name, []).extend(starts)
            self.recordings[name].sort()

    def fail_next(self, status: int = 500, message: str = "injected failure", count: int = 1) -> None:
        """Answer the next ``count`` valid requests with ``status`` and an Error body."""
        with self._lock:
            self._injected.extend([(status, message)] * count)

    # --- request handling ---------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Any, raw: bytes) -> tuple[int, Any]:
        with self._lock:
            self.requests.append((method, target))
        if self.delay:
            self._released.wait(self.delay)
        op = None
        try:
            op, params, query, body = self._check_request(method, target, headers, raw)
            with self._lock:
                if self._injected:
                    status, message = self._injected.pop(0)
                    raise ApiError(status, message)
                status, answer = self._dispatch(op, params, query, body)
        except ApiError as exc:
            if exc.violation:
                with self._lock:
                    self.violations.append(f"{method} {target}: {exc.message}")
            status, answer = exc.status, {"status": "error", "error": exc.message}
        except Exception as exc:  # a bug in the fake: answer like MediaMTX would, and make it visible
            with self._lock:
                self.response_errors.append(f"{method} {target}: fake crashed: {exc!r}")
            status, answer = 500, {"status": "error", "error": f"fake crashed: {exc!r}"}
        if op is not None:
            self._check_response(op, status, answer)
        with self._answered:
            self._answered.notify_all()
        return status, answer

    def wait_until(self, predicate, timeout: float = 10.0) -> bool:
        """Wait until ``predicate()`` holds (checked after every request this fake answers); its last value."""
        with self._answered:
            return self._answered.wait_for(predicate, timeout)

    def _check_request(
        self, method: str, target: str, headers: Any, raw: bytes
    ) -> tuple[Operation, dict[str, str], dict[str, Any], Any]:
        parts = urlsplit(target)
        path = unquote(parts.path)
        op, params, known = self.spec.find(method, path)
        if op is None:
            what = f"method {method} not allowed on" if known else "no such operation:"
            raise ApiError(404, f"{what} {path}", violation=True)
        query = self._check_query(op, parse_qs(parts.query, keep_blank_values=True))
        body = None
        if op.body_schema is None:
            if raw:
                raise ApiError(400, "this operation takes no request body", violation=True)
        elif op.body_required and not raw:
            raise ApiError(400, "a JSON request body is required", violation=True)
        elif raw:
            content_type = (headers.get("Content-Type") or "").split(";")[0].strip()
            if content_type != "application/json":
                raise ApiError(400, f"Content-Type must be application/json, got '{content_type}'", violation=True)
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise ApiError(400, f"invalid JSON body: {exc}", violation=True) from None
            problems = self.spec.errors(op.body_schema, body)
            if problems:
                raise ApiError(400, "; ".join(problems), violation=True)
        return op, params, query, body

    def _check_query(self, op: Operation, given: dict[str, list[str]]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, items in given.items():
            param = op.parameters.get(name)
            if param is None or param.get("in") != "query":
                raise ApiError(400, f"unknown query parameter '{name}'", violation=True)
            if len(items) > 1:
                raise ApiError(400, f"query parameter '{name}' given {len(items)} times", violation=True)
            schema = param.get("schema", {})
            text = items[0]
            value: Any = text
            if schema.get("type") == "integer":
                if not re.fullmatch(r"-?\d+", text):
                    raise ApiError(400, f"query parameter '{name}': '{text}' is not an integer", violation=True)
                value = int(text)
            problems = self.spec.errors(schema, value)
            if problems:
                raise ApiError(400, f"query parameter '{name}': {'; '.join(problems)}", violation=True)
            values[name] = value
        for name, param in op.parameters.items():
            if param.get("in") == "query" and param.get("required") and name not in values:
                raise ApiError(400, f"query parameter '{name}' is required", violation=True)
        return values

    def _check_response(self, op: Operation, status: int, answer: Any) -> None:
        if str(status) not in op.responses:
            problems = [f"status {status} is not a documented answer"]
        else:
            schema = op.responses[str(status)]
            problems = self.spec.errors(schema, answer) if schema is not None else []
        if problems:
            with self._lock:
                self.response_errors.extend(f"{op.operation_id} {status}: {p}" for p in problems)

    def _dispatch(self, op: Operation, params: dict[str, str], query: dict[str, Any], body: Any) -> tuple[int, Any]:
        handler = getattr(self, f"_op_{op.operation_id}", None)
        if handler is not None:
            return 200, handler(params=params, query=query, body=body)
        # Connections, sessions and muxers are never simulated: lists are empty, items unknown.
        if op.operation_id.endswith("List"):
            return 200, _paginate([], query)
        if op.operation_id.endswith(("Get", "Kick")):
            raise ApiError(404, "not found")
        return 200, {"status": "ok"}

    # --- operations (named after the spec's operationId) ----------------------------------

    _OK = {"status": "ok"}

    def _op_info(self, **_: Any) -> dict[str, Any]:
        return {"version": "v1.17.0-fake", "started": self.started}

    def _op_configGlobalGet(self, **_: Any) -> dict[str, Any]:
        return dict(self.global_conf)

    def _op_configGlobalSet(self, body: dict[str, Any], **_: Any) -> dict[str, Any]:
        try:
            body = _normalize_durations(body, GLOBAL_DURATIONS)
        except ValueError as exc:
            raise ApiError(400, str(exc), violation=True) from None
        self.global_conf.update(body)
        return self._OK

    def _op_configPathDefaultsGet(self, **_: Any) -> dict[str, Any]:
        return dict(self.path_defaults)

    def _op_configPathDefaultsPatch(self, body: dict[str, Any], **_: Any) -> dict[str, Any]:
        body = self._decode_path_values(body)
        candidate = {**self.path_defaults, **body}
        for name, values in self.paths.items():
            self._validate_path(name, {**candidate, **values})
        self.path_defaults = candidate
        return self._OK

    def _op_configPathsList(self, query: dict[str, Any], **_: Any) -> dict[str, Any]:
        return _paginate([self.path_conf(name) for name in sorted(self.paths)], query)

    def _op_configPathsGet(self, params: dict[str, str], **_: Any) -> dict[str, Any]:
        if params["name"] not in self.paths:
            raise ApiError(404, "path configuration not found")
        return self.path_conf(params["name"])

    def _op_configPathsAdd(self, params: dict[str, str], body: dict[str, Any], **_: Any) -> dict[str, Any]:
        name = params["name"]
        values = self._decode_path_values(body)
        if name in self.paths:
            raise ApiError(400, "path already exists")
        self._validate_path(name, {**self.path_defaults, **values})
        self.paths[name] = values
        return self._OK

    def _op_configPathsPatch(self, params: dict[str, str], body: dict[str, Any], **_: Any) -> dict[str, Any]:
        name = params["name"]
        values = self._decode_path_values(body)
        if name not in self.paths:
            raise ApiError(404, "path not found")
        merged = {**self.paths[name], **values}
        self._validate_path(name, {**self.path_defaults, **merged})
        self.paths[name] = merged
        return self._OK

    def _op_configPathsReplace(self, params: dict[str, str], body: dict[str, Any], **_: Any) -> dict[str, Any]:
        # Upstream's Conf.ReplacePath creates a missing path (the spec still lists 404).
        name = params["name"]
        values = self._decode_path_values(body)
        self._validate_path(name, {**self.path_defaults, **values})
        self.paths[name] = values
        return self._OK

    def _op_configPathsDelete(self, params: dict[str, str], **_: Any) -> dict[str, Any]:
        name = params["name"]
        if name not in self.paths:
            raise ApiError(404, "path not found")
        del self.paths[name]
        self.live.pop(name, None)  # the path closes with its configuration
        return self._OK

    def _op_pathsList(self, query: dict[str, Any], **_: Any) -> dict[str, Any]:
        return _paginate([self._live_path(name) for name in self._live_names()], query)

    def _op_pathsGet(self, params: dict[str, str], **_: Any) -> dict[str, Any]:
        if params["name"] not in self._live_names():
            raise ApiError(404, "path not found")
        return self._live_path(params["name"])

    def _op_recordingsList(self, query: dict[str, Any], **_: Any) -> dict[str, Any]:
        items = [self._recording(name) for name in sorted(self.recordings) if self.recordings[name]]
        return _paginate(items, query)

    def _op_recordingsGet(self, params: dict[str, str], **_: Any) -> dict[str, Any]:
        if not self.recordings.get(params["name"]):
            raise ApiError(404, "no recordings found")
        return self._recording(params["name"])

    def _op_recordingsDeleteSegment(self, query: dict[str, Any], **_: Any) -> dict[str, Any]:
        start = query["start"]
        try:
            datetime.fromisoformat(start.replace("Z", "+00:00"))
        except ValueError:
            raise ApiError(400, f'parsing time "{start}" as RFC 3339: invalid', violation=True) from None
        segments = self.recordings.get(query["path"], [])
        if start not in segments:
            raise ApiError(404, "segment not found")
        segments.remove(start)
        return self._OK

    # --- helpers ------------------------------------------------------------------------

    def _decode_path_values(self, body: dict[str, Any]) -> dict[str, Any]:
        values = {k: v for k, v in body.items() if k != "name"}  # the URL names the path
        try:
            return _normalize_durations(values, PATH_DURATIONS)
        except ValueError as exc:
            raise ApiError(400, str(exc), violation=True) from None

    def _validate_path(self, name: str, full: dict[str, Any]) -> None:
        problem = path_conf_error(name, full, playback=bool(self.global_conf.get("playback")))
        if problem:
            raise ApiError(400, problem, violation=True)

    def _live_names(self) -> list[str]:
        # MediaMTX creates a path for every configuration without a regular expression;
        # others appear while a publisher or reader uses them.
        names = {name for name in self.paths if _name_regexp(name) is None}
        names.update(name for name in self.live if self._conf_name(name) is not None)
        return sorted(names)

    def _conf_name(self, name: str) -> str | None:
        if name in self.paths and _name_regexp(name) is None:
            return name
        for conf_name in sorted(self.paths, key=lambda n: n in ("all", "all_others")):
            regexp = _name_regexp(conf_name)
            if regexp is not None and regexp.search(name):
                return conf_name
        return None

    def _live_path(self, name: str) -> dict[str, Any]:
        state = self.live.get(name, LiveState())
        since = state.since if state.ready else None
        return {
            "name": name,
            "confName": self._conf_name(name),
            "source": {"type": "rtspSession", "id": state.source_id} if state.ready else None,
            "ready": state.ready,
            "readyTime": since,
            "available": state.ready,
            "availableTime": since,
            "online": state.ready,
            "onlineTime": since,
            "tracks": ["H264"] if state.ready else [],
            # codecProps stays null: the spec's oneOf cannot tell H264 from H265 props apart,
            # so no non-null value would validate.
            "tracks2": [{"codec": "H264", "codecProps": None}] if state.ready else [],
            "inboundBytes": state.inbound_bytes,
            "outboundBytes": state.outbound_bytes,
            "inboundFramesInError": 0,
            "bytesReceived": state.inbound_bytes,
            "bytesSent": state.outbound_bytes,
            "readers": [
                {"type": "rtspSession", "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{name}/{i}"))}
                for i in range(state.readers)
            ],
        }

    def _recording(self, name: str) -> dict[str, Any]:
        return {"name": name, "segments": [{"start": start} for start in self.recordings[name]]}


def _paginate(items: list[Any], query: dict[str, Any]) -> dict[str, Any]:
    """MediaMTX's paginate(): 100 per page by default; a page past the end is empty."""
    per_page, page = query.get("itemsPerPage", 100), query.get("page", 0)
    for value in (per_page, page):
        if value < 0:
            raise ApiError(400, f'strconv.ParseUint: parsing "{value}": invalid syntax', violation=True)
    if per_page == 0:
        raise ApiError(400, "invalid items per page", violation=True)
    page_count = -(-len(items) // per_page)
    return {
        "pageCount": page_count,
        "itemCount": len(items),
        "items": copy.deepcopy(items[page * per_page : (page + 1) * per_page]),
    }


class _Server(ThreadingHTTPServer):
    """Counts connections and closes the open (kept-alive) ones when stopped."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.open_connections: set[Any] = set()
        self.accepted = 0
        self._conn_lock = threading.Lock()

    def get_request(self) -> Any:
        request, address = super().get_request()
        with self._conn_lock:
            self.open_connections.add(request)
            self.accepted += 1
        return request, address

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """What a stopped MediaMTX does to its clients: every connection ends."""
        with self._conn_lock:
            requests = list(self.open_connections)
        for request in requests:
            try:
                request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout test) or a stop() mid-answer: nothing to report.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 with keep-alive, as MediaMTX (Go's net/http) speaks it; stop()
    # closes kept connections, so a stopped fake really refuses everything.
    protocol_version = "HTTP/1.1"
    fake: FakeMediaMTX

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        status, answer = self.fake.handle(self.command, self.path, self.headers, raw)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass
