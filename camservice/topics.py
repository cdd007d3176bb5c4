"""The names of the event bus's topics, in one place (as :mod:`camservice.envelope` is for message shapes).

Events travel PUB -> SUB (:class:`camservice.envelope.Event`); ZeroMQ
subscriptions match by prefix, so topic names never prefix one another.
Client topics are also the JSON-RPC notification methods of ``shared/API.md``;
internal topics start with ``_`` and never reach a client.
"""

from __future__ import annotations

# --- client notifications (shared/API.md, Notifications) -------------------------------------
CAMERA_STATUS = "camera_status_update"  # discovery: a camera's full record changed
RECORDING_STATUS = "recording_status_update"  # recording: STARTED, STOPPED, COMPLETED, FAILED
STORAGE_STATUS = "storage_status_update"  # files: usage crossed the warning threshold

#: The topics a client may subscribe to, in the contract's order.
CLIENT = (CAMERA_STATUS, RECORDING_STATUS, STORAGE_STATUS)

# --- internal -------------------------------------------------------------------------------
PROCESS_EXIT = "_process_exit"  # supervisor: a child exited (gateways fail its calls over at once)
PROCESS_STATS = "_process_stats"  # supervisor: the process table and host figures
GATEWAY_STATS = "_gateway_stats"  # each gateway: its counters, for every gateway's get_metrics
WORKER_STATS = "_worker_stats"  # each worker: Worker.stats(), for metrics
MEDIA_STATUS = "_media_status"  # discovery: the media backend's state
BUS_PROBE = "_bus_probe"  # supervisor: sent through each generation's bus and heard back (the bus's heartbeat)
FILE_UPDATE = "_file_update"  # recording: a segment was written or closed (the file index)
