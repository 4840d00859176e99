"""Pieces of SQL shared by `claims.py` and `operations.py`.

What it holds: placeholder lists and chunking under SQLite's parameter limit, the status
lists as they are written into SQL, the record columns, and two writes shared by the
status changes: a row of history for each, and a number of the outcome counter for each
final one.

What it deliberately does not: open connections or run transactions (`connection.py`), or
decide any transition (each statement that changes a status lives with its operation).
"""

from __future__ import annotations

import sqlite3
from typing import Any, Iterator, Optional, Sequence, TypeVar

from pynenc_lite.backend.base import InvocationRecord
from pynenc_lite.status import (
    CLAIMABLE_STATUSES,
    LEASED_STATUSES,
    InvocationStatus,
    sources_of,
)

_T = TypeVar("_T")

# SQLite's default limit on host parameters was 999 before 3.32; stay under it.
MAX_PARAMS = 900

# The waiting statuses, written into the SQL text, not bound: only then can SQLite use the
# partial index of that status (it cannot prove a bound parameter satisfies an index WHERE).
CLAIMABLE = tuple(sorted(s.value for s in CLAIMABLE_STATUSES))
# The statuses that hold a lease, bound as parameters (their index is on lease_expires_at).
LEASED = tuple(sorted(s.value for s in LEASED_STATUSES))
# Statuses each transition may start from, as SQL parameters (from status.py, the one place
# that defines the model).
FROM = {status: sources_of(status) for status in InvocationStatus}

RECORD_COLUMNS = (
    "id, app_id, task_name, status, attempts, lost_attempts, retries, owner, "
    "lease_expires_at, run_at, created_at, started_at, finished_at, error, traceback"
)


def marks(n: int) -> str:
    """`n` comma-separated `?` placeholders."""
    return ",".join("?" * n)


def chunks(items: Sequence[_T], size: int = MAX_PARAMS) -> Iterator[Sequence[_T]]:
    """`items` in slices small enough to bind as parameters of one statement."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def record(row: Sequence[Any]) -> InvocationRecord:
    """The record of a row read with `RECORD_COLUMNS`."""
    return InvocationRecord(row[0], row[1], row[2], InvocationStatus(row[3]), *row[4:])


def log(c: sqlite3.Connection, entries: Sequence[tuple[str, str, float, Optional[str]]]) -> None:
    """Append (invocation id, status, time, worker) rows to the status history."""
    c.executemany(
        "INSERT INTO history (invocation_id, status, at, worker_id) VALUES (?, ?, ?, ?)", entries
    )


def take_outcome_seqs(c: sqlite3.Connection, count: int) -> int:
    """Reserve `count` outcome sequence numbers; returns the first.

    Every final outcome takes the next number, so a watcher can ask "what finished since
    N?" with one indexed query (`operations.get_finished_since`).
    """
    c.execute("UPDATE counters SET value = value + ? WHERE name = 'outcome'", (count,))
    last = int(c.execute("SELECT value FROM counters WHERE name = 'outcome'").fetchone()[0])
    return last - count + 1
