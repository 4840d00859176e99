"""Everything stored about invocations except claims and leases: submitting, outcomes,
cancelling, cron state, and the inspection and clean-up an operator does.

A function that takes a `sqlite3.Connection` runs inside the caller's transaction
(`connection.Database.write` for those that write, `read` or `read_snapshot` for the others);
the backend class wires them up.

How each status change is guarded: `cancel` is a conditional UPDATE whose `status IN (...)`
list is `status.sources_of(CANCELLED)`. `requeue` takes only FAILED invocations (the admin
operation is narrower than `sources_of(REGISTERED)`, which also holds RUNNING for `release`):
it selects them by that literal status and updates those rows by id in the same write
transaction, so no other writer can change them in between.

What it deliberately does not: claim, complete, heartbeat or release (`claims.py`); open
connections or nudge other processes.
"""

from __future__ import annotations

import sqlite3
from typing import Optional, Sequence

from pynenc_lite.backend.base import (
    AppStats,
    HistoryEntry,
    InvocationRecord,
    NewInvocation,
    Outcome,
    WorkerStatus,
)
from pynenc_lite.backend.sqlite.statements import (
    CLAIMABLE,
    FROM,
    RECORD_COLUMNS,
    chunks,
    log,
    marks,
    record,
    take_outcome_seqs,
)
from pynenc_lite.status import InvocationStatus

# -- callers ----------------------------------------------------------------------------------


def insert(c: sqlite3.Connection, invocations: Sequence[NewInvocation]) -> list[str]:
    """Insert, except where a registration key matches an invocation still waiting: then
    that one's id stands for the call. Runs inside the caller's write transaction, so no
    other process can register the same key in between."""
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
                "created_at, registration_key, running_key, running_limit, "
                "max_lost_attempts, reroute_on_concurrency_control) "
                "VALUES (?, ?, ?, ?, 'REGISTERED', ?, ?, ?, ?, ?, ?, ?)",
                (i.invocation_id, i.app_id, i.task_name, i.args, i.run_at, i.created_at,
                 i.registration_key, i.running_key, i.running_limit, i.max_lost_attempts,
                 int(i.reroute_on_concurrency_control)),
            )
            ids.append(i.invocation_id)
            continue
        new.append(i)
        ids.append(i.invocation_id)
    c.executemany(
        "INSERT INTO invocations (id, app_id, task_name, args, status, run_at, created_at, "
        "running_key, running_limit, max_lost_attempts, reroute_on_concurrency_control) "
        "VALUES (?, ?, ?, ?, 'REGISTERED', ?, ?, ?, ?, ?, ?)",
        [
            (i.invocation_id, i.app_id, i.task_name, i.args, i.run_at, i.created_at,
             i.running_key, i.running_limit, i.max_lost_attempts,
             int(i.reroute_on_concurrency_control))
            for i in new
        ],
    )
    # No history row here: the first entry, REGISTERED at created_at, is read from the
    # invocation itself (see get_history), which saves a write per call.
    return ids


def get_outcomes(c: sqlite3.Connection, invocation_ids: Sequence[str]) -> list[Outcome]:
    """Outcomes of those of the invocations that are final."""
    outcomes: list[Outcome] = []
    for chunk in chunks(invocation_ids):
        rows = c.execute(
            "SELECT id, status, result, error, traceback FROM invocations "
            f"WHERE outcome_seq IS NOT NULL AND id IN ({marks(len(chunk))})",
            chunk,
        )
        outcomes.extend(
            Outcome(row[0], InvocationStatus(row[1]), row[2], row[3], row[4]) for row in rows
        )
    return outcomes


def get_finished_since(c: sqlite3.Connection, seq: int) -> tuple[int, list[str]]:
    """The newest outcome number and the ids that became final after `seq` (see
    `statements.take_outcome_seqs`); with `seq < 0`, the current number and no ids."""
    if seq < 0:
        row = c.execute("SELECT value FROM counters WHERE name='outcome'").fetchone()
        return int(row[0]), []
    rows = c.execute(
        "SELECT outcome_seq, id FROM invocations WHERE outcome_seq > ? ORDER BY outcome_seq",
        (seq,),
    ).fetchall()
    if not rows:
        return seq, []
    return int(rows[-1][0]), [row[1] for row in rows]


