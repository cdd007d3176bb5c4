"""The method table: who may call what, who serves it, and its parameters.

One :class:`Method` per JSON-RPC method of ``shared/API.md``. The gateway
consults it for every request (role check, parameter validation, where to
forward); workers register a handler under the same names. Validators are
pure functions: they return the normalised parameters or raise
:class:`~camservice.errors.RpcError` (-32602 with ``data.reason`` and
``data.param``), so they run in the gateway before any hop.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast, overload

from . import topics as bus_topics
from .errors import invalid_params

ROLES = ("viewer", "operator", "admin")
ROLE_RANK = {role: rank for rank, role in enumerate(ROLES, start=1)}

#: Process kinds that serve methods. ``gateway`` methods never leave the gateway.
GATEWAY, DISCOVERY, RECORDING, FILES = "gateway", "discovery", "recording", "files"
WORKER_KINDS = (DISCOVERY, RECORDING, FILES)


Params = dict[str, Any]
Validator = Callable[[Params], Params]


@dataclass(frozen=True)
class Method:
    name: str
    role: str | None  # None: no authentication needed
    target: str  # GATEWAY or a worker kind
    validate: Validator
    idempotent: bool = True  # safe to send again to another worker after a crash
    timeout: float | None = None  # seconds; None: gateway.request_timeout
    #: The params ``validate`` accepts besides ``auth_token`` (tests fuzz each of them).
    params: tuple[str, ...] = ()


# --- parameter helpers --------------------------------------------------------

#: Parameters any method may carry besides its own.
COMMON_PARAMS = frozenset({"auth_token"})


def _params_dict(params: Any) -> Params:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise invalid_params("params must be an object (named parameters)")
    return params


def _only(params: Params, allowed: set[str]) -> None:
    for name in params:
        if name not in allowed and name not in COMMON_PARAMS:
            raise invalid_params(f"unknown parameter '{name}'", name)


def _string(params: Params, name: str, required: bool = True, max_len: int = 4096) -> str | None:
    value = params.get(name)
    if value is None:
        if required:
            raise invalid_params(f"'{name}' is required", name)
        return None
    if not isinstance(value, str) or not value:
        raise invalid_params(f"'{name}' must be a non-empty string", name)
    if len(value) > max_len:
        raise invalid_params(f"'{name}' is too long", name)
    return value


#: Bounds of every integer param (the contract, Transport: "every numeric param has bounds").
INTEGER_BOUNDS: dict[str, tuple[int, int]] = {
    "limit": (1, 1000),
    "offset": (0, 2**31 - 1),
    "duration_seconds": (1, 86400),
    "duration_minutes": (1, 1440),
    "duration_hours": (1, 24),
    "duration": (1, 86400),
    "expires_in": (1, 86400),
}
#: Bounds of every param that may be fractional.
NUMBER_BOUNDS: dict[str, tuple[float, float]] = {
    "max_age_days": (0.001, 36500),
    "max_size_gb": (0.001, 1_000_000),
}


def _integer(params: Params, name: str, default: int | None = None) -> int | None:
    """An integer within :data:`INTEGER_BOUNDS`; a float (even ``10.0``) is refused.

    Unbounded integers used to reach msgpack (which cannot carry one beyond
    64 bits) and SQLite (63 bits): the bound keeps every value well inside both.
    """
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_params(f"'{name}' must be an integer", name)
    low, high = INTEGER_BOUNDS[name]
    if not low <= value <= high:
        raise invalid_params(f"'{name}' must be in {low}-{high}", name)
    return value


def _number(params: Params, name: str) -> float | None:
    """A finite number within :data:`NUMBER_BOUNDS`."""
    value = params.get(name)
    if value is None:
        return None
    # NaN and infinities fail the range check too; said apart for a clearer reason.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid_params(f"'{name}' must be a finite number", name)
    low, high = NUMBER_BOUNDS[name]
    if not low <= value <= high:
        raise invalid_params(f"'{name}' must be in {low}-{high}", name)
    return value


@overload
def _choice(params: Params, name: str, choices: tuple[str, ...], default: str) -> str: ...
@overload
def _choice(params: Params, name: str, choices: tuple[str, ...], default: None) -> str | None: ...
def _choice(params: Params, name: str, choices: tuple[str, ...], default: str | None) -> str | None:
    value = params.get(name)
    if value is None:  # absent or an explicit null: the default, as a JSON-RPC client expects
        return default
    if value not in choices:
        raise invalid_params(f"'{name}' must be one of {', '.join(choices)}", name)
    return value


_FILENAME_CHARS = re.compile(r"[A-Za-z0-9._-]+")


def check_filename(name: Any, param: str = "filename") -> str:
    """A bare file name inside a storage folder, per the contract's rules.

    Refuses anything that could leave the folder: separators, ``..``, a
    leading dot, NUL bytes, over-long names.
    """
    if not isinstance(name, str) or not name:
        raise invalid_params(f"'{param}' must be a non-empty string", param)
    if len(name.encode("utf-8", "surrogatepass")) > 255:
        raise invalid_params(f"'{param}' must be at most 255 bytes", param)
    if name.startswith("."):
        raise invalid_params(f"'{param}' must not start with '.'", param)
    if not _FILENAME_CHARS.fullmatch(name):
        raise invalid_params(f"'{param}' may contain only A-Z a-z 0-9 . _ -", param)
    return name


#: Other spellings of a format's extension: "shot.jpeg" is a jpg, not another format.
_EXTENSION_ALIASES = {"jpg": ("jpeg",)}


def _with_extension(name: str, ext: str, other_exts: tuple[str, ...]) -> str:
    stem, dot, suffix = name.rpartition(".")
    if dot and (suffix.lower() == ext or suffix.lower() in _EXTENSION_ALIASES.get(ext, ())):
        return name
    if dot and suffix.lower() in other_exts:
        raise invalid_params(f"'filename' has the extension .{suffix} but the format is {ext}", "filename")
    candidate = f"{name}.{ext}"
    return check_filename(candidate)


# --- validators -----------------------------------------------------------------


def no_params(params: Any) -> Params:
    params = _params_dict(params)
    _only(params, set())
    return {}


def device_only(params: Any) -> Params:
    params = _params_dict(params)
    _only(params, {"device"})
    return {"device": _string(params, "device", max_len=256)}


def authenticate(params: Any) -> Params:
    params = _params_dict(params)
    _only(params, {"token", "auth_type"})
    token = params.get("auth_token", params.get("token"))
    if not isinstance(token, str) or not token:
        raise invalid_params("'auth_token' is required", "auth_token")
    if len(token) > 8192:
        raise invalid_params("'auth_token' is too long", "auth_token")
    return {"auth_token": token}


def topics(params: Any, required: bool) -> Params:
    params = _params_dict(params)
    _only(params, {"topics"})
    value = params.get("topics")
    if value is None:
        if required:
            raise invalid_params("'topics' is required", "topics")
        return {"topics": None}
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise invalid_params("'topics' must be a list of strings", "topics")
    for topic in value:
        if topic not in bus_topics.CLIENT:
            raise invalid_params(f"unknown topic '{topic}'; known: {', '.join(bus_topics.CLIENT)}", "topics")
    return {"topics": list(dict.fromkeys(value))}


def take_snapshot(params: Any) -> Params:
    params = _params_dict(params)
    _only(params, {"device", "filename", "format"})
    device = _string(params, "device", max_len=256)
    fmt = _choice(params, "format", ("jpg", "png"), "jpg")
    filename = params.get("filename")
    if filename is not None:
        # fmt is None only for an explicit "format": null (params.get keeps the
        # None over the default): a known gap, noted in the types note, kept as is.
        filename = _with_extension(check_filename(filename), fmt, ("jpg", "jpeg", "png"))
    return {"device": device, "filename": filename, "format": fmt}


#: Recording formats the original service's clients send, as the one they mean:
#: "fmp4" was its name for the fragmented MP4 that "mp4" is here.
RECORDING_FORMAT_ALIASES = {"fmp4": "mp4"}

#: Duration params and their unit in seconds (bounds in INTEGER_BOUNDS).
_DURATIONS = {"duration_seconds": 1, "duration_minutes": 60, "duration_hours": 3600, "duration": 1}


def start_recording(params: Any) -> Params:
    params = _params_dict(params)
    _only(params, {"device", "format", "filename", *_DURATIONS})
    device = _string(params, "device", max_len=256)
    given = [name for name in _DURATIONS if params.get(name) is not None]
    if len(given) > 1:
        raise invalid_params(f"give at most one of {', '.join(_DURATIONS)}", given[1])
    duration = None
    if given:
        name = given[0]
        # Not None: ``given`` holds only params that are present.
        duration = cast(int, _integer(params, name)) * _DURATIONS[name]
    if params.get("format") in RECORDING_FORMAT_ALIASES:
        params = {**params, "format": RECORDING_FORMAT_ALIASES[params["format"]]}
    fmt = _choice(params, "format", ("mp4", "mkv"), "mp4")
    filename = params.get("filename")
    if filename is not None:
        # As in take_snapshot: fmt is None only for an explicit "format": null.
        filename = _with_extension(check_filename(filename), fmt, ("mp4", "mkv"))
    return {"device": device, "duration": duration, "format": fmt, "filename": filename}


def list_files(params: Any) -> Params:
    params = _params_dict(params)
    _only(params, {"limit", "offset", "device"})
    return {
        "limit": _integer(params, "limit", default=100),
        "offset": _integer(params, "offset", default=0),
        "device": _string(params, "device", required=False, max_len=256),
    }


def filename_only(params: Any) -> Params:
    params = _params_dict(params)
    _only(params, {"filename"})
    if params.get("filename") is None:
        raise invalid_params("'filename' is required", "filename")
    return {"filename": check_filename(params["filename"])}


def download_link(params: Any) -> Params:
    params = _params_dict(params)
    _only(params, {"filename", "kind", "expires_in"})
    if params.get("filename") is None:
        raise invalid_params("'filename' is required", "filename")
    kind = _choice(params, "kind", ("recordings", "snapshots"), None)
    if kind is None:
        raise invalid_params("'kind' is required", "kind")
    return {
        "filename": check_filename(params["filename"]),
        "kind": kind,
        "expires_in": _integer(params, "expires_in", default=300),
    }


def retention_policy(params: Any) -> Params:
    params = _params_dict(params)
    _only(params, {"policy_type", "enabled", "max_age_days", "max_size_gb"})
    policy_type = _choice(params, "policy_type", ("age", "size", "manual"), None)
    if policy_type is None:
        raise invalid_params("'policy_type' is required", "policy_type")
    enabled = params.get("enabled")
    if not isinstance(enabled, bool):
        raise invalid_params("'enabled' is required and must be true or false", "enabled")
    max_age_days = _number(params, "max_age_days")
    max_size_gb = _number(params, "max_size_gb")
    if policy_type == "age" and enabled and max_age_days is None:
        raise invalid_params("'max_age_days' is required for an age policy", "max_age_days")
    if policy_type == "size" and enabled and max_size_gb is None:
        raise invalid_params("'max_size_gb' is required for a size policy", "max_size_gb")
    return {"policy_type": policy_type, "enabled": enabled, "max_age_days": max_age_days, "max_size_gb": max_size_gb}


# --- the table ------------------------------------------------------------------

_M = Method
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        _M("ping", None, GATEWAY, no_params, params=()),
        _M("authenticate", None, GATEWAY, authenticate, params=("auth_token", "token", "auth_type")),
        _M("get_camera_list", "viewer", GATEWAY, no_params, params=()),
        _M("get_camera_status", "viewer", GATEWAY, device_only, params=("device",)),
        _M("get_camera_capabilities", "viewer", DISCOVERY, device_only, params=("device",)),
        _M("get_streams", "viewer", DISCOVERY, no_params, params=()),
        _M("list_recordings", "viewer", FILES, list_files, params=("limit", "offset", "device")),
        _M("list_snapshots", "viewer", FILES, list_files, params=("limit", "offset", "device")),
        _M("get_recording_info", "viewer", FILES, filename_only, params=("filename",)),
        _M("get_snapshot_info", "viewer", FILES, filename_only, params=("filename",)),
        _M("get_download_link", "viewer", FILES, download_link, params=("filename", "kind", "expires_in")),
        _M("subscribe_events", "viewer", GATEWAY, lambda p: topics(p, required=True), params=("topics",)),
        _M("unsubscribe_events", "viewer", GATEWAY, lambda p: topics(p, required=False), params=("topics",)),
        _M("get_server_info", "viewer", GATEWAY, no_params, params=()),
        _M(
            "take_snapshot",
            "operator",
            RECORDING,
            take_snapshot,
            idempotent=False,
            timeout=15.0,
            params=("device", "filename", "format"),
        ),
        _M(
            "start_recording",
            "operator",
            RECORDING,
            start_recording,
            idempotent=False,
            timeout=15.0,
            params=("device", "format", "filename", *_DURATIONS),
        ),
        _M("stop_recording", "operator", RECORDING, device_only, idempotent=False, timeout=15.0, params=("device",)),
        _M("delete_recording", "operator", FILES, filename_only, idempotent=False, params=("filename",)),
        _M("delete_snapshot", "operator", FILES, filename_only, idempotent=False, params=("filename",)),
        _M("get_metrics", "admin", GATEWAY, no_params, params=()),
        _M("get_status", "admin", GATEWAY, no_params, params=()),
        _M("get_storage_info", "admin", FILES, no_params, params=()),
        _M(
            "set_retention_policy",
            "admin",
            FILES,
            retention_policy,
            idempotent=False,
            params=("policy_type", "enabled", "max_age_days", "max_size_gb"),
        ),
        _M("cleanup_old_files", "admin", FILES, no_params, idempotent=False, timeout=60.0, params=()),
    )
}


def role_allows(have: str | None, required: str | None) -> bool:
    """True when a caller holding ``have`` may call a method needing ``required``."""
    if required is None:
        return True
    return have is not None and ROLE_RANK.get(have, 0) >= ROLE_RANK[required]


def permissions(role: str) -> list[str]:
    """Every method a role may call, as the ``authenticate`` result lists them."""
    return sorted(name for name, m in METHODS.items() if role_allows(role, m.role))
