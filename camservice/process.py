"""What every child process does first: name itself, tie its life to its parent.

The supervisor runs each role as ``python -c LAUNCHER camservice.process ROLE
INDEX`` (:func:`command`: ``-m`` without the working directory on
``sys.path``) with the configuration in the environment, so a process starts
from a clean interpreter (no inherited sockets, threads or ZeroMQ contexts).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1

# Resolved once at import: loading a library between fork and exec takes the
# dynamic loader's lock, which another thread (ZeroMQ's) may hold at fork time.
_prctl: Callable[..., int] | None
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux/glibc: the parent-pid watchdogs still apply
    _prctl = None

#: Set by a reload (camservice.supervisor.reload) on the new generation's gateways: worker kinds (comma-separated) that take
#: over from the old generation only once the old gateways drained (the recording worker, which
#: must wait for the old one to release the cameras). A new gateway does not wait to hear them
#: before it listens: it queues their calls until they register.
TAKES_OVER_ENV = "CAMSERVICE_TAKES_OVER"

#: The supervisor parks a gateway (a reload watched by a canary: drain, stay alive, not listening)...
PARK_SIGNAL = signal.SIGRTMIN + 1
#: ...and resumes it (a rollback: listen again). See camservice.gateway.restarting.
RESUME_SIGNAL = signal.SIGRTMIN + 2

ROLES = {
    "gateway": "camservice.gateway.server:main",
    "discovery": "camservice.workers.discovery.worker:main",
    "recording": "camservice.workers.recording.worker:main",
    "files": "camservice.workers.files.worker:main",
    "mqtt": "camservice.workers.mqtt.bridge:main",
    "bus": "camservice.supervisor.bus:main",
}


#: Prepended to code run with ``python -c``, which (like ``-m``) puts the working directory first on
#: ``sys.path`` (as ``''``): dropped before anything of ours is imported, so that a ``camservice``
#: folder there (a source checkout) never shadows the interpreter's installed package. ``-P`` and
#: ``PYTHONSAFEPATH`` do the same only on Python >= 3.11 (with them the entry is not there).
SAFE_PATH = "import sys\nif sys.path[:1] == ['']:\n    del sys.path[0]\n"
#: ``python -m MODULE ARGS...`` without the working directory: ``python -c LAUNCHER MODULE ARGS...``.
LAUNCHER = (
    SAFE_PATH
    + "import runpy\nsys.argv = sys.argv[1:]\nrunpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)


def command(executable: str, module: str, *args: str) -> list[str]:
    """The argv that runs ``module`` as ``__main__`` with ``args`` in ``executable``, whatever the working directory."""
    return [executable, "-c", LAUNCHER, module, *args]


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies.

    This is what keeps a SIGKILLed supervisor (or recording worker) from
    leaving orphans. Call it in the child between fork and exec (a
    ``preexec_fn``): it only calls an already-resolved function. The kernel
    keeps the setting across exec except for set-uid binaries.
    """
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def set_title(title: str) -> None:
    try:
        import setproctitle

        setproctitle.setproctitle(title)
    except ImportError:  # pragma: no cover - setproctitle is a dependency
        pass


def parent_alive(original_parent: int) -> bool:
    """False once we were re-parented (our parent died before PDEATHSIG fired)."""
    return os.getppid() == original_parent


#: Set by a reload on the new recording worker: the pid of the old one, which still owns the
#: cameras. The new process does its slow part (imports) at once, then waits for that pid to be
#: gone before it starts, so that the recording handover costs no interpreter start-up.
TAKE_OVER_ENV = "CAMSERVICE_TAKE_OVER_FROM"
#: Longest wait for the process being taken over (the reload kills it well before).
TAKE_OVER_TIMEOUT = 60.0


def wait_for_exit(pid: int, timeout: float = TAKE_OVER_TIMEOUT) -> None:
    """Return once ``pid`` is gone (or a zombie), or after ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                text = stat.read()
        except OSError:
            return
        if text[text.rfind(b")") + 2 : text.rfind(b")") + 3] in (b"Z", b"X"):
            return
        time.sleep(0.005)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    role, index = argv[0], int(argv[1])
    module_name, _, func = ROLES[role].partition(":")
    module = __import__(module_name, fromlist=[func])
    if os.environ.get(TAKE_OVER_ENV, "").isdigit():
        wait_for_exit(int(os.environ.pop(TAKE_OVER_ENV)))
    getattr(module, func)(index)


if __name__ == "__main__":
    main()
