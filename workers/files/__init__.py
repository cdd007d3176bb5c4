"""The file worker: recordings and snapshots on disk, listed, described, served.

* :mod:`.worker` - the process (``FilesWorker``): state, method table, lifecycle, events;
* :mod:`.catalogue` - listing, info and download links;
* :mod:`.deletion` - ``delete_recording`` and ``delete_snapshot``;
* :mod:`.upkeep` - storage figures, retention, rescans and the background jobs;
* :mod:`.blocking` - blocking work in a thread, within the call's deadline;
* :mod:`.index` - the SQLite index shared by every file worker process;
* :mod:`.downloads` - the HTTP download server (``files.http_port``);
* :mod:`.auth` - the download authorisation hook;
* :mod:`.retention` - retention policy, planning and the cross-process lock;
* :mod:`.storage` - disk usage figures and threshold events;
* :mod:`.names` - file-name parsing and path confinement.

Which files the recording worker is writing: :mod:`camservice.active_files`.
"""
