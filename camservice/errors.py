"""JSON-RPC error codes and the exception that carries them.

Every process raises :class:`RpcError` for a failure the client should see;
the gateway turns it into a JSON-RPC error object, workers send it back in a
REPLY envelope. Codes and default messages are defined here and nowhere else.
"""

from __future__ import annotations

from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

AUTH_REQUIRED = -32001
RATE_LIMITED = -32002
PERMISSION_DENIED = -32003
CAMERA_NOT_FOUND = -32004
IN_PROGRESS = -32005
MEDIA_BACKEND = -32006
STORAGE_FULL = -32007
CAPABILITY_UNSUPPORTED = -32008
FILE_NOT_FOUND = -32010
SERVICE_BUSY = -32011
STORAGE_ERROR = -32012

MESSAGES: dict[int, str] = {
    PARSE_ERROR: "Parse error",
    INVALID_REQUEST: "Invalid Request",
    METHOD_NOT_FOUND: "Method not found",
    INVALID_PARAMS: "Invalid params",
    INTERNAL_ERROR: "Internal error",
    AUTH_REQUIRED: "Authentication required",
    RATE_LIMITED: "Rate limit exceeded",
    PERMISSION_DENIED: "Insufficient permissions",
    CAMERA_NOT_FOUND: "Camera not found or disconnected",
    IN_PROGRESS: "Recording already in progress or file in use",
    MEDIA_BACKEND: "Media backend unavailable or failed",
    STORAGE_FULL: "Insufficient storage space",
    CAPABILITY_UNSUPPORTED: "Camera capability not supported",
    FILE_NOT_FOUND: "File not found",
    SERVICE_BUSY: "Service busy, retry later",
    STORAGE_ERROR: "Storage error",
}


class RpcError(Exception):
    """A failure reported to the client as a JSON-RPC error object.

    ``data`` must be JSON-serialisable and must never hold a traceback, a
    secret or a path outside the storage folders.
    """

    def __init__(self, code: int, message: str | None = None, data: Any = None):
        self.code = code
        self.message = message or MESSAGES.get(code, "Error")
        self.data = data
        super().__init__(f"{self.code} {self.message}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON-RPC ``error`` member."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error

    @classmethod
    def from_dict(cls, error: dict[str, Any]) -> RpcError:
        return cls(error["code"], error.get("message"), error.get("data"))


def invalid_params(reason: str, param: str | None = None) -> RpcError:
    """A -32602 error; the contract requires ``data.reason`` on every one."""
    data: dict[str, Any] = {"reason": reason}
    if param is not None:
        data["param"] = param
    return RpcError(INVALID_PARAMS, data=data)


def camera_not_found(device: str) -> RpcError:
    return RpcError(CAMERA_NOT_FOUND, data={"device": device})


def storage_error(reason: str) -> RpcError:
    """A -32012 error: a storage folder is missing, read-only or not writable (``reason`` says which)."""
    return RpcError(STORAGE_ERROR, data={"reason": reason})


def auth_failed(reason: str) -> RpcError:
    """A -32001 error; ``reason`` is a fixed string, never text taken from a credential."""
    return RpcError(AUTH_REQUIRED, data={"reason": reason})


def file_not_found(filename: str) -> RpcError:
    return RpcError(FILE_NOT_FOUND, data={"filename": filename})
