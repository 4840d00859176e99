"""One SQLite database as a process uses it: per-thread connections and the transactions on
them. The database is a file, or (`memory=True`) lives in this process's memory only.

Decisions, each for a reason:
- WAL journal: readers never block the one writer, so callers and workers poll cheaply.
- `synchronous=NORMAL` by default: a commit survives a crash of the process (the WAL is
  written), but the last commits may be lost on power loss; FULL fsyncs every commit.
- One long-lived connection per thread, reopened after a fork (a SQLite connection must never
  cross a fork); those of threads that ended are closed when the next thread opens one.
- A thread holds its connection's `in_use` lock while a call runs on it, and `close()` takes
  each of those locks before closing that connection: closing a connection under a statement
  another thread is running frees memory that statement still uses (Python 3.9 crashed on
  it). So `close()` waits for calls in progress, and a call that starts after it raises.
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
- `memory=True` (pynenc's Mem* components): `path` is a name, opened as SQLite's shared
  in-memory database `file:NAME?mode=memory&cache=shared`, which every connection of this
  process that opens the same name shares, and no other process can reach. It vanishes with
  its last connection, so one more connection is kept open from the start to `close()`.
  No file is written anywhere: no 0600 file, no WAL (nothing to survive a crash of the
  process that is the database's only home), no synchronous setting. Connections of a shared
  cache lock tables statement by statement, so here this process's reads wait on the same
  lock as its writes, and a transaction that still meets a locked table (another backend
  object on the same name) is rolled back and run again whole.

What it deliberately does not: hold any SQL about invocations (`claims.py`, `operations.py`),
or tell other processes about a commit (`feed.py`; the backend nudges after `write`).
"""

from __future__ import annotations

import logging
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

logger = logging.getLogger(__name__)

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


class _Held:
    """One thread's connection, and the lock that thread holds while a call runs on it."""

    __slots__ = ("thread", "conn", "in_use")

    def __init__(self, thread: threading.Thread, conn: sqlite3.Connection) -> None:
        self.thread = thread
        self.conn = conn
        # Held by `thread` during each call on `conn` (re-entrant: a call may make another),
        # and by whoever closes `conn`.
        self.in_use = threading.RLock()


def _close_all(connections: list[_Held], wait_seconds: float = 0.0) -> None:
    """Close and forget every connection in the list (best effort, idempotent), each once no
    call runs on it; one still in use after `wait_seconds` is left open (logged), never
    closed under its user."""
    while connections:
        held = connections.pop()
        if not held.in_use.acquire(timeout=wait_seconds):
            logger.warning(
                "left a SQLite connection of thread %s open: a call on it did not end",
                held.thread.name,
            )
            continue
        try:
            held.conn.close()
        except sqlite3.Error:  # pragma: no cover - closing is best effort
            pass
        finally:
            held.in_use.release()


