"""`reroute_on_concurrency_control` (pynenc's task option, issue 11.8): what happens to a call
that its task's running limit holds back when a runner would start it.

With pynenc's default, False, the call is dropped: it becomes CONCURRENCY_CONTROLLED_FINAL,
never runs, and reading its result raises `ConcurrencyControlledError` (a `KeyError`, as in
pynenc). With True it waits its turn. The claim itself is covered by the contract suite
(`test_a_call_held_back_by_its_running_limit_...`, over SQLite and TCP); here are the option,
a whole app with a thread runner, sync mode, the admin command and the schema upgrade (the
option is stored with each invocation, a column added in schema version 4).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from pynenc_lite import (
    ConcurrencyControlledError,
    ConcurrencyControlType,
    InvocationStatus,
    Pynenc,
    PynencConfig,
    TaskOptions,
    admin,
)
from pynenc_lite.backend.base import NewInvocation
from pynenc_lite.backend.sqlite import SQLiteBackend, schema
from tests.helpers import WAIT_SECONDS, sqlite_files
from tests.test_max_lost_attempts import make_version_2_file, stored

S = InvocationStatus
CC = ConcurrencyControlType
T0 = 1_000_000.0
LEASE = 10.0
OPTION = "reroute_on_concurrency_control"


def test_the_option_is_a_checked_bool_defaulting_to_pynencs_false(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert TaskOptions().reroute_on_concurrency_control is False
    with caplog.at_level(logging.WARNING):
        options = TaskOptions.from_decorator("t", {OPTION: True})
    assert options.reroute_on_concurrency_control is True
    assert "ignoring" not in caplog.text  # no longer one of pynenc's ignored options
    for bad in (1, "yes", None):
        with pytest.raises(ValueError, match=f"{OPTION} must be True or False"):
            TaskOptions.from_decorator("t", {OPTION: bad})


# -- a whole app with a thread runner ---------------------------------------------------------

started = threading.Event()
release = threading.Event()


def exclusive(i: int) -> int:
    """The first call holds the task's only running slot until the test releases it."""
    if i == 1:
        started.set()
        release.wait(WAIT_SECONDS)
    return i


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Pynenc]:
    app = Pynenc("cc_tests")
    app.conf = PynencConfig(
        app_id="cc_tests",
        config_values={"sqlite_db_path": str(tmp_path / "cc.sqlite3"), "max_threads": 4,
                       "result_timeout_seconds": WAIT_SECONDS},
        environ={},
    )
    started.clear()
    release.clear()
    yield app
    release.set()
    app.close()


def test_a_call_blocked_by_its_running_limit_is_dropped_by_default(app: Pynenc) -> None:
    task = app.task(running_concurrency=CC.TASK)(exclusive)
    first = task(1)
    with app.runner:
        assert started.wait(WAIT_SECONDS)
        second = task(2)  # three threads idle, but the task's one slot is taken
        with pytest.raises(KeyError) as info:
            second.get_result(WAIT_SECONDS)
        assert isinstance(info.value, ConcurrencyControlledError)
        message = str(info.value)
        assert task.name in message and second.invocation_id in message and OPTION in message
        assert second.status is S.CONCURRENCY_CONTROLLED_FINAL and second.done()
        with pytest.raises(ConcurrencyControlledError):
            second.result  # noqa: B018 - the property raises
        assert [h.status for h in second.history()] == [S.REGISTERED,
                                                        S.CONCURRENCY_CONTROLLED_FINAL]
        assert second.attempts == 0
        release.set()
        assert first.get_result(WAIT_SECONDS) == 1


def test_with_the_option_true_the_blocked_call_runs_after(app: Pynenc) -> None:
    task = app.task(running_concurrency=CC.TASK, reroute_on_concurrency_control=True)(exclusive)
    first = task(1)
    with app.runner:
        assert started.wait(WAIT_SECONDS)
        second = task(2)
        with pytest.raises(TimeoutError):
            second.get_result(0.2)  # held back while the first runs
        assert second.status is S.REGISTERED
        release.set()
        assert second.get_result(WAIT_SECONDS) == 2
        assert first.get_result(WAIT_SECONDS) == 1


# -- sync mode --------------------------------------------------------------------------------

nested_task: Any = None


def countdown(n: int) -> int:
    """Calls its own task while it runs: a second running call of a one-at-a-time task."""
    return 0 if n == 0 else nested_task(n - 1).result + 1


