"""The one place server TLS contexts are made (gateway, file workers, anything serving HTTPS)."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Config


def server_context(config: Config) -> ssl.SSLContext | None:
    """The server context for ``server.tls``, or None when TLS is not configured.

    TLS 1.2 is the floor everywhere: 1.0 and 1.1 are deprecated (RFC 8996).
    """
    if not config.server.tls.cert_file:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.server.tls.cert_file, config.server.tls.key_file)
    return context
