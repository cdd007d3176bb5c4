"""How the bridge connects to its broker: credentials, TLS, client id and last will, from ``mqtt.*``."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

import aiomqtt

from .topics import Topics


def read_password(config) -> str | None:
    if config.mqtt.password_file:
        lines = Path(config.mqtt.password_file).read_text().splitlines()
        return lines[0] if lines else ""
    return config.mqtt.password


def tls_context(mqtt) -> ssl.SSLContext | None:
    if not (mqtt.tls or mqtt.tls_ca_file or mqtt.tls_cert_file):
        return None
    context = ssl.create_default_context(cafile=mqtt.tls_ca_file)
    if mqtt.tls_cert_file:
        context.load_cert_chain(mqtt.tls_cert_file, mqtt.tls_key_file)
    return context


def client_options(config, topics: Topics, hostname: str) -> dict[str, Any]:
    """Keyword arguments of :class:`aiomqtt.Client` for this service's bridge."""
    mqtt = config.mqtt
    return {
        "hostname": mqtt.host,
        "port": mqtt.port,
        "username": mqtt.username,
        "password": read_password(config),
        "identifier": mqtt.client_id or f"camservice-{hostname}-{os.getpid()}",
        "keepalive": mqtt.keepalive,
        "tls_context": tls_context(mqtt),
        # The broker says "offline" for us when the connection dies without a goodbye.
        "will": aiomqtt.Will(topics.availability, b"offline", mqtt.qos, retain=True),
        "timeout": 10.0,
    }