def test_sync_mode_applies_no_concurrency_control(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sync mode runs each call inline at once, to its end: there is no queue in which to
    hold a call back or drop it, so a call made while another call of the same
    one-at-a-time task runs (here: from inside it) runs too, whatever the option says."""
    global nested_task
    monkeypatch.chdir(tmp_path)
    app = Pynenc("cc_sync", config_values={"dev_mode_force_sync_tasks": True})
    nested_task = app.task(running_concurrency=CC.TASK)(countdown)
    try:
        call = nested_task(3)
        assert call.result == 3 and call.status is S.SUCCESS
    finally:
        nested_task = None
        app.close()
    assert sqlite_files(tmp_path) == []


# -- the admin command ------------------------------------------------------------------------


def _new(invocation_id: str, reroute: bool) -> NewInvocation:
    return NewInvocation(invocation_id, "cc_admin", "t", b"", T0, T0, running_key="k",
                         reroute_on_concurrency_control=reroute)


def test_admin_lists_and_counts_dropped_calls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "admin.sqlite3")
    backend = SQLiteBackend(path)
    try:
        backend.submit([_new("runs", False), _new("dropped", False), _new("waits", True)])
        backend.claim(app_id="cc_admin", worker_id="w", limit=4, now=T0, lease_seconds=LEASE,
                      max_lost_attempts=3)
    finally:
        backend.close()
    common = ["--db", path, "--app-id", "cc_admin", "--json"]
    assert admin.main(["list", "--status", "concurrency_controlled_final", *common]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["invocation_id"], r["status"]) for r in listed] == [
        ("dropped", "CONCURRENCY_CONTROLLED_FINAL")
    ]
    assert admin.main(["status", *common]) == 0
    counts = json.loads(capsys.readouterr().out)["counts_by_status"]
    assert counts["CONCURRENCY_CONTROLLED_FINAL"] == 1
    assert counts["RUNNING"] == 1 and counts["REGISTERED"] == 1


# -- the schema upgrade -----------------------------------------------------------------------


def make_version_3_file(path: Path) -> None:
    """A version-3 file (kept as data: version 2's tables plus the statement that made version
    3 of them), holding a running call and one its running limit holds back."""
    make_version_2_file(path)
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute("ALTER TABLE invocations ADD COLUMN max_lost_attempts INTEGER")
            conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
            conn.executemany(
                "INSERT INTO invocations (id, app_id, task_name, args, status, owner, "
                "lease_expires_at, run_at, attempts, created_at, running_key, running_limit) "
                "VALUES (?, 'old', 't', x'00', ?, ?, ?, ?, ?, ?, 'k', 1)",
                [("holder", "RUNNING", "w0", T0 + 100 * LEASE, T0, 1, T0),
                 ("held", "REGISTERED", None, None, T0, 0, T0)],
            )
    finally:
        conn.close()


def test_a_version_3_file_is_upgraded_in_place_and_its_held_calls_still_wait(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v3.sqlite3"
    make_version_3_file(path)
    backend = SQLiteBackend(str(path))
    try:
        claimed = backend.claim(app_id="old", worker_id="new", limit=10, now=T0 + 1,
                                lease_seconds=LEASE, max_lost_attempts=3)
        assert [c.invocation_id for c in claimed] == ["waiting"]
        # Written before the option was stored: it waits, as every held-back call did.
        held = backend.get_invocation("held")
        assert held is not None and held.status is S.REGISTERED
        # New calls carry the option.
        backend.submit([NewInvocation("new", "old", "t", b"", T0, T0, running_key="k",
                                      reroute_on_concurrency_control=False)])
        backend.claim(app_id="old", worker_id="new", limit=10, now=T0 + 2,
                      lease_seconds=LEASE, max_lost_attempts=3)
        dropped = backend.get_invocation("new")
        assert dropped is not None and dropped.status is S.CONCURRENCY_CONTROLLED_FINAL
    finally:
        backend.close()
    assert schema.SCHEMA_VERSION == "4"
    assert stored(path, "SELECT value FROM meta WHERE key = 'schema_version'") == [("4",)]
    assert stored(path, f"SELECT id, {OPTION} FROM invocations WHERE id IN ('held', 'new') "
                        "ORDER BY id") == [("held", None), ("new", 0)]


def test_a_version_3_file_opened_read_only_is_read_without_upgrading(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite3"
    make_version_3_file(path)
    backend = SQLiteBackend(str(path), read_only=True)
    try:
        assert backend.count_invocations_by_app() == {"old": 5}
        assert backend.get_stats("old", T0).counts_by_status["RUNNING"] == 2
    finally:
        backend.close()
    assert stored(path, "SELECT value FROM meta WHERE key = 'schema_version'") == [("3",)]
