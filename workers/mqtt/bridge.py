"""The ``mqtt`` process: event bus -> MQTT broker, MQTT commands -> the service's API.

* **Events in** from the supervisor's event proxy (a ZeroMQ SUB socket, like
  every worker): ``camera_status_update``, ``recording_status_update`` and
  ``storage_status_update`` become retained camera states and event messages
  (:mod:`.state`). ``get_camera_list`` fills the picture at start, after a
  sequence gap and every :data:`RESYNC_INTERVAL` seconds.
* **Out** through a bounded :class:`~.outbox.Outbox`: nothing upstream ever
  waits for the broker (:mod:`.publisher` moves it to the broker; a publish
  the connection lost is sent again after the reconnection, QoS 1: at least
  once), and every retained message is sent again on each (re)connection, so
  a restarted broker gets the whole state back.
* **Commands** (``.../cameras/<id>/<action>/set``) become one call each of the
  WebSocket API (:mod:`.api`); the answer or the error goes to
  ``<prefix>/result``. A failed call is reported, never retried.
* **Broker down**: reconnect with exponential backoff (:data:`BACKOFF_MIN` to
  :data:`BACKOFF_MAX`, with jitter). The last will marks ``availability``
  ``offline``; a clean stop publishes it itself.

Library: aiomqtt (asyncio over paho-mqtt, the Eclipse client): this process
is one asyncio loop like every other, with no thread to hand messages across.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import time
from pathlib import Path
from typing import Any

import aiomqtt
import structlog
import zmq

from camservice import comms, tokens
from camservice import topics as bus
from camservice.drain import Drain
from camservice.envelope import EnvelopeError, Event
from camservice.errors import SERVICE_BUSY, RpcError
from camservice.runtime import Lifetime, boot
from camservice.timestamps import utc_iso

from . import commands
from .api import SUBJECT, TOKEN_TTL, ServiceApi, api_url
from .connection import client_options
from .homeassistant import Discovery, encode
from .outbox import Message, Outbox
from .publisher import publish_forever
from .state import Model
from .topics import Topics, default_prefix

logger = structlog.get_logger("mqtt_bridge")

RESYNC_INTERVAL = 10.0
STATS_INTERVAL = 2.0
BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0
#: Commands handled at once; beyond, a command is answered "busy" at once.
MAX_COMMANDS = 16
#: A snapshot bigger than this is not published as a payload (the result still names the file).
MAX_SNAPSHOT_BYTES = 16 * 1024 * 1024


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


class Bridge:
    def __init__(self, config, index: int = 0, hostname: str | None = None):
        self.config = config
        self.index = index
        self.name = f"mqtt-{index}"
        mqtt = config.mqtt
        self.hostname = hostname or socket.gethostname()
        self.topics = Topics(mqtt.topic_prefix or default_prefix(self.hostname))
        self.qos = mqtt.qos
        self.discovery = (
            Discovery(self.topics, mqtt.homeassistant.prefix, self.hostname, mqtt.qos)
            if mqtt.homeassistant.discovery
            else None
        )
        self.model = Model(self.topics, self.discovery)
        self.outbox = Outbox(mqtt.queue_size)
        secret = tokens.load_or_create_secret(config)
        url, context = api_url(config)
        self.api = ServiceApi(
            url,
            lambda: tokens.issue_token(secret, "admin", SUBJECT, TOKEN_TTL),
            context,
            timeout=config.gateway.request_timeout + 5.0,
        )
        self.client_args = client_options(config, self.topics, self.hostname)
        self.connected = False
        self.reconnects = 0
        self.command_results = {"ok": 0, "error": 0}
        self.health: dict[str, Any] = {}
        self._seq: dict[str, int] = {}
        self._stale: set[str] = set()
        self._commands: set[asyncio.Task] = set()
        self._health_seen = False

    # --- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._resync = asyncio.Event()
        self._resync.set()
        lifetime = Lifetime(self._stop)
        lifetime.install()
        endpoints = comms.Endpoints.from_config(self.config)
        self.ctx = zmq.Context()
        self.sub = comms.subscriber(self.ctx, endpoints, bus.CLIENT)
        self.pub = comms.publisher(self.ctx, endpoints)
        self._events = Drain(self.sub, self._on_event_frames, multipart=True, name="mqtt-events")
        self._events.start(loop)
        self._put(Message(self.topics.availability, b"online", True, "availability"))
        if self.discovery is not None:
            for topic, payload in self.discovery.service_configs():
                self._put(Message(topic, encode(payload), True, "discovery"))
        logger.info(
            "mqtt_bridge_started",
            broker=f"{self.client_args['hostname']}:{self.client_args['port']}",
            prefix=self.topics.prefix,
            pid=os.getpid(),
        )
        tasks = [
            asyncio.ensure_future(c)
            for c in (self._mqtt_forever(), self._cameras_forever(), self._health_forever(), self._stats_forever())
        ]
        await lifetime.wait(logger)
        # Give the broker session a moment to say "offline" and disconnect cleanly.
        await asyncio.wait([tasks[0]], timeout=3.0)
        for task in (*tasks, *self._commands):
            task.cancel()
        await asyncio.gather(*tasks, *self._commands, return_exceptions=True)
        self._events.stop()
        await self.api.close()
        self.sub.close(linger=0)
        self.pub.close(linger=0)
        self.ctx.term()
        logger.info("mqtt_bridge_stopped")

    def _put(self, message: Message, first: bool = False) -> None:
        self.outbox.put(message, first)
        self._wake.set()

    def _put_all(self, messages: list[Message]) -> None:
        for message in messages:
            self.outbox.put(message)
        if messages:
            self._wake.set()

    # --- the event bus -------------------------------------------------------------------

    def _on_event_frames(self, frames: list[bytes]) -> None:
        """One event from the bus (the subscription's :class:`~camservice.drain.Drain`)."""
        try:
            event = Event.from_frames(frames)
        except EnvelopeError as exc:
            logger.warning("bad_event", error=str(exc))
            return
        try:
            self.on_event(event)
        except Exception:
            logger.exception("event_failed", topic=event.topic)

    def on_event(self, event: Event) -> None:
        now = time.monotonic()
        if event.topic == bus.CAMERA_STATUS:
            last = self._seq.get(event.source)
            if last is not None and event.seq != last + 1:
                self._resync.set()  # PUB/SUB lost something: ask for the whole list
            self._seq[event.source] = event.seq
            self._put_all(self.model.camera_event(event.data, now))
        elif event.topic == bus.RECORDING_STATUS:
            messages, unknown = self.model.recording_event(event.data, now)
            if unknown:
                self._resync.set()
            self._put_all(messages)
        elif event.topic == bus.STORAGE_STATUS:
            self._put_all([self.model.event(event.topic, event.data)])
            if self.health:
                self.health["storage"] = {**(self.health.get("storage") or {}), **event.data}
                self._put(Message(self.topics.health, _json(self.health), True, "health"))

    # --- the broker ------------------------------------------------------------------------

    async def _mqtt_forever(self) -> None:
        delay = BACKOFF_MIN
        while True:
            try:
                async with aiomqtt.Client(**self.client_args) as client:
                    delay = BACKOFF_MIN
                    await self._session(client)
                    if self._stop.is_set():
                        return
            except aiomqtt.MqttError as exc:
                logger.warning("mqtt_disconnected", error=str(exc), retry_in=round(delay, 2))
            finally:
                if self.connected:
                    self.reconnects += 1
                self.connected = False
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(BACKOFF_MAX, delay * 2)

    async def _session(self, client: aiomqtt.Client) -> None:
        self.connected = True
        logger.info("mqtt_connected")
        self.outbox.reconnected(first=self.topics.availability)
        self._wake.set()
        await client.subscribe(self.topics.commands, qos=self.qos)
        # Retained states of cameras of an earlier run: cleared once the list shows them gone.
        await client.subscribe(self.topics.states, qos=self.qos)
        tasks = [
            asyncio.ensure_future(publish_forever(client, self.outbox, self._wake, self.qos)),
            asyncio.ensure_future(self._receiver(client)),
        ]
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*tasks, stopping):
                task.cancel()
            await asyncio.gather(*tasks, stopping, return_exceptions=True)
        for task in tasks:
            if task in done and task.exception() is not None:
                raise task.exception()
        if self._stop.is_set():
            # A clean stop sends no last will: say it ourselves.
            await client.publish(self.topics.availability, b"offline", self.qos, retain=True, timeout=2.0)

    async def _receiver(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = message.topic.value
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload or "").encode()
            command = self.topics.parse_command(topic)
            if command is not None:
                self._start_command(command[0], command[1], payload, bool(message.retain))
                continue
            camera = self.topics.parse_state(topic)
            if camera is not None and message.retain and payload:
                if self.model.loaded:
                    self._put_all(self.model.stale(camera))
                else:
                    self._stale.add(camera)

    # --- commands ---------------------------------------------------------------------------

    def _start_command(self, camera: str, action: str, payload: bytes, retained: bool) -> None:
        if len(self._commands) >= MAX_COMMANDS:
            error = RpcError(SERVICE_BUSY, data={"reason": f"{MAX_COMMANDS} commands already running"})
            self._answer(camera, action, commands.request_id_of(payload), error=error)
            return
        task = asyncio.ensure_future(self._command(camera, action, payload, retained))
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)

    async def _command(self, camera: str, action: str, payload: bytes, retained: bool) -> None:
        request_id = commands.request_id_of(payload)
        try:
            command = commands.parse(camera, action, payload, retained)
            request_id = command.request_id
            result = await self.api.call(command.method, command.params)
            if command.method == "take_snapshot":
                await self._publish_snapshot(camera, result)
        except RpcError as error:
            logger.info("mqtt_command_failed", camera=camera, action=action, code=error.code)
            self._answer(camera, action, request_id, error=error)
            return
        except Exception:
            logger.exception("mqtt_command_crashed", camera=camera, action=action)
            self._answer(camera, action, request_id, error=RpcError(-32603))
            return
        self._answer(camera, action, request_id, result=result)

    async def _publish_snapshot(self, camera: str, result: Any) -> None:
        path = Path(result["file_path"]) if isinstance(result, dict) and result.get("file_path") else None
        if path is None:
            return
        picture = await asyncio.to_thread(_read_capped, path, MAX_SNAPSHOT_BYTES)
        if picture is not None:
            cid = self.model.by_device(camera) or camera
            self._put(Message(self.topics.snapshot(cid), picture, True, "snapshot"))

    def _answer(self, camera: str, action: str, request_id: Any, result: Any = None, error: RpcError | None = None):
        answer: dict[str, Any] = {"camera": camera, "command": action, "ok": error is None, "timestamp": utc_iso()}
        if request_id is not None:
            answer["id"] = request_id
        if error is None:
            answer["result"] = result
        else:
            answer["error"] = error.to_dict()
        self.command_results["ok" if error is None else "error"] += 1
        self._put(Message(self.topics.result, _json(answer), False, "result"))

    # --- periodic work -----------------------------------------------------------------------

    async def _cameras_forever(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._resync.wait(), RESYNC_INTERVAL)
            except asyncio.TimeoutError:
                pass
            self._resync.clear()
            asked = time.monotonic()
            try:
                listing = await self.api.call("get_camera_list")
            except RpcError as exc:
                logger.info("camera_list_failed", error=exc.to_dict())
                if not self.model.loaded:
                    await asyncio.sleep(BACKOFF_MIN)
                    self._resync.set()
                continue
            self._put_all(self.model.camera_list(listing.get("cameras", []), asked))
            stale, self._stale = self._stale, set()
            for camera in stale:
                self._put_all(self.model.stale(camera))

    async def _health_forever(self) -> None:
        while True:
            health: dict[str, Any]
            try:
                health = dict(await self.api.call("get_status"))
            except RpcError as exc:
                health = {"status": "unreachable", "error": exc.to_dict()}
            try:
                health["storage"] = await self.api.call("get_storage_info")
            except RpcError:
                health["storage"] = (self.health or {}).get("storage")
            cameras = self.model.cameras.values()
            health["cameras"] = {"total": len(cameras), "connected": sum(c["status"] == "CONNECTED" for c in cameras)}
            health["active_recordings"] = self.model.active_recordings()
            health["timestamp"] = utc_iso()
            self.health = health
            self._put(Message(self.topics.health, _json(health), True, "health"))
            reached = health["status"] != "unreachable"
            self._health_seen = self._health_seen or reached
            # Until the gateway answered once (it starts beside us), ask again soon.
            await asyncio.sleep(self.config.mqtt.health_interval if self._health_seen else 1.0)

    def stats(self) -> dict[str, Any]:
        return {
            "connected": int(self.connected),
            "queued": len(self.outbox),
            "dropped": dict(self.outbox.dropped),
            "published": dict(self.outbox.sent_count),
            "commands": dict(self.command_results),
            "reconnects": self.reconnects,
        }

    async def _stats_forever(self) -> None:
        while True:
            data = {
                "name": self.name,
                "kind": "mqtt",
                "index": self.index,
                "pid": os.getpid(),
                "in_flight": len(self._commands),
                "stats": self.stats(),
            }
            try:
                self.pub.send_multipart(Event(bus.WORKER_STATS, self.name, 0, data, time.time()).frames(), zmq.NOBLOCK)
            except zmq.Again:
                pass
            await asyncio.sleep(STATS_INTERVAL)


def _read_capped(path: Path, limit: int) -> bytes | None:
    try:
        with path.open("rb") as picture:
            data = picture.read(limit + 1)
    except OSError:
        return None
    return data if len(data) <= limit else None


def main(index: int = 0) -> None:
    config = boot(f"mqtt-{index}", f"camservice: mqtt {index}")
    asyncio.run(Bridge(config, index).run())
