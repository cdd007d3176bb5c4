"""Category ``mqtt``: the MQTT bridge's figures (issue 17): hot-plug latency, a QoS 1 event burst, status latency with the broker stopped.

Part of the suite (``python -m bench mqtt``; in ``all`` when Mosquitto is
installed) and runnable on its own (``python -m bench.mqtt_bridge``, one
JSON line per phase). It starts its own Mosquitto (``tests/mqtt_broker.py``:
password file, ACL, a free port) and the service (``camservice start`` with
one simulated camera and the bridge pointed at that broker): the bridge is
configured per broker, so it cannot share the other categories' service.
Three phases:

* ``hotplug``: K times (``--cycles``, default 20) plugs a simulated camera
  (``simulator.plug``, no CLI start-up in the figure) and measures the time
  from just before the call to the arrival, at a paho subscriber, of the
  camera's retained ``state`` message with ``CONNECTED``; then the same for
  the unplug (``DISCONNECTED``). Times are CLOCK_MONOTONIC.
  Target: P95 < 100 ms.
* ``burst``: publishes ``--rate`` events/s (default 100) for ``--seconds``
  (default 10) on the service's own event bus (``storage_status_update``
  events numbered in their data, from a ZeroMQ PUB like any worker) and
  counts what a QoS 1 subscriber receives on ``<prefix>/events/...``.
  Target: ``lost`` = 0 (and ``dropped`` in ``/metrics`` = 0).
* ``sigstop``: a WebSocket client calls ``get_status`` back to back (10 ms
  apart) for ``--stop-seconds`` (default 30) with the broker running, then as
  long again with the broker SIGSTOPped, while events keep coming at 20/s.
  Reports P50/P95/P99 of each phase and the events the bridge dropped (its
  bounded queue) meanwhile. Target: P95 unchanged within noise.

    python -m bench mqtt --duration 60             # in the suite: results.json, report.html
    python -m bench.mqtt_bridge                    # all three phases, JSON lines
    python -m bench.mqtt_bridge --phases hotplug --cycles 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import threading
import time
import urllib.request

import paho.mqtt.client as paho
import zmq

from camservice import comms
from camservice import config as config_module
from camservice import simnodes as simulator
from camservice.envelope import Event
from tests.harness import Client, Service
from tests.mqtt_broker import USERS, Broker

from . import common, walltime
from .target import mint_token, stop_service

PREFIX = "camservice/bench"


def percentiles(values_ms: list[float]) -> dict:
    """The suite's latency summary (nearest rank) of latencies in milliseconds."""
    return common.latency_summary(int(v * 1e6) for v in values_ms)


