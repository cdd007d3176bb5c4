"""The web console: static files shipped inside this package, served on the API port.

``GET /`` answers ``static/index.html``; ``GET /console/<path>`` answers
``static/<path>`` (scripts, styles, the vendored Preact and htm). Nothing is
built at install time and nothing is fetched from another host: the page loads
these files and then speaks the JSON-RPC API over ``/ws`` like any client.

Files are read once, on first use, into memory together with a gzip copy and a
strong ETag, so a request costs a dict lookup and never touches the disk on the
gateway's event loop. Caching: the vendored libraries carry their version in
their file name and are ``immutable`` for a year; everything else is
``no-cache`` (revalidated by ETag, answered 304 when unchanged), so an upgraded
service is picked up on the next load.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from urllib.parse import unquote, urlsplit

#: ``(status, content_type, body, extra_headers)``, as :mod:`camservice.gateway.http` returns.
HttpResponse = tuple[int, str, bytes, dict[str, str]]

PREFIX = "/console/"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
#: Worth compressing (text); images are compressed already.
COMPRESSIBLE = (".html", ".js", ".css", ".svg", ".txt", ".md")

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

_IMPORT_MAP = re.compile(rb'<script type="importmap">(.*?)</script>', re.DOTALL)


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str
    cache_control: str


def _csp(index_html: bytes) -> str:
    """The page's Content-Security-Policy: only this origin, plus the inline import map by its hash.

    ``frame-src`` allows http(s) pages because the live view of a MediaMTX
    camera embeds MediaMTX's own WebRTC page, which is on another port.
    """
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode()}'"
        for m in _IMPORT_MAP.finditer(index_html)
    )
    return (
        f"default-src 'self'; script-src 'self' {hashes}; style-src 'self'; "
        "img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self' ws: wss:; "
        "frame-src http: https:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ).replace("  ", " ")


def _load() -> dict[str, Asset]:
    root = resources.files(__package__) / "static"
    assets: dict[str, Asset] = {}

    def walk(folder, prefix: str) -> None:
        for entry in folder.iterdir():
            name = prefix + entry.name
            if entry.is_dir():
                walk(entry, name + "/")
                continue
            suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
            if suffix not in CONTENT_TYPES:
                continue
            body = entry.read_bytes()
            versioned = name.startswith("vendor/") and suffix == ".js"
            assets[name] = Asset(
                body=body,
                gzipped=gzip.compress(body, 9, mtime=0) if suffix in COMPRESSIBLE else None,
                content_type=CONTENT_TYPES[suffix],
                etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
                cache_control=IMMUTABLE if versioned else REVALIDATE,
            )

    walk(root, "")
    return assets


class Console:
    """Answers the console's HTTP requests from the files loaded into memory."""

    def __init__(self, assets: dict[str, Asset] | None = None):
        self.assets = _load() if assets is None else assets
        index = self.assets.get("index.html")
        self.csp = _csp(index.body) if index else "default-src 'none'"

    def serve(self, path: str, headers) -> HttpResponse | None:
        """The response for ``GET path``, or None when the path is not the console's.

        ``headers`` is a mapping whose ``get`` takes lower-case names (websockets' Headers, or the route table's dict).
        """
        target = unquote(urlsplit(path).path)
        if target == "/":
            name = "index.html"
        elif target.startswith(PREFIX):
            name = target[len(PREFIX) :]
            if not name or name == "index.html" or ".." in name.split("/"):
                return _not_found()
        else:
            return None
        asset = self.assets.get(name)
        if asset is None:
            return _not_found()
        extra = {
            "ETag": asset.etag,
            "Cache-Control": asset.cache_control,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        if name == "index.html":
            extra["Content-Security-Policy"] = self.csp
        if asset.gzipped is not None:
            extra["Vary"] = "Accept-Encoding"
        if _matches(headers.get("if-none-match"), asset.etag):
            return 304, asset.content_type, b"", extra
        if asset.gzipped is not None and _accepts_gzip(headers.get("accept-encoding")):
            extra["Content-Encoding"] = "gzip"
            return 200, asset.content_type, asset.gzipped, extra
        return 200, asset.content_type, asset.body, extra


def _not_found() -> HttpResponse:
    return 404, "text/plain; charset=utf-8", b"not found\n", {"X-Content-Type-Options": "nosniff"}


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    # Weak comparison (RFC 9110 13.1.2): W/"x" matches "x".
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))


def _accepts_gzip(accept_encoding: str | None) -> bool:
    for part in (accept_encoding or "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() == "gzip":
            return params.replace(" ", "").lower() not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


_console: Console | None = None


def serve(path: str, headers) -> HttpResponse | None:
    """Module-level entry: one :class:`Console` per process, loaded on the first request."""
    global _console
    if _console is None:
        _console = Console()
    return _console.serve(path, headers)
