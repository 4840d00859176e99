"""One SQLite file as a process uses it: per-thread connections and the transactions on them.

Decisions, each for a reason:
- WAL journal: readers never block the one writer, so callers and workers poll cheaply.
- `synchronous=NORMAL` by default: a commit survives a crash of the process (the WAL is
  written), but the last commits may be lost on power loss; FULL fsyncs every commit.
- One long-lived connection per thread, reopened after a fork (a SQLite connection must never
  cross a fork); those of threads that ended are closed when the next thread opens one.
- Every write is `BEGIN IMMEDIATE ... COMMIT`, so a transaction takes the write lock at its
  start and never has to be retried half-way. Threads of one process queue on a Python lock
  instead of SQLite's busy handler (which sleeps in whole milliseconds); other processes are
  waited for with short, growing sleeps up to `busy_timeout_seconds`.
- The file is created with mode 0600: its payloads are pickles, and loading a pickle runs code.
- `read_only=True` opens with SQLite's `mode=ro` and writes nothing at all (no schema, no
  pragmas, no journal mode), so a file this process may only read (another user's, an
  immutable one, one on a read-only mount) can still be inspected; a write is refused with a
  clear error. A WAL file that nobody has open has no -shm file, and one that cannot be created
  (a folder we may not write) stops even a `mode=ro` open: then it is opened `immutable=1`,
  a snapshot that assumes no writer (true of a read-only mount or an immutable file; for
  another user's file, a writer starting meanwhile may be missed or make a read fail).

What it deliberately does not: hold any SQL about invocations (`claims.py`, `operations.py`),
or tell other processes about a commit (`feed.py`; the backend nudges after `write`).
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
import urllib.parse
import weakref
from typing import Any, Callable, Optional, Sequence, TypeVar

from pynenc_lite.backend.sqlite import schema
from pynenc_lite.errors import BackendError

_T = TypeVar("_T")

# Safety-net size of the WAL, in pages, before a commit checkpoints it itself.
_AUTOCHECKPOINT_PAGES = 20000
# Size the WAL file is truncated to once a checkpoint has emptied it.
_WAL_SIZE_LIMIT_BYTES = 16 * 1024 * 1024


def is_busy(exc: sqlite3.OperationalError) -> bool:
    """True when the error means another connection holds a lock we need."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def is_read_only(exc: BaseException) -> bool:
    """True when SQLite refused a write because the file (or its folder, for the -wal and
    -shm files, or its filesystem) is read-only for this process."""
    return isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc).lower()


def read_only_message(path: str, exc: BaseException) -> str:
    """One line saying that `path` cannot be written here, and what to do about it."""
    return (
        f"cannot write to {path} ({exc}): this process (uid {os.getuid()}) may read it but "
        "not change it or its folder (where SQLite adds -wal and -shm files). Run as a user "
        "who may write both, or fix what stops writes: the owner and mode of the file or "
        "folder, an immutable file (chattr -i), a read-only mount"
    )


def _close_all(connections: list[tuple[threading.Thread, sqlite3.Connection]]) -> None:
    """Close and forget every connection in the list (best effort, idempotent)."""
    while connections:
        _, conn = connections.pop()
        try:
            conn.close()
        except sqlite3.Error:  # pragma: no cover - closing is best effort
            pass


