"""The gateway's HTTP route table and the shared HTTP credential check (no I/O)."""

from __future__ import annotations

import pytest
from camservice.gateway.routes import HttpRequest, HttpResponse, RouteTable

from camservice.httpauth import LinkSigner, link_path


def ok(request: HttpRequest) -> HttpResponse:
    return HttpResponse(200, {}, repr(sorted(request.params.items())).encode())


def test_placeholders_match_one_segment_and_methods_decide_between_404_and_405():
    routes = RouteTable()
    routes.add(("GET", "HEAD"), "/files/{folder}/{name}", ok)
    routes.add("GET", "/metrics", ok)
    handler, params, _ = routes.match("GET", "/files/recordings/a%20b.mp4")
    assert handler is ok and params == {"folder": "recordings", "name": "a%20b.mp4"}
    assert routes.match("GET", "/files/recordings/a/b")[0] is None  # a placeholder never spans a '/'
    assert routes.match("GET", "/files/recordings/") == (None, {}, frozenset())
    assert routes.match("POST", "/metrics") == (None, {}, frozenset({"GET"}))
    assert routes.match("GET", "/metricsx")[0] is None


def test_a_url_has_one_owner():
    routes = RouteTable()
    routes.add("GET", "/", ok)
    with pytest.raises(ValueError):
        routes.add(("HEAD", "GET"), "/", ok)
    routes.add("OPTIONS", "/", ok)  # another method of the same path is another owner's right


def test_signed_links_bind_path_and_expiry():
    signer = LinkSigner("s" * 40)
    path = link_path("recordings", "cam 1.mp4")
    assert path == "/files/recordings/cam%201.mp4"
    query = signer.sign(path, 2000)
    assert signer.verify(path, query, now=1000) is True
    assert signer.verify(path, query, now=2001) is False  # expired
    assert signer.verify("/files/recordings/other.mp4", query, now=1000) is False
    assert signer.verify(path, query.replace("expires=2000", "expires=2001"), now=1000) is False
    assert signer.verify(path, "", now=1000) is None  # no signature: other credentials decide
    assert LinkSigner("t" * 40).verify(path, query, now=1000) is False  # another service's secret
