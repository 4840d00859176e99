"""`max_lost_attempts` as a task option (issue 17.7), and the schema change it needed.

Workers that are restarted from outside (deployments) vanish while holding healthy work; a
long task on such workers needs more lost attempts than the app's default before it is
declared FAILED with `WorkerLostError`. The option travels with each invocation (a column
added in schema version 3), so whichever runner claims it applies the task's own cap. The
contract suite checks the claim itself (`test_an_invocations_own_max_lost_attempts_...`).

A file written by schema version 2 is upgraded in place when it is opened: the test below
builds one with version 2's own statements (kept here as data) and finds its invocations
intact and claimable.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Iterator

import pytest

from pynenc_lite import Pynenc, PynencConfig, TaskOptions
from pynenc_lite.backend.sqlite import SQLiteBackend, schema
from pynenc_lite.status import InvocationStatus

LEASE = 10.0


def test_the_option_is_checked_at_decoration_time() -> None:
    assert TaskOptions().max_lost_attempts is None  # the app's setting
    assert TaskOptions.from_decorator("t", {"max_lost_attempts": 10}).max_lost_attempts == 10
    for bad in (0, -1, 2.5, "3", True):
        with pytest.raises(ValueError, match="max_lost_attempts must be None or a whole number"):
            TaskOptions.from_decorator("t", {"max_lost_attempts": bad})


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Pynenc]:
    app = Pynenc("lost_tests")
    app.conf = PynencConfig(
        app_id="lost_tests",
        config_values={"sqlite_db_path": str(tmp_path / "lost.sqlite3")},
        environ={},
    )
    yield app
    app.close()


def tolerant() -> None:
    """Stands for a long, healthy task on workers that are restarted often."""


def plain() -> None:
    """Takes the app's max_lost_attempts."""


def test_each_call_carries_its_tasks_cap_to_the_claim(app: Pynenc) -> None:
    long_task = app.task(max_lost_attempts=10)(tolerant)
    other = app.task(plain)
    kept = long_task()
    follows_the_app = other()
    backend = app.backend
    now = 2_000_000_000.0
    for loss in range(6):  # six workers in a row killed from outside
        backend.claim(
            app_id=app.app_id, worker_id=f"w{loss}", limit=10, now=now,
            lease_seconds=LEASE, max_lost_attempts=app.conf.max_lost_attempts,
        )
        now += LEASE + 1
    record = backend.get_invocation(kept.invocation_id)
    assert record is not None and record.status is InvocationStatus.RUNNING
    assert record.lost_attempts == 5
    failed = backend.get_invocation(follows_the_app.invocation_id)
    assert failed is not None and failed.status is InvocationStatus.FAILED
    assert failed.lost_attempts == app.conf.max_lost_attempts == 3


# Schema version 2, exactly as pynenc_lite wrote it before this column (kept as data: the
# test must keep building an old file whatever the code's schema becomes).
SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters (name, value) VALUES ('outcome', 0);
CREATE TABLE IF NOT EXISTS invocations (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    app_id TEXT NOT NULL,
    task_name TEXT NOT NULL,
    args BLOB NOT NULL,
    status TEXT NOT NULL,
    owner TEXT,
    lease_expires_at REAL,
    run_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lost_attempts INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    registration_key TEXT,
    running_key TEXT,
    running_limit INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    result BLOB,
    error TEXT,
    traceback TEXT,
    outcome_seq INTEGER
);
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
    moment REAL NOT NULL,
    PRIMARY KEY (app_id, task_name)
);
CREATE TABLE IF NOT EXISTS listeners (
    name TEXT PRIMARY KEY,
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
INSERT INTO meta VALUES ('schema_version', '2');
"""

T0 = 1_000_000.0


def make_version_2_file(path: Path) -> None:
    """A version-2 file in WAL mode holding a waiting, a running (lost) and a done invocation."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA_V2)
    conn.executemany(
        "INSERT INTO invocations (id, app_id, task_name, args, status, owner, "
        "lease_expires_at, run_at, attempts, lost_attempts, created_at, result, finished_at, "
        "outcome_seq) VALUES (?, 'old', 't', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            ("waiting", b"args-w", "REGISTERED", None, None, T0, 0, 0, T0, None, None, None),
            ("lost", b"args-l", "RUNNING", "gone", T0 + LEASE, T0, 1, 2, T0, None, None, None),
            ("done", b"args-d", "SUCCESS", None, None, T0, 1, 0, T0, b"result", T0 + 1, 1),
        ],
    )
    conn.execute("UPDATE counters SET value = 1 WHERE name = 'outcome'")
    conn.commit()
    conn.close()


def stored(path: Path, sql: str) -> list[tuple[object, ...]]:
    """The rows of one query, read past the backend."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_a_version_2_file_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite3"
    make_version_2_file(path)
    backend = SQLiteBackend(str(path))
    try:
        assert [r.invocation_id for r in backend.list_invocations("old")] == [
            "done", "lost", "waiting"
        ]
        assert backend.get_args("waiting") == b"args-w"
        [outcome] = backend.get_outcomes(["done"])
        assert outcome.payload == b"result"
        # Claimable: the waiting one, and the lost one once more (its third loss fails it
        # under a runner cap of 3; under a cap of 4, the runner's setting, it runs again).
        claimed = backend.claim(app_id="old", worker_id="new", limit=10, now=T0 + LEASE + 1,
                                lease_seconds=LEASE, max_lost_attempts=4)
        assert sorted(c.invocation_id for c in claimed) == ["lost", "waiting"]
        lost = backend.get_invocation("lost")
        assert lost is not None and lost.lost_attempts == 3
    finally:
        backend.close()
    # Through version 3 to the current one (test_concurrency_controlled.py upgrades from 3).
    version = [(schema.SCHEMA_VERSION,)]
    assert stored(path, "SELECT value FROM meta WHERE key = 'schema_version'") == version
    caps = stored(path, "SELECT DISTINCT max_lost_attempts FROM invocations")
    assert caps == [(None,)]  # old rows follow the runner's setting


def test_a_version_2_file_opened_read_only_is_read_without_upgrading(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite3"
    make_version_2_file(path)
    backend = SQLiteBackend(str(path), read_only=True)
    try:
        assert backend.count_invocations_by_app() == {"old": 3}
        record = backend.get_invocation("lost")
        assert record is not None and record.lost_attempts == 2
    finally:
        backend.close()
    assert stored(path, "SELECT value FROM meta WHERE key = 'schema_version'") == [("2",)]


def test_cron_invocations_carry_their_tasks_cap(tmp_path: Path) -> None:
    from pynenc_lite.runner import upkeep

    app = Pynenc(
        "cron-cap", config_values={"sqlite_db_path": str(tmp_path / "cron.sqlite3")}
    )

    @app.task(cron="* * * * *", max_lost_attempts=7)
    def tick() -> None: ...

    try:
        t0 = 1_700_000_000.0  # a minute boundary plus change: the first look fires nothing
        upkeep.fire_due(app.runtime, t0)
        assert upkeep.fire_due(app.runtime, t0 + 60) == 1
        [record] = app.backend.list_invocations(app.app_id)
        with contextlib.closing(sqlite3.connect(tmp_path / "cron.sqlite3")) as conn:
            row = conn.execute(
                "SELECT max_lost_attempts FROM invocations WHERE id = ?", (record.invocation_id,)
            ).fetchone()
        assert row == (7,)
    finally:
        app.close()
