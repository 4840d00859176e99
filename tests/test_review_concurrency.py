"""Regressions from an adversarial review: concurrency and failure cases of the hub, the
thread runner and the SQLite backend. Each test reproduces a bug that review found (the
docstrings say what used to happen); each wait is bounded, and the runners use an injected
clock where time matters."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import pytest

from pynenc_lite import (
    InvocationCancelledError,
    Pynenc,
    PynencConfig,
    TaskTimeLimitError,
    ThreadRunner,
)
from pynenc_lite.backend.base import NewInvocation, Outcome
from pynenc_lite.backend.sqlite import SQLiteBackend
from pynenc_lite.errors import BackendError
from pynenc_lite.status import InvocationStatus as S
from pynenc_lite.waiting import Hub
from tests import tasks_review as tr
from tests.helpers import wait_until

T0 = 1_000_000.0


class Clock:
    """Wall clock plus an offset the test moves forward (never backwards)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Pynenc]:
    tr.app.close()
    tr.app.conf = PynencConfig(
        app_id=f"review-{uuid.uuid4().hex[:8]}",
        config_values={
            "sqlite_db_path": str(tmp_path / "review.sqlite3"),
            "heartbeat_interval_seconds": 0.05,
            "lease_seconds": 10.0,
            "result_timeout_seconds": 5.0,
            "shutdown_grace_seconds": 0.0,
            "no_worker_warning_seconds": 0.05,
        },
        environ={},
    )
    tr.app._runner = None
    tr.reset()
    yield tr.app
    for event in tr.release.values():
        event.set()
    tr.app.close()
    tr.app._runner = None


def _claim(backend: SQLiteBackend, worker: str, now: float, limit: int = 1) -> list[str]:
    claimed = backend.claim(
        app_id="a", worker_id=worker, limit=limit, now=now, lease_seconds=10.0,
        max_lost_attempts=3,
    )
    return [c.invocation_id for c in claimed]


def _new(i: str, run_at: float = T0, **keys: Any) -> NewInvocation:
    return NewInvocation(i, "a", "t", b"", run_at, T0, **keys)


# -- lost wake-ups --------------------------------------------------------------------------


