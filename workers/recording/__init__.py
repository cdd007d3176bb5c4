"""The recording worker: snapshots and recordings, crash-safe.

Modules, from the bottom up:

* :mod:`.naming` - file names (contract defaults, segment names) and timestamps;
* :mod:`.journal` - the session journal and ``recording-active.json``;
* :mod:`.storage` - the ``storage.min_free_bytes`` floor;
* :mod:`.simdev` - opening simulated cameras (:mod:`camservice.simnodes`);
* :mod:`.capture` - ffmpeg command lines and child processes;
* :mod:`.backend` - the :class:`~.backend.MediaBackend` seam and the ffmpeg
  backend (segment naming and snapshot design are described there);
* :mod:`.sessions` - :class:`~.sessions.RecordingManager`: methods, session
  supervision, crash recovery, shutdown semantics;
* :mod:`.worker` - the ZeroMQ worker process around the manager.

``media.backend`` picks :class:`~.backend.FfmpegBackend` (reads the
devices) or :class:`~.backend.MediaMTXBackend` (reads the cameras' MediaMTX
RTSP paths, which own the devices).
"""
