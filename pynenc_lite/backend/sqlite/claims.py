"""Claims and leases: handing invocations to workers, keeping, ending and recovering leases.

    REGISTERED/RETRY (run_at <= now) ──claim──► RUNNING, owner, lease_expires_at
    REGISTERED/RETRY, its running key at its limit ──claim──► left waiting, or (its task
        does not reroute) CONCURRENCY_CONTROLLED_FINAL, an outcome that never ran
    RUNNING, lease kept by heartbeat ──complete_many (still the owner)──► final or RETRY
    RUNNING, lease expired ──next claim──► RUNNING again (lost_attempts + 1), or FAILED
    RUNNING ──release (graceful stop)──► REGISTERED

A function that takes a `sqlite3.Connection` runs inside the caller's transaction
(`connection.Database.write`, or `read` for the plain reads); the backend class wires them
up.

How each status change is guarded: `complete_many` and `release` are conditional UPDATEs
whose `status IN (...)` list is `status.sources_of()` of their target (`statements.FROM`).
`claim`, `_drop_controlled` and `_fail_lost` choose their rows with SELECTs in the same write
transaction (no other writer can come in between) and then update those rows by `seq`:
waiting rows by the
claimable statuses of `status.py`, written literally into the SQL (only then can SQLite use
their partial indexes), and expired leases by `lease_expires_at`, which is set exactly while
an invocation is RUNNING. `tests/test_backend_contract.py` checks these lists against
`sources_of(RUNNING)`, `sources_of(CONCURRENCY_CONTROLLED_FINAL)` and `sources_of(FAILED)`.

What it deliberately does not: store new invocations, cancel, or read outcomes
(`operations.py`); open connections or nudge other processes.
"""

from __future__ import annotations

import collections
import heapq
import logging
import sqlite3
from typing import Iterator, Optional, Sequence

from pynenc_lite.backend.base import ClaimedInvocation, Outcome, WorkerInfo
from pynenc_lite.backend.sqlite.statements import (
    CLAIMABLE,
    FROM,
    LEASED,
    chunks,
    log,
    marks,
    take_outcome_seqs,
)
from pynenc_lite.errors import ConcurrencyControlledError, WorkerLostError
from pynenc_lite.status import InvocationStatus

logger = logging.getLogger(__name__)

# How deep a claim looks past invocations held back by their running limit.
_MAX_CLAIM_SCAN = 4096

# One EXISTS per waiting status (each can use its partial index), and one for expired leases.
_HAS_RUNNABLE_SQL = (
    "SELECT "
    + " OR ".join(
        f"EXISTS (SELECT 1 FROM invocations WHERE app_id = ? AND status = '{status}' "
        "AND run_at <= ?)"
        for status in CLAIMABLE
    )
    + " OR EXISTS (SELECT 1 FROM invocations WHERE app_id = ? AND lease_expires_at < ?)"
)


def has_runnable(c: sqlite3.Connection, app_id: str, now: float) -> bool:
    """True when a claim at `now` would find something: the first, read-only step of a
    claim, so that an idle worker's claim takes no write lock."""
    params = (*[app_id, now] * len(CLAIMABLE), app_id, now)
    return bool(c.execute(_HAS_RUNNABLE_SQL, params).fetchone()[0])


def next_run_at(c: sqlite3.Connection, app_id: str) -> Optional[float]:
    """The earliest `run_at` of the app's waiting invocations, or None."""
    found = [
        c.execute(
            f"SELECT MIN(run_at) FROM invocations WHERE app_id = ? AND status = '{status}'",
            (app_id,),
        ).fetchone()[0]
        for status in CLAIMABLE
    ]
    times = [t for t in found if t is not None]
    return min(times) if times else None


