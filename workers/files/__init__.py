"""The file worker: recordings and snapshots on disk, listed, described, served.

* :mod:`.worker` - the JSON-RPC handlers and background jobs (``FilesWorker``);
* :mod:`.index` - the SQLite index shared by every file worker process;
* :mod:`.downloads` - the HTTP download server (``files.http_port``);
* :mod:`.auth` - the download authorisation hook;
* :mod:`.retention` - retention policy, planning and the cross-process lock;
* :mod:`.storage` - disk usage figures and threshold events;
* :mod:`.names` - file-name parsing and path confinement.

Which files the recording worker is writing: :mod:`camservice.active_files`.
"""
