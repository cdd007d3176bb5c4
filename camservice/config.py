"""Configuration: one YAML file, documented defaults, environment overrides.

Every key is declared once in :data:`SCHEMA` with its default, type and a line
of documentation. From that table this module

* validates a YAML file (an unknown key or a bad value raises
  :class:`ConfigError` naming the key),
* applies environment overrides: ``runtime.state_dir`` is overridden by
  ``CAMSERVICE_RUNTIME_STATE_DIR``, ``server.tls.cert_file`` by
  ``CAMSERVICE_SERVER_TLS_CERT_FILE`` and so on (values are parsed as YAML
  scalars, so ``CAMSERVICE_SERVER_PORT=9000`` is an int),
* renders the reference file ``ops/camservice.example.yaml``
  (``camservice config example``), which a test keeps identical to the table.

The loaded configuration is a tree of read-only :class:`Section` objects:
``config.server.port``, ``config.server.tls.cert_file``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

ENV_PREFIX = "CAMSERVICE_"
CONFIG_ENV = "CAMSERVICE_CONFIG"
#: Aliases kept because operators know them from the security documentation.
ENV_ALIASES = {"CAMSERVICE_JWT_SECRET": "security.jwt_secret"}


class ConfigError(ValueError):
    """A configuration problem, always naming the offending key."""


@dataclass(frozen=True)
class Setting:
    key: str
    default: Any
    type: type | tuple[type, ...]
    doc: str
    check: Callable[[Any], str | None] | None = None  # returns a complaint or None
    nullable: bool = False


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _port(value: Any) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number 0-65535"


def _origins(value: Any) -> str | None:
    for origin in value:
        if origin == "*":
            continue
        if not isinstance(origin, str) or not re.fullmatch(r"https?://[^/\s]+", origin):
            return "must be a list of origins like https://host:port (or *)"
    return None


def _percent(value: Any) -> str | None:
    return None if 0 < value <= 100 else "must be a percentage in (0, 100]"


def _qos(value: Any) -> str | None:
    return None if value in (0, 1, 2) else "must be 0, 1 or 2"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _resolution(value: Any) -> str | None:
    width, _, height = str(value).partition("x")
    if width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0:
        return None
    return "must look like WIDTHxHEIGHT, e.g. 640x480"


NUMBER = (int, float)

SCHEMA: tuple[Setting, ...] = (
    # server
    Setting("server.host", "127.0.0.1", str, "Address the WebSocket/HTTP server listens on."),
    Setting("server.port", 8002, int, "Port of the WebSocket endpoint /ws and the HTTP endpoints.", _port),
    Setting(
        "server.public_host",
        None,
        str,
        "Host name put into stream and download URLs (default: server.host).",
        nullable=True,
    ),
    Setting(
        "server.tls.cert_file",
        None,
        str,
        "PEM certificate; with key_file, switches to wss:// and https://.",
        nullable=True,
    ),
    Setting("server.tls.key_file", None, str, "PEM private key for server.tls.cert_file.", nullable=True),
    Setting(
        "server.max_connections",
        20000,
        int,
        "Connections accepted per gateway process; beyond it the handshake gets HTTP 503.",
        _positive,
    ),
    Setting(
        "server.max_frame_bytes", 1048576, int, "Largest accepted WebSocket frame (close code 1009 beyond).", _positive
    ),
    Setting("server.max_in_flight", 128, int, "Requests one connection may have in flight at once.", _positive),
    Setting(
        "server.ping_interval", 20.0, NUMBER, "Seconds between WebSocket keepalive pings (0 disables).", _non_negative
    ),
    Setting(
        "server.header_timeout",
        10.0,
        NUMBER,
        "Seconds a client has to send a whole HTTP request head (or WebSocket handshake), downloads included.",
        _positive,
    ),
    Setting(
        "server.max_pending_per_address",
        16,
        int,
        "Slow connections (over 1 s into their request head) from one address; beyond, HTTP 503 with Retry-After.",
        _positive,
    ),
    Setting(
        "server.max_pending",
        2048,
        int,
        "Connections still sending their request head, per process; a new one pushes out the oldest.",
        _positive,
    ),
    Setting(
        "server.cors_origins",
        [],
        list,
        "Web origins (https://host:port, or * for any) allowed to call the HTTP endpoints from a browser.",
        _origins,
    ),
    # gateway
    Setting("gateway.processes", 1, int, "Gateway processes sharing server.port (SO_REUSEPORT).", _positive),
    Setting(
        "gateway.event_loop",
        "auto",
        str,
        "Event loop of the gateway and the discovery worker: asyncio, uvloop, or auto (uvloop where installed).",
        _one_of("auto", "asyncio", "uvloop"),
    ),
    Setting(
        "gateway.request_timeout",
        10.0,
        NUMBER,
        "Seconds a worker has to answer a forwarded request before -32011.",
        _positive,
    ),
    # workers
    Setting(
        "workers.discovery", 1, int, "Camera discovery worker processes (state is per process: keep 1).", _positive
    ),
    Setting("workers.recording", 1, int, "Recording worker processes (cameras are owned by one: keep 1).", _positive),
    Setting("workers.files", 1, int, "File worker processes sharing listing/info/delete requests.", _positive),
    Setting("workers.files_concurrency", 2, int, "Requests one file worker accepts at a time.", _positive),
    # runtime
    Setting("runtime.state_dir", "~/.local/state/camservice", str, "Pid/lock file, ipc sockets, logs, journals, keys."),
    Setting(
        "runtime.transport",
        "ipc",
        str,
        "ZeroMQ transport between processes: ipc (sockets in state_dir) or tcp.",
        _one_of("ipc", "tcp"),
    ),
    Setting("runtime.tcp_host", "127.0.0.1", str, "With transport tcp: address gateways bind and workers connect to."),
    Setting(
        "runtime.tcp_base_port",
        8100,
        int,
        "With transport tcp: first of the ports used (two per gateway, two for events).",
        _port,
    ),
    Setting("runtime.heartbeat_interval", 1.0, NUMBER, "Seconds between worker heartbeats.", _positive),
    Setting("runtime.heartbeat_liveness", 3, int, "Missed heartbeats after which a worker counts as dead.", _positive),
    Setting(
        "runtime.stop_timeout", 8.0, NUMBER, "Seconds a process has to drain after SIGTERM before SIGKILL.", _positive
    ),
    Setting(
        "runtime.restart_backoff_max", 30.0, NUMBER, "Ceiling of the exponential restart backoff, seconds.", _positive
    ),
    Setting(
        "runtime.give_up_after",
        10,
        int,
        "Crashes in a row (without a stable run) after which a process is left stopped.",
        _positive,
    ),
    Setting("runtime.stable_after", 30.0, NUMBER, "Seconds of running that reset a process's crash count.", _positive),
    Setting(
        "runtime.failed_retry_after",
        300.0,
        NUMBER,
        "Seconds a process left failed after a crash loop waits before a new round of restarts.",
        _positive,
    ),
    Setting(
        "runtime.hang_timeout",
        20.0,
        NUMBER,
        "Seconds without a heartbeat (stats every 2 s) after which the supervisor replaces a process as hung "
        "(a SIGSTOPped one goes after heartbeat_interval x heartbeat_liveness).",
        _positive,
    ),
    Setting("runtime.sample_interval", 2.0, NUMBER, "Seconds between psutil samples of every process.", _positive),
    Setting(
        "runtime.start_timeout",
        30.0,
        NUMBER,
        "Seconds 'camservice start' waits for every process and the port.",
        _positive,
    ),
    # logging
    Setting(
        "logging.level", "info", str, "debug, info, warning or error.", _one_of("debug", "info", "warning", "error")
    ),
    # storage
    Setting("storage.recordings_dir", None, str, "Recordings folder (default: <state_dir>/recordings).", nullable=True),
    Setting("storage.snapshots_dir", None, str, "Snapshots folder (default: <state_dir>/snapshots).", nullable=True),
    Setting(
        "storage.min_free_bytes",
        268435456,
        int,
        "Below this much free space, recording and snapshots are refused (-32007).",
        _non_negative,
    ),
    Setting("storage.warn_percent", 80.0, NUMBER, "Usage percentage that raises low_space_warning.", _percent),
    Setting("storage.critical_percent", 90.0, NUMBER, "Usage percentage reported as critical.", _percent),
    Setting(
        "storage.scan_interval",
        60.0,
        NUMBER,
        "Seconds between rescans that notice files changed behind the service's back.",
        _positive,
    ),
    # files
    Setting(
        "files.http_port",
        None,
        int,
        "Optional second port where the file workers serve /files/ themselves (off: downloads use server.port).",
        _port,
        nullable=True,
    ),
    Setting(
        "files.download_rate_limit",
        500_000_000,
        int,
        "Bytes per second one download may take (0: no limit); keeps a memory-speed copy from crowding out API calls.",
        _non_negative,
    ),
    Setting(
        "files.download_budget",
        312_500_000,
        int,
        "Bytes per second all downloads together may take, shared out among them (0: no limit); default 2.5 Gbit/s.",
        _non_negative,
    ),
    Setting(
        "files.download_priority",
        "low",
        str,
        "Scheduling class of the threads that send download bodies: normal, low (SCHED_BATCH, nice +10) or idle.",
        _one_of("normal", "low", "idle"),
    ),
    # cameras
    Setting("cameras.simulate", 0, int, "Simulated cameras created at start (sim:0 ... sim:N-1).", _non_negative),
    Setting("cameras.sim_resolution", "640x480", str, "Resolution of simulated cameras.", _resolution),
    Setting("cameras.sim_fps", 15, int, "Frame rate of simulated cameras.", _positive),
    Setting(
        "cameras.udev", True, bool, "Use udev for real V4L2 cameras (falls back to polling /dev when unavailable)."
    ),
    Setting(
        "cameras.poll_interval",
        0.05,
        NUMBER,
        "Seconds between checks for simulated plug/unplug where inotify is unavailable (and /dev when polling).",
        _positive,
    ),
    Setting("cameras.max_cameras", 16, int, "Cameras the service manages at most.", _positive),
    # media
    Setting(
        "media.backend",
        "ffmpeg",
        str,
        "ffmpeg (built in) or mediamtx (streams via MediaMTX).",
        _one_of("ffmpeg", "mediamtx"),
    ),
    Setting(
        "media.ffmpeg_path",
        None,
        str,
        "ffmpeg binary (default: system ffmpeg, else the imageio-ffmpeg wheel).",
        nullable=True,
    ),
    Setting("media.mediamtx_api", "http://127.0.0.1:9997", str, "MediaMTX control API base URL (v3)."),
    Setting(
        "media.mediamtx_host",
        None,
        str,
        "Host used in MediaMTX stream URLs (default: server.public_host).",
        nullable=True,
    ),
    Setting("media.rtsp_port", 8554, int, "MediaMTX RTSP port.", _port),
    Setting("media.webrtc_port", 8889, int, "MediaMTX WebRTC port.", _port),
    Setting("media.hls_port", 8888, int, "MediaMTX HLS port.", _port),
    # recording
    Setting(
        "recording.segment_seconds",
        600,
        int,
        "A recording rolls over to a new file after this many seconds.",
        _positive,
    ),
    Setting("recording.segment_max_bytes", 0, int, "...or after this many bytes (0: no size limit).", _non_negative),
    Setting(
        "recording.stall_seconds", 10.0, NUMBER, "A capture producing no output for this long is restarted.", _positive
    ),
    # security
    Setting(
        "security.jwt_secret",
        None,
        str,
        "HS256 secret (env CAMSERVICE_JWT_SECRET); generated into state_dir when unset.",
        nullable=True,
    ),
    Setting("security.metrics_require_auth", False, bool, "Require an admin credential for GET /metrics."),
    Setting(
        "security.rate_limit", 500.0, NUMBER, "Requests per second refilled per connection and per identity.", _positive
    ),
    Setting("security.rate_burst", 1000, int, "Token-bucket size per connection and per identity.", _positive),
    Setting(
        "security.unauthenticated_timeout",
        30.0,
        NUMBER,
        "Seconds an unauthenticated connection may stay idle.",
        _positive,
    ),
    Setting(
        "security.auth_failures_per_minute",
        20,
        int,
        "Failed authentications per address per minute before throttling.",
        _positive,
    ),
    # metrics
    Setting("metrics.enabled", True, bool, "Collect and export Prometheus metrics."),
    # upgrade (camservice reload / upgrade: canary and automatic rollback)
    Setting(
        "upgrade.canary_seconds",
        30.0,
        NUMBER,
        "Seconds after a reload during which the new generation is compared with the old one (0: no canary).",
        _non_negative,
    ),
    Setting(
        "upgrade.status_p95_ratio", 3.0, NUMBER, "Rollback when status-call P95 grows beyond this factor...", _positive
    ),
    Setting("upgrade.status_p95_floor", 0.05, NUMBER, "...and by more than this many seconds.", _non_negative),
    Setting(
        "upgrade.worker_p95_ratio", 3.0, NUMBER, "Rollback when worker-call P95 grows beyond this factor...", _positive
    ),
    Setting("upgrade.worker_p95_floor", 0.25, NUMBER, "...and by more than this many seconds.", _non_negative),
    Setting(
        "upgrade.error_rate_increase",
        0.02,
        NUMBER,
        "Rollback when the server-error rate (-32603, -32011) rises by more than this (0-1).",
        _non_negative,
    ),
    Setting(
        "upgrade.max_restarts",
        0,
        int,
        "Rollback when the new generation's processes restart more often.",
        _non_negative,
    ),
    Setting(
        "upgrade.rss_ratio",
        2.0,
        NUMBER,
        "Rollback when the new generation's total RSS exceeds the old one's by this factor.",
        _positive,
    ),
    Setting(
        "upgrade.test_status_delay",
        0.0,
        NUMBER,
        "Tests only: seconds added to every get_status reply (a deliberately slowed generation).",
        _non_negative,
    ),
    # mqtt (the bridge process runs only when mqtt.host is set)
    Setting("mqtt.host", None, str, "MQTT broker host; the MQTT bridge runs only when this is set.", nullable=True),
    Setting("mqtt.port", 1883, int, "MQTT broker port (8883 is usual with TLS).", _port),
    Setting("mqtt.username", None, str, "User name presented to the broker.", nullable=True),
    Setting("mqtt.password", None, str, "Password for mqtt.username (or use mqtt.password_file).", nullable=True),
    Setting(
        "mqtt.password_file",
        None,
        str,
        "File holding the password (first line), instead of mqtt.password.",
        nullable=True,
    ),
    Setting("mqtt.tls", False, bool, "Connect with TLS, verifying the broker against the system CAs."),
    Setting(
        "mqtt.tls_ca_file",
        None,
        str,
        "PEM CA bundle that signed the broker's certificate (implies TLS).",
        nullable=True,
    ),
    Setting(
        "mqtt.tls_cert_file",
        None,
        str,
        "PEM client certificate for brokers that require one (implies TLS).",
        nullable=True,
    ),
    Setting("mqtt.tls_key_file", None, str, "PEM private key for mqtt.tls_cert_file.", nullable=True),
    Setting("mqtt.client_id", None, str, "MQTT client id (default: camservice-<hostname>).", nullable=True),
    Setting(
        "mqtt.topic_prefix",
        None,
        str,
        "Root of every topic of this service (default: camservice/<hostname>); one per box on a shared broker.",
        nullable=True,
    ),
    Setting("mqtt.qos", 1, int, "QoS of published messages and command subscriptions (0, 1 or 2).", _qos),
    Setting("mqtt.keepalive", 60, int, "Seconds between MQTT keepalive pings.", _positive),
    Setting(
        "mqtt.health_interval", 30.0, NUMBER, "Seconds between service health messages (from get_status).", _positive
    ),
    Setting(
        "mqtt.queue_size",
        1000,
        int,
        "Events waiting for the broker beyond which the oldest are dropped (counted in /metrics).",
        _positive,
    ),
    Setting("mqtt.homeassistant.discovery", True, bool, "Publish Home Assistant MQTT discovery configs."),
    Setting("mqtt.homeassistant.prefix", "homeassistant", str, "Home Assistant's discovery prefix."),
)

_BY_KEY = {s.key: s for s in SCHEMA}


class Section:
    """A read-only node of the configuration tree."""

    def __init__(self, values: dict[str, Any]):
        for name, value in values.items():
            object.__setattr__(self, name, Section(value) if isinstance(value, dict) else value)

    if TYPE_CHECKING:
        # Sections and keys are set from SCHEMA at run time: tell the type
        # checker that any attribute may exist (only for it, not at run time,
        # where a missing key must still raise AttributeError).
        def __getattr__(self, name: str) -> Any: ...

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("configuration is read-only")

    def __repr__(self) -> str:
        return f"Section({vars(self)!r})"


class Config(Section):
    """The validated configuration; also remembers where it came from."""

    source: Path | None
    flat: dict[str, Any]

    def __init__(self, values: dict[str, Any], source: Path | None):
        super().__init__(values)
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "flat", flatten(values))

    @property
    def state_dir(self) -> Path:
        return Path(self.runtime.state_dir)

    @property
    def recordings_dir(self) -> Path:
        return Path(self.storage.recordings_dir)

    @property
    def snapshots_dir(self) -> Path:
        return Path(self.storage.snapshots_dir)

    @property
    def public_host(self) -> str:
        return self.server.public_host or self.server.host


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and key not in _BY_KEY:
            flat.update(flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def env_name(key: str) -> str:
    return ENV_PREFIX + key.replace(".", "_").upper()


def _check(key: str, value: Any) -> Any:
    setting = _BY_KEY.get(key)
    if setting is None:
        raise ConfigError(f"{key}: unknown configuration key")
    if value is None:
        if setting.nullable:
            return None
        raise ConfigError(f"{key}: must not be empty")
    expected = setting.type if isinstance(setting.type, tuple) else (setting.type,)
    # bool is an int in Python; refuse it where a number is meant.
    if isinstance(value, bool) and bool not in expected:
        raise ConfigError(f"{key}: expected {_type_name(setting)}, got {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(f"{key}: expected {_type_name(setting)}, got {value!r}")
    if setting.check is not None:
        complaint = setting.check(value)
        if complaint:
            raise ConfigError(f"{key}: {complaint} (got {value!r})")
    return value


def _type_name(setting: Setting) -> str:
    types = setting.type if isinstance(setting.type, tuple) else (setting.type,)
    return " or ".join(
        {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}[t] for t in types
    )


def _parse_env_value(key: str, text: str) -> Any:
    try:
        value = yaml.safe_load(text) if text != "" else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key} (from {env_name(key)}): not a valid value: {exc}") from None
    if _BY_KEY[key].type is str and value is not None and not isinstance(value, str):
        value = text  # "0123" or "on" stay strings where a string is meant
    return value


def load(
    path: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read, override and validate the configuration.

    ``path`` defaults to ``$CAMSERVICE_CONFIG``; without either, only defaults
    and the environment apply. ``overrides`` (flat keys, e.g. from command-line
    options) win over everything.
    """
    environ = os.environ if environ is None else environ
    if path is None and environ.get(CONFIG_ENV):
        path = environ[CONFIG_ENV]
    values = {s.key: s.default for s in SCHEMA}
    source = None
    if path is not None:
        source = Path(path).expanduser().resolve()
        try:
            text = source.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {source}: {exc.strerror}") from None
        try:
            document = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from None
        if not isinstance(document, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
        for key, value in flatten(document).items():
            values[key] = _check(key, value)
    for name, key in ENV_ALIASES.items():
        if environ.get(name):
            values[key] = _check(key, environ[name])
    for setting in SCHEMA:
        name = env_name(setting.key)
        if name in environ:
            values[setting.key] = _check(setting.key, _parse_env_value(setting.key, environ[name]))
    for key, value in (overrides or {}).items():
        values[key] = _check(key, value)
    _resolve_paths(values, source)
    _check_consistency(values)
    return Config(_unflatten(values), source)


def _resolve_paths(values: dict[str, Any], source: Path | None) -> None:
    base = source.parent if source else Path.cwd()

    def absolute(text: str) -> str:
        path = Path(os.path.expandvars(text)).expanduser()
        return str(path if path.is_absolute() else (base / path).resolve())

    values["runtime.state_dir"] = absolute(values["runtime.state_dir"])
    state = Path(values["runtime.state_dir"])
    values["storage.recordings_dir"] = absolute(values["storage.recordings_dir"] or str(state / "recordings"))
    values["storage.snapshots_dir"] = absolute(values["storage.snapshots_dir"] or str(state / "snapshots"))
    for key in (
        "server.tls.cert_file",
        "server.tls.key_file",
        "media.ffmpeg_path",
        "mqtt.password_file",
        "mqtt.tls_ca_file",
        "mqtt.tls_cert_file",
        "mqtt.tls_key_file",
    ):
        if values[key]:
            values[key] = absolute(values[key])


def _check_consistency(values: dict[str, Any]) -> None:
    if bool(values["server.tls.cert_file"]) != bool(values["server.tls.key_file"]):
        raise ConfigError("server.tls.key_file: cert_file and key_file must be set together")
    if values["mqtt.password"] and values["mqtt.password_file"]:
        raise ConfigError("mqtt.password_file: set mqtt.password or mqtt.password_file, not both")
    if values["mqtt.tls_key_file"] and not values["mqtt.tls_cert_file"]:
        raise ConfigError("mqtt.tls_key_file: needs mqtt.tls_cert_file")
    if values["storage.warn_percent"] > values["storage.critical_percent"]:
        raise ConfigError("storage.warn_percent: must not exceed storage.critical_percent")
    if values["runtime.transport"] == "ipc" and len(values["runtime.state_dir"]) > 80:
        # ipc:// endpoints are Unix socket paths, limited to 107 bytes.
        raise ConfigError(
            "runtime.state_dir: too long for ipc sockets (80 characters at most); "
            "choose a shorter path or runtime.transport: tcp"
        )


def example_yaml() -> str:
    """The reference configuration file, generated from :data:`SCHEMA`."""
    lines = [
        "# camservice configuration: every key with its default.",
        "# Generated by `camservice config example`; a test keeps it in step with the code.",
        "# Any key can be overridden by an environment variable, for example",
        "# runtime.state_dir by CAMSERVICE_RUNTIME_STATE_DIR; relative paths are",
        "# relative to this file. Unknown keys and bad values stop `camservice start`.",
    ]
    previous: list[str] = []
    for setting in SCHEMA:
        *parents, leaf = setting.key.split(".")
        common = 0
        while common < min(len(parents), len(previous)) and parents[common] == previous[common]:
            common += 1
        for depth in range(common, len(parents)):
            if depth == 0:
                lines.append("")
            lines.append("  " * depth + parents[depth] + ":")
        indent = "  " * len(parents)
        lines.append(f"{indent}# {setting.doc}")
        value = yaml.safe_dump(setting.default, default_flow_style=True).strip()
        value = value.removesuffix("\n...").removesuffix("...").strip()
        lines.append(f"{indent}{leaf}: {value}")
        previous = parents
    return "\n".join(lines) + "\n"


def iter_settings() -> Iterator[Setting]:
    return iter(SCHEMA)
