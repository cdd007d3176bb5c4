"""Camera discovery: the worker that owns the camera table.

* :mod:`.worker` - the ``discovery`` process (snapshot, capabilities, streams);
* :mod:`.registry` - how complete scans turn into camera status changes;
* :mod:`.ids` - stable ``cameraN`` ids, persisted in ``state_dir/cameras.json``;
* :mod:`.v4l2` - real V4L2 cameras: enumeration, capture-node filter, probing;
* :mod:`.watch` - noticing plug/unplug (simulator folder by inotify; udev or ``/dev`` polling);
* :mod:`.inotify` - a small ctypes binding of Linux inotify, read on the event loop;
* :mod:`.media` - stream URLs through MediaMTX (``media.backend: mediamtx``).

Simulated cameras' node files and lock are core (:mod:`camservice.simnodes`):
the recording worker and the CLI use them too.
"""