def get_invocation(c: sqlite3.Connection, invocation_id: str) -> Optional[InvocationRecord]:
    """The stored record, or None."""
    row = c.execute(
        f"SELECT {RECORD_COLUMNS} FROM invocations WHERE id = ?", (invocation_id,)
    ).fetchone()
    return record(row) if row is not None else None


def count_live_workers(c: sqlite3.Connection, app_id: str, since: float) -> int:
    """How many workers of the app sent a heartbeat at or after `since`."""
    row = c.execute(
        "SELECT COUNT(*) FROM workers WHERE app_id = ? AND last_heartbeat_at >= ?",
        (app_id, since),
    ).fetchone()
    return int(row[0])


def cancel(c: sqlite3.Connection, invocation_id: str, now: float) -> bool:
    """CANCEL the invocation unless it is final already; True when it was cancelled."""
    sources = FROM[InvocationStatus.CANCELLED]
    cur = c.execute(
        "UPDATE invocations SET status = 'CANCELLED', owner = NULL, lease_expires_at = "
        "NULL, finished_at = ?, error = ?, outcome_seq = ? WHERE id = ? AND status IN "
        f"({marks(len(sources))})",
        (
            now,
            "InvocationCancelledError: cancelled",
            take_outcome_seqs(c, 1),
            invocation_id,
            *sources,
        ),
    )
    if cur.rowcount == 0:
        return False
    log(c, [(invocation_id, "CANCELLED", now, None)])
    return True


# -- cron -------------------------------------------------------------------------------------


def get_cron_moment(c: sqlite3.Connection, app_id: str, task_name: str) -> Optional[float]:
    """The latest cron moment already handled for the task, or None."""
    row = c.execute(
        "SELECT moment FROM cron_state WHERE app_id = ? AND task_name = ?",
        (app_id, task_name),
    ).fetchone()
    return float(row[0]) if row is not None else None


def advance_cron(
    c: sqlite3.Connection,
    app_id: str,
    task_name: str,
    expected: Optional[float],
    moment: float,
    invocations: Sequence[NewInvocation],
) -> bool:
    """Move the handled moment from `expected` to `moment` and insert `invocations`, or do
    nothing and return False when another worker moved it first."""
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
    insert(c, invocations)
    return True


# -- operations -------------------------------------------------------------------------------


def get_history(c: sqlite3.Connection, invocation_id: str) -> list[HistoryEntry]:
    """Every status change of the invocation, oldest first (empty if unknown)."""
    created = c.execute(
        "SELECT created_at FROM invocations WHERE id = ?", (invocation_id,)
    ).fetchone()
    if created is None:
        return []
    rows = c.execute(
        "SELECT status, at, worker_id FROM history WHERE invocation_id = ? ORDER BY seq",
        (invocation_id,),
    )
    return [HistoryEntry(InvocationStatus.REGISTERED, created[0], None)] + [
        HistoryEntry(InvocationStatus(r[0]), r[1], r[2]) for r in rows
    ]


def get_args(c: sqlite3.Connection, invocation_id: str) -> Optional[bytes]:
    """The pickled arguments of the invocation, or None."""
    row = c.execute("SELECT args FROM invocations WHERE id = ?", (invocation_id,)).fetchone()
    return bytes(row[0]) if row is not None else None


def list_invocations(
    c: sqlite3.Connection,
    app_id: str,
    status: Optional[InvocationStatus],
    task_name: Optional[str],
    limit: int,
) -> list[InvocationRecord]:
    """The app's newest invocations first, optionally of one status and/or task."""
    where, params = ["app_id = ?"], [app_id]
    if status is not None:
        where.append("status = ?")
        params.append(InvocationStatus(status).value)
    if task_name is not None:
        where.append("task_name = ?")
        params.append(task_name)
    rows = c.execute(
        f"SELECT {RECORD_COLUMNS} FROM invocations WHERE {' AND '.join(where)} "
        "ORDER BY seq DESC LIMIT ?",
        (*params, int(limit)),
    )
    return [record(r) for r in rows]


