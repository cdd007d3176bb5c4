"""The recording worker: snapshots and recordings, crash-safe.

Modules, from the bottom up:

* :mod:`.naming` - file names (contract defaults, segment names) and timestamps;
* :mod:`.journal` - the session journal;
* :mod:`.storage` - the ``storage.min_free_bytes`` floor;
* :mod:`.simdev` - opening simulated cameras (:mod:`camservice.simnodes`);
* :mod:`.capture` - ffmpeg command lines and child processes;
* :mod:`.backend` - the :class:`~.backend.MediaBackend` seam and the ffmpeg
  backend (segment naming and snapshot design are described there);
* :mod:`.mediamtx_backend` - the same, reading MediaMTX's RTSP paths;
* :mod:`.session` - :class:`~.session.Session`: one recording, its capture
  runs, watch loop and restart policy;
* :mod:`.snapshots` - ``take_snapshot``;
* :mod:`.recovery` - resuming after a crash (worker or supervisor lost);
* :mod:`.sessions` - :class:`~.sessions.RecordingManager`: the methods, the
  table of sessions, shutdown semantics;
* :mod:`.worker` - the ZeroMQ worker process around the manager.

``media.backend`` picks :class:`~.backend.FfmpegBackend` (reads the
devices) or :class:`~.mediamtx_backend.MediaMTXBackend` (reads the cameras'
MediaMTX RTSP paths, which own the devices).
"""
