"""RFC 9110 conditions and ranges of downloads (workers/files/rules.py), without a socket."""

from __future__ import annotations

import email.utils
import os

import pytest
from camservice.workers.files.rules import etag, plan


@pytest.fixture
def st(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"x" * 1000)
    os.utime(path, (1_700_000_000, 1_700_000_000))
    return os.stat(path)


def test_validators_and_revalidation(st):
    whole = plan("GET", {}, st)
    assert (whole.status, whole.offset, whole.length) == (200, 0, 1000)
    tag, modified = whole.headers["ETag"], whole.headers["Last-Modified"]
    assert tag == etag(st) and modified == email.utils.formatdate(1_700_000_000, usegmt=True)
    assert plan("GET", {"if-none-match": f'"other", W/{tag}'}, st).status == 304  # weak comparison
    assert plan("GET", {"if-none-match": "*"}, st).status == 304
    assert plan("GET", {"if-none-match": '"other"'}, st).status == 200
    assert plan("GET", {"if-modified-since": modified}, st).status == 304
    earlier = email.utils.formatdate(1_600_000_000, usegmt=True)
    assert plan("GET", {"if-modified-since": earlier}, st).status == 200
    # If-None-Match wins over If-Modified-Since (13.2.2).
    assert plan("GET", {"if-none-match": '"other"', "if-modified-since": modified}, st).status == 200
    assert plan("GET", {"if-match": '"other"'}, st).status == 412
    assert plan("GET", {"if-unmodified-since": earlier}, st).status == 412


def test_ranges_and_if_range(st):
    tag, modified = etag(st), email.utils.formatdate(1_700_000_000, usegmt=True)
    part = plan("GET", {"range": "bytes=10-19"}, st)
    assert (part.status, part.offset, part.length, part.headers["Content-Range"]) == (206, 10, 10, "bytes 10-19/1000")
    assert plan("GET", {"range": "bytes=10-19", "if-range": tag}, st).status == 206
    assert plan("GET", {"range": "bytes=10-19", "if-range": modified}, st).status == 206
    assert plan("GET", {"range": "bytes=10-19", "if-range": '"stale"'}, st).status == 200
    assert plan("GET", {"range": "bytes=10-19", "if-range": f"W/{tag}"}, st).status == 200  # weak never matches
    several = plan("GET", {"range": "bytes=0-1,5-9"}, st)
    assert (several.status, several.length) == (200, 1000)  # one pass over the file, never more
    beyond = plan("GET", {"range": "bytes=1000-"}, st)
    assert beyond.status == 416 and beyond.headers["Content-Range"] == "bytes */1000"