class Recorder:
    """A QoS 1 paho subscriber stamping every message with CLOCK_MONOTONIC."""

    def __init__(self, broker: Broker, topics: list[str]):
        self.messages: list[tuple[float, str, bytes]] = []
        self.arrived = threading.Condition()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        self.client.username_pw_set("viewer", USERS["viewer"])
        self.client.on_connect = lambda c, u, f, r, p=None: [c.subscribe(t, qos=1) for t in topics]
        self.client.on_message = self._on_message
        self.client.max_inflight_messages_set(1000)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        with self.arrived:
            self.messages.append((time.monotonic(), message.topic, message.payload))
            self.arrived.notify_all()

    def wait(self, predicate, after: int, timeout: float = 10.0) -> float | None:
        deadline = time.monotonic() + timeout
        position = after
        with self.arrived:
            while True:
                while position < len(self.messages):
                    stamp, topic, payload = self.messages[position]
                    position += 1
                    if predicate(topic, payload):
                        return stamp
                if not self.arrived.wait(max(0.0, deadline - time.monotonic())) and time.monotonic() > deadline:
                    return None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def metric(service: Service, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{service.port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


def hotplug(service: Service, broker: Broker, cycles: int) -> dict:
    recorder = Recorder(broker, [f"{PREFIX}/cameras/+/state"])
    time.sleep(1.0)
    connected, disconnected, missed = [], [], 0
    for _ in range(cycles):
        for plug in (True, False):
            time.sleep(random.uniform(0, 0.1))  # decorrelate from the 50 ms polling
            mark = len(recorder.messages)
            began = time.monotonic()
            if plug:
                index = simulator.plug(service.state_dir, index=1)
                wanted = b'"status":"CONNECTED"'
            else:
                simulator.unplug(service.state_dir, f"sim:{index}")
                wanted = b'"status":"DISCONNECTED"'
            stamp = recorder.wait(lambda t, p, wanted=wanted: t.endswith("/camera1/state") and wanted in p, mark)
            if stamp is None:
                missed += 1
            else:
                (connected if plug else disconnected).append((stamp - began) * 1000)
    recorder.close()
    return {"bench": "mqtt_hotplug", "cycles": cycles, "missed": missed, **percentiles(connected + disconnected),
            "connected": percentiles(connected), "disconnected": percentiles(disconnected)}  # fmt: skip


class BusPublisher:
    """Publishes events on the service's event bus, as a worker does."""

    def __init__(self, service: Service):
        config = config_module.load(service.config_path, environ={})
        self.ctx = zmq.Context()
        self.pub = comms.publisher(self.ctx, comms.Endpoints.from_config(config))
        time.sleep(0.5)  # PUB/SUB: let the proxy learn of us before the first event
        self.seq = 0

    def send(self, run: str) -> int:
        self.seq += 1
        data = {"usage_percentage": 1.0, "low_space_warning": False, "bench": run, "n": self.seq}
        self.pub.send_multipart(Event("storage_status_update", "bench", self.seq, data, time.time()).frames())
        return self.seq

    def close(self) -> None:
        self.pub.close(linger=1000)
        self.ctx.term()


def burst(service: Service, broker: Broker, rate: int, seconds: float) -> dict:
    recorder = Recorder(broker, [f"{PREFIX}/events/storage_status_update"])
    publisher = BusPublisher(service)
    time.sleep(0.5)
    dropped_before = metric(service, "camservice_mqtt_messages_dropped_total")
    run = f"burst-{time.time()}"
    total = int(rate * seconds)
    began = time.monotonic()
    sent_at = {}
    for number in range(total):
        target = began + number / rate
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent_at[publisher.send(run)] = time.monotonic()
    last = publisher.seq
    recorder.wait(lambda t, p: f'"n":{last}'.encode() in p, 0, timeout=30)
    time.sleep(1.0)  # stragglers (and duplicates) after the last one
    received = {}
    for stamp, _, payload in recorder.messages:
        body = json.loads(payload)
        if body.get("bench") == run:
            received.setdefault(body["n"], stamp)
    latencies = [(received[n] - sent_at[n]) * 1000 for n in received if n in sent_at]
    recorder.close()
    publisher.close()
    time.sleep(2.5)  # one stats interval of the bridge
    return {
        "bench": "mqtt_burst",
        "rate": rate,
        "sent": total,
        "received": len(received),
        "lost": total - len(received),
        "duplicates": sum(1 for _, _, p in recorder.messages if run.encode() in p) - len(received),
        "dropped_in_bridge": metric(service, "camservice_mqtt_messages_dropped_total") - dropped_before,
        "latency": percentiles(latencies),
    }


async def status_latencies(service: Service, seconds: float, publisher: BusPublisher, run: str) -> list[float]:
    latencies = []
    async with Client(service.url, mint_token(service, "admin")) as client:
        deadline = time.monotonic() + seconds
        next_event = time.monotonic()
        while time.monotonic() < deadline:
            if time.monotonic() >= next_event:
                publisher.send(run)  # 20 events/s keep the bridge busy
                next_event += 0.05
            began = time.perf_counter()
            await client.call("get_status")
            latencies.append((time.perf_counter() - began) * 1000)
            await asyncio.sleep(0.01)
    return latencies


def sigstop(service: Service, broker: Broker, seconds: float) -> dict:
    publisher = BusPublisher(service)
    dropped_before = metric(service, "camservice_mqtt_messages_dropped_total")
    normal = asyncio.run(status_latencies(service, seconds, publisher, "normal"))
    broker.pause()
    try:
        stopped = asyncio.run(status_latencies(service, seconds, publisher, "stopped"))
    finally:
        broker.resume()
    time.sleep(3.0)
    publisher.close()
    return {
        "bench": "mqtt_sigstop",
        "seconds": seconds,
        "broker_running": percentiles(normal),
        "broker_stopped": percentiles(stopped),
        "dropped_in_bridge": metric(service, "camservice_mqtt_messages_dropped_total") - dropped_before,
    }


def available() -> bool:
    """Whether a Mosquitto broker can be started here (the category needs one of its own)."""
    from tests.mqtt_broker import MOSQUITTO, MOSQUITTO_PASSWD

    return all(shutil.which(path) for path in (MOSQUITTO, MOSQUITTO_PASSWD))


def start(queue_size: int = 1000) -> tuple[Broker, Service]:
    broker = Broker().start()
    settings = broker.settings(PREFIX) | {"mqtt.queue_size": queue_size, "mqtt.homeassistant.discovery": False}
    service = Service(simulate=1, **settings, **{"security.rate_limit": 100000.0, "security.rate_burst": 100000})
    try:
        service.start()
    except BaseException:
        service.cleanup()
        broker.cleanup()
        raise
    return broker, service


def run(duration: float, progress=None, quick: bool = False) -> dict:
    """The three phases, scaled to ``duration`` (the burst a sixth of it, each sigstop half a quarter)."""
    if not available():
        return {"skipped": "Mosquitto is not installed: the MQTT bridge needs a broker of its own"}
    cycles = 5 if quick else 20
    seconds = max(2.0, min(10.0, duration / 6))
    stop_seconds = max(2.0, min(30.0, duration / 4))
    with walltime.spent(walltime.SERVICE_START):
        broker, service = start()
    try:
        out = {}
        for name, phase in (
            ("hotplug", lambda: hotplug(service, broker, cycles)),
            ("burst", lambda: burst(service, broker, 100, seconds)),
            ("sigstop", lambda: sigstop(service, broker, stop_seconds)),
        ):
            if progress is not None:
                progress.note(f"mqtt: {name}")
            with walltime.spent(walltime.MEASURED):
                out[name] = phase()
        return out
    finally:
        stop_service(service)
        broker.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", default="hotplug,burst,sigstop")
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--stop-seconds", type=float, default=30.0)
    parser.add_argument("--queue-size", type=int, default=1000)
    args = parser.parse_args(argv)
    broker, service = start(args.queue_size)
    try:
        phases = args.phases.split(",")
        if "hotplug" in phases:
            print(json.dumps(hotplug(service, broker, args.cycles)), flush=True)
        if "burst" in phases:
            print(json.dumps(burst(service, broker, args.rate, args.seconds)), flush=True)
        if "sigstop" in phases:
            print(json.dumps(sigstop(service, broker, args.stop_seconds)), flush=True)
    finally:
        stop_service(service)
        broker.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
