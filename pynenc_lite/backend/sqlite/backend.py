"""`SQLiteBackend`: the `Backend` contract on one SQLite database (a file, or one held in this
process's memory), wired from this package's parts.

    SQLiteBackend ──► claims.py, operations.py   the SQL, as functions of a connection
          │       ──► connection.Database        connections, write transactions, reads
          └─────────► feed.ChangeFeed            waiting for changes; nudges after commits

A contract method that writes runs one function of `claims.py` or `operations.py` in one
`Database.write` transaction and then nudges the waiting processes; one that reads runs one
in `Database.read` (`get_stats` in `read_snapshot`). `claim` and `purge_expired` read first
and take the write lock only when there is something to do. The contract's docstrings
(`backend/base.py`) say what each method does.

What it deliberately does not: hold SQL, locks or sockets of its own.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Callable, Optional, Sequence, TypeVar

from pynenc_lite.backend.base import (
    AppStats,
    Backend,
    ClaimedInvocation,
    HistoryEntry,
    InvocationRecord,
    NewInvocation,
    Outcome,
    WorkerInfo,
)
from pynenc_lite.backend.sqlite import claims, operations, wakeup
from pynenc_lite.backend.sqlite.connection import Database
from pynenc_lite.backend.sqlite.feed import ChangeFeed
from pynenc_lite.status import InvocationStatus

_T = TypeVar("_T")


class SQLiteBackend(Backend):
    """A `Backend` on one SQLite file (or in-memory database). Safe to use from many threads,
    and, on a file, from many processes.

    Args:
        path: the database file; created (mode 0600) if missing, its folder must exist.
            With `memory=True`, the name of the in-memory database instead.
        synchronous: "NORMAL" (a commit survives a process crash) or "FULL" (also a power
            loss, at an fsync per commit).
        busy_timeout_seconds: how long to wait for another process's write lock.
        poll_min_seconds: the first polling interval of `wait_for_change`.
        poll_max_seconds: the longest polling interval where nudges are not available.
        read_only: open the file read-only (SQLite `mode=ro`) and write nothing to it, not
            even the schema: for inspecting a file this process may not write (another
            user's, an immutable one, one on a read-only mount). Writes raise BackendError.
            The file must exist and hold this schema version.
        memory: keep the database in this process's memory (pynenc's Mem* components): no
            file is written anywhere, and every backend of this process opened with the same
            `path` shares it; no other process can reach it. It lives until the last such
            backend is closed. `synchronous` does not apply.

    Raises:
        ValueError: a bad `synchronous`, or `memory` with `read_only`.
        BackendError: the in-memory database cannot be opened.
    """

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "NORMAL",
        busy_timeout_seconds: float = 30.0,
        poll_min_seconds: float = 0.0005,
        poll_max_seconds: float = 0.1,
        read_only: bool = False,
        memory: bool = False,
    ) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        self.path = path if memory else os.path.abspath(path)
        self._db = Database(
            self.path,
            synchronous=synchronous.upper(),
            busy_timeout_seconds=busy_timeout_seconds,
            read_only=read_only,
            memory=memory,
        )
        self._feed = ChangeFeed(
            self._db, poll_min_seconds=poll_min_seconds, poll_max_seconds=poll_max_seconds
        )

    def __repr__(self) -> str:
        if self._db.read_only:
            return f"SQLiteBackend({self.path!r}, read_only=True)"
        if self._db.memory:
            return f"SQLiteBackend({self.path!r}, memory=True)"
        return f"SQLiteBackend({self.path!r})"

    def close(self) -> None:
        self._feed.close()
        self._db.close()

    def _write_txn(self, body: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `body` in one write transaction, then nudge the waiting processes."""
        result = self._db.write(body)
        if wakeup.AVAILABLE:
            self._feed.nudge_peers()
        return result

    # -- callers ----------------------------------------------------------------------------

    def submit(self, invocations: Sequence[NewInvocation]) -> list[str]:
        if not invocations:
            return []
        return self._write_txn(lambda c: operations.insert(c, invocations))

    def get_outcomes(self, invocation_ids: Sequence[str]) -> list[Outcome]:
        return self._db.read(lambda c: operations.get_outcomes(c, invocation_ids))

    def get_finished_since(self, seq: int) -> tuple[int, list[str]]:
        return self._db.read(lambda c: operations.get_finished_since(c, seq))

    def get_invocation(self, invocation_id: str) -> Optional[InvocationRecord]:
        return self._db.read(lambda c: operations.get_invocation(c, invocation_id))

    def count_live_workers(self, app_id: str, since: float) -> int:
        return self._db.read(lambda c: operations.count_live_workers(c, app_id, since))

    # -- runners ----------------------------------------------------------------------------

    def _has_runnable(self, app_id: str, now: float) -> bool:
        return self._db.read(lambda c: claims.has_runnable(c, app_id, now))

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
        return self._write_txn(
            lambda c: claims.claim(
                c, app_id, worker_id, limit, now, lease_seconds, max_lost_attempts
            )
        )

    def complete_many(self, outcomes: Sequence[Outcome], worker_id: str, now: float) -> list[bool]:
        claims.check_outcomes(outcomes)
        if not outcomes:
            return []
        accepted = self._write_txn(lambda c: claims.complete_many(c, outcomes, worker_id, now))
        claims.warn_refused(outcomes, accepted, worker_id)
        return accepted

    def heartbeat(
        self, worker: WorkerInfo, running: Sequence[str], now: float, lease_seconds: float
    ) -> list[str]:
        return self._write_txn(
            lambda c: claims.heartbeat(c, worker, running, now, lease_seconds)
        )

    def release(self, worker_id: str, now: float) -> int:
        return self._write_txn(lambda c: claims.release(c, worker_id, now))

    def expire_leases(self, worker_id: str) -> int:
        return self._write_txn(lambda c: claims.expire_leases(c, worker_id))

    def remove_worker(self, worker_id: str) -> None:
        self._write_txn(lambda c: claims.remove_worker(c, worker_id))

    def next_run_at(self, app_id: str) -> Optional[float]:
        return self._db.read(lambda c: claims.next_run_at(c, app_id))

    def cancel(self, invocation_id: str, now: float) -> bool:
        return self._write_txn(lambda c: operations.cancel(c, invocation_id, now))

    def get_cron_moment(self, app_id: str, task_name: str) -> Optional[float]:
        return self._db.read(lambda c: operations.get_cron_moment(c, app_id, task_name))

    def advance_cron(
        self,
        app_id: str,
        task_name: str,
        expected: Optional[float],
        moment: float,
        invocations: Sequence[NewInvocation],
    ) -> bool:
        return self._write_txn(
            lambda c: operations.advance_cron(c, app_id, task_name, expected, moment, invocations)
        )

    # -- waiting ----------------------------------------------------------------------------

    def wait_for_change(self, token: Optional[int], timeout: float) -> int:
        return self._feed.wait_for_change(token, timeout)

    def maintain(self) -> None:
        self._feed.maintain()

    # -- operations -------------------------------------------------------------------------

    def get_history(self, invocation_id: str) -> list[HistoryEntry]:
        return self._db.read(lambda c: operations.get_history(c, invocation_id))

    def get_args(self, invocation_id: str) -> Optional[bytes]:
        return self._db.read(lambda c: operations.get_args(c, invocation_id))

    def list_invocations(
        self,
        app_id: str,
        *,
        status: Optional[InvocationStatus] = None,
        task_name: Optional[str] = None,
        limit: int = 50,
    ) -> list[InvocationRecord]:
        return self._db.read(
            lambda c: operations.list_invocations(c, app_id, status, task_name, limit)
        )

    def get_stats(self, app_id: str, now: float) -> AppStats:
        return self._db.read_snapshot(lambda c: operations.get_stats(c, app_id, now))

    def count_invocations_by_app(self) -> dict[str, int]:
        return self._db.read(operations.count_invocations_by_app)

    def requeue(
        self,
        app_id: str,
        *,
        invocation_ids: Optional[Sequence[str]] = None,
        task_name: Optional[str] = None,
        now: float,
    ) -> int:
        return self._write_txn(
            lambda c: operations.requeue(c, app_id, invocation_ids, task_name, now)
        )

    def purge(self, app_id: str) -> int:
        return self._write_txn(lambda c: operations.purge(c, app_id))

    def purge_expired(self, app_id: str, finished_before: float, limit: int) -> int:
        # A cheap read first: most checks find nothing to delete and need no write lock.
        if not self._db.read(lambda c: operations.has_expired(c, app_id, finished_before)):
            return 0
        return self._write_txn(
            lambda c: operations.purge_expired(c, app_id, finished_before, limit)
        )