class Database:
    """The connections of this process's threads to one SQLite database. Thread-safe.

    Raises:
        ValueError: `memory` with `read_only` (a database only this process has is empty).
        BackendError: the in-memory database cannot be opened.
    """

    def __init__(
        self,
        path: str,
        *,
        synchronous: str,
        busy_timeout_seconds: float,
        read_only: bool = False,
        memory: bool = False,
    ) -> None:
        if memory and read_only:
            raise ValueError("an in-memory database cannot be opened read_only: it would be empty")
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout_seconds = busy_timeout_seconds
        self.read_only = read_only
        self.memory = memory
        # This thread's connection (a _Held) and the pid that opened it (`held`, `pid`).
        self._local = threading.local()
        # Serializes this process's write transactions, so its threads wait on each other
        # here (woken at once) instead of in SQLite's sleeping busy handler.
        self._write_lock = threading.Lock()
        # Held while a thread opens its connection (closing orphans, listing the new one in
        # _connections, checking the schema once per process: _schema_ready_pid) and while
        # close() sets _closed and takes the list. Taken before _write_lock when both are
        # (the schema is created under it), never after; never taken while holding a
        # connection's in_use lock, nor the other way round.
        self._setup_lock = threading.Lock()
        self._schema_ready_pid: Optional[int] = None
        self._connections: list[_Held] = []
        self._closed = False
        # A database dropped without close() still closes its connections (Python 3.13 warns
        # about every connection left for the garbage collector). Not at interpreter exit:
        # finalizers run before other exit handlers, and closing a connection while a
        # daemon thread is inside a call on it crashes the process.
        weakref.finalize(self, _close_all, self._connections).atexit = False
        # In memory: the connection that keeps the database alive until close() (no thread
        # uses it, so it is never an orphan).
        self._keeper: list[_Held] = []
        if memory:
            self._keeper.append(_Held(threading.current_thread(), self._connect_memory()))
            weakref.finalize(self, _close_all, self._keeper).atexit = False

    # -- connections ------------------------------------------------------------------------

    def conn(self) -> sqlite3.Connection:
        """This thread's connection, opened (and the schema checked) on first use. Only for
        one-off reads in tests: a call through `read`, `query` or `write` is safe against a
        concurrent `close()`, direct use of this connection is not.

        Raises:
            BackendError: the database was closed, or the file cannot be opened.
        """
        return self._held().conn

    def _held(self) -> _Held:
        local = self._local
        held: Optional[_Held] = getattr(local, "held", None)
        if self._closed:
            raise BackendError(f"the backend for {self.path} was closed; make a new one")
        if held is not None and local.pid == os.getpid():
            return held
        held = self._open()
        local.held, local.pid = held, os.getpid()
        return held

    def _enter(self) -> sqlite3.Connection:
        """This thread's connection with its in_use lock taken (release with `_leave`).

        Raises:
            BackendError: the database was closed (also while waiting for the lock).
        """
        held = self._held()
        held.in_use.acquire()
        # close() sets _closed before it takes any in_use lock: if it is still unset now,
        # close() will wait for this call to end before closing the connection.
        if self._closed:
            held.in_use.release()
            raise BackendError(f"the backend for {self.path} was closed; make a new one")
        return held.conn

    def _leave(self) -> None:
        self._local.held.in_use.release()

    def _close_orphans(self) -> None:
        """Close the connections of threads that have ended (caller holds _setup_lock).

        Each thread gets its own connection; a program that starts a thread per request
        would otherwise keep one open file per finished thread until close().
        """
        alive = []
        for held in self._connections:
            if held.thread.is_alive() or held.thread.ident is None:
                alive.append(held)
            else:
                held.conn.close()  # its thread ended: nobody can be using it
        self._connections[:] = alive  # in place: the finalizer holds this list

    def _register(self, conn: sqlite3.Connection, check_schema: Callable[[], object]) -> _Held:
        """List `conn` as this thread's, after checking the schema once per process; close
        it instead when the database was closed meanwhile or the check fails.

        Raises:
            BackendError: the database was closed, or the schema check failed.
        """
        try:
            with self._setup_lock:
                # Closed between this thread's check and now: a connection listed after
                # close() took the list would never be closed.
                if self._closed:
                    raise BackendError(f"the backend for {self.path} was closed; make a new one")
                if self._schema_ready_pid != os.getpid():
                    # Once per process, before any other statement of it touches the schema.
                    check_schema()
                    self._schema_ready_pid = os.getpid()
                self._close_orphans()
                held = _Held(threading.current_thread(), conn)
                self._connections.append(held)
        except BaseException:
            conn.close()
            raise
        return held

    def _open(self) -> _Held:
        if self.read_only:
            return self._open_read_only()
        if self.memory:
            conn = self._connect_memory()
            return self._register(
                conn, lambda: self.write(lambda c: schema.create(c, self.path), conn)
            )
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

        def create_schema() -> None:
            self.retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone())
            self.write(lambda c: schema.create(c, self.path), conn)

        return self._register(conn, create_schema)

    def _open_read_only(self) -> _Held:
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
        except BaseException:
            conn.close()
            raise
        return self._register(conn, lambda: self.retry_busy(lambda: schema.check(conn, self.path)))

    def _connect_memory(self) -> sqlite3.Connection:
        return self._connect_uri(
            "file:" + urllib.parse.quote(self.path) + "?mode=memory&cache=shared"
        )

    def _connect_uri(self, uri: str) -> sqlite3.Connection:
        """A connection to `uri`: the in-memory database, or the file opened read-only."""
        try:
            return sqlite3.connect(
                uri, uri=True, timeout=0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            if self.memory:
                raise BackendError(
                    f"cannot open the in-memory SQLite database {self.path!r}: {exc}"
                ) from exc
            raise BackendError(
                f"cannot open the SQLite database at {self.path!r} to read it: {exc}. Check "
                "that the file exists and that this process may read it."
            ) from exc

    def close(self) -> None:
        """Close every connection, each once the call running on it (if any) has ended; any
        later use raises BackendError (idempotent). A call that does not end within
        `busy_timeout_seconds` (plus a margin) keeps its connection open, logged."""
        with self._setup_lock:
            self._closed = True
            connections = self._connections[:]
            self._connections.clear()
        _close_all(connections, self.busy_timeout_seconds + 5.0)
        _close_all(self._keeper)  # last: an in-memory database is freed with it

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
        if conn is None:
            conn = self._enter()
            try:
                return self._transaction(conn, body)
            finally:
                self._leave()
        return self._transaction(conn, body)  # a connection being set up: nobody else has it

    def _transaction(
        self, conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], _T]
    ) -> _T:
        with self._write_lock:
            if self.memory:
                # A statement may still meet a table locked by another connection of the
                # shared cache: the whole transaction runs again (bodies only run SQL).
                return self.retry_busy(lambda: self._run_transaction(conn, body))
            return self._run_transaction(conn, body)

    def _run_transaction(
        self, conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], _T]
    ) -> _T:
        self.retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"))
        try:
            result = body(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if self.memory and isinstance(exc, sqlite3.OperationalError) and is_busy(exc):
                raise  # _transaction runs it again
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
        conn = self._enter()
        try:
            if self.memory:  # see the module docstring: a read would meet locked tables
                with self._write_lock:
                    return self.retry_busy(lambda: body(conn))
            return self.retry_busy(lambda: body(conn))
        finally:
            self._leave()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of one read statement."""
        return self.read(lambda conn: conn.execute(sql, params).fetchall())

    def read_snapshot(self, body: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run the reads of `body` in one read transaction: every statement sees the same
        snapshot (for counts that must add up)."""

        def consistent(conn: sqlite3.Connection) -> _T:
            conn.execute("BEGIN")
            try:
                return body(conn)
            finally:
                conn.execute("COMMIT")

        return self.read(consistent)
