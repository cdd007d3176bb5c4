"""Baseline: the cheapest plausible server for the camservice API.

A bare, single-process ``websockets`` server on /ws that answers the
service's JSON-RPC methods with constant results shaped like the contract's
(../shared/API.md), without forwarding anything anywhere. It does what a
naive service does per request -- json.loads, build a response dict,
json.dumps -- and nothing else, so "service / baseline" throughput and CPU per
request show what the real service's architecture (auth, workers, IPC) costs.

    python -m bench.baseline_server --port 8012     # runs until SIGINT/SIGTERM

From other scripts: ``common.start_baseline(port)``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

# ------------------------------------------------------------ constant results

_CAMERA = {
    "device": "sim:0",
    "id": "camera0",
    "status": "CONNECTED",
    "name": "Simulated Camera 0",
    "resolution": "1920x1080",
    "fps": 30,
    "streams": {
        "rtsp": "rtsp://127.0.0.1:8554/camera0",
        "webrtc": "http://127.0.0.1:8889/camera0",
        "hls": "http://127.0.0.1:8888/camera0",
    },
    "capabilities": {
        "formats": ["YUYV", "MJPEG"],
        "resolutions": ["1920x1080", "1280x720"],
        "frame_rates": {"1920x1080": [30, 15], "1280x720": [30, 15]},
    },
    "recording": False,
}

_FILE = {
    "filename": "camera0_2025-01-01_00-00-00_ABC123.mp4",
    "file_size": 1048576,
    "modified_time": "2025-01-01T00:00:10Z",
    "download_url": "/files/recordings/camera0_2025-01-01_00-00-00_ABC123.mp4",
    "device": "sim:0",
    "duration": 10,
}

RESULTS = {
    "ping": "pong",
    "authenticate": {
        "authenticated": True,
        "role": "admin",
        "permissions": ["view", "control", "admin"],
        "expires_at": None,
        "session_id": "00000000-0000-4000-8000-000000000000",
    },
    "get_camera_list": {
        "cameras": [dict(_CAMERA, device=f"sim:{i}", id=f"camera{i}") for i in range(4)],
        "total": 4,
        "connected": 4,
    },
    "get_camera_status": dict(_CAMERA, metrics={"bytes_sent": 123456789, "readers": 1, "uptime": 3600}),
    "get_camera_capabilities": {"device": "sim:0", **_CAMERA["capabilities"]},
    "get_streams": [
        {"name": f"camera{i}", "source": f"sim:{i}", "ready": True, "readers": 0, "bytes_sent": 0} for i in range(4)
    ],
    "list_recordings": {"files": [_FILE], "total": 1, "limit": 100, "offset": 0},
    "list_snapshots": {"files": [], "total": 0, "limit": 100, "offset": 0},
    "get_server_info": {
        "name": "baseline",
        "version": "0",
        "capabilities": ["snapshots", "recordings", "streaming"],
        "supported_formats": ["mp4", "mkv", "jpg", "png"],
        "max_cameras": 16,
    },
    "get_status": {
        "status": "healthy",
        "uptime": 3600,
        "version": "0",
        "components": {
            "gateway": "running",
            "discovery": "running",
            "recording": "running",
            "files": "running",
            "mediamtx": "running",
        },
    },
    "get_metrics": {
        "active_connections": 1,
        "total_requests": 1,
        "average_response_time": 0.1,
        "error_rate": 0.0,
        "memory_usage": 1.0,
        "cpu_usage": 1.0,
        "processes": [],
    },
    "subscribe_events": {"subscribed": ["camera_status_update"]},
    "unsubscribe_events": {"unsubscribed": ["camera_status_update"]},
}


def _error(req_id, code: int, message: str) -> dict:
    return {"jsonrpc": "2.0", "id": req_id, "error": {"code": code, "message": message}}


def handle_one(req):
    """Response dict for one decoded request, or None for a notification."""
    if not isinstance(req, dict) or req.get("jsonrpc") != "2.0" or not isinstance(req.get("method"), str):
        return _error(req.get("id") if isinstance(req, dict) else None, -32600, "Invalid Request")
    result = RESULTS.get(req["method"])
    if "id" not in req:
        return None
    if result is None:
        return _error(req["id"], -32601, "Method not found")
    return {"jsonrpc": "2.0", "id": req["id"], "result": result}


def handle_text(text) -> str | None:
    """JSON text of the reply to one WebSocket message (None: nothing to send)."""
    try:
        req = json.loads(text)
    except ValueError:
        return json.dumps(_error(None, -32700, "Parse error"))
    if isinstance(req, list):  # batch: minimal support
        if not req:
            return json.dumps(_error(None, -32600, "Invalid Request"))
        replies = [r for r in map(handle_one, req) if r is not None]
        return json.dumps(replies) if replies else None
    reply = handle_one(req)
    return None if reply is None else json.dumps(reply)


async def handler(ws) -> None:
    if ws.request.path != "/ws":
        await ws.close(1008, "unknown path")
        return
    # One request at a time per connection, answered in order: the naive way.
    try:
        async for message in ws:
            reply = handle_text(message)
            if reply is not None:
                await ws.send(reply)
    except ConnectionClosed:
        pass  # a client that went away without a closing handshake: not news


async def main(host: str, port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    # Default websockets settings except the contract's 1 MiB frame limit.
    async with serve(handler, host, port, max_size=1 << 20):
        await stop


def raise_nofile_limit() -> None:
    """Raise the soft fd limit to the hard one (idle tests hold 10k sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=8012, help="listen port (default 8012)")
    args = ap.parse_args()
    raise_nofile_limit()
    asyncio.run(main(args.host, args.port))