class FirstLookGated(SQLiteBackend):
    """Holds the watcher's first look at the database until `gate` is set: what happens when
    the watcher thread is scheduled late (a busy caller, the GIL, a slow first connect)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    def wait_for_change(self, token: Optional[int], timeout: float) -> int:
        if token is None:
            self.gate.wait(2.0)
        return super().wait_for_change(token, timeout)


def test_watcher_started_late_still_delivers_an_outcome_stored_before_its_first_look(
    tmp_path: Path,
) -> None:
    """Regression (lost wake-up): Hub._watch takes its first data_version token *after* the thread
    starts and never collects for it, so an outcome committed by another process between
    the future's registration and that first look is seen only at the next, unrelated commit
    (never, on an idle system): the caller waits for ever (result_timeout_seconds=None)."""
    path = str(tmp_path / "hub.sqlite3")
    watched, other = FirstLookGated(path), SQLiteBackend(path)
    hub = Hub(watched)
    try:
        future = hub.future_for("a", check_stored=False)  # as invoke.invoke does
        other.submit([_new("a")])  # from here on: "another process"
        assert _claim(other, "w", T0) == ["a"]
        assert other.complete_many([Outcome("a", S.SUCCESS, b"v")], "w", T0) == [True]
        watched.gate.set()  # the watcher thread finally runs
        assert future.result(timeout=1.0).status is S.SUCCESS
    finally:
        watched.gate.set()
        hub.close()
        watched.close()
        other.close()


def test_a_handle_waiting_across_app_close_gets_the_stored_outcome(app: Pynenc) -> None:
    """Regression (lost wake-up, minor): a handle whose future belongs to a hub that app.close()
    closed is never resolved; Invocation._wait reads the record every step but never looks
    at its outcome, so it waits although the outcome is stored."""
    invocation = tr.add(2, 3)
    assert not invocation.future.done()  # registered with the current hub
    app.close()  # e.g. a reconfiguration, or a test fixture, in another thread
    ThreadRunner(app, threads=1).run(burst=True)  # stores the outcome (new backend, new hub)
    assert invocation.status is S.SUCCESS
    assert invocation.get_result(timeout=1.0) == 5


# -- the thread runner ----------------------------------------------------------------------


def test_a_task_raising_a_base_exception_gets_an_outcome_and_keeps_its_thread(
    app: Pynenc,
) -> None:
    """Regression (nothing lost / hang): run_claimed catches only Exception and SystemExit. A task
    raising asyncio.CancelledError (a BaseException since 3.8; what an async task gets when
    an inner await is cancelled), KeyboardInterrupt or GeneratorExit kills the worker thread:
    the invocation stays RUNNING with its id in the pool's `running` table (so heartbeats
    extend its lease for ever), the caller never hears, and the pool has one thread less for
    good."""
    with ThreadRunner(app, threads=1):
        invocation = tr.raises_cancelled_error()
        with pytest.raises(BaseException) as info:
            invocation.get_result(timeout=1.0)
        assert not isinstance(info.value, TimeoutError), "no outcome was ever stored"
        assert tr.add(1, 2).get_result(timeout=1.0) == 3  # the only thread still serves


def test_time_limit_of_a_retry_holds_while_the_abandoned_first_attempt_still_runs(
    app: Pynenc,
) -> None:
    """Regression (race on the running table): WorkPool.running is keyed by invocation id. After a
    time limit turns attempt 1 into a RETRY, attempt 2 is claimed while attempt 1's thread still
    runs (threads cannot be stopped): mark_claimed overwrites the entry, and when attempt 1
    returns `finished` pops attempt 2's entry. Attempt 2 then has no time limit, is not listed in
    heartbeats (its lease is no longer extended) and cannot be flagged on cancel."""
    clock = Clock()
    with ThreadRunner(app, threads=2, clock=clock) as runner:
        invocation = tr.blocks_each_attempt()
        assert tr.started[1].wait(2.0)
        clock.offset += 10.0  # past attempt 1's 5 s limit
        app.hub.notify_work()  # wake the dispatcher so it reads the clock
        assert tr.started[2].wait(2.0), "the retry was not claimed"
        tr.release[1].set()  # attempt 1 returns; its outcome is dropped
        wait_until(lambda: runner._pool.active == 1, 2.0)
        assert invocation.invocation_id in runner._pool.running, "attempt 2 lost its entry"
        clock.offset += 10.0  # past attempt 2's limit as well
        app.hub.notify_work()
        with pytest.raises(TaskTimeLimitError):
            invocation.get_result(timeout=1.0)


class FailsFirstStore(SQLiteBackend):
    """complete_many fails once, as a transient error (disk I/O, a lock held too long)."""

    failures = 1

    def complete_many(self, outcomes: Sequence[Outcome], worker_id: str, now: float) -> list[bool]:
        if self.failures:
            self.failures -= 1
            raise BackendError("injected: disk I/O error")
        return super().complete_many(outcomes, worker_id, now)


def test_an_outcome_whose_store_failed_once_is_stored_later(app: Pynenc) -> None:
    """Regression (outcome dropped): Dispatcher._store logs a failed complete_many and drops the
    outcomes. The invocation stays RUNNING until its lease (10 s here) runs out, then runs
    again and counts a *lost attempt*: with max_lost_attempts=1 a task that succeeded ends
    FAILED with WorkerLostError ("the worker vanished"), which is false."""
    app.runtime.backend = FailsFirstStore(app.sqlite_db_path)
    with ThreadRunner(app, threads=1):
        invocation = tr.add(1, 2)
        assert invocation.get_result(timeout=1.5) == 3
    record = invocation.record()
    assert record is not None and (record.attempts, record.lost_attempts) == (1, 0)


# -- status transitions and claims ----------------------------------------------------------


def test_cancel_during_a_retry_wait_releases_the_caller_and_never_runs_again(
    app: Pynenc,
) -> None:
    """Guard (passes): RETRY -> CANCELLED releases waiters; the retry is never claimed."""
    backend = app.backend
    invocation = tr.add(1, 1)
    assert backend.claim(app_id=app.app_id, worker_id="w", limit=1, now=time.time(),
                         lease_seconds=10.0, max_lost_attempts=3)
    retry = Outcome(invocation.invocation_id, S.RETRY, None, "E", "tb", retry_at=time.time() + 60)
    assert backend.complete_many([retry], "w", time.time()) == [True]
    waiter_result: list[BaseException] = []

    def wait() -> None:
        try:
            invocation.get_result(timeout=2.0)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            waiter_result.append(exc)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    assert tr.app.get_invocation(invocation.invocation_id).cancel()
    thread.join(2.0)
    assert waiter_result and isinstance(waiter_result[0], InvocationCancelledError)
    # Its retry time comes: nothing claims it, and a late completion is refused.
    assert backend.claim(app_id=app.app_id, worker_id="w2", limit=5, now=time.time() + 120,
                         lease_seconds=10.0, max_lost_attempts=3) == []
    done = Outcome(invocation.invocation_id, S.SUCCESS, b"x")
    assert backend.complete_many([done], "w", time.time()) == [False]
    assert invocation.status is S.CANCELLED


def test_a_held_back_registered_row_does_not_starve_a_runnable_retry(tmp_path: Path) -> None:
    """Regression (work never claimed): _claimable pages both statuses with one shared OFFSET but
    keeps only the first `page` of their merge, so rows of one status that fell past that
    cut are skipped. With one idle thread (limit=1), a RETRY row queued behind a REGISTERED
    row held back by its running limit is never claimed while that row waits."""
    backend = SQLiteBackend(str(tmp_path / "claim.sqlite3"))
    try:
        backend.submit([_new("r")])
        assert _claim(backend, "w0", T0) == ["r"]
        retry = Outcome("r", S.RETRY, None, "E", "tb", retry_at=T0 + 2)
        assert backend.complete_many([retry], "w0", T0) == [True]
        backend.submit([_new("k1", running_key="k")])
        assert _claim(backend, "w1", T0) == ["k1"]  # holds key k
        backend.submit([_new("k2", run_at=T0 + 1, running_key="k")])  # held back by k1
        assert backend._has_runnable("a", T0 + 5)
        assert _claim(backend, "w2", T0 + 5) == ["r"]
    finally:
        backend.close()


def test_claim_cost_does_not_grow_with_the_finished_history_of_a_running_key(
    tmp_path: Path,
) -> None:
    """Regression (index): the running-limit count `running_key = ? AND status = 'RUNNING'` uses
    ix_invocations_running (app_id, running_key), which holds every row that ever had the
    key until result_ttl_seconds (7 days) deletes it; each claim, inside the write lock,
    reads them all. Measured with SQLite's progress handler (VM steps), not with a clock."""
    backend = SQLiteBackend(str(tmp_path / "cost.sqlite3"))

    def finish_history(prefix: str, n: int) -> None:
        # A high running_limit lets the history be claimed in bulk; the key is the same.
        backend.submit(
            [_new(f"{prefix}{i}", running_key="k", running_limit=10**6) for i in range(n)]
        )
        ids = _claim(backend, "h", T0, limit=n)
        backend.complete_many([Outcome(i, S.SUCCESS, b"") for i in ids], "h", T0)

    def claim_steps(tag: str) -> int:
        backend.submit([_new(tag, running_key="k")])
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        conn = backend._db.conn()
        conn.set_progress_handler(count, 100)
        try:
            assert _claim(backend, "w", T0) == [tag]
        finally:
            conn.set_progress_handler(None, 0)
        backend.complete_many([Outcome(tag, S.SUCCESS, b"")], "w", T0)
        return steps[0]

    try:
        finish_history("a", 20)
        small = claim_steps("p1")
        finish_history("b", 4000)
        large = claim_steps("p2")
        assert large <= 3 * max(small, 5), f"{small} -> {large} (x100 VM steps) per claim"
    finally:
        backend.close()