def get_stats(c: sqlite3.Connection, app_id: str, now: float) -> AppStats:
    """Counts by status and task, the oldest waiting work, workers, recent throughput (run
    in one snapshot, so the counts add up)."""
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
    for status in CLAIMABLE:
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


def count_invocations_by_app(c: sqlite3.Connection) -> dict[str, int]:
    """How many invocations each app has stored (a full scan: for the admin, not a hot path)."""
    rows = c.execute("SELECT app_id, COUNT(*) FROM invocations GROUP BY app_id ORDER BY app_id")
    return {app_id: int(count) for app_id, count in rows}


def requeue(
    c: sqlite3.Connection,
    app_id: str,
    invocation_ids: Optional[Sequence[str]],
    task_name: Optional[str],
    now: float,
) -> int:
    """Put the app's FAILED invocations (those ids, or all of a task, or all) back to
    REGISTERED; returns how many."""
    where, params = ["app_id = ?", "status = 'FAILED'"], [app_id]
    if task_name is not None:
        where.append("task_name = ?")
        params.append(task_name)
    ids: list[str] = []
    selected = [None] if invocation_ids is None else list(chunks(invocation_ids))
    for chunk in selected:
        extra = "" if chunk is None else f" AND id IN ({marks(len(chunk))})"
        ids += [
            row[0]
            for row in c.execute(
                f"SELECT id FROM invocations WHERE {' AND '.join(where)}{extra}",
                (*params, *(chunk or ())),
            )
        ]
    for chunk in chunks(ids):
        c.execute(
            # The last error and traceback stay readable until it runs again.
            "UPDATE invocations SET status = 'REGISTERED', run_at = ?, owner = NULL, "
            "lease_expires_at = NULL, result = NULL, finished_at = NULL, "
            "outcome_seq = NULL, retries = 0, lost_attempts = 0 "
            f"WHERE id IN ({marks(len(chunk))})",
            (now, *chunk),
        )
    log(c, [(i, "REGISTERED", now, None) for i in ids])
    return len(ids)


def purge(c: sqlite3.Connection, app_id: str) -> int:
    """Delete everything stored for the app; returns how many invocations were deleted."""
    c.execute(
        "DELETE FROM history WHERE invocation_id IN "
        "(SELECT id FROM invocations WHERE app_id = ?)",
        (app_id,),
    )
    cur = c.execute("DELETE FROM invocations WHERE app_id = ?", (app_id,))
    c.execute("DELETE FROM cron_state WHERE app_id = ?", (app_id,))
    c.execute("DELETE FROM workers WHERE app_id = ?", (app_id,))
    return int(cur.rowcount)


def has_expired(c: sqlite3.Connection, app_id: str, finished_before: float) -> bool:
    """True when `purge_expired` would find something to delete (a read, no write lock)."""
    row = c.execute(
        "SELECT EXISTS (SELECT 1 FROM invocations WHERE app_id = ? AND finished_at < ?)",
        (app_id, finished_before),
    ).fetchone()
    return bool(row[0])


def purge_expired(c: sqlite3.Connection, app_id: str, finished_before: float, limit: int) -> int:
    """Delete up to `limit` invocations that finished before `finished_before`, with their
    history; returns how many."""
    rows = c.execute(
        "SELECT seq, id FROM invocations WHERE app_id = ? AND finished_at < ? "
        "ORDER BY finished_at LIMIT ?",
        (app_id, finished_before, limit),
    ).fetchall()
    for chunk in chunks(rows):
        c.execute(
            f"DELETE FROM history WHERE invocation_id IN ({marks(len(chunk))})",
            [row[1] for row in chunk],
        )
        c.execute(
            f"DELETE FROM invocations WHERE seq IN ({marks(len(chunk))})",
            [row[0] for row in chunk],
        )
    return len(rows)
