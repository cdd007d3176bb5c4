"""Per-connection state: who is calling, what they listen to, what they owe.

A :class:`Session` is plain data plus small pure methods; the WebSocket layer
(:mod:`camservice.gateway.server`) owns one per connection.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from camservice import topics as bus_topics


@dataclass(eq=False)
class Session:
    peer: str  # remote address, for logs and the auth-failure throttle
    connection: Any = None  # the websockets connection (None in unit tests)
    identity: Any = None  # camservice.auth.Identity once authenticated
    #: Topics this connection hears; None = every topic (the default once authenticated).
    topics: set[str] | None = None
    in_flight: int = 0
    bucket: Any = None  # per-connection camservice.ratelimit.TokenBucket
    opened: float = field(default_factory=time.monotonic)
    last_activity: float = field(default_factory=time.monotonic)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def wants(self, topic: str) -> bool:
        if self.identity is None:
            return False  # notifications go to authenticated connections only
        return self.topics is None or topic in self.topics

    def subscribe(self, topics: list[str]) -> list[str]:
        """Narrow to (or add) topics; the first call replaces "everything"."""
        if self.topics is None:
            self.topics = set()
        self.topics.update(topics)
        return sorted(self.topics)

    def unsubscribe(self, topics: list[str] | None) -> list[str]:
        """Drop the given topics, or all of them (then nothing arrives until subscribe)."""
        current = set(bus_topics.CLIENT) if self.topics is None else set(self.topics)
        removed = current if topics is None else current & set(topics)
        self.topics = current - removed
        return sorted(removed)
