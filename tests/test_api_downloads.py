"""Downloads on the API port, through the whole running service, with real clients.

The gateway hands each ``/files/`` connection to a file worker (plain HTTP:
the socket itself; TLS: a relayed socketpair): these tests check what
clients see through ``server.port``: curl and python-requests with a Bearer
token or an API key, a signed link without any header, Range, HEAD and
conditional requests, every traversal and credential case, CORS, and a
large download while other clients keep calling the API.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.harness import Client, Service
from tests.test_files_http import TRAVERSALS

pytestmark = pytest.mark.slow

BODY = os.urandom(300_000)
# The large-download test calls as fast as 100 clients can for as long as the download
# lasts: on a fast machine that outruns one identity's token bucket, which is not what
# these tests are about (tests/test_gateway_security.py covers the limit).
UNLIMITED = {"security.rate_limit": 1e6, "security.rate_burst": 1_000_000}
SNAP = b"\x89PNG\r\n\x1a\n" + os.urandom(5000)


def make_certificate(folder) -> tuple[str, str]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-days", "1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return str(cert), str(key)


class Api:
    def __init__(self, svc: Service, scheme: str, verify):
        self.svc = svc
        self.base = f"{scheme}://127.0.0.1:{svc.port}"
        self.verify = verify
        self.viewer = svc.token("viewer")
        self.api_key = svc.cli("keys", "create", "--role", "viewer", "--name", "dl").stdout.strip()
        recordings, snapshots = svc.state_dir / "recordings", svc.state_dir / "snapshots"
        (recordings / "clip.mp4").write_bytes(BODY)
        (snapshots / "shot.png").write_bytes(SNAP)
        (svc.root / "secret.mp4").write_bytes(b"TOP-SECRET")
        os.symlink(svc.root / "secret.mp4", recordings / "escape.mp4")
        os.mkfifo(recordings / "pipe.mp4")

    def get(self, path: str, headers: dict | None = None, method: str = "GET") -> requests.Response:
        return requests.request(method, self.base + path, headers=headers or {}, verify=self.verify, timeout=20)

    def bearer(self) -> dict:
        return {"Authorization": f"Bearer {self.viewer}"}

    def client(self) -> Client:
        if self.base.startswith("https"):
            context = ssl.create_default_context(cafile=self.verify)
            return Client(self.svc.url.replace("ws://", "wss://"), self.viewer, ssl=context)
        return Client(self.svc.url, self.viewer)

    def call(self, method: str, params: dict | None = None):
        async def go():
            async with self.client() as client:
                return await client.call(method, params or {})

        return asyncio.run(go())


@pytest.fixture(scope="module")
def plain():
    settings = {"files.http_port": None, "server.cors_origins": ["https://app.example"], **UNLIMITED}
    with Service(simulate=1, **settings) as svc:
        yield Api(svc, "http", True)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = make_certificate(tmp_path_factory.mktemp("tls"))
    settings = {"files.http_port": None, "server.tls.cert_file": cert, "server.tls.key_file": key, **UNLIMITED}
    with Service(simulate=1, **settings) as svc:
        yield Api(svc, "https", cert)


@pytest.fixture(params=["plain", "tls"])
def api(request):
    return request.getfixturevalue(request.param)


def test_requests_with_bearer_and_api_key_get_the_exact_bytes(api):
    for headers in (api.bearer(), {"X-API-Key": api.api_key}):
        response = api.get("/files/recordings/clip.mp4", headers)
        assert response.status_code == 200 and response.content == BODY
        assert response.headers["Content-Type"] == "video/mp4"
        assert response.headers["Content-Disposition"] == 'attachment; filename="clip.mp4"'
        assert not response.history  # no redirect anywhere
    ranged = api.get("/files/recordings/clip.mp4", {**api.bearer(), "Range": "bytes=1000-1999"})
    assert ranged.status_code == 206 and ranged.content == BODY[1000:2000]
    assert ranged.headers["Content-Range"] == f"bytes 1000-1999/{len(BODY)}"
    head = api.get("/files/snapshots/shot.png", api.bearer(), method="HEAD")
    assert head.status_code == 200 and head.content == b"" and head.headers["Content-Length"] == str(len(SNAP))


def test_curl_with_bearer(api, tmp_path):
    out = tmp_path / "clip.mp4"
    url = api.base + "/files/recordings/clip.mp4"
    options = ["-sS", "-f", "-H", f"Authorization: Bearer {api.viewer}"]
    if api.base.startswith("https"):
        options += ["--cacert", api.verify]
    subprocess.run(["curl", *options, "-o", str(out), url], check=True, timeout=30)
    assert out.read_bytes() == BODY
    ranged = subprocess.run(["curl", *options, "-r", "-100", url], check=True, capture_output=True, timeout=30)
    assert ranged.stdout == BODY[-100:]
    head = subprocess.run(["curl", *options, "-I", url], check=True, capture_output=True, timeout=30)
    assert head.stdout.startswith(b"HTTP/1.1 200") and f"content-length: {len(BODY)}".encode() in head.stdout.lower()


def test_listings_and_signed_links_point_at_the_api_port(api):
    api.call("get_recording_info", {"filename": "clip.mp4"})  # indexes the file written behind the service's back
    listing = api.call("list_recordings")
    entry = next(f for f in listing["files"] if f["filename"] == "clip.mp4")
    url = urlsplit(entry["download_url"])
    assert url.port == api.svc.port and url.scheme == urlsplit(api.base).scheme
    assert requests.get(entry["download_url"], headers=api.bearer(), verify=api.verify, timeout=20).content == BODY

    link = api.call("get_download_link", {"filename": "clip.mp4", "kind": "recordings", "expires_in": 60})
    assert urlsplit(link["url"]).port == api.svc.port
    response = requests.get(link["url"], verify=api.verify, timeout=20)  # no header at all
    assert response.status_code == 200 and response.content == BODY
    ranged = requests.get(link["url"], headers={"Range": "bytes=-10"}, verify=api.verify, timeout=20)
    assert ranged.status_code == 206 and ranged.content == BODY[-10:]
    tampered = link["url"].replace("clip.mp4", "escape.mp4")
    assert requests.get(tampered, verify=api.verify, timeout=20).status_code == 403
    bumped = link["url"].replace("expires=", "expires=1")
    assert requests.get(bumped, verify=api.verify, timeout=20).status_code == 403


def test_get_download_link_errors(plain):
    async def go():
        async with plain.client() as client:
            missing = await client.request("get_download_link", {"filename": "nope.mp4", "kind": "recordings"})
            bad_kind = await client.request("get_download_link", {"filename": "clip.mp4", "kind": "other"})
            too_long = await client.request(
                "get_download_link", {"filename": "clip.mp4", "kind": "recordings", "expires_in": 86401}
            )
            return missing["error"], bad_kind["error"], too_long["error"]

    missing, bad_kind, too_long = asyncio.run(go())
    assert missing["code"] == -32010
    assert bad_kind["code"] == -32602 and bad_kind["data"]["param"] == "kind"
    assert too_long["code"] == -32602 and too_long["data"]["param"] == "expires_in"


def test_expired_link_is_refused(plain):
    link = plain.call("get_download_link", {"filename": "clip.mp4", "kind": "recordings", "expires_in": 1})
    expires = int(parse_qs(urlsplit(link["url"]).query)["expires"][0])
    # Waiting for the clock itself: the link's expiry is wall time, checked by another process.
    while time.time() <= expires + 0.01:
        time.sleep(expires + 0.05 - time.time())
    assert requests.get(link["url"], timeout=20).status_code == 403


@pytest.mark.parametrize("path, status", TRAVERSALS)
def test_traversal_over_the_api_port(plain, path, status):
    raw = _raw(plain, f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {plain.viewer}\r\n\r\n".encode())
    got = int(raw.split(b" ", 2)[1])
    assert got == status, raw[:300]
    assert b"TOP-SECRET" not in raw and BODY[:64] not in raw


def test_symlinks_and_fifos_are_not_files(plain):
    assert plain.get("/files/recordings/escape.mp4", plain.bearer()).status_code == 404
    assert plain.get("/files/recordings/pipe.mp4", plain.bearer()).status_code == 404


def test_credential_cases_over_the_api_port(plain):
    path = "/files/recordings/clip.mp4"
    response = plain.get(path)
    assert response.status_code == 401 and "Bearer" in response.headers["WWW-Authenticate"]
    assert plain.get(path, {"Authorization": "Bearer not-a-token"}).status_code == 403
    assert plain.get(path, {"X-API-Key": "csk_" + "A" * 43}).status_code == 403
    assert plain.get(path, {"Authorization": "Basic dXNlcjpwYXNz"}).status_code == 403
    assert plain.get(path, {**plain.bearer(), "X-API-Key": plain.api_key}).status_code == 403  # both: ambiguous
    assert plain.get("/files/recordings/missing.mp4").status_code == 401  # probing without credentials learns nothing
    assert plain.get("/files/recordings/missing.mp4", plain.bearer()).status_code == 404


def test_conditional_requests_let_a_browser_revalidate_and_seek(plain):
    first = plain.get("/files/recordings/clip.mp4", plain.bearer())
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert plain.get("/files/recordings/clip.mp4", {**plain.bearer(), "If-None-Match": etag}).status_code == 304
    assert plain.get("/files/recordings/clip.mp4", {**plain.bearer(), "If-Modified-Since": modified}).status_code == 304
    fresh = plain.get("/files/recordings/clip.mp4", {**plain.bearer(), "Range": "bytes=5-9", "If-Range": etag})
    assert fresh.status_code == 206 and fresh.content == BODY[5:10]
    stale = plain.get("/files/recordings/clip.mp4", {**plain.bearer(), "Range": "bytes=5-9", "If-Range": '"old"'})
    assert stale.status_code == 200 and stale.content == BODY
    several = plain.get("/files/recordings/clip.mp4", {**plain.bearer(), "Range": "bytes=0-1,5-9"})
    assert several.status_code == 200 and several.content == BODY


def test_cors_for_listed_origins_only(plain):
    ask = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET",
           "Access-Control-Request-Headers": "authorization, range"}  # fmt: skip
    preflight = plain.get("/files/recordings/clip.mp4", ask, method="OPTIONS")
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    refused = plain.get("/files/recordings/clip.mp4", {**ask, "Origin": "https://evil.example"}, method="OPTIONS")
    assert refused.status_code == 403 and "Access-Control-Allow-Origin" not in refused.headers
    download = plain.get("/files/recordings/clip.mp4", {**plain.bearer(), "Origin": "https://app.example"})
    assert download.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Content-Range" in download.headers["Access-Control-Expose-Headers"]
    other = plain.get("/files/recordings/clip.mp4", {**plain.bearer(), "Origin": "https://evil.example"})
    assert other.status_code == 200 and "Access-Control-Allow-Origin" not in other.headers
    health = plain.get("/health/live", {"Origin": "https://app.example"})
    assert health.headers["Access-Control-Allow-Origin"] == "https://app.example"


def test_a_large_download_does_not_hold_up_api_calls(api):
    big = api.svc.state_dir / "recordings" / "big.mp4"
    size = 1024 * 1024 * 1024  # the case: 1 GiB while 100 clients call
    with open(big, "wb") as handle:
        handle.truncate(size)  # sparse: cheap to make, real bytes (zeros) to send
    outcome: dict = {"received": 0, "nonzero": False, "error": None}
    started = threading.Event()

    def download():
        try:
            with requests.get(
                api.base + "/files/recordings/big.mp4", headers=api.bearer(), verify=api.verify, stream=True, timeout=60
            ) as response:
                outcome["status"] = response.status_code
                for chunk in response.iter_content(1 << 20):
                    started.set()
                    outcome["received"] += len(chunk)
                    outcome["nonzero"] |= chunk.count(0) != len(chunk)
        except (requests.RequestException, OSError) as exc:  # reported below, in the test's thread
            outcome["error"] = repr(exc)
        finally:
            started.set()

    thread = threading.Thread(target=download)
    thread.start()
    assert started.wait(60)

    async def callers():
        clients = [api.client() for _ in range(100)]
        for client in clients:
            await client.__aenter__()
        calls = 0
        try:
            while thread.is_alive():
                results = await asyncio.gather(*(c.call("get_camera_status", {"device": "sim:0"}) for c in clients))
                assert all(r["device"] == "sim:0" for r in results)
                calls += len(results)
        finally:
            for client in clients:
                await client.__aexit__(None, None, None)
        return calls

    calls = asyncio.run(callers())
    thread.join(60)
    assert outcome["error"] is None, outcome["error"]
    assert outcome.get("status") == 200 and outcome["received"] == size and not outcome["nonzero"]
    assert calls > 0


def _raw(api: Api, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", api.svc.port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False
