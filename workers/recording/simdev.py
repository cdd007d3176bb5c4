"""Opening simulated cameras, through the core's :mod:`camservice.simnodes`.

:mod:`camservice.simnodes` owns the node format and the locking rule
(one reader per node, an exclusive ``flock``). This adapter turns its
exceptions into the three outcomes a capture cares about: opened, busy,
gone. The recording worker passes the returned fd to ffmpeg (``pass_fds``)
and closes its own copy, so the lock lives exactly as long as ffmpeg.
"""

from __future__ import annotations

import errno

from camservice.simnodes import open_sim_device, sim_input_args

__all__ = ["open_sim_device", "sim_input_args", "is_busy", "is_gone"]


def is_busy(exc: BaseException) -> bool:
    """``open_sim_device`` failed because another reader holds the node."""
    return isinstance(exc, OSError) and exc.errno in (errno.EBUSY, errno.EAGAIN)


def is_gone(exc: BaseException) -> bool:
    """``open_sim_device`` failed because the camera is unplugged (or being unplugged)."""
    return isinstance(exc, FileNotFoundError) or (isinstance(exc, OSError) and exc.errno == errno.ENODEV)
