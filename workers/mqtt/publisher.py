"""Moves the outbox to the broker, up to :data:`WINDOW` publishes awaiting acknowledgement.

Runs for one broker connection. A publish the broker acknowledged is
reported to the outbox as sent; when the connection fails (an
:class:`aiomqtt.MqttError` from a publish, or the session cancelling this
task because the receiver saw the disconnection), every publish still
unacknowledged goes back into the outbox, in its original order, to be sent
first after the reconnection (QoS 1: at least once). There is no timeout per
publish: the connection's keepalive decides when the broker is gone, so a
slow broker only fills the bounded outbox.
"""

from __future__ import annotations

import asyncio
import math

import aiomqtt

from .outbox import Message, Outbox

#: Publishes awaiting the broker's acknowledgement at once.
WINDOW = 64


async def publish_forever(client: aiomqtt.Client, outbox: Outbox, wake: asyncio.Event, qos: int) -> None:
    """Publish what the outbox holds until the connection fails (raises MqttError) or the task is cancelled."""
    window = asyncio.Semaphore(WINDOW)
    pending: dict[asyncio.Task, tuple[int, Message]] = {}
    failure: asyncio.Future = asyncio.get_running_loop().create_future()
    counter = 0

    async def publish(message: Message) -> bool:
        try:
            # No timeout: the connection's keepalive decides when the broker is gone.
            await client.publish(message.topic, message.payload, qos, message.retain, timeout=math.inf)
        except aiomqtt.MqttError as exc:
            if not failure.done():
                failure.set_exception(exc)
            return False
        finally:
            window.release()
        outbox.sent(message)
        return True

    def finished(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is None and task.result():
            pending.pop(task, None)

    try:
        while True:
            await window.acquire()
            message = outbox.next()
            while message is None:
                wake.clear()
                waiter = asyncio.ensure_future(wake.wait())
                await asyncio.wait([waiter, failure], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if failure.done():
                    failure.result()  # raises
                message = outbox.next()
            if failure.done():
                outbox.failed(message)
                failure.result()
            counter += 1
            task = asyncio.ensure_future(publish(message))
            pending[task] = (counter, message)
            task.add_done_callback(finished)
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        # Unacknowledged messages go back, in their order, to be sent again first.
        for _, message in sorted(pending.values(), key=lambda item: item[0], reverse=True):
            outbox.failed(message)
