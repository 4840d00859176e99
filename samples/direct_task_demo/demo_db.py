"""Where the demo keeps its SQLite file, and why not where a real project would.

A real project keeps the default, `<app_id>.pynenc.sqlite3` in the current folder, shared by
the caller and its workers. The demo uses a new file per run in the temp folder instead, so
that a run never meets what an earlier (or a simultaneous) run left, and removes it at exit.
To share it with workers in other processes, set PYNENC__SQLITE_DB_PATH: the environment
beats values given in code, and a file named that way is never removed here.
"""

from __future__ import annotations

import atexit
import os
import tempfile
import uuid

from pynenc_lite import Pynenc


def temporary_db_path(app_id: str) -> str:
    """A path in the temp folder that no other run uses (nothing is created yet)."""
    name = f"{app_id}-{os.getpid()}-{uuid.uuid4().hex[:8]}.pynenc.sqlite3"
    return os.path.join(tempfile.gettempdir(), name)


def remove_at_exit(app: Pynenc, path: str) -> None:
    """At exit, close `app` and delete `path` (with its -wal and -shm files) if it is still
    the app's database, that is, if the environment did not name another one."""

    def remove() -> None:
        app.close()  # stops the runner if it still runs, the watcher, and the connections
        if app.conf.sqlite_db_path != path:
            return  # the environment named another file: it is the user's, keep it
        for suffix in ("", "-wal", "-shm"):
            try:
                os.remove(path + suffix)
            except OSError:
                pass

    atexit.register(remove)
