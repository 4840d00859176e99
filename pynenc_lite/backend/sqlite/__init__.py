"""The default backend: one SQLite file, shared by every process on one host.

    backend.py      SQLiteBackend: the Backend contract, each change one write transaction
    claims.py       claims and leases: claim, complete_many, heartbeat, release, expiry
    operations.py   submit, outcomes, cancel, cron state, inspection, requeue and purges
    statements.py   SQL pieces both of those share (placeholders, status lists, history)
    feed.py         waiting for changes (PRAGMA data_version) and nudging other processes
    wakeup.py       the datagram sockets the nudges travel on (no SQL)
    connection.py   per-thread connections, write transactions, busy retries
    schema.py       the tables, and the version check before anything touches them

Imports go down this list only. Outside this package, only `SQLiteBackend` is meant to be used.

A status changes only inside one write transaction, never by a read in Python followed by
a separate write: `complete_many`, `release` and `cancel` are conditional UPDATEs whose
`status IN (...)` lists come from `status.sources_of()`; `claim`, the failing of invocations
whose worker was lost too often, and `requeue` select their rows and update them by key in
the same transaction (`claims.py` and `operations.py` say why).
"""

from pynenc_lite.backend.sqlite.backend import SQLiteBackend

__all__ = ["SQLiteBackend"]