class Database:
    """The connections of this process's threads to one SQLite file. Thread-safe."""

    def __init__(
        self, path: str, *, synchronous: str, busy_timeout_seconds: float, read_only: bool = False
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout_seconds = busy_timeout_seconds
        self.read_only = read_only
        # This thread's connection and the pid that opened it (`conn`, `pid`).
        self._local = threading.local()
        # Serializes this process's write transactions, so its threads wait on each other
        # here (woken at once) instead of in SQLite's sleeping busy handler.
        self._write_lock = threading.Lock()
        # Held while a thread opens its connection (closing orphans, listing the new one in
        # _connections, checking the schema once per process: _schema_ready_pid) and while
        # close() sets _closed. Taken before _write_lock when both are (the schema is
        # created under it), never after.
        self._setup_lock = threading.Lock()
        self._schema_ready_pid: Optional[int] = None
        self._connections: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._closed = False
        # A database dropped without close() still closes its connections (Python 3.13 warns
        # about every connection left for the garbage collector). Not at interpreter exit:
        # finalizers run before other exit handlers, and closing a connection while a
        # daemon thread is inside a call on it crashes the process.
        weakref.finalize(self, _close_all, self._connections).atexit = False

    # -- connections ------------------------------------------------------------------------

    def conn(self) -> sqlite3.Connection:
        """This thread's connection, opened (and the schema checked) on first use.

        Raises:
            BackendError: the database was closed, or the file cannot be opened.
        """
        local = self._local
        conn: Optional[sqlite3.Connection] = getattr(local, "conn", None)
        if self._closed:
            raise BackendError(f"the backend for {self.path} was closed; make a new one")
        if conn is not None and local.pid == os.getpid():
            return conn
        conn = self._open()
        local.conn, local.pid = conn, os.getpid()
        return conn

    def _close_orphans(self) -> None:
        """Close the connections of threads that have ended (caller holds _setup_lock).

        Each thread gets its own connection; a program that starts a thread per request
        would otherwise keep one open file per finished thread until close().
        """
        alive = []
        for thread, conn in self._connections:
            if thread.is_alive() or thread.ident is None:
                alive.append((thread, conn))
            else:
                conn.close()
        self._connections[:] = alive  # in place: the finalizer holds this list

    def _open(self) -> sqlite3.Connection:
        if self.read_only:
            return self._open_read_only()
        try:
            if not os.path.exists(self.path):
                # Create it private before SQLite does: payloads are pickles. SQLite gives
                # the -wal and -shm files the same permissions as the main file.
                os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            conn = sqlite3.connect(
                self.path, timeout=0, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise BackendError(
                f"cannot open the SQLite database at {self.path!r}: {exc}. Check that its "
                "folder exists and is writable, or point sqlite_db_path "
                "(PYNENC__SQLITE_DB_PATH) somewhere that is."
            ) from exc
        try:
            # Busy while another process sets the file up (schema, WAL switch): wait.
            self.retry_busy(lambda: conn.execute(f"PRAGMA synchronous={self.synchronous}"))
            # Checkpoints are done by maintain() from the watcher thread; a commit copies the
            # WAL back itself only as a safety net when nobody has for a long while (the
            # default, 1,000 pages, made every ~80th call pay a 4 ms checkpoint).
            self.retry_busy(
                lambda: conn.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT_PAGES}")
            )
            # After a checkpoint empties it, the WAL file is cut back to this size.
            self.retry_busy(
                lambda: conn.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT_BYTES}")
            )
        except BaseException:
            conn.close()
            raise
        with self._setup_lock:
            self._close_orphans()
            self._connections.append((threading.current_thread(), conn))
            if self._schema_ready_pid != os.getpid():
                # Once per process, before any other statement of it touches the schema.
                self.retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone())
                self.write(lambda c: schema.create(c, self.path), conn)
                self._schema_ready_pid = os.getpid()
        return conn

    def _open_read_only(self) -> sqlite3.Connection:
        """A connection that cannot write, after checking the schema version (once per
        process). Sets no pragma: those that matter only concern writes."""
        uri = "file:" + urllib.parse.quote(self.path) + "?mode=ro"
        conn = self._connect_uri(uri)
        try:
            try:
                self.retry_busy(lambda: conn.execute("SELECT 1 FROM sqlite_master").fetchone())
            except BackendError as exc:
                # A WAL file nobody has open, in a folder we may not write: SQLite cannot
                # make its -shm file, so not even a read-only open works. Nobody can be
                # writing it now (every connection to a WAL file keeps its -shm).
                if exc.__cause__ is None or not is_read_only(exc.__cause__):
                    raise
                if os.path.exists(self.path + "-shm"):
                    raise
                conn.close()
                conn = self._connect_uri(uri + "&immutable=1")
            with self._setup_lock:
                if self._closed:
                    raise BackendError(f"the backend for {self.path} was closed; make a new one")
                if self._schema_ready_pid != os.getpid():
                    self.retry_busy(lambda: schema.check(conn, self.path))
                    self._schema_ready_pid = os.getpid()
                self._close_orphans()
                self._connections.append((threading.current_thread(), conn))
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_uri(self, uri: str) -> sqlite3.Connection:
        try:
            return sqlite3.connect(
                uri, uri=True, timeout=0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise BackendError(
                f"cannot open the SQLite database at {self.path!r} to read it: {exc}. Check "
                "that the file exists and that this process may read it."
            ) from exc

    def close(self) -> None:
        """Close every connection; any later use raises BackendError (idempotent)."""
        with self._setup_lock:
            self._closed = True
        _close_all(self._connections)

    # -- transactions -----------------------------------------------------------------------

    def retry_busy(self, action: Callable[[], _T]) -> _T:
        """Run `action`, retrying with short growing sleeps while another process holds
        the lock, for at most `busy_timeout_seconds`.

        Raises:
            BackendError: any other SQLite error, or still locked at the deadline.
        """
        deadline = time.monotonic() + self.busy_timeout_seconds
        delay = 0.0001
        while True:
            try:
                return action()
            except sqlite3.OperationalError as exc:
                if is_read_only(exc):
                    raise BackendError(read_only_message(self.path, exc)) from exc
                if not is_busy(exc):
                    raise BackendError(f"SQLite error on {self.path}: {exc}") from exc
                if time.monotonic() >= deadline:
                    raise BackendError(
                        f"{self.path} stayed locked by another process for more than "
                        f"{self.busy_timeout_seconds}s; raise sqlite_busy_timeout_seconds or "
                        "look for a process holding a long transaction."
                    ) from exc
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.005)

    def write(
        self,
        body: Callable[[sqlite3.Connection], _T],
        conn: Optional[sqlite3.Connection] = None,
    ) -> _T:
        """Run `body` in one write transaction (on this thread's connection unless `conn` is
        given) and commit it; roll it all back if `body` raises.

        Raises:
            BackendError: a SQLite error (nothing of the transaction is stored).
        """
        if self.read_only:
            raise BackendError(
                f"{self.path} was opened read-only (for inspection), and this operation "
                "writes; open it without read_only to change it"
            )
        conn = conn if conn is not None else self.conn()
        with self._write_lock:
            self.retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                result = body(conn)
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if is_read_only(exc):
                    raise BackendError(read_only_message(self.path, exc)) from exc
                if isinstance(exc, sqlite3.Error):
                    raise BackendError(
                        f"a write to {self.path} failed and was rolled back (nothing of it "
                        f"is stored): {type(exc).__name__}: {exc}"
                    ) from exc
                raise
        return result

    def read(self, body: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run the reads of `body` on this thread's connection, each statement its own
        snapshot; the whole of `body` is run again while another process holds a lock."""
        conn = self.conn()
        return self.retry_busy(lambda: body(conn))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of one read statement."""
        conn = self.conn()
        return self.retry_busy(lambda: conn.execute(sql, params).fetchall())

    def read_snapshot(self, body: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run the reads of `body` in one read transaction: every statement sees the same
        snapshot (for counts that must add up)."""
        conn = self.conn()

        def consistent() -> _T:
            conn.execute("BEGIN")
            try:
                return body(conn)
            finally:
                conn.execute("COMMIT")

        return self.retry_busy(consistent)
