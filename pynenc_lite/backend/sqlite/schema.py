"""The tables of the SQLite file, and the check that a file has the layout this code reads.

What it holds: the schema text (tables and the indexes the hot queries need), its version,
`create`, which checks that version before anything touches the schema and then creates
what is missing, and `check`, the same version check without writing (for read-only opens).

What it deliberately does not: open files, set pragmas or run transactions (`connection.py`
runs `create` once per process, inside a write transaction), or read and write rows (the
other modules of this package). It upgrades older files in place only where `_MIGRATIONS`
says how (versions 2 and 3 each gained one column); a file of any other version is refused.
"""

from __future__ import annotations

import logging
import sqlite3

from pynenc_lite.errors import BackendError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "4"

# Each version `create` upgrades in place, with the statements that take it to the next one.
# Adding a nullable column is the kind of change that belongs here: rows written before it
# read as NULL, which the code must treat as "not set".
_MIGRATIONS: dict[str, list[str]] = {
    # 3: each invocation may carry its task's max_lost_attempts (NULL: the runner's setting).
    "2": ["ALTER TABLE invocations ADD COLUMN max_lost_attempts INTEGER"],
    # 4: whether a call held back by its running limit waits (1; NULL, as every call of
    # version 3 did) or is dropped (0).
    "3": ["ALTER TABLE invocations ADD COLUMN reroute_on_concurrency_control INTEGER"],
}
# The versions a read-only open accepts (it cannot upgrade): reads never name a column
# that an older one of these lacks; only writes (submit, claim) use the newer columns.
READABLE_VERSIONS = ("2", "3", SCHEMA_VERSION)

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
    max_lost_attempts INTEGER,          -- the task's own cap; NULL: the claiming runner's
    reroute_on_concurrency_control INTEGER, -- held back by running_limit: 0 drop, else wait
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


def create(c: sqlite3.Connection, path: str) -> None:
    """Check the file's schema version, then create the tables and indexes it lacks.

    Runs inside the caller's write transaction, so two processes opening a new file at once
    do not both create it.

    Raises:
        BackendError: the file was written with another schema version.
    """
    # The version first: an older layout must get this message, not a failure of one of
    # the statements below.
    c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None:
        c.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
    elif row[0] != SCHEMA_VERSION:
        _upgrade(c, path, row[0])
    # Statement by statement: executescript() would commit the caller's transaction first.
    for statement in _SCHEMA.split(";\n"):
        if statement.strip():
            c.execute(statement)


def _upgrade(c: sqlite3.Connection, path: str, found: str) -> None:
    """Bring a file of an older version up to `SCHEMA_VERSION`, in the caller's transaction
    (so a failure leaves it as it was, and two processes cannot both upgrade it).

    Raises:
        BackendError: no way from `found` to this version (a newer file, or an unknown one).
    """
    version = found
    while version in _MIGRATIONS:
        for statement in _MIGRATIONS[version]:
            c.execute(statement)
        version = str(int(version) + 1)
    if version != SCHEMA_VERSION:
        raise _version_error(path, found)
    c.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))
    logger.info("upgraded %s from schema version %s to %s", path, found, SCHEMA_VERSION)


def check(c: sqlite3.Connection, path: str) -> None:
    """Check, writing nothing, that the file holds tables this code can read (for a
    read-only open: `create` would have to write).

    Raises:
        BackendError: no pynenc_lite tables in the file, or another schema version.
    """
    found = c.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    row = None
    if found is not None:
        row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None:
        raise BackendError(
            f"{path} holds no pynenc_lite tables (it is another program's database, or no "
            "pynenc_lite process ever opened it to write); check the path"
        )
    if row[0] not in READABLE_VERSIONS:
        raise _version_error(path, row[0])


def _version_error(path: str, found: str) -> BackendError:
    return BackendError(
        f"{path} was written with schema version {found}, this pynenc_lite uses "
        f"{SCHEMA_VERSION}; use a new sqlite_db_path or the matching pynenc_lite version."
    )
