"""camservice.eventloop: the loop gateway.event_loop asks for."""

import asyncio
import sys

import pytest

from camservice import eventloop


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_asyncio_forces_the_standard_loop():
    assert eventloop.run(loop_module(), "asyncio").startswith("asyncio")


def test_auto_uses_uvloop_where_installed():
    pytest.importorskip("uvloop")
    assert eventloop.run(loop_module(), "auto").startswith("uvloop")


def test_auto_falls_back_and_uvloop_fails_loudly_without_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    assert eventloop.run(loop_module(), "auto").startswith("asyncio")
    with pytest.raises(RuntimeError, match="not installed"):
        eventloop.run(loop_module(), "uvloop")
