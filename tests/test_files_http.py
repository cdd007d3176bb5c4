"""The download server over real sockets: traversal, ranges, HEAD, auth hook, memory."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import tracemalloc

import pytest
from camservice.workers.files.downloads import DownloadServer
from camservice.workers.files.worker import FilesWorker

from camservice.httpauth import Denial
from tests.test_files_support import make_config

SECRET = b"TOP-SECRET-CONTENT"
BODY = bytes(range(256)) * 4  # 1024 bytes, every offset distinguishable


@pytest.fixture
def folders(tmp_path):
    rec, snap = tmp_path / "store" / "recordings", tmp_path / "store" / "snapshots"
    rec.mkdir(parents=True)
    snap.mkdir(parents=True)
    (tmp_path / "store" / "secret.mp4").write_bytes(SECRET)
    (tmp_path / "secret.mp4").write_bytes(SECRET)
    (rec / "clip.mp4").write_bytes(BODY)
    (rec / "movie.mkv").write_bytes(b"mkv")
    (rec / "empty.mp4").write_bytes(b"")
    (rec / "notes.txt").write_bytes(b"not media")
    (snap / "still.jpg").write_bytes(b"jpg")
    (snap / "still.png").write_bytes(b"png")
    os.symlink(tmp_path / "secret.mp4", rec / "escape.mp4")
    os.symlink("../secret.mp4", rec / "relative.mp4")
    os.symlink(rec / "clip.mp4", rec / "alias.mp4")
    os.symlink(tmp_path / "store", rec / "up")
    return {"recording": rec, "snapshot": snap}


@pytest.fixture
def server(folders):
    srv = DownloadServer(folders, "127.0.0.1", 0)
    srv.start()
    yield srv
    srv.stop()


def get(server, path, method="GET", headers=None, port=None):
    conn = http.client.HTTPConnection("127.0.0.1", port or server.port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def raw(server, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


# --- traversal ------------------------------------------------------------------------------


#: Every traversal attempt and what it gets; also run over the API port (tests/test_api_downloads.py).
TRAVERSALS = [
    ("/files/recordings/../secret.mp4", 400),
    ("/files/recordings/%2e%2e/secret.mp4", 400),
    ("/files/recordings/%2E%2E%2Fsecret.mp4", 400),
    ("/files/recordings/..%2fsecret.mp4", 400),
    ("/files/recordings/.%2e/.%2e/secret.mp4", 400),
    ("/files/recordings/%252e%252e%252fsecret.mp4", 400),  # double-encoded: decoded once only
    ("/files/recordings//etc/passwd", 400),
    ("/files/recordings/%2Fetc%2Fpasswd", 400),
    ("/files/recordings/clip.mp4%00.jpg", 400),
    ("/files/recordings/clip.mp4%00", 400),
    ("/files/recordings/..\\secret.mp4", 400),
    ("/files/recordings/%5c..%5csecret.mp4", 400),
    ("/files/recordings/.hidden.mp4", 400),
    ("/files/recordings/%c0%ae%c0%ae/secret.mp4", 400),  # overlong UTF-8 dots
    ("/files/recordings/up/secret.mp4", 400),
    ("/files/snapshots/../recordings/clip.mp4", 400),
    ("/files/recordings/escape.mp4", 404),  # symlink pointing outside
    ("/files/recordings/relative.mp4", 404),
    ("/files/recordings/up", 404),  # symlink to a directory outside
    ("/files/recordings/notes.txt", 404),  # not media: not ours to serve
    ("/files/recordings/missing.mp4", 404),
    ("/files/recordings/", 404),
    ("/files/other/clip.mp4", 404),
    ("/etc/passwd", 404),
    ("http://127.0.0.1/files/recordings/clip.mp4", 400),  # absolute-form target
    ("*", 400),
]


@pytest.mark.parametrize("path, status", TRAVERSALS)
def test_traversal_attempts_are_refused(server, path, status):
    got, headers, body = get(server, path)
    assert got == status, body
    assert SECRET not in body and BODY not in body


#: Request lines no client should send, and the status each gets (h11 parses, the rules judge).
BAD_REQUEST_LINES = [
    (b"GET /files/recordings/clip.mp4\x00.jpg HTTP/1.1", 400),
    (b"GET /files/recordings/..\\..\\secret.mp4 HTTP/1.1", 400),
    (b"GET /files/recordings/../../secret.mp4 HTTP/1.1", 400),
    (b"GET /files/recordings/clip.mp4 HTTP/1.1 extra", 400),
    (b"GET /files/recordings/clip.mp4 HTTP/2.0", 505),
]


@pytest.mark.parametrize("request_line, expected", BAD_REQUEST_LINES)
def test_raw_request_lines_are_refused(server, request_line, expected):
    answer = raw(server, request_line + b"\r\nHost: x\r\n\r\n")
    status = int(answer.split(b" ", 2)[1])
    assert status == expected
    assert SECRET not in answer and BODY not in answer


def test_symlinks_are_never_served(server, folders):
    assert get(server, "/files/recordings/alias.mp4")[0] == 404  # even one that stays inside
    assert get(server, "/files/recordings/clip.mp4")[0] == 200
    # The folder itself may be a symlink (recordings on another disk).
    os.symlink(folders["recording"], folders["recording"].parent / "linked")
    srv = DownloadServer(
        {"recording": folders["recording"].parent / "linked", "snapshot": folders["snapshot"]}, "127.0.0.1", 0
    )
    srv.start()
    try:
        assert get(srv, "/files/recordings/clip.mp4")[2] == BODY
    finally:
        srv.stop()


# --- whole files, headers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, content_type, body",
    [
        ("/files/recordings/clip.mp4", "video/mp4", BODY),
        ("/files/recordings/movie.mkv", "video/x-matroska", b"mkv"),
        ("/files/snapshots/still.jpg", "image/jpeg", b"jpg"),
        ("/files/snapshots/still.png", "image/png", b"png"),
        ("/files/recordings/empty.mp4", "video/mp4", b""),
    ],
)
def test_whole_file(server, path, content_type, body):
    status, headers, got = get(server, path)
    name = path.rsplit("/", 1)[1]
    assert status == 200 and got == body
    assert headers["content-type"] == content_type
    assert headers["content-length"] == str(len(body))
    assert headers["accept-ranges"] == "bytes"
    assert headers["content-disposition"] == f'attachment; filename="{name}"'
    assert "content-range" not in headers


def test_head_sends_headers_only(server):
    status, headers, body = get(server, "/files/recordings/clip.mp4", method="HEAD")
    assert status == 200 and body == b"" and headers["content-length"] == "1024"
    status, headers, body = get(server, "/files/recordings/clip.mp4", method="HEAD", headers={"Range": "bytes=-4"})
    assert status == 206 and body == b"" and headers["content-range"] == "bytes 1020-1023/1024"
    assert headers["content-length"] == "4"


# --- ranges --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, first, last",
    [
        ("bytes=0-0", 0, 0),
        ("bytes=10-19", 10, 19),
        ("bytes=1000-", 1000, 1023),  # open-ended
        ("bytes=-24", 1000, 1023),  # suffix
        ("bytes=-5000", 0, 1023),  # suffix longer than the file
        ("bytes=1020-9999", 1020, 1023),  # end clipped
        ("bytes=1023-1023", 1023, 1023),
    ],
)
def test_single_ranges(server, header, first, last):
    status, headers, body = get(server, "/files/recordings/clip.mp4", headers={"Range": header})
    assert status == 206
    assert body == BODY[first : last + 1]
    assert headers["content-range"] == f"bytes {first}-{last}/1024"
    assert headers["content-length"] == str(last - first + 1)


@pytest.mark.parametrize("header", ["bytes=1024-", "bytes=5000-6000", "bytes=-0"])
def test_unsatisfiable_ranges(server, header):
    for method in ("GET", "HEAD"):
        status, headers, body = get(server, "/files/recordings/clip.mp4", method=method, headers={"Range": header})
        assert status == 416
        assert headers["content-range"] == "bytes */1024"
        assert BODY not in body


def test_range_of_an_empty_file_is_unsatisfiable(server):
    status, headers, _ = get(server, "/files/recordings/empty.mp4", headers={"Range": "bytes=0-"})
    assert status == 416 and headers["content-range"] == "bytes */0"


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "bytes=9-3", "lines=1-2", "bytes=x-"])
def test_ignored_ranges_send_the_whole_file(server, header):
    status, headers, body = get(server, "/files/recordings/clip.mp4", headers={"Range": header})
    assert status == 200 and body == BODY


def test_if_range_with_a_stale_date_sends_the_whole_file(server):
    _, headers, _ = get(server, "/files/recordings/clip.mp4", method="HEAD")
    status, _, body = get(
        server, "/files/recordings/clip.mp4", headers={"Range": "bytes=0-3", "If-Range": headers["last-modified"]}
    )
    assert status == 206 and body == BODY[:4]
    status, _, body = get(
        server,
        "/files/recordings/clip.mp4",
        headers={"Range": "bytes=0-3", "If-Range": "Mon, 01 Jan 2001 00:00:00 GMT"},
    )
    assert status == 200 and body == BODY


# --- the rest of the protocol --------------------------------------------------------------------


def test_health_and_methods(server):
    status, headers, body = get(server, "/files/health")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, headers, _ = get(server, "/files/recordings/clip.mp4", method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_keep_alive_serves_several_requests(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    sockets = []
    try:
        for header in ("bytes=0-1", "bytes=2-3", None):
            conn.request("GET", "/files/recordings/clip.mp4", headers={"Range": header} if header else {})
            response = conn.getresponse()
            body = response.read()
            assert not response.will_close
            sockets.append(conn.sock)
        assert body == BODY
        assert sockets[0] is not None and sockets.count(sockets[0]) == 3  # one connection for all three
    finally:
        conn.close()


def test_oversized_head_is_refused(server):
    answer = raw(server, b"GET /files/health HTTP/1.1\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431") or answer.startswith(b"HTTP/1.1 400")


def test_authorize_hook(folders):
    seen = []

    def authorize(peer, headers, path, query):
        seen.append(dict(headers))
        token = headers.get("authorization")
        if token is None and "x-api-key" not in headers:
            return Denial(401, "credentials required", {"WWW-Authenticate": 'Bearer realm="camservice"'})
        return None if token == "Bearer good" or headers.get("x-api-key") == "k" else Denial(403, "bad", {})

    srv = DownloadServer(folders, "127.0.0.1", 0, authorize=authorize)
    srv.start()
    try:
        status, headers, body = get(srv, "/files/recordings/clip.mp4")
        assert status == 401 and "bearer" in headers["www-authenticate"].lower() and BODY not in body
        assert get(srv, "/files/recordings/clip.mp4", headers={"Authorization": "Bearer bad"})[0] == 403
        assert get(srv, "/files/recordings/clip.mp4", headers={"Authorization": "Bearer good"})[2] == BODY
        assert get(srv, "/files/recordings/clip.mp4", headers={"X-API-Key": "k"})[2] == BODY
        # Unauthenticated probing learns nothing about what exists.
        assert get(srv, "/files/recordings/missing.mp4")[0] == 401
        count = len(seen)
        assert get(srv, "/files/health")[0] == 200 and len(seen) == count  # public
    finally:
        srv.stop()


def test_async_authorize_hook(folders):
    async def authorize(peer, headers, path, query):
        return None if headers.get("x-api-key") == "k" else Denial(403, "bad", {})

    srv = DownloadServer(folders, "127.0.0.1", 0, authorize=authorize)
    srv.start()
    try:
        assert get(srv, "/files/recordings/clip.mp4")[0] == 403
        assert get(srv, "/files/recordings/clip.mp4", headers={"X-API-Key": "k"})[0] == 200
    finally:
        srv.stop()


def test_two_servers_share_the_port(folders):
    first = DownloadServer(folders, "127.0.0.1", 0)
    first.start()
    second = DownloadServer(folders, "127.0.0.1", first.port)
    try:
        assert second.start() == first.port
        assert get(first, "/files/health")[0] == 200
    finally:
        second.stop()
        first.stop()


def test_big_download_streams_with_bounded_memory(folders):
    size = 48 * 1024 * 1024
    big = folders["recording"] / "big.mp4"
    with open(big, "wb") as handle:
        handle.truncate(size)  # sparse: cheap to make, real bytes to send
    srv = DownloadServer(folders, "127.0.0.1", 0)
    srv.start()
    tracemalloc.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        conn.request("GET", "/files/recordings/big.mp4")
        response = conn.getresponse()
        received = 0
        while True:
            chunk = response.read(256 * 1024)
            if not chunk:
                break
            received += len(chunk)
        conn.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        srv.stop()
    assert received == size
    assert peak < 8 * 1024 * 1024  # both ends of the transfer, far below the file's 48 MiB


def test_worker_serves_downloads_to_viewers_only(tmp_path):
    """The contract: viewer role needed; 401 without credentials, 403 with a bad one."""

    from camservice.apikeys import KeyStore
    from camservice.tokens import issue_token, load_or_create_secret
    from tests.test_files_support import run, running

    config = make_config(tmp_path)
    config.recordings_dir.mkdir(parents=True)
    (config.recordings_dir / "w.mp4").write_bytes(b"worker")
    secret = load_or_create_secret(config)
    _, key = KeyStore.for_config(config).create("viewer", "kiosk")
    cases = {
        "none": ({}, 401),
        "bearer": ({"Authorization": "Bearer " + issue_token(secret, "viewer", "v", 60)}, 200),
        "api key": ({"X-API-Key": key}, 200),
        "forged": ({"Authorization": "Bearer " + issue_token("another-secret-" + "z" * 32, "admin", "a", 60)}, 403),
        "bad key": ({"X-API-Key": "csk_" + "A" * 43}, 403),
    }

    async def body():
        async with running(config) as worker:
            for name, (headers, expected) in cases.items():
                result = {}
                thread = threading.Thread(
                    target=lambda result=result, headers=headers: result.update(
                        r=get(worker.http, "/files/recordings/w.mp4", headers=headers)
                    )
                )
                thread.start()
                while thread.is_alive():
                    await asyncio.sleep(0.01)
                assert result["r"][0] == expected, name
                if expected == 200:
                    assert result["r"][2] == b"worker"

    run(body())


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
def test_tls_when_the_service_has_a_certificate(folders, tmp_path):
    from camservice.tls import server_context as tls_context

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    config = make_config(tmp_path, **{"server.tls.cert_file": str(cert), "server.tls.key_file": str(key)})
    assert tls_context(make_config(tmp_path)) is None
    srv = DownloadServer(folders, "127.0.0.1", 0, ssl_context=tls_context(config))
    srv.start()
    try:
        client = ssl.create_default_context(cafile=str(cert))
        client.check_hostname = False
        conn = http.client.HTTPSConnection("127.0.0.1", srv.port, timeout=10, context=client)
        conn.request("GET", "/files/recordings/clip.mp4", headers={"Range": "bytes=-100"})
        response = conn.getresponse()
        assert response.status == 206 and response.read() == BODY[-100:]
        conn.request("GET", "/files/recordings/clip.mp4")
        response = conn.getresponse()
        assert response.status == 200 and response.read() == BODY
        conn.close()
        # Listings point at the API port, https when the service has a certificate.
        url = FilesWorker(config, 0).download_url("recording", "a.mp4")
        assert url == f"https://127.0.0.1:{config.server.port}/files/recordings/a.mp4"
    finally:
        srv.stop()


def test_viewer_authorizer_follows_the_contract(folders, tmp_path):
    from camservice.workers.files.auth import make_authorizer

    from camservice.auth import Authenticator
    from camservice.tokens import issue_token, load_or_create_secret

    config = make_config(tmp_path)
    authorize = make_authorizer(config, Authenticator(config))
    srv = DownloadServer(folders, "127.0.0.1", 0, authorize=authorize)
    srv.start()
    try:
        good = issue_token(load_or_create_secret(config), "viewer", "alice", 60)
        assert get(srv, "/files/recordings/clip.mp4")[0] == 401
        assert get(srv, "/files/recordings/clip.mp4", headers={"Authorization": "Bearer nope"})[0] == 403
        assert get(srv, "/files/recordings/clip.mp4", headers={"X-API-Key": "csk_bad"})[0] == 403
        assert get(srv, "/files/recordings/clip.mp4", headers={"Authorization": f"Bearer {good}"})[2] == BODY
    finally:
        srv.stop()
