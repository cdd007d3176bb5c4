"""Issue 16's re-exec figures: how long the event bus and the control socket are unavailable across one.

``python -m bench.reexec [--rounds N] [--interval-ms MS]`` starts a service
(``tests.harness.Service``), connects a publisher to generation 0's
``events_in`` and a subscriber to its ``events_out`` (as a worker and a
gateway do), publishes a numbered probe event every ``--interval-ms``, and
re-execs the supervisor ``--rounds`` times. Per re-exec:

* ``events_lost``: probes published and never received, and
  ``longest_event_gap_s``: the longest time between two received probes
  (the bus's unavailability, to the probe interval);
* ``control_down_s``: from the re-exec's answer to the first ``status``
  answered by the new image (the control socket's unavailability, to
  ``--poll-ms``).

Only public endpoints and control commands are used, so the same file runs
against an older tree (the figures before a change). One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import zmq

from camservice import comms, control
from camservice import config as config_module
from camservice.envelope import Event
from tests.harness import Service, wait_for

from .common import print_json

TOPIC = "_bench_probe"


class Probe:
    """Numbered events through the bus, and when each came back."""

    def __init__(self, endpoints: comms.Endpoints, interval: float):
        self.ctx = zmq.Context()
        self.endpoints, self.interval = endpoints, interval
        self.sent = 0
        self.received: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._send, daemon=True),
            threading.Thread(target=self._receive, daemon=True),
        ]
        self._sub = comms.subscriber(self.ctx, endpoints, (TOPIC,))
        self._sub.setsockopt(zmq.RCVTIMEO, 100)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        wait_for(lambda: self.received, 30, 0.01, "the first probe through the bus")

    def _send(self) -> None:
        pub = comms.publisher(self.ctx, self.endpoints)
        while not self._stop.is_set():
            self.sent += 1
            pub.send_multipart(Event(TOPIC, "bench", self.sent, {}, time.time()).frames())
            time.sleep(self.interval)
        pub.close(linger=0)

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                frames = self._sub.recv_multipart()
            except zmq.Again:
                continue
            self.received.append((Event.from_frames(frames).seq, time.monotonic()))
        self._sub.close(linger=0)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self.ctx.term()


def one_reexec(probe: Probe, endpoint: str, execs: int, poll: float) -> dict:
    first_seq, first_index = probe.sent, len(probe.received)
    answer = control.request(endpoint, "reexec", 40.0)
    answered = time.monotonic()
    if not answer or not answer.get("ok"):
        raise SystemExit(f"re-exec refused: {answer}")
    while True:
        status = control.request(endpoint, "status", poll)
        if status and status.get("execs") == execs:
            break
    control_down = time.monotonic() - answered
    time.sleep(1.0)  # probes keep flowing after the new image is up: the window is closed on both sides
    last_seq = probe.sent - 50  # sent well before now: had time to arrive
    received = {seq for seq, _ in probe.received[first_index:]}
    lost = [seq for seq in range(first_seq + 1, last_seq + 1) if seq not in received]
    times = [at for seq, at in probe.received[first_index:] if seq <= last_seq]
    gap = max((b - a for a, b in zip(times, times[1:])), default=None)
    return {
        "events_published": last_seq - first_seq,
        "events_lost": len(lost),
        "longest_event_gap_s": round(gap, 3) if gap is not None else None,
        "control_down_s": round(control_down, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interval-ms", type=float, default=2.0)
    parser.add_argument("--poll-ms", type=float, default=20.0)
    args = parser.parse_args()
    with Service(simulate=0) as svc:
        config = config_module.load(svc.config_path, environ={})
        endpoints = comms.Endpoints.from_config(config, 0)
        probe = Probe(endpoints, args.interval_ms / 1000)
        probe.start()
        rounds = []
        try:
            for execs in range(1, args.rounds + 1):
                rounds.append(one_reexec(probe, endpoints.control, execs, args.poll_ms / 1000))
        finally:
            probe.stop()
    print_json(
        {
            "rounds": rounds,
            "events_lost": sum(r["events_lost"] for r in rounds),
            "longest_event_gap_s": max(r["longest_event_gap_s"] or 0 for r in rounds),
            "control_down_s": [r["control_down_s"] for r in rounds],
            "load_average": os.getloadavg(),
        }
    )


if __name__ == "__main__":
    main()
