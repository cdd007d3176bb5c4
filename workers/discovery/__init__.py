"""Camera discovery: the worker that owns the camera table, and the camera simulator.

* :mod:`.worker` - the ``discovery`` process (snapshot, capabilities, streams);
* :mod:`.registry` - how complete scans turn into camera status changes;
* :mod:`.ids` - stable ``cameraN`` ids, persisted in ``state_dir/cameras.json``;
* :mod:`.v4l2` - real V4L2 cameras: enumeration, capture-node filter, probing;
* :mod:`.watch` - noticing plug/unplug (simulator folder; udev or ``/dev`` polling);
* :mod:`.simulator` - simulated cameras as device nodes (used by recording and the CLI);
* :mod:`.media` - stream URLs through MediaMTX (``media.backend: mediamtx``).
"""
