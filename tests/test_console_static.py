"""The web console's static files: serving rules, vendored libraries, and the wheel carrying them.

The console's behaviour in a browser is tested in ``test_console_browser.py``;
here are the parts that need no browser: what ``GET /`` and ``/console/...``
answer (types, caching, compression, 304, refusals), that the vendored
libraries are byte-for-byte the npm releases the README names, and that a
built wheel ships every static file.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from camservice.gateway import console

from .harness import REPO

STATIC = REPO / "gateway" / "console" / "static"


@pytest.fixture(scope="module")
def app() -> console.Console:
    return console.Console()


def test_root_serves_the_page_with_its_security_policy(app):
    status, content_type, body, headers = app.serve("/", {})
    assert status == 200
    assert content_type == "text/html; charset=utf-8"
    assert b'<script type="module" src="/console/app.js">' in body
    assert headers["Cache-Control"] == "no-cache"
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "connect-src 'self' ws: wss:" in csp
    # The inline import map is allowed by its hash, and by nothing broader.
    import_map = re.search(rb'<script type="importmap">(.*?)</script>', body, re.DOTALL).group(1)
    import base64

    digest = base64.b64encode(hashlib.sha256(import_map).digest()).decode()
    assert f"'sha256-{digest}'" in csp and "unsafe-inline" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/console/app.js", "text/javascript; charset=utf-8"),
        ("/console/style.css", "text/css; charset=utf-8"),
        ("/console/icon.svg", "image/svg+xml"),
        ("/console/vendor/LICENSE-preact.txt", "text/plain; charset=utf-8"),
    ],
)
def test_assets_have_their_content_type(app, path, content_type):
    status, got, body, headers = app.serve(path, {})
    assert (status, got) == (200, content_type)
    assert body == (STATIC / path[len("/console/") :]).read_bytes()
    assert headers["Cache-Control"] == "no-cache" and headers["ETag"].startswith('"')


def test_versioned_vendor_files_are_cached_for_a_year(app):
    _, _, _, headers = app.serve("/console/vendor/preact-10.29.8.module.js", {})
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"


def test_revalidation_answers_304_without_a_body(app):
    _, _, _, headers = app.serve("/console/app.js", {})
    status, _, body, again = app.serve("/console/app.js", {"if-none-match": headers["ETag"]})
    assert (status, body) == (304, b"") and again["ETag"] == headers["ETag"]
    assert app.serve("/console/app.js", {"if-none-match": 'W/"other", ' + headers["ETag"]})[0] == 304
    assert app.serve("/console/app.js", {"if-none-match": '"stale"'})[0] == 200


def test_gzip_only_when_accepted(app):
    status, _, body, headers = app.serve("/console/files.js", {"accept-encoding": "br, gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip" and headers["Vary"] == "Accept-Encoding"
    assert gzip.decompress(body) == (STATIC / "files.js").read_bytes()
    assert "Content-Encoding" not in app.serve("/console/files.js", {"accept-encoding": "gzip;q=0"})[3]
    assert "Content-Encoding" not in app.serve("/console/files.js", {})[3]


@pytest.mark.parametrize(
    "path", ["/console/", "/console/nope.js", "/console/../__init__.py", "/console/%2e%2e/__init__.py"]
)
def test_unknown_or_escaping_paths_are_404(app, path):
    assert app.serve(path, {})[0] == 404


def test_other_paths_are_not_the_consoles(app):
    for path in ("/ws", "/health/live", "/metrics", "/files/recordings/x.mp4", "/consolex"):
        assert app.serve(path, {}) is None


def test_vendored_libraries_are_the_npm_releases_untouched():
    table = (STATIC / "vendor" / "README.md").read_text()
    rows = re.findall(r"^\| (\S+\.js) \| (\S+) \| \S+ \| [^|]+ \| ([0-9a-f]{64}) \|$", table, re.MULTILINE)
    files = {p.name for p in (STATIC / "vendor").glob("*.js")}
    assert {name for name, _, _ in rows} == files and files
    for name, package, sha in rows:
        assert hashlib.sha256((STATIC / "vendor" / name).read_bytes()).hexdigest() == sha, name
        version = package.rsplit("@", 1)[1]
        assert version in name  # the version in the file name is what makes "immutable" caching safe
        assert f"/console/vendor/{name}" in (STATIC / "index.html").read_text()
    assert (STATIC / "vendor" / "LICENSE-preact.txt").exists() and (STATIC / "vendor" / "LICENSE-htm.txt").exists()


def test_no_file_loads_anything_from_another_host():
    for path in STATIC.rglob("*"):
        if path.suffix in (".js", ".css", ".html"):
            text = path.read_text()
            assert not re.search(r"""(src|href|import)\s*=?\s*["'(]\s*(https?:)?//""", text), path
            assert not re.search(r"""from\s*["']https?:""", text), path


@pytest.mark.slow
def test_the_wheel_carries_every_static_file(tmp_path: Path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("camservice-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "camservice/gateway/console/static/" + p.relative_to(STATIC).as_posix()
        for p in STATIC.rglob("*")
        if p.is_file()
    }
    assert expected and expected <= names
    assert "camservice/gateway/console/__init__.py" in names
