"""The default backend: one SQLite file, shared by every process on one host.

Decisions, each for a reason:
- WAL journal: readers never block the one writer, so callers and workers poll cheaply.
- `synchronous=NORMAL` by default: a commit survives a crash of the process (the WAL is
  written), but the last commits may be lost on power loss; FULL fsyncs every commit.
- One long-lived connection per thread, reopened after a fork (a SQLite connection must never
  cross a fork).
- Every write is `BEGIN IMMEDIATE ... COMMIT`, so a transaction takes the write lock at its
  start and never has to be retried half-way. Threads of one process queue on a Python lock
  instead of SQLite's busy handler (which sleeps in whole milliseconds); other processes are
  waited for with short, growing sleeps up to `busy_timeout_seconds`.
- Every status change is a conditional UPDATE built from `status.sources_of()`; no Python
  read-then-write decides a transition.
- Every final outcome takes the next number of the `outcome` counter, so a watcher can ask
  "what finished since N?" with one indexed query.
- The file is created with mode 0600: its payloads are pickles, and loading a pickle runs code.

Cross-process change detection uses `PRAGMA data_version`, which reads no table: it changes
on a connection when another connection commits. `wait_for_change` polls it, starting at
`poll_min_seconds` and backing off. On Linux the waiting thread also names a datagram socket
in the `listeners` table and sleeps on it; every commit nudges the other listeners
(`wakeup.py`), so the back-off may go up to a second while a commit still wakes the waiter
within microseconds. Without nudges the back-off stops at `poll_max_seconds`.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
import random
import sqlite3
import threading
import time
import weakref
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar

from pynenc_lite.backend import wakeup
from pynenc_lite.backend.base import (
    AppStats,
    Backend,
    ClaimedInvocation,
    HistoryEntry,
    InvocationRecord,
    NewInvocation,
    Outcome,
    WorkerInfo,
    WorkerStatus,
)
from pynenc_lite.errors import BackendError
from pynenc_lite.status import (
    CLAIMABLE_STATUSES,
    LEASED_STATUSES,
    InvocationStatus,
    sources_of,
)

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "2"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters (name, value) VALUES ('outcome', 0);
CREATE TABLE IF NOT EXISTS invocations (
    seq INTEGER PRIMARY KEY,            -- insertion order: claims are first in, first out
    id TEXT NOT NULL UNIQUE,
    app_id TEXT NOT NULL,
    task_name TEXT NOT NULL,
    args BLOB NOT NULL,
    status TEXT NOT NULL,
    owner TEXT,                         -- worker holding the claim
    lease_expires_at REAL,              -- set exactly while RUNNING
    run_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lost_attempts INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    registration_key TEXT,              -- concurrency control, see options.py
    running_key TEXT,
    running_limit INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    result BLOB,
    error TEXT,
    traceback TEXT,
    outcome_seq INTEGER                 -- set when final (see get_finished_since)
);
-- Only waiting rows, one index per waiting status (queries name the status literally, so
-- SQLite can match them): a claim removes a row; finishing never touches these indexes.
CREATE INDEX IF NOT EXISTS ix_invocations_registered ON invocations (app_id, run_at)
    WHERE status = 'REGISTERED';
CREATE INDEX IF NOT EXISTS ix_invocations_retry ON invocations (app_id, run_at)
    WHERE status = 'RETRY';
CREATE INDEX IF NOT EXISTS ix_invocations_lease
    ON invocations (app_id, lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS ix_invocations_outcome
    ON invocations (outcome_seq) WHERE outcome_seq IS NOT NULL;
CREATE INDEX IF NOT EXISTS ix_invocations_finished
    ON invocations (app_id, finished_at) WHERE finished_at IS NOT NULL;
-- Concurrency keys, only while they matter (waiting, running): a key's finished history
-- must not make each submit or claim slower.
CREATE INDEX IF NOT EXISTS ix_invocations_waiting_key ON invocations (app_id, registration_key)
    WHERE registration_key IS NOT NULL AND status = 'REGISTERED';
CREATE INDEX IF NOT EXISTS ix_invocations_running_key ON invocations (app_id, running_key)
    WHERE running_key IS NOT NULL AND status = 'RUNNING';
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY,
    invocation_id TEXT NOT NULL,
    status TEXT NOT NULL,
    at REAL NOT NULL,
    worker_id TEXT
);
CREATE INDEX IF NOT EXISTS ix_history_invocation ON history (invocation_id);
CREATE TABLE IF NOT EXISTS cron_state (
    app_id TEXT NOT NULL,
    task_name TEXT NOT NULL,
    moment REAL NOT NULL,               -- the latest scheduled moment already handled
    PRIMARY KEY (app_id, task_name)
);
CREATE TABLE IF NOT EXISTS listeners (
    name TEXT PRIMARY KEY,              -- a waiting process's nudge socket (see wakeup.py)
    pid INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    hostname TEXT NOT NULL,
    pid INTEGER NOT NULL,
    threads INTEGER NOT NULL,
    started_at REAL NOT NULL,
    last_heartbeat_at REAL NOT NULL
);
"""

_T = TypeVar("_T")

