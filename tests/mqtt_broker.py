"""A real Mosquitto broker for tests (password file and ACL), and a small MQTT test client.

:class:`Broker` runs Debian's ``mosquitto`` on a free port with
``allow_anonymous false``, users made with ``mosquitto_passwd`` and an ACL
that gives each user the rights the README describes:

* ``bridge``: read and write under ``camservice/#`` and ``homeassistant/#``;
* ``viewer``: read only;
* ``operator``: read, and write command topics (``.../set``) only.

Persistence is off, so a killed and restarted broker has forgotten every
retained message: what comes back was published again by the bridge.
:class:`Listener` is a paho-mqtt client that records every message it gets.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho

from .harness import free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
USERS = {"bridge": "bridge-pw", "viewer": "viewer-pw", "operator": "operator-pw"}
ACL = """\
user bridge
topic readwrite camservice/#
topic readwrite homeassistant/#

user viewer
topic read camservice/#
topic read homeassistant/#

user operator
topic read camservice/#
topic read homeassistant/#
topic write camservice/+/cameras/+/+/set
"""


def available() -> bool:
    return Path(MOSQUITTO).exists() and Path(MOSQUITTO_PASSWD).exists()


class Broker:
    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="mqtt-"))
        self.port = free_port()
        passwords = self.root / "passwords"
        for number, (user, password) in enumerate(USERS.items()):
            create = ["-c"] if number == 0 else []
            subprocess.run([MOSQUITTO_PASSWD, *create, "-b", str(passwords), user, password], check=True, timeout=30)
        (self.root / "acl").write_text(ACL)
        (self.root / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous false\n"
            f"password_file {passwords}\n"
            f"acl_file {self.root / 'acl'}\n"
            "persistence false\n"
            "log_dest stderr\n" + ("user root\n" if os.geteuid() == 0 else "")
            # As root, mosquitto would switch to its own user, which cannot read our temporary folder.
        )
        passwords.chmod(0o600)
        (self.root / "acl").chmod(0o600)
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        log = (self.root / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.root / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {self.log()}")
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen: {self.log()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def log(self) -> str:
        path = self.root / "mosquitto.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def settings(self, prefix: str, user: str = "bridge") -> dict:
        """``Service`` settings of a bridge to this broker under ``prefix``."""
        return {
            "mqtt.host": "127.0.0.1",
            "mqtt.port": self.port,
            "mqtt.username": user,
            "mqtt.password": USERS[user],
            "mqtt.topic_prefix": prefix,
        }

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


class Listener:
    """A paho client that subscribes and records every message in ``log``; ``wait`` blocks for one."""

    def __init__(self, broker: Broker, user: str = "viewer", topics=("camservice/#",), protocol=paho.MQTTv311):
        self.log: list[paho.MQTTMessage] = []
        self._arrived = threading.Condition()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=protocol)
        self.client.username_pw_set(user, USERS[user])
        self.client.on_message = self._on_message
        self.topics = topics
        self.client.on_connect = self._subscribe
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def _subscribe(self, client, userdata, flags, reason, properties=None) -> None:
        for topic in self.topics:
            client.subscribe(topic, qos=1)

    def _on_message(self, client, userdata, message) -> None:
        with self._arrived:
            self.log.append(message)
            self._arrived.notify_all()

    def mark(self) -> int:
        """A position in ``log``: ``wait(..., after=mark)`` looks only at later messages."""
        with self._arrived:
            return len(self.log)

    def wait(self, topic: str, where=lambda message: True, timeout: float = 20.0, after: int = 0) -> paho.MQTTMessage:
        """The first message on ``topic`` at position ``after`` or later that satisfies ``where``."""
        deadline = time.monotonic() + timeout
        position = after
        with self._arrived:
            while True:
                while position < len(self.log):
                    message = self.log[position]
                    position += 1
                    if message.topic == topic and where(message):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no matching message on {topic} within {timeout}s")
                self._arrived.wait(remaining)

    def on(self, topic: str) -> list[paho.MQTTMessage]:
        with self._arrived:
            return [m for m in self.log if m.topic == topic]

    def publish(self, topic: str, payload, qos: int = 1, retain: bool = False):
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(10)
        return info

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
