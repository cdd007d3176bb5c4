"""What the request pipeline hands the worker pool: one :class:`Call`.

:class:`~camservice.gateway.core.RequestPipeline` builds a ``Call`` for every
request a worker serves; :class:`~camservice.gateway.pool.WorkerPool` sends it
and answers through ``callback`` exactly once. The event relay and workers'
own calls to other workers (``discovery.snapshot``...) travel the same way.
Kept apart from both so that the pipeline, which does no I/O, does not import
the pool's ZeroMQ code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from camservice.errors import RpcError

#: callback(error, result): exactly one is not None (result may legitimately be None);
#: a result a worker sent as JSON text arrives as :class:`~camservice.jsonrpc.Raw`.
ReplyCallback = Callable[[RpcError | None, Any], None]


@dataclass(slots=True)
class Call:
    """A call to a method served by a worker ``kind``."""

    kind: str  # discovery, recording, files
    method: str
    params: dict[str, Any]
    timeout: float  # seconds from now
    callback: ReplyCallback
    request_id: str = ""  # follows the call through every process's logs
    caller: dict[str, Any] = field(default_factory=dict)  # {"sub", "role"}, empty for internal calls
    #: Safe to send again to another worker if the one holding it dies.
    idempotent: bool = True


#: How the pipeline sends a call (``WorkerPool.call`` in the gateway process).
SendCall = Callable[[Call], None]
