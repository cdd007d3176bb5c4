"""What waits to go to the broker, bounded (pure: no I/O).

Two kinds of messages, kept apart because they are lost differently:

* **Retained** messages (availability, camera state, snapshot, health,
  Home Assistant configs) describe *state*: only the latest per topic
  matters. They are kept per topic, at most one each, for as long as the
  bridge runs, and every one is sent again after each (re)connection, so a
  broker that restarted without persistence gets the whole picture back.
  Their number is bounded by the number of cameras, never by time.
* **Events** (``events/...``, ``result``) are news: a FIFO of at most
  ``limit`` messages. When the broker is slow or gone and the FIFO is full,
  the oldest event is dropped and counted (``dropped`` feeds ``/metrics``):
  the rest of the service never waits for the broker.

The publisher takes :meth:`next`, and reports :meth:`sent` or
:meth:`failed` (which puts the message back: at least once, never a silent
loss between the queue and the broker).
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = False
    #: What kind of message it is, for counters: state, event, result, snapshot, health, discovery, availability.
    kind: str = "event"


class Outbox:
    def __init__(self, limit: int):
        self.limit = limit
        self.retained: dict[str, Message] = {}
        self._due: OrderedDict[str, None] = OrderedDict()  # retained topics not sent since the last change
        self._events: deque[Message] = deque()
        self.dropped: Counter[str] = Counter()
        self.sent_count: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._due) + len(self._events)

    def put(self, message: Message, first: bool = False) -> None:
        """Queue a message; a retained one replaces what was waiting for its topic."""
        if message.retain:
            if self.retained.get(message.topic) == message and message.topic not in self._due:
                return  # the broker already holds exactly this
            self.retained[message.topic] = message
            self._due[message.topic] = None
            self._due.move_to_end(message.topic, last=not first)
            return
        if len(self._events) >= self.limit:
            self.dropped[self._events.popleft().kind] += 1
        self._events.append(message)

    def next(self) -> Message | None:
        """The message to send now (state before events), or None when nothing waits."""
        if self._due:
            topic, _ = self._due.popitem(last=False)
            return self.retained[topic]
        if self._events:
            return self._events.popleft()
        return None

    def sent(self, message: Message) -> None:
        self.sent_count[message.kind] += 1
        if message.retain and not message.payload and self.retained.get(message.topic) is message:
            # A cleared topic is gone from the broker: nothing to restore later.
            del self.retained[message.topic]

    def failed(self, message: Message) -> None:
        """The broker did not take it: send it again first (unless a newer state replaced it)."""
        if message.retain:
            if self.retained.get(message.topic) is message:
                self._due[message.topic] = None
                self._due.move_to_end(message.topic, last=False)
            return
        self._events.appendleft(message)
        if len(self._events) > self.limit:
            self.dropped[self._events.pop().kind] += 1

    def reconnected(self, first: str | None = None) -> None:
        """After a (re)connection every retained message is due again, ``first`` before the rest."""
        for topic in self.retained:
            self._due[topic] = None
        if first in self._due:
            self._due.move_to_end(first, last=False)

    def forget(self, topic: str) -> None:
        """Stop holding a retained topic (without clearing it on the broker)."""
        self.retained.pop(topic, None)
        self._due.pop(topic, None)