def claim(
    c: sqlite3.Connection,
    app_id: str,
    worker_id: str,
    limit: int,
    now: float,
    lease_seconds: float,
    max_lost_attempts: int,
) -> list[ClaimedInvocation]:
    """Lease up to `limit` runnable invocations to `worker_id`: expired leases first (or
    FAILED, when lost too often), then waiting ones, oldest first. See `Backend.claim`."""
    # Each row's own cap (its task's option) where it has one, else this runner's.
    expired = c.execute(
        "SELECT seq, lost_attempts, COALESCE(max_lost_attempts, ?) FROM invocations "
        "WHERE app_id = ? AND lease_expires_at < ? LIMIT ?",
        (max_lost_attempts, app_id, now, limit),
    ).fetchall()
    lost_for_good = [(seq, cap) for seq, lost, cap in expired if lost + 1 >= cap]
    if lost_for_good:
        _fail_lost(c, lost_for_good, now)
    recovered = [seq for seq, lost, cap in expired if lost + 1 < cap]
    chosen, dropped = _claimable(c, app_id, now, limit - len(recovered))
    if dropped:
        _drop_controlled(c, dropped, now, worker_id)
    seqs = recovered + chosen
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
            f"WHERE seq IN ({marks(len(recovered))})",
            recovered,
        )
    c.execute(
        "UPDATE invocations SET status = 'RUNNING', owner = ?, lease_expires_at = ?, "
        f"attempts = attempts + 1, started_at = ? WHERE seq IN ({marks(len(seqs))})",
        (worker_id, now + lease_seconds, now, *seqs),
    )
    rows = c.execute(
        "SELECT id, task_name, args, attempts, retries FROM invocations "
        f"WHERE seq IN ({marks(len(seqs))}) ORDER BY run_at, seq",
        seqs,
    ).fetchall()
    log(c, [(row[0], "RUNNING", now, worker_id) for row in rows])
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "worker %s claimed %d invocation(s) (%d recovered from lost workers), "
            "leased until %.3f",
            worker_id, len(rows), len(recovered), now + lease_seconds,
        )
    return [ClaimedInvocation(*row) for row in rows]


