"""Issue 11 §4: a restarted gateway must not answer before it knows the cameras.

Reproduced against a real service: SIGKILL the gateway under a client loop.
The supervisor restarts it in a few tenths of a second; for another 0.2-0.74 s
the new gateway used to answer from an empty replica: an empty camera list,
-32004 for cameras that exist, and ``get_status`` "unhealthy" because it had
not heard any worker's heartbeat yet. A client may be refused while the
gateway is down; every answer it does get must be right.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from ..harness import Client, Service, run, wait_for

pytestmark = pytest.mark.slow

CAMERAS = 2


async def one_round(url: str, token: str) -> list[tuple[str, dict]]:
    """A fresh connection, as a reconnecting client makes, and the calls that read the replica."""
    async with Client(url, token, timeout=20.0) as client:
        replies = []
        for method, params in (
            ("get_camera_list", None),
            ("get_camera_status", {"device": "sim:1"}),
            ("get_status", None),
        ):
            replies.append((method, await client.request(method, params)))
        return replies


def wrong(method: str, reply: dict) -> str | None:
    """Why ``reply`` is not the answer a running two-camera service gives, or None."""
    if "error" in reply:
        return f"{method}: error {reply['error']}"
    result = reply["result"]
    if method == "get_camera_list" and result["total"] != CAMERAS:
        return f"get_camera_list: {result['total']} cameras"
    if method == "get_status" and result["status"] == "unhealthy":
        return f"get_status: {result}"
    return None


def test_a_restarted_gateway_answers_only_once_it_knows_the_cameras():
    with Service(simulate=CAMERAS) as svc:
        token = svc.token("admin")
        old = svc.pids()["gateway-0"]

        async def scenario():
            refused = answered_after = 0
            mistakes = []
            os.kill(old, signal.SIGKILL)
            # Rounds until the new gateway has answered 20 of them in full.
            while answered_after < 20:
                try:
                    replies = await one_round(svc.url, token)
                except (OSError, ConnectionError, asyncio.TimeoutError, EOFError) as exc:
                    refused += 1  # down: refused or closed, never a wrong answer
                    assert refused < 2000, f"the gateway never came back: {exc!r}"
                    await asyncio.sleep(0.01)
                    continue
                except Exception as exc:  # websockets' own errors (InvalidHandshake...) while it restarts
                    if type(exc).__module__.startswith("websockets"):
                        refused += 1
                        await asyncio.sleep(0.01)
                        continue
                    raise
                mistakes += [m for m in (wrong(method, reply) for method, reply in replies) if m]
                answered_after += 1
            return mistakes

        assert run(scenario()) == []
        assert wait_for(lambda: svc.pids().get("gateway-0") not in (None, old), message="a new gateway pid")
