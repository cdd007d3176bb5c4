"""Issue 12 §2: clients hear a camera_status_update only when a field it carries changed.

Reproduced before the fix: every recording start and stop sent every client a
``camera_status_update`` in which nothing visible had changed (the discovery
worker republishes the camera with its new ``recording``/``readers``, and the
gateway relayed each republication). The gateway also patched ``recording``
itself, a second writer of a field the discovery worker owns.
"""

from __future__ import annotations

import asyncio

from ..harness import Client, Service, run

WAIT = 10.0


def test_recording_start_and_stop_send_only_recording_notifications():
    with Service(simulate=1) as svc:

        async def scenario():
            async with Client(svc.url, svc.token("operator")) as client:

                async def next_notification() -> dict:
                    return await asyncio.wait_for(client.notifications.get(), WAIT)

                await client.call("start_recording", {"device": "camera0"})
                started = await next_notification()
                assert (started["method"], started["params"]["status"]) == ("recording_status_update", "STARTED")
                # Heard STARTED: the gateway's replica shows it (it held the notification until then).
                assert (await client.call("get_camera_status", {"device": "camera0"}))["recording"] is True
                listing = await client.call("get_camera_list")
                assert listing["cameras"][0]["recording"] is True

                await client.call("stop_recording", {"device": "camera0"})
                stopped = await next_notification()
                assert (stopped["method"], stopped["params"]["status"]) == ("recording_status_update", "STOPPED")
                assert (await client.call("get_camera_status", {"device": "camera0"}))["recording"] is False
                # The discovery worker's republication of the camera reached the gateway before
                # STOPPED was sent, so a notification sent for it would have arrived by now.
                assert client.notifications.empty()

        run(scenario())