def _claimable(
    c: sqlite3.Connection, app_id: str, now: float, limit: int
) -> tuple[list[int], list[int]]:
    """Up to `limit` runnable waiting invocations, oldest first, skipping those whose
    running key already has `running_limit` invocations running (counting those chosen
    here); returns them, and those skipped that are to be dropped instead of waiting
    (`reroute_on_concurrency_control` 0; NULL, a row of schema version 3, waits)."""
    if limit <= 0:
        return [], []

    def waiting(status: str) -> Iterator[tuple[float, int, Optional[str], int, Optional[int]]]:
        # Oldest first, one indexed query per page; each status keeps its own place.
        offset, page = 0, limit
        while offset < _MAX_CLAIM_SCAN:
            rows = c.execute(
                "SELECT run_at, seq, running_key, running_limit, "
                "reroute_on_concurrency_control FROM invocations WHERE "
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
    dropped: list[int] = []
    running: dict[str, int] = {}  # running key -> how many run, counting this claim
    for _, seq, key, key_limit, reroute in heapq.merge(*(waiting(s) for s in CLAIMABLE)):
        if key is not None:
            if key not in running:
                running[key] = c.execute(
                    "SELECT COUNT(*) FROM invocations WHERE app_id = ? AND "
                    "running_key = ? AND status = 'RUNNING'",
                    (app_id, key),
                ).fetchone()[0]
            if running[key] >= key_limit:
                if reroute == 0:
                    dropped.append(seq)  # pynenc's default: a blocked call is not run
                continue  # waits its turn; a finishing one lets it through
            running[key] += 1
        chosen.append(seq)
        if len(chosen) == limit:
            break
    return chosen, dropped


# The error line of a dropped call (what `inspect` and `list` show; the caller's handle
# raises ConcurrencyControlledError with its own message, naming the task and the call).
_DROPPED_ERROR = (
    f"{ConcurrencyControlledError.__name__}: not run: its running concurrency limit was "
    "reached when a worker came to start it, and its task has "
    "reroute_on_concurrency_control=False (set it to True to make such calls wait their turn)"
)


def _drop_controlled(c: sqlite3.Connection, seqs: list[int], now: float, worker_id: str) -> None:
    """Make the waiting invocations `seqs` CONCURRENCY_CONTROLLED_FINAL: final outcomes (so
    waiters everywhere are released) of calls that never ran."""
    first = take_outcome_seqs(c, len(seqs))
    c.executemany(
        "UPDATE invocations SET status = 'CONCURRENCY_CONTROLLED_FINAL', finished_at = ?, "
        "error = ?, outcome_seq = ? WHERE seq = ?",
        [(now, _DROPPED_ERROR, first + i, seq) for i, seq in enumerate(seqs)],
    )
    ids = c.execute(f"SELECT id FROM invocations WHERE seq IN ({marks(len(seqs))})", seqs)
    log(c, [(row[0], "CONCURRENCY_CONTROLLED_FINAL", now, worker_id) for row in ids.fetchall()])
    logger.info(
        "worker %s dropped %d invocation(s) held back by running concurrency control "
        "(their tasks have reroute_on_concurrency_control=False)",
        worker_id,
        len(seqs),
    )


def _lost_error(cap: int) -> str:
    return WorkerLostError.error_line(
        f"the worker running this invocation vanished {cap} time(s) (killed, crashed or its "
        "host stopped), so it is not tried again. If the task itself ends its process "
        "(os._exit, a crash in C code, running out of memory), fix that; if its workers are "
        "restarted from outside (deployments), raise the task's max_lost_attempts option "
        "(or the app's setting) to allow more tries."
    )


def _fail_lost(c: sqlite3.Connection, rows: list[tuple[int, int]], now: float) -> None:
    """FAIL the expired invocations `rows` (seq, cap), whose workers were lost too often."""
    first = take_outcome_seqs(c, len(rows))
    c.executemany(
        "UPDATE invocations SET status = 'FAILED', owner = NULL, lease_expires_at = NULL, "
        "lost_attempts = lost_attempts + 1, finished_at = ?, error = ?, result = NULL, "
        "outcome_seq = ? WHERE seq = ?",
        [(now, _lost_error(cap), first + i, seq) for i, (seq, cap) in enumerate(rows)],
    )
    seqs = [seq for seq, _ in rows]
    ids = c.execute(f"SELECT id FROM invocations WHERE seq IN ({marks(len(seqs))})", seqs)
    log(c, [(row[0], "FAILED", now, None) for row in ids.fetchall()])
    for cap, count in sorted(collections.Counter(cap for _, cap in rows).items()):
        logger.error("%d invocation(s) failed: %s", count, _lost_error(cap))


def check_outcomes(outcomes: Sequence[Outcome]) -> None:
    """Reject outcomes `complete_many` cannot store, before any transaction starts.

    Raises:
        ValueError: a status that is neither final nor RETRY, one that a running
            invocation never enters, or a RETRY without retry_at.
    """
    for outcome in outcomes:
        ends_a_run = InvocationStatus.RUNNING.value in FROM[outcome.status]
        if not (outcome.status.is_final() or outcome.status is InvocationStatus.RETRY):
            raise ValueError(f"cannot complete with status {outcome.status}")
        if not ends_a_run:  # CONCURRENCY_CONTROLLED_FINAL: only a claim decides it
            raise ValueError(f"cannot complete with status {outcome.status}: a running "
                             "invocation never enters it")
        if outcome.status is InvocationStatus.RETRY and outcome.retry_at is None:
            raise ValueError("a RETRY outcome needs retry_at")


def complete_many(
    c: sqlite3.Connection, outcomes: Sequence[Outcome], worker_id: str, now: float
) -> list[bool]:
    """Store each outcome whose invocation `worker_id` still holds; one flag per outcome,
    False where the claim was lost. See `Backend.complete_many`."""
    # A refused outcome leaves a gap in the sequence; watchers do not mind gaps.
    finals = sum(o.status.is_final() for o in outcomes)
    seq = take_outcome_seqs(c, finals) if finals else 0
    accepted = []
    for outcome in outcomes:
        sources = FROM[outcome.status]
        if outcome.status is InvocationStatus.RETRY:
            cur = c.execute(
                "UPDATE invocations SET status = 'RETRY', owner = NULL, "
                "lease_expires_at = NULL, run_at = ?, retries = retries + 1, "
                "error = ?, traceback = ? WHERE id = ? AND owner = ? AND status IN "
                f"({marks(len(sources))})",
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
                f"({marks(len(sources))})",
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
    log(
        c,
        [
            (o.invocation_id, o.status.value, now, worker_id)
            for o, ok in zip(outcomes, accepted)
            if ok
        ],
    )
    return accepted


def warn_refused(outcomes: Sequence[Outcome], accepted: Sequence[bool], worker_id: str) -> None:
    """Log each outcome `complete_many` refused (after its transaction: no lock held)."""
    for outcome, ok in zip(outcomes, accepted):
        if not ok:
            logger.warning(
                "ignored a late %s outcome for invocation %s from worker %s: it no longer "
                "holds the claim (cancelled, failed for its time limit, or its lease "
                "expired and another worker took it over)",
                outcome.status,
                outcome.invocation_id,
                worker_id,
            )


def heartbeat(
    c: sqlite3.Connection,
    worker: WorkerInfo,
    running: Sequence[str],
    now: float,
    lease_seconds: float,
) -> list[str]:
    """Record the worker, extend the leases it holds of `running`, and return those of
    `running` it no longer holds. See `Backend.heartbeat`."""
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
    for chunk in chunks(running):
        c.execute(
            "UPDATE invocations SET lease_expires_at = ? WHERE app_id = ? AND "
            "lease_expires_at IS NOT NULL AND owner = ? AND status IN "
            f"({marks(len(LEASED))}) AND id IN ({marks(len(chunk))})",
            (now + lease_seconds, worker.app_id, worker.worker_id, *LEASED, *chunk),
        )
    lost = []
    for chunk in chunks(running):
        lost += [
            row[0]
            for row in c.execute(
                f"SELECT id FROM invocations WHERE id IN ({marks(len(chunk))}) AND "
                "(owner IS NULL OR owner != ? OR status != 'RUNNING')",
                (*chunk, worker.worker_id),
            )
        ]
    return lost


def release(c: sqlite3.Connection, worker_id: str, now: float) -> int:
    """Hand every invocation `worker_id` holds back to REGISTERED; returns how many."""
    sources = FROM[InvocationStatus.REGISTERED]
    # `lease_expires_at IS NOT NULL` lets SQLite use the small partial lease index.
    held = "lease_expires_at IS NOT NULL AND owner = ? AND status IN "
    params = (worker_id, *sources)
    ids = c.execute(
        f"SELECT id FROM invocations WHERE {held}({marks(len(sources))})", params
    ).fetchall()
    c.execute(
        "UPDATE invocations SET status = 'REGISTERED', owner = NULL, lease_expires_at "
        f"= NULL WHERE {held}({marks(len(sources))})",
        params,
    )
    log(c, [(row[0], "REGISTERED", now, worker_id) for row in ids])
    return len(ids)


def expire_leases(c: sqlite3.Connection, worker_id: str) -> int:
    """End every lease of `worker_id` now (it is known dead) and forget the worker; the next
    claim recovers its invocations. Returns how many leases were ended."""
    cur = c.execute(
        "UPDATE invocations SET lease_expires_at = 0 "
        "WHERE lease_expires_at IS NOT NULL AND owner = ?",
        (worker_id,),
    )
    c.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))
    return int(cur.rowcount)


def remove_worker(c: sqlite3.Connection, worker_id: str) -> None:
    """Forget a worker that stopped cleanly."""
    c.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))
