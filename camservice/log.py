"""Structured logging for every process.

One JSON object per line in ``state_dir/logs/<process>.log``; with
``--foreground`` also readable lines on stderr. Every line carries the
process name; lines about one request carry its ``request_id``, which the
gateway creates and the envelope carries into the worker.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from pathlib import Path

import structlog
from structlog.typing import EventDict, WrappedLogger

#: The request being handled, added to every log line written meanwhile. A plain
#: ContextVar (set/reset costs ~50 ns) rather than structlog's bound
#: contextvars (microseconds), because it is set for every request.
REQUEST_ID: ContextVar[str | None] = ContextVar("camservice_request_id", default=None)

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def setup(process: str, log_dir: Path | None, level: str = "info", console: bool = False) -> None:
    """Configure structlog (and the stdlib root logger) for this process."""
    handlers: list[logging.Handler] = []
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_dir / f"{process}.log")
        file_handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processor=structlog.processors.JSONRenderer(), foreign_pre_chain=_shared_processors()
            )
        )
        handlers.append(file_handler)
    if console:
        console_handler = logging.StreamHandler(sys.stderr)
        console_handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processor=structlog.dev.ConsoleRenderer(colors=False), foreign_pre_chain=_shared_processors()
            )
        )
        handlers.append(console_handler)
    if not handlers:
        handlers.append(logging.NullHandler())
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(_LEVELS[level])
    # One line per connection opened and closed would drown everything else at 10,000 clients.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, _LEVELS[level]))
    structlog.configure(
        processors=[*_shared_processors(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(process=process)


def add_request_id(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    return event_dict


def _shared_processors() -> list:
    return [
        structlog.contextvars.merge_contextvars,
        add_request_id,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]


def get(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