# With nudges (wakeup.py), a waiter polls this rarely: the nudge ends its sleep at once.
_NUDGED_POLL_MAX_SECONDS = 1.0
# Commits closer together than this share one nudge.
_NUDGE_SPACING_SECONDS = 0.002
# How often a committing process re-reads the names of the listeners it nudges.
_LISTENERS_REFRESH_SECONDS = 0.2
# Safety-net size of the WAL, in pages, before a commit checkpoints it itself.
_AUTOCHECKPOINT_PAGES = 20000
# Size the WAL file is truncated to once a checkpoint has emptied it.
_WAL_SIZE_LIMIT_BYTES = 16 * 1024 * 1024
# How deep a claim looks past invocations held back by their running limit.
_MAX_CLAIM_SCAN = 4096
# SQLite's default limit on host parameters was 999 before 3.32; stay under it.
_MAX_PARAMS = 900

# Waiting statuses are written into the SQL text, not bound: only then can SQLite use the
# partial index of that status (it cannot prove a bound parameter satisfies an index WHERE).
_CLAIMABLE = tuple(sorted(s.value for s in CLAIMABLE_STATUSES))
_LEASED = tuple(sorted(s.value for s in LEASED_STATUSES))
# Statuses each transition may start from, as SQL parameters (from status.py, the one place
# that defines the model).
_FROM = {status: sources_of(status) for status in InvocationStatus}


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _chunks(items: Sequence[_T], size: int = _MAX_PARAMS) -> Iterator[Sequence[_T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


_RECORD_COLUMNS = (
    "id, app_id, task_name, status, attempts, lost_attempts, retries, owner, "
    "lease_expires_at, run_at, created_at, started_at, finished_at, error, traceback"
)


def _record(row: Sequence[Any]) -> InvocationRecord:
    return InvocationRecord(row[0], row[1], row[2], InvocationStatus(row[3]), *row[4:])


def _log(c: sqlite3.Connection, entries: Sequence[tuple[str, str, float, Optional[str]]]) -> None:
    """Append (invocation id, status, time, worker) rows to the status history."""
    c.executemany(
        "INSERT INTO history (invocation_id, status, at, worker_id) VALUES (?, ?, ?, ?)", entries
    )


def _close_connections(connections: list[tuple[threading.Thread, sqlite3.Connection]]) -> None:
    """Close and forget every connection in the list (best effort, idempotent)."""
    while connections:
        _, conn = connections.pop()
        try:
            conn.close()
        except sqlite3.Error:  # pragma: no cover - closing is best effort
            pass


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class SQLiteBackend(Backend):
    """A `Backend` on one SQLite file. Safe to use from many threads and processes."""

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "NORMAL",
        busy_timeout_seconds: float = 30.0,
        poll_min_seconds: float = 0.0005,
        poll_max_seconds: float = 0.1,
    ) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        self.path = os.path.abspath(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout_seconds = busy_timeout_seconds
        self.poll_min_seconds = poll_min_seconds
        self.poll_max_seconds = poll_max_seconds
        self._local = threading.local()
        # Serializes this process's write transactions, so its threads wait on each other
        # here (woken at once) instead of in SQLite's sleeping busy handler.
        self._write_lock = threading.Lock()
        # Guards _schema_ready_pid and _connections.
        self._setup_lock = threading.Lock()
        self._schema_ready_pid: Optional[int] = None
        self._connections: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._closed = False
        # Nudges between processes (wakeup.py); the listener belongs to the one thread that
        # waits with it (the hub's watcher), the nudger is shared.
        self._wakeup_prefix = "pynenc-lite." + hashlib.sha1(self.path.encode()).hexdigest()[:12]
        self._listener: Optional[wakeup.Listener] = None
        self._listener_owner: Optional[tuple[int, int]] = None  # (pid, thread id)
        self._nudger: Optional[wakeup.Nudger] = None
        self._peers: list[str] = []  # listener names to nudge, as last read
        self._peers_read_at = -1e9
        self._nudged_at = -1e9
        # A backend dropped without close() still closes its connections (Python 3.13 warns
        # about every connection left for the garbage collector). Not at interpreter exit:
        # finalizers run before other exit handlers, and closing a connection while a
        # daemon thread is inside a call on it crashes the process.
        weakref.finalize(self, _close_connections, self._connections).atexit = False

    def __repr__(self) -> str:
        return f"SQLiteBackend({self.path!r})"

    # -- connections ------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
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
        try:
            if not os.path.exists(self.path):
                # Create it private before SQLite does: payloads are pickles. SQLite gives
                # the -wal and -shm files the same permissions as the main file.
                os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            conn = sqlite3.connect(
                self.path, timeout=0, isolation_level=None, check_same_thread=False
            )
            # Busy while another process sets the file up (schema, WAL switch): wait.
            self._retry_busy(lambda: conn.execute(f"PRAGMA synchronous={self.synchronous}"))
            # Checkpoints are done by maintain() from the watcher thread; a commit copies the
            # WAL back itself only as a safety net when nobody has for a long while (the
            # default, 1,000 pages, made every ~80th call pay a 4 ms checkpoint).
            conn.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT_PAGES}")
            # After a checkpoint empties it, the WAL file is cut back to this size.
            conn.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT_BYTES}")
        except (OSError, sqlite3.Error) as exc:
            raise BackendError(
                f"cannot open the SQLite database at {self.path!r}: {exc}. Check that its "
                "folder exists and is writable, or point sqlite_db_path "
                "(PYNENC__SQLITE_DB_PATH) somewhere that is."
            ) from exc
        with self._setup_lock:
            self._close_orphans()
            self._connections.append((threading.current_thread(), conn))
            if self._schema_ready_pid != os.getpid():
                self._create_schema(conn)
                self._schema_ready_pid = os.getpid()
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        def setup(c: sqlite3.Connection) -> None:
            # The version first: an older layout must get this message, not a failure of
            # one of the statements below.
            c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                c.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise BackendError(
                    f"{self.path} was written with schema version {row[0]}, this "
                    f"pynenc_lite uses {SCHEMA_VERSION}; use a new sqlite_db_path or the "
                    "matching pynenc_lite version."
                )
            # Statement by statement: executescript() would commit our transaction first.
            for statement in _SCHEMA.split(";\n"):
                if statement.strip():
                    c.execute(statement)

        self._retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone())
        self._write_txn(setup, conn, nudge=False)  # a nudge would reopen this connection

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None and self._listener_owner is not None:
            if self._listener_owner[0] == os.getpid():
                try:
                    self._write_txn(
                        lambda c: c.execute(
                            "DELETE FROM listeners WHERE name = ?", (listener.name,)
                        ),
                        nudge=False,
                    )
                except Exception:
                    pass  # others drop the name when a nudge to it fails
            listener.close()
        if self._nudger is not None:
            self._nudger.close()
            self._nudger = None
        with self._setup_lock:
            self._closed = True
        _close_connections(self._connections)

    # -- transactions -----------------------------------------------------------------------

    def _retry_busy(self, action: Callable[[], _T]) -> _T:
        """Run `action`, retrying with short growing sleeps while another process holds
        the lock, for at most `busy_timeout_seconds`."""
        deadline = time.monotonic() + self.busy_timeout_seconds
        delay = 0.0001
        while True:
            try:
                return action()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise BackendError(f"SQLite error on {self.path}: {exc}") from exc
                if time.monotonic() >= deadline:
                    raise BackendError(
                        f"{self.path} stayed locked by another process for more than "
                        f"{self.busy_timeout_seconds}s; raise sqlite_busy_timeout_seconds or "
                        "look for a process holding a long transaction."
                    ) from exc
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.005)

    def _write_txn(
        self,
        body: Callable[[sqlite3.Connection], _T],
        conn: Optional[sqlite3.Connection] = None,
        nudge: bool = True,
    ) -> _T:
        conn = conn if conn is not None else self._conn()
        with self._write_lock:
            self._retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                result = body(conn)
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise BackendError(
                        f"a write to {self.path} failed and was rolled back (nothing of it "
                        f"is stored): {type(exc).__name__}: {exc}"
                    ) from exc
                raise
        if nudge and wakeup.AVAILABLE:
            self._nudge_peers()
        return result

    def _nudge_peers(self) -> None:
        """Tell the other waiting processes that something was committed (best effort)."""
        try:
            now = time.monotonic()
            if now - self._nudged_at < _NUDGE_SPACING_SECONDS:
                # Nudged a moment ago: the others were woken then and, having just seen a
                # change, poll quickly for a while; under load this saves a nudge a commit.
                return
            self._nudged_at = now
            if now - self._peers_read_at > _LISTENERS_REFRESH_SECONDS:
                own = self._listener.name if self._listener is not None else None
                rows = self._read("SELECT name FROM listeners")
                self._peers = [row[0] for row in rows if row[0] != own]
                self._peers_read_at = now
            if not self._peers:
                return
            if self._nudger is None:
                self._nudger = wakeup.Nudger()
            gone = self._nudger.nudge(self._peers)
            if gone:
                self._peers = [name for name in self._peers if name not in gone]
                self._write_txn(
                    lambda c: c.executemany(
                        "DELETE FROM listeners WHERE name = ?", [(name,) for name in gone]
                    ),
                    nudge=False,
                )
        except Exception:
            # Nudges only speed waiting up; polling still notices every change.
            logger.debug("nudging other processes failed", exc_info=True)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = self._conn()
        return self._retry_busy(lambda: conn.execute(sql, params).fetchall())

    # -- callers ----------------------------------------------------------------------------

    def submit(self, invocations: Sequence[NewInvocation]) -> list[str]:
        if not invocations:
            return []
        return self._write_txn(lambda c: self._insert(c, invocations))

    @staticmethod
    def _insert(c: sqlite3.Connection, invocations: Sequence[NewInvocation]) -> list[str]:
        """Insert, except where a registration key matches an invocation still waiting:
        then that one's id stands for the call. Runs inside the caller's write transaction,
        so no other process can register the same key in between."""
        ids = []
        new = []
        for i in invocations:
            if i.registration_key is not None:
                # Only one that will start no later than this call would: a call must not
                # silently wait for a delayed one (call_later) that is due long after.
                row = c.execute(
                    "SELECT id FROM invocations WHERE app_id = ? AND registration_key = ? "
                    "AND status = 'REGISTERED' AND run_at <= ? LIMIT 1",
                    (i.app_id, i.registration_key, i.run_at),
                ).fetchone()
                if row is not None:
                    ids.append(row[0])
                    continue
                c.execute(  # inserted one by one: a later call of the batch may match it
                    "INSERT INTO invocations (id, app_id, task_name, args, status, run_at, "
                    "created_at, registration_key, running_key, running_limit) "
                    "VALUES (?, ?, ?, ?, 'REGISTERED', ?, ?, ?, ?, ?)",
                    (i.invocation_id, i.app_id, i.task_name, i.args, i.run_at, i.created_at,
                     i.registration_key, i.running_key, i.running_limit),
                )
                ids.append(i.invocation_id)
                continue
            new.append(i)
            ids.append(i.invocation_id)
        c.executemany(
            "INSERT INTO invocations (id, app_id, task_name, args, status, run_at, created_at, "
            "running_key, running_limit) VALUES (?, ?, ?, ?, 'REGISTERED', ?, ?, ?, ?)",
            [
                (i.invocation_id, i.app_id, i.task_name, i.args, i.run_at, i.created_at,
                 i.running_key, i.running_limit)
                for i in new
            ],
        )
        # No history row here: the first entry, REGISTERED at created_at, is read from the
        # invocation itself (see get_history), which saves a write per call.
        return ids

    def get_outcomes(self, invocation_ids: Sequence[str]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for chunk in _chunks(invocation_ids):
            rows = self._read(
                "SELECT id, status, result, error, traceback FROM invocations "
                f"WHERE outcome_seq IS NOT NULL AND id IN ({_marks(len(chunk))})",
                chunk,
            )
            outcomes.extend(
                Outcome(row[0], InvocationStatus(row[1]), row[2], row[3], row[4]) for row in rows
            )
        return outcomes

    def get_finished_since(self, seq: int) -> tuple[int, list[str]]:
        if seq < 0:
            row = self._read("SELECT value FROM counters WHERE name='outcome'")
            return int(row[0][0]), []
        rows = self._read(
            "SELECT outcome_seq, id FROM invocations WHERE outcome_seq > ? ORDER BY outcome_seq",
            (seq,),
        )
        if not rows:
            return seq, []
        return int(rows[-1][0]), [row[1] for row in rows]

    def get_invocation(self, invocation_id: str) -> Optional[InvocationRecord]:
        rows = self._read(
            f"SELECT {_RECORD_COLUMNS} FROM invocations WHERE id = ?", (invocation_id,)
        )
        return _record(rows[0]) if rows else None

    def count_live_workers(self, app_id: str, since: float) -> int:
        rows = self._read(
            "SELECT COUNT(*) FROM workers WHERE app_id = ? AND last_heartbeat_at >= ?",
            (app_id, since),
        )
        return int(rows[0][0])

    # -- runners ----------------------------------------------------------------------------

    def _has_runnable(self, app_id: str, now: float) -> bool:
        rows = self._read(
            "SELECT "
            + " OR ".join(
                f"EXISTS (SELECT 1 FROM invocations WHERE app_id = ? AND status = '{status}' "
                "AND run_at <= ?)"
                for status in _CLAIMABLE
            )
            + " OR EXISTS (SELECT 1 FROM invocations WHERE app_id = ? AND lease_expires_at < ?)",
            (*[app_id, now] * len(_CLAIMABLE), app_id, now),
        )
        return bool(rows[0][0])

    def next_run_at(self, app_id: str) -> Optional[float]:
        found = [
            self._read(
                f"SELECT MIN(run_at) FROM invocations WHERE app_id = ? AND status = '{status}'",
                (app_id,),
            )[0][0]
            for status in _CLAIMABLE
        ]
        times = [t for t in found if t is not None]
        return min(times) if times else None

    def claim(
        self,
        *,
        app_id: str,
        worker_id: str,
        limit: int,
        now: float,
        lease_seconds: float,
        max_lost_attempts: int,
    ) -> list[ClaimedInvocation]:
        if limit <= 0 or not self._has_runnable(app_id, now):
            return []  # the common idle case costs one read and no write lock

        def body(c: sqlite3.Connection) -> list[ClaimedInvocation]:
            expired = c.execute(
                "SELECT seq, lost_attempts FROM invocations "
                "WHERE app_id = ? AND lease_expires_at < ? LIMIT ?",
                (app_id, now, limit),
            ).fetchall()
            lost_for_good = [seq for seq, lost in expired if lost + 1 >= max_lost_attempts]
            if lost_for_good:
                self._fail_lost(c, lost_for_good, max_lost_attempts, now)
            recovered = [seq for seq, lost in expired if lost + 1 < max_lost_attempts]
            seqs = recovered + self._claimable(c, app_id, now, limit - len(recovered))
            if not seqs:
                return []
            if recovered:
                logger.warning(
                    "worker %s reclaims %d invocation(s) whose worker stopped heartbeating",
                    worker_id,
                    len(recovered),
                )
                c.execute(
                    "UPDATE invocations SET lost_attempts = lost_attempts + 1 "
                    f"WHERE seq IN ({_marks(len(recovered))})",
                    recovered,
                )
            c.execute(
                "UPDATE invocations SET status = 'RUNNING', owner = ?, lease_expires_at = ?, "
                f"attempts = attempts + 1, started_at = ? WHERE seq IN ({_marks(len(seqs))})",
                (worker_id, now + lease_seconds, now, *seqs),
            )
            rows = c.execute(
                "SELECT id, task_name, args, attempts, retries FROM invocations "
                f"WHERE seq IN ({_marks(len(seqs))}) ORDER BY run_at, seq",
                seqs,
            ).fetchall()
            _log(c, [(row[0], "RUNNING", now, worker_id) for row in rows])
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "worker %s claimed %d invocation(s) (%d recovered from lost workers), "
                    "leased until %.3f",
                    worker_id, len(rows), len(recovered), now + lease_seconds,
                )
            return [ClaimedInvocation(*row) for row in rows]

        return self._write_txn(body)

    @staticmethod
    def _claimable(c: sqlite3.Connection, app_id: str, now: float, limit: int) -> list[int]:
        """Up to `limit` runnable waiting invocations, oldest first, skipping those whose
        running key already has `running_limit` invocations running."""
        if limit <= 0:
            return []

        def waiting(status: str) -> Iterator[tuple[float, int, Optional[str], int]]:
            # Oldest first, one indexed query per page; each status keeps its own place.
            offset, page = 0, limit
            while offset < _MAX_CLAIM_SCAN:
                rows = c.execute(
                    "SELECT run_at, seq, running_key, running_limit FROM invocations WHERE "
                    f"app_id = ? AND status = '{status}' AND run_at <= ? "
                    "ORDER BY run_at, seq LIMIT ? OFFSET ?",
                    (app_id, now, page, offset),
                ).fetchall()
                yield from rows
                if len(rows) < page:
                    return
                # Some were held back by their running limit: look further down the queue.
                offset, page = offset + page, max(page * 2, 64)

        chosen: list[int] = []
        running: dict[str, int] = {}  # running key -> how many run, counting this claim
        for _, seq, key, key_limit in heapq.merge(*(waiting(s) for s in _CLAIMABLE)):
            if key is not None:
                if key not in running:
                    running[key] = c.execute(
                        "SELECT COUNT(*) FROM invocations WHERE app_id = ? AND "
                        "running_key = ? AND status = 'RUNNING'",
                        (app_id, key),
                    ).fetchone()[0]
                if running[key] >= key_limit:
                    continue  # waits its turn; a finishing one lets it through
                running[key] += 1
            chosen.append(seq)
            if len(chosen) == limit:
                break
        return chosen

    def _fail_lost(
        self, c: sqlite3.Connection, seqs: list[int], max_lost_attempts: int, now: float
    ) -> None:
        error = (
            f"WorkerLostError: the worker running this invocation vanished "
            f"{max_lost_attempts} time(s) (killed, crashed or its host stopped), so it is not "
            "tried again. If the task itself ends its process (os._exit, a crash in C code, "
            "running out of memory), fix that; raise max_lost_attempts to allow more tries."
        )
        first = self._take_outcome_seqs(c, len(seqs))
        c.executemany(
            "UPDATE invocations SET status = 'FAILED', owner = NULL, lease_expires_at = NULL, "
            "lost_attempts = lost_attempts + 1, finished_at = ?, error = ?, result = NULL, "
            "outcome_seq = ? WHERE seq = ?",
            [(now, error, first + i, seq) for i, seq in enumerate(seqs)],
        )
        ids = c.execute(f"SELECT id FROM invocations WHERE seq IN ({_marks(len(seqs))})", seqs)
        _log(c, [(row[0], "FAILED", now, None) for row in ids.fetchall()])
        logger.error("%d invocation(s) failed: %s", len(seqs), error)

    @staticmethod
    def _take_outcome_seqs(c: sqlite3.Connection, count: int) -> int:
        """Reserve `count` outcome sequence numbers; returns the first."""
        c.execute("UPDATE counters SET value = value + ? WHERE name = 'outcome'", (count,))
        last = int(c.execute("SELECT value FROM counters WHERE name = 'outcome'").fetchone()[0])
        return last - count + 1

    def complete_many(self, outcomes: Sequence[Outcome], worker_id: str, now: float) -> list[bool]:
        for outcome in outcomes:
            if not (outcome.status.is_final() or outcome.status is InvocationStatus.RETRY):
                raise ValueError(f"cannot complete with status {outcome.status}")
            if outcome.status is InvocationStatus.RETRY and outcome.retry_at is None:
                raise ValueError("a RETRY outcome needs retry_at")

        def body(c: sqlite3.Connection) -> list[bool]:
            # A refused outcome leaves a gap in the sequence; watchers do not mind gaps.
            finals = sum(o.status.is_final() for o in outcomes)
            seq = self._take_outcome_seqs(c, finals) if finals else 0
            accepted = []
            for outcome in outcomes:
                sources = _FROM[outcome.status]
                if outcome.status is InvocationStatus.RETRY:
                    cur = c.execute(
                        "UPDATE invocations SET status = 'RETRY', owner = NULL, "
                        "lease_expires_at = NULL, run_at = ?, retries = retries + 1, "
                        "error = ?, traceback = ? WHERE id = ? AND owner = ? AND status IN "
                        f"({_marks(len(sources))})",
                        (
                            outcome.retry_at,
                            outcome.error,
                            outcome.traceback,
                            outcome.invocation_id,
                            worker_id,
                            *sources,
                        ),
                    )
                else:
                    cur = c.execute(
                        "UPDATE invocations SET status = ?, owner = NULL, lease_expires_at = "
                        "NULL, result = ?, error = ?, traceback = ?, finished_at = ?, "
                        "outcome_seq = ? WHERE id = ? AND owner = ? AND status IN "
                        f"({_marks(len(sources))})",
                        (
                            outcome.status.value,
                            outcome.payload,
                            outcome.error,
                            outcome.traceback,
                            now,
                            seq,
                            outcome.invocation_id,
                            worker_id,
                            *sources,
                        ),
                    )
                    seq += 1
                accepted.append(cur.rowcount > 0)
            _log(
                c,
                [
                    (o.invocation_id, o.status.value, now, worker_id)
                    for o, ok in zip(outcomes, accepted)
                    if ok
                ],
            )
            return accepted

        if not outcomes:
            return []
        flags = self._write_txn(body)
        for outcome, ok in zip(outcomes, flags):
            if not ok:
                logger.warning(
                    "ignored a late %s outcome for invocation %s from worker %s: it no longer "
                    "holds the claim (cancelled, failed for its time limit, or its lease "
                    "expired and another worker took it over)",
                    outcome.status,
                    outcome.invocation_id,
                    worker_id,
                )
        return flags

    def cancel(self, invocation_id: str, now: float) -> bool:
        sources = _FROM[InvocationStatus.CANCELLED]

        def body(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE invocations SET status = 'CANCELLED', owner = NULL, lease_expires_at = "
                "NULL, finished_at = ?, error = ?, outcome_seq = ? WHERE id = ? AND status IN "
                f"({_marks(len(sources))})",
                (
                    now,
                    "InvocationCancelledError: cancelled",
                    self._take_outcome_seqs(c, 1),
                    invocation_id,
                    *sources,
                ),
            )
            if cur.rowcount == 0:
                return False
            _log(c, [(invocation_id, "CANCELLED", now, None)])
            return True

        return self._write_txn(body)

    def get_cron_moment(self, app_id: str, task_name: str) -> Optional[float]:
        rows = self._read(
            "SELECT moment FROM cron_state WHERE app_id = ? AND task_name = ?",
            (app_id, task_name),
        )
        return float(rows[0][0]) if rows else None

    def advance_cron(
        self,
        app_id: str,
        task_name: str,
        expected: Optional[float],
        moment: float,
        invocations: Sequence[NewInvocation],
    ) -> bool:
        def body(c: sqlite3.Connection) -> bool:
            if expected is None:
                cur = c.execute(
                    "INSERT OR IGNORE INTO cron_state (app_id, task_name, moment) VALUES (?, ?, ?)",
                    (app_id, task_name, moment),
                )
            else:
                cur = c.execute(
                    "UPDATE cron_state SET moment = ? WHERE app_id = ? AND task_name = ? "
                    "AND moment = ?",
                    (moment, app_id, task_name, expected),
                )
            if cur.rowcount == 0:
                return False  # another worker handled these moments first
            self._insert(c, invocations)
            return True

        return self._write_txn(body)

    def release(self, worker_id: str, now: float) -> int:
        sources = _FROM[InvocationStatus.REGISTERED]

        def body(c: sqlite3.Connection) -> int:
            # `lease_expires_at IS NOT NULL` lets SQLite use the small partial lease index.
            held = "lease_expires_at IS NOT NULL AND owner = ? AND status IN "
            params = (worker_id, *sources)
            ids = c.execute(
                f"SELECT id FROM invocations WHERE {held}({_marks(len(sources))})", params
            ).fetchall()
            c.execute(
                "UPDATE invocations SET status = 'REGISTERED', owner = NULL, lease_expires_at "
                f"= NULL WHERE {held}({_marks(len(sources))})",
                params,
            )
            _log(c, [(row[0], "REGISTERED", now, worker_id) for row in ids])
            return len(ids)

        return self._write_txn(body)

    def expire_leases(self, worker_id: str) -> int:
        def body(c: sqlite3.Connection) -> int:
            cur = c.execute(
                "UPDATE invocations SET lease_expires_at = 0 "
                "WHERE lease_expires_at IS NOT NULL AND owner = ?",
                (worker_id,),
            )
            c.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))
            return int(cur.rowcount)

        return self._write_txn(body)

    def heartbeat(
        self, worker: WorkerInfo, running: Sequence[str], now: float, lease_seconds: float
    ) -> list[str]:
        def body(c: sqlite3.Connection) -> list[str]:
            c.execute(
                "INSERT INTO workers (worker_id, app_id, hostname, pid, threads, started_at, "
                "last_heartbeat_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (worker_id) "
                "DO UPDATE SET last_heartbeat_at = excluded.last_heartbeat_at",
                (
                    worker.worker_id,
                    worker.app_id,
                    worker.hostname,
                    worker.pid,
                    worker.threads,
                    worker.started_at,
                    now,
                ),
            )
            # Only the leases of what the worker says it runs: a claim whose reply never
            # reached it (a lost network reply) must expire, not be kept alive for ever.
            for chunk in _chunks(running):
                c.execute(
                    "UPDATE invocations SET lease_expires_at = ? WHERE app_id = ? AND "
                    "lease_expires_at IS NOT NULL AND owner = ? AND status IN "
                    f"({_marks(len(_LEASED))}) AND id IN ({_marks(len(chunk))})",
                    (now + lease_seconds, worker.app_id, worker.worker_id, *_LEASED, *chunk),
                )
            lost = []
            for chunk in _chunks(running):
                lost += [
                    row[0]
                    for row in c.execute(
                        f"SELECT id FROM invocations WHERE id IN ({_marks(len(chunk))}) AND "
                        "(owner IS NULL OR owner != ? OR status != 'RUNNING')",
                        (*chunk, worker.worker_id),
                    )
                ]
            return lost

        return self._write_txn(body)

    def remove_worker(self, worker_id: str) -> None:
        self._write_txn(
            lambda c: c.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))
        )

    # -- operations -------------------------------------------------------------------------

    def get_history(self, invocation_id: str) -> list[HistoryEntry]:
        created = self._read("SELECT created_at FROM invocations WHERE id = ?", (invocation_id,))
        if not created:
            return []
        rows = self._read(
            "SELECT status, at, worker_id FROM history WHERE invocation_id = ? ORDER BY seq",
            (invocation_id,),
        )
        return [HistoryEntry(InvocationStatus.REGISTERED, created[0][0], None)] + [
            HistoryEntry(InvocationStatus(r[0]), r[1], r[2]) for r in rows
        ]

    def get_args(self, invocation_id: str) -> Optional[bytes]:
        rows = self._read("SELECT args FROM invocations WHERE id = ?", (invocation_id,))
        return bytes(rows[0][0]) if rows else None

    def list_invocations(
        self,
        app_id: str,
        *,
        status: Optional[InvocationStatus] = None,
        task_name: Optional[str] = None,
        limit: int = 50,
    ) -> list[InvocationRecord]:
        where, params = ["app_id = ?"], [app_id]
        if status is not None:
            where.append("status = ?")
            params.append(InvocationStatus(status).value)
        if task_name is not None:
            where.append("task_name = ?")
            params.append(task_name)
        rows = self._read(
            f"SELECT {_RECORD_COLUMNS} FROM invocations WHERE {' AND '.join(where)} "
            "ORDER BY seq DESC LIMIT ?",
            (*params, int(limit)),
        )
        return [_record(r) for r in rows]

    def get_stats(self, app_id: str, now: float) -> AppStats:
        conn = self._conn()

        def read(c: sqlite3.Connection) -> AppStats:
            by_task: dict[str, dict[str, int]] = {}
            by_status: dict[str, int] = {}
            for task, status, count in c.execute(
                "SELECT task_name, status, COUNT(*) FROM invocations WHERE app_id = ? "
                "GROUP BY task_name, status",
                (app_id,),
            ):
                by_task.setdefault(task, {})[status] = count
                by_status[status] = by_status.get(status, 0) + count
            oldest = None
            for status in _CLAIMABLE:
                (first,) = c.execute(
                    "SELECT MIN(run_at) FROM invocations WHERE app_id = ? AND "
                    f"status = '{status}' AND run_at <= ?",
                    (app_id, now),
                ).fetchone()
                if first is not None:
                    oldest = first if oldest is None else min(oldest, first)
            workers = [
                WorkerStatus(*row)
                for row in c.execute(
                    "SELECT worker_id, hostname, pid, threads, started_at, last_heartbeat_at "
                    "FROM workers WHERE app_id = ? ORDER BY worker_id",
                    (app_id,),
                )
            ]
            (recent,) = c.execute(
                "SELECT COUNT(*) FROM invocations WHERE app_id = ? AND finished_at >= ?",
                (app_id, now - 60.0),
            ).fetchone()
            return AppStats(app_id, by_status, by_task, oldest, workers, int(recent))

        def consistent() -> AppStats:
            conn.execute("BEGIN")  # one snapshot for every count
            try:
                return read(conn)
            finally:
                conn.execute("COMMIT")

        return self._retry_busy(consistent)

    def requeue(
        self,
        app_id: str,
        *,
        invocation_ids: Optional[Sequence[str]] = None,
        task_name: Optional[str] = None,
        now: float,
    ) -> int:
        where, params = ["app_id = ?", "status = 'FAILED'"], [app_id]
        if task_name is not None:
            where.append("task_name = ?")
            params.append(task_name)

        def body(c: sqlite3.Connection) -> int:
            ids: list[str] = []
            chunks = [None] if invocation_ids is None else list(_chunks(invocation_ids))
            for chunk in chunks:
                extra = "" if chunk is None else f" AND id IN ({_marks(len(chunk))})"
                ids += [
                    row[0]
                    for row in c.execute(
                        f"SELECT id FROM invocations WHERE {' AND '.join(where)}{extra}",
                        (*params, *(chunk or ())),
                    )
                ]
            for chunk in _chunks(ids):
                c.execute(
                    # The last error and traceback stay readable until it runs again.
                    "UPDATE invocations SET status = 'REGISTERED', run_at = ?, owner = NULL, "
                    "lease_expires_at = NULL, result = NULL, finished_at = NULL, "
                    "outcome_seq = NULL, retries = 0, lost_attempts = 0 "
                    f"WHERE id IN ({_marks(len(chunk))})",
                    (now, *chunk),
                )
            _log(c, [(i, "REGISTERED", now, None) for i in ids])
            return len(ids)

        return self._write_txn(body)

    def purge(self, app_id: str) -> int:
        def body(c: sqlite3.Connection) -> int:
            c.execute(
                "DELETE FROM history WHERE invocation_id IN "
                "(SELECT id FROM invocations WHERE app_id = ?)",
                (app_id,),
            )
            cur = c.execute("DELETE FROM invocations WHERE app_id = ?", (app_id,))
            c.execute("DELETE FROM cron_state WHERE app_id = ?", (app_id,))
            c.execute("DELETE FROM workers WHERE app_id = ?", (app_id,))
            return int(cur.rowcount)

        return self._write_txn(body)

    def purge_expired(self, app_id: str, finished_before: float, limit: int) -> int:
        def body(c: sqlite3.Connection) -> int:
            rows = c.execute(
                "SELECT seq, id FROM invocations WHERE app_id = ? AND finished_at < ? "
                "ORDER BY finished_at LIMIT ?",
                (app_id, finished_before, limit),
            ).fetchall()
            if not rows:
                return 0
            for chunk in _chunks(rows):
                c.execute(
                    f"DELETE FROM history WHERE invocation_id IN ({_marks(len(chunk))})",
                    [row[1] for row in chunk],
                )
                c.execute(
                    f"DELETE FROM invocations WHERE seq IN ({_marks(len(chunk))})",
                    [row[0] for row in chunk],
                )
            return len(rows)

        # A cheap read first: most checks find nothing to delete and need no write lock.
        if not self._read(
            "SELECT EXISTS (SELECT 1 FROM invocations WHERE app_id = ? AND finished_at < ?)",
            (app_id, finished_before),
        )[0][0]:
            return 0
        return self._write_txn(body)

    def _own_listener(self) -> Optional[wakeup.Listener]:
        """This thread's nudge listener, made and named in the database on first use; None
        where nudges are not available or another thread already waits with it."""
        if not wakeup.AVAILABLE:
            return None
        me = (os.getpid(), threading.get_ident())
        owner = self._listener_owner
        if self._listener is not None and owner is not None:
            if owner == me:
                return self._listener
            if owner[0] == os.getpid():
                return None  # one listener per process: other threads poll
        try:
            listener = wakeup.Listener(self._wakeup_prefix)
            self._write_txn(
                lambda c: c.execute(
                    "INSERT OR REPLACE INTO listeners (name, pid, created_at) VALUES (?, ?, ?)",
                    (listener.name, os.getpid(), time.time()),
                )
            )
        except (OSError, BackendError):
            logger.debug("no nudge listener; waiting polls instead", exc_info=True)
            return None
        self._listener, self._listener_owner = listener, me
        return listener

    def maintain(self) -> None:
        # PASSIVE: copies what no reader still needs, never waits for a lock, never blocks
        # writers. Run on this thread's own connection.
        conn = self._conn()
        try:
            busy, wal_pages, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                return  # another checkpoint is running: fine
            raise
        logger.debug("checkpoint of %s: WAL %s pages (busy=%s)", self.path, wal_pages, busy)

    # -- waiting ----------------------------------------------------------------------------

    def wait_for_change(self, token: Optional[int], timeout: float) -> int:
        conn = self._conn()
        local = self._local

        def version() -> int:
            return int(conn.execute("PRAGMA data_version").fetchone()[0])

        current = self._retry_busy(version)
        if token is None:
            return current
        # The back-off carries over between calls from the same thread: a watcher that
        # saw nothing change keeps polling slowly until something does. With a nudge
        # listener it may poll much more slowly: a nudge ends the sleep at once.
        listener = self._own_listener()
        ceiling = _NUDGED_POLL_MAX_SECONDS if listener is not None else self.poll_max_seconds
        interval = getattr(local, "poll_interval", self.poll_min_seconds)
        deadline = time.monotonic() + timeout
        while current == token:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if listener is not None:
                if listener.wait(min(interval, remaining)):
                    # Under load nudges come with every commit: look at most every
                    # poll_min_seconds, so one look serves many commits.
                    since = time.monotonic() - getattr(local, "changed_at", 0.0)
                    if since < self.poll_min_seconds:
                        time.sleep(self.poll_min_seconds - since)
            else:
                time.sleep(min(interval, remaining))
            interval = min(interval * 1.5, ceiling)
            current = self._retry_busy(version)
        if current == token:
            local.poll_interval = interval
        else:
            local.poll_interval = self.poll_min_seconds
            local.changed_at = time.monotonic()
        return current
