"""The contract every `pynenc_lite.backend.base.Backend` must keep, exercised directly with
plain data and an injected clock (`now`), so leases and expiry need no waiting.

The suite runs once per store in `STORES`. A store factory takes `tmp_path` and returns a
function making new `Backend` objects on ONE shared storage (each is a separate connection
/ client, like another process would have). To add a backend, add one `pytest.param` there,
e.g. one that starts a TCP server on a SQLite file and returns clients of it.

Tests at the end (`test_sqlite_*`) cover what is specific to the SQLite file.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

from pynenc_lite import serializer
from pynenc_lite.backend.base import Backend, NewInvocation, Outcome, WorkerInfo
from pynenc_lite.backend.sqlite import SQLiteBackend, statements
from pynenc_lite.errors import BackendError, WorkerLostError
from pynenc_lite.status import InvocationStatus, sources_of
from tests.helpers import is_runnable

S = InvocationStatus
T0 = 1_000_000.0  # the fake clock's start, in epoch seconds
LEASE = 10.0
APP = "app-a"
OTHER_APP = "app-b"

MakeBackend = Callable[[], Backend]


def sqlite_store(tmp_path: Path) -> MakeBackend:
    path = str(tmp_path / "contract.sqlite3")
    return lambda: SQLiteBackend(path, poll_min_seconds=0.0005, poll_max_seconds=0.01)


def memory_store(tmp_path: Path) -> MakeBackend:
    """pynenc's Mem* components: one in-memory database, shared by every backend made on
    its name in this process (each its own connections)."""
    name = f"contract-{tmp_path.name}-{os.urandom(4).hex()}"
    return lambda: SQLiteBackend(
        name, memory=True, poll_min_seconds=0.0005, poll_max_seconds=0.01
    )


STORES = [pytest.param(sqlite_store, id="sqlite"), pytest.param(memory_store, id="memory")]


@pytest.fixture(params=STORES)
def make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeBackend]:
    """Makes backends on this test's storage; all are closed at the end."""
    store: MakeBackend = request.param(tmp_path)
    made: list[Backend] = []

    def make() -> Backend:
        backend = store()
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def backend(make_backend: MakeBackend) -> Backend:
    return make_backend()


# -- helpers --------------------------------------------------------------------------------


def new(
    invocation_id: str,
    *,
    app_id: str = APP,
    task_name: str = "tests.contract.task",
    args: Optional[bytes] = None,
    run_at: float = T0,
    created_at: float = T0,
    max_lost_attempts: Optional[int] = None,
    running_key: Optional[str] = None,
    reroute: bool = True,
) -> NewInvocation:
    return NewInvocation(
        invocation_id,
        app_id,
        task_name,
        args if args is not None else f"args of {invocation_id}".encode(),
        run_at,
        created_at,
        running_key=running_key,
        max_lost_attempts=max_lost_attempts,
        reroute_on_concurrency_control=reroute,
    )


def claim(
    backend: Backend,
    worker_id: str = "w1",
    *,
    now: float = T0,
    limit: int = 10,
    app_id: str = APP,
    max_lost_attempts: int = 3,
) -> list[str]:
    """Claim and return the claimed ids, in the order the backend gave them."""
    claimed = backend.claim(
        app_id=app_id,
        worker_id=worker_id,
        limit=limit,
        now=now,
        lease_seconds=LEASE,
        max_lost_attempts=max_lost_attempts,
    )
    return [c.invocation_id for c in claimed]


def success(invocation_id: str, payload: bytes = b"value") -> Outcome:
    return Outcome(invocation_id, S.SUCCESS, payload)


def worker(worker_id: str = "w1", app_id: str = APP) -> WorkerInfo:
    return WorkerInfo(worker_id, app_id, "host", 1234, 4, T0)


def status_of(backend: Backend, invocation_id: str) -> InvocationStatus:
    record = backend.get_invocation(invocation_id)
    assert record is not None, f"{invocation_id} is not stored"
    return record.status


# -- submit -----------------------------------------------------------------------------------


def test_submit_stores_registered_invocations(backend: Backend) -> None:
    assert backend.submit([new("a", run_at=T0 + 1, created_at=T0), new("b")]) == ["a", "b"]
    record = backend.get_invocation("a")
    assert record is not None
    assert record.invocation_id == "a" and record.app_id == APP
    assert record.task_name == "tests.contract.task"
    assert record.status is S.REGISTERED
    assert (record.attempts, record.lost_attempts) == (0, 0)
    assert record.owner is None and record.lease_expires_at is None
    assert (record.run_at, record.created_at) == (T0 + 1, T0)
    assert record.started_at is None and record.finished_at is None
    assert backend.get_invocation("missing") is None


def test_submit_nothing_is_a_no_op(backend: Backend) -> None:
    assert backend.submit([]) == []
    assert not is_runnable(backend, APP, T0)


def test_submit_is_atomic_a_duplicate_id_stores_nothing_of_its_batch(backend: Backend) -> None:
    backend.submit([new("a", task_name="first")])
    with pytest.raises(BackendError):
        backend.submit([new("c"), new("a", task_name="second"), new("d")])
    assert backend.get_invocation("c") is None
    assert backend.get_invocation("d") is None
    record = backend.get_invocation("a")
    assert record is not None and record.task_name == "first"
    assert claim(backend) == ["a"]


def test_submit_of_a_duplicate_id_raises_backend_error(backend: Backend) -> None:
    # A caller must not need to know which backend it talks to (sqlite3 vs socket errors).
    backend.submit([new("a")])
    with pytest.raises(BackendError):
        backend.submit([new("a")])


# -- claim ------------------------------------------------------------------------------------


def test_claim_is_first_in_first_out(backend: Backend) -> None:
    for name in ["e", "b", "d"]:
        backend.submit([new(name)])
    backend.submit([new("a"), new("c")])
    assert claim(backend) == ["e", "b", "d", "a", "c"]


def test_claim_takes_earlier_run_at_first(backend: Backend) -> None:
    backend.submit([new("late", run_at=T0 - 1), new("early", run_at=T0 - 5)])
    assert claim(backend) == ["early", "late"]


def test_claim_respects_the_limit(backend: Backend) -> None:
    backend.submit([new(f"i{n}") for n in range(5)])
    assert claim(backend, limit=2) == ["i0", "i1"]
    assert claim(backend, limit=2) == ["i2", "i3"]
    assert claim(backend, limit=2) == ["i4"]
    assert claim(backend, limit=2) == []
    assert claim(backend, limit=0) == []


def test_claim_marks_running_and_returns_attempt_numbers(backend: Backend) -> None:
    backend.submit([new("a", args=b"\x00pickled\xff")])
    [claimed] = backend.claim(
        app_id=APP, worker_id="w1", limit=1, now=T0 + 2, lease_seconds=LEASE, max_lost_attempts=3
    )
    assert (claimed.invocation_id, claimed.task_name) == ("a", "tests.contract.task")
    assert claimed.args == b"\x00pickled\xff"
    assert claimed.attempt == 1
    record = backend.get_invocation("a")
    assert record is not None
    assert record.status is S.RUNNING
    assert record.owner == "w1"
    assert record.lease_expires_at == T0 + 2 + LEASE
    assert record.started_at == T0 + 2
    assert record.attempts == 1


def test_claim_never_deletes(backend: Backend) -> None:
    backend.submit([new("a")])
    claim(backend)
    assert backend.get_invocation("a") is not None
    assert backend.complete_many([success("a")], "w1", T0 + 1)[0]
    assert backend.get_invocation("a") is not None


def test_claim_waits_for_run_at(backend: Backend) -> None:
    backend.submit([new("later", run_at=T0 + 30)])
    assert not is_runnable(backend, APP, T0)
    assert claim(backend, now=T0) == []
    assert is_runnable(backend, APP, T0 + 30)
    assert claim(backend, now=T0 + 30) == ["later"]


def test_claim_only_takes_its_own_apps_work(backend: Backend) -> None:
    backend.submit([new("a"), new("b", app_id=OTHER_APP)])
    assert claim(backend, app_id=OTHER_APP) == ["b"]
    assert claim(backend, app_id=APP) == ["a"]


def test_claims_by_two_workers_never_overlap(make_backend: MakeBackend) -> None:
    first, second = make_backend(), make_backend()
    first.submit([new(f"i{n}") for n in range(6)])
    one = claim(first, "w1", limit=3)
    two = claim(second, "w2", limit=10)
    assert one == ["i0", "i1", "i2"] and two == ["i3", "i4", "i5"]


# -- complete ---------------------------------------------------------------------------------


def test_complete_stores_the_outcome(backend: Backend) -> None:
    backend.submit([new("ok"), new("bad")])
    claim(backend)
    failure = Outcome("bad", S.FAILED, b"pickled exc", "ValueError: no", "Traceback ...")
    assert backend.complete_many([success("ok", b"42"), failure], "w1", T0 + 1) == [True, True]
    outcomes = {o.invocation_id: o for o in backend.get_outcomes(["ok", "bad"])}
    assert outcomes["ok"] == Outcome("ok", S.SUCCESS, b"42", None, None)
    assert outcomes["bad"] == failure
    record = backend.get_invocation("bad")
    assert record is not None
    assert record.status is S.FAILED and record.finished_at == T0 + 1
    assert record.owner is None and record.lease_expires_at is None
    assert record.error == "ValueError: no"


def test_complete_is_refused_for_a_worker_that_does_not_hold_the_claim(backend: Backend) -> None:
    backend.submit([new("a"), new("b")])
    claim(backend, "w1", limit=1)
    assert backend.complete_many([success("a")], "stranger", T0 + 1)[0] is False
    assert status_of(backend, "a") is S.RUNNING
    # b was never claimed: nobody may complete it.
    assert backend.complete_many([success("a"), success("b")], "w1", T0 + 1) == [True, False]
    assert status_of(backend, "b") is S.REGISTERED
    assert [o.invocation_id for o in backend.get_outcomes(["a", "b"])] == ["a"]


def test_complete_after_a_lease_takeover_is_refused(backend: Backend) -> None:
    backend.submit([new("a")])
    claim(backend, "w1", now=T0)
    # w1 vanished: its lease ran out and w2 took the invocation over.
    [taken] = backend.claim(
        app_id=APP, worker_id="w2", limit=1, now=T0 + LEASE + 1, lease_seconds=LEASE,
        max_lost_attempts=3,
    )
    assert taken.attempt == 2
    assert backend.complete_many([success("a", b"late")], "w1", T0 + LEASE + 2)[0] is False
    assert backend.complete_many([success("a", b"w2")], "w2", T0 + LEASE + 3)[0] is True
    assert backend.complete_many([success("a", b"later")], "w1", T0 + LEASE + 4)[0] is False
    assert backend.get_outcomes(["a"]) == [Outcome("a", S.SUCCESS, b"w2")]


def test_complete_needs_a_final_status(backend: Backend) -> None:
    backend.submit([new("a")])
    claim(backend)
    with pytest.raises(ValueError):
        backend.complete_many([Outcome("a", S.RUNNING)], "w1", T0)[0]
    assert status_of(backend, "a") is S.RUNNING


# -- leases -----------------------------------------------------------------------------------


def test_an_expired_lease_is_reclaimed_by_another_worker(backend: Backend) -> None:
    backend.submit([new("a")])
    claim(backend, "w1", now=T0)
    assert not is_runnable(backend, APP, T0 + LEASE - 1)
    assert claim(backend, "w2", now=T0 + LEASE - 1) == []
    assert is_runnable(backend, APP, T0 + LEASE + 1)
    assert claim(backend, "w2", now=T0 + LEASE + 1) == ["a"]
    record = backend.get_invocation("a")
    assert record is not None
    assert (record.status, record.owner) == (S.RUNNING, "w2")
    assert (record.attempts, record.lost_attempts) == (2, 1)
    assert record.lease_expires_at == T0 + 2 * LEASE + 1


def test_after_max_lost_attempts_the_invocation_fails_with_worker_lost(backend: Backend) -> None:
    start, _ = backend.get_finished_since(-1)
    backend.submit([new("a")])
    assert claim(backend, "w1", now=T0, max_lost_attempts=2) == ["a"]
    assert claim(backend, "w2", now=T0 + 11, max_lost_attempts=2) == ["a"]  # lost once
    assert claim(backend, "w3", now=T0 + 22, max_lost_attempts=2) == []  # lost twice: failed
    record = backend.get_invocation("a")
    assert record is not None
    assert record.status is S.FAILED
    assert (record.attempts, record.lost_attempts) == (2, 2)
    assert record.owner is None and record.lease_expires_at is None
    [outcome] = backend.get_outcomes(["a"])
    assert outcome.status is S.FAILED and outcome.error is not None
    assert outcome.error.startswith("WorkerLostError:")
    # What a caller waiting on it gets:
    error = serializer.load_exception(outcome.payload, outcome.error, outcome.traceback)
    assert isinstance(error, WorkerLostError)
    assert backend.get_finished_since(start)[1] == ["a"]
    assert not is_runnable(backend, APP, T0 + 1000)


def test_max_lost_attempts_one_fails_at_the_first_loss(backend: Backend) -> None:
    backend.submit([new("a")])
    claim(backend, "w1", now=T0, max_lost_attempts=1)
    assert claim(backend, "w2", now=T0 + 11, max_lost_attempts=1) == []
    assert status_of(backend, "a") is S.FAILED


def test_an_invocations_own_max_lost_attempts_beats_the_runners(backend: Backend) -> None:
    """A task option (issue 17.7): `tolerant` may be lost 4 times whatever the runner's
    setting, `strict` once; `plain` (no cap of its own) follows the runner's 2."""
    backend.submit([
        new("tolerant", max_lost_attempts=4),
        new("strict", max_lost_attempts=1),
        new("plain"),
    ])
    now = T0
    assert sorted(claim(backend, "w0", now=now, max_lost_attempts=2)) == [
        "plain", "strict", "tolerant"
    ]
    survivors = []
    for loss in range(1, 5):  # every worker vanishes: its lease runs out
        now += LEASE + 1
        survivors.append(sorted(claim(backend, f"w{loss}", now=now, max_lost_attempts=2)))
    assert survivors == [["plain", "tolerant"], ["tolerant"], ["tolerant"], []]
    for invocation_id, lost in (("strict", 1), ("plain", 2), ("tolerant", 4)):
        record = backend.get_invocation(invocation_id)
        assert record is not None and record.status is S.FAILED, invocation_id
        assert record.lost_attempts == lost, invocation_id
        assert record.error is not None and f"vanished {lost} time(s)" in record.error


def test_heartbeat_extends_leases(backend: Backend) -> None:
    backend.submit([new("a")])
    claim(backend, "w1", now=T0)
    assert backend.heartbeat(worker("w1"), ["a"], T0 + 8, LEASE) == []
    record = backend.get_invocation("a")
    assert record is not None and record.lease_expires_at == T0 + 8 + LEASE
    # Past the first lease but within the extended one: nothing to reclaim.
    assert not is_runnable(backend, APP, T0 + 15)
    assert claim(backend, "w2", now=T0 + 15) == []
    # Heartbeats keep it going as long as they come.
    for beat in range(16, 60, 8):
        backend.heartbeat(worker("w1"), ["a"], T0 + beat, LEASE)
        assert claim(backend, "w2", now=T0 + beat + LEASE - 1) == []
    assert backend.complete_many([success("a")], "w1", T0 + 60)[0]


def test_heartbeat_leaves_unlisted_leases_to_expire(backend: Backend) -> None:
    """A claim the worker never learnt of (its reply was lost) is not kept alive."""
    backend.submit([new("a"), new("b")])
    claim(backend, "w1", now=T0, limit=2)
    backend.heartbeat(worker("w1"), ["a"], T0 + 8, LEASE)
    assert claim(backend, "w2", now=T0 + LEASE + 1) == ["b"]


def test_heartbeat_reports_invocations_the_worker_no_longer_holds(backend: Backend) -> None:
    backend.submit([new("a"), new("b")])
    claim(backend, "w1", now=T0)
    assert backend.heartbeat(worker("w1"), ["a", "b"], T0 + 1, LEASE) == []
    claim(backend, "w2", now=T0 + 1 + LEASE + 1)  # both taken over after w1 fell silent
    assert sorted(backend.heartbeat(worker("w1"), ["a", "b"], T0 + 30, LEASE)) == ["a", "b"]


def test_heartbeat_counts_live_workers(backend: Backend) -> None:
    assert backend.count_live_workers(APP, T0 - 100) == 0
    backend.heartbeat(worker("w1"), [], T0, LEASE)
    backend.heartbeat(worker("w2"), [], T0 + 5, LEASE)
    backend.heartbeat(worker("x1", app_id=OTHER_APP), [], T0 + 5, LEASE)
    assert backend.count_live_workers(APP, T0) == 2
    assert backend.count_live_workers(APP, T0 + 1) == 1
    assert backend.count_live_workers(APP, T0 + 6) == 0
    assert backend.count_live_workers(OTHER_APP, T0) == 1
    backend.remove_worker("w2")
    assert backend.count_live_workers(APP, T0) == 1


def test_release_hands_work_back_to_registered(backend: Backend) -> None:
    backend.submit([new("a"), new("b"), new("c")])
    claim(backend, "w1", limit=2)
    claim(backend, "w2", limit=1)
    assert backend.release("w1", T0 + 5) == 2
    for name in ["a", "b"]:
        record = backend.get_invocation(name)
        assert record is not None
        assert record.status is S.REGISTERED
        assert record.owner is None and record.lease_expires_at is None
        assert (record.attempts, record.lost_attempts) == (1, 0)
    assert status_of(backend, "c") is S.RUNNING  # another worker's claim is untouched
    assert backend.release("w1", T0 + 5) == 0
    claimed = backend.claim(
        app_id=APP, worker_id="w3", limit=10, now=T0 + 1, lease_seconds=LEASE, max_lost_attempts=3
    )
    assert [(c.invocation_id, c.attempt) for c in claimed] == [("a", 2), ("b", 2)]


# -- running concurrency control -------------------------------------------------------------


def test_a_call_held_back_by_its_running_limit_waits_when_rerouted(backend: Backend) -> None:
    backend.submit([new("first", running_key="k")])
    assert claim(backend) == ["first"]
    backend.submit([new("waits", running_key="k", reroute=True)])
    assert claim(backend, "w2") == []
    assert status_of(backend, "waits") is S.REGISTERED
    backend.complete_many([success("first")], "w1", T0 + 1)
    assert claim(backend, "w2", now=T0 + 1) == ["waits"]


def test_a_call_held_back_by_its_running_limit_is_dropped_when_not_rerouted(
    backend: Backend,
) -> None:
    start, _ = backend.get_finished_since(-1)
    backend.submit([new("first", running_key="k")])
    assert claim(backend) == ["first"]
    backend.submit(
        [new("dropped", running_key="k", reroute=False), new("free"), new("other-key",
         running_key="j", reroute=False)]
    )
    assert claim(backend, "w2", now=T0 + 1) == ["free", "other-key"]
    record = backend.get_invocation("dropped")
    assert record is not None and record.status is S.CONCURRENCY_CONTROLLED_FINAL
    assert record.attempts == 0 and record.owner is None and record.finished_at == T0 + 1
    # A final outcome like any other: waiters everywhere are released.
    assert backend.get_finished_since(start)[1] == ["dropped"]
    [outcome] = backend.get_outcomes(["dropped"])
    assert outcome.status is S.CONCURRENCY_CONTROLLED_FINAL and outcome.payload is None
    assert outcome.error is not None and "reroute_on_concurrency_control" in outcome.error
    assert [(h.status, h.at, h.worker_id) for h in backend.get_history("dropped")] == [
        (S.REGISTERED, T0, None), (S.CONCURRENCY_CONTROLLED_FINAL, T0 + 1, "w2"),
    ]
    # Never runs, never changes again; the one it made way for is untouched.
    assert backend.complete_many([success("first")], "w1", T0 + 2) == [True]
    assert claim(backend, "w3", now=T0 + 3) == []
    assert status_of(backend, "dropped") is S.CONCURRENCY_CONTROLLED_FINAL
    assert backend.cancel("dropped", T0 + 3) is False


def test_within_one_claim_the_first_call_runs_and_the_next_is_dropped(backend: Backend) -> None:
    backend.submit([new(n, running_key="k", reroute=False) for n in ("a", "b")])
    backend.submit([new("c", running_key="k", reroute=True)])
    assert claim(backend) == ["a"]
    assert status_of(backend, "b") is S.CONCURRENCY_CONTROLLED_FINAL
    assert status_of(backend, "c") is S.REGISTERED
    stats = backend.get_stats(APP, T0)
    assert stats.counts_by_status == {"RUNNING": 1, "CONCURRENCY_CONTROLLED_FINAL": 1,
                                      "REGISTERED": 1}
    listed = backend.list_invocations(APP, status=S.CONCURRENCY_CONTROLLED_FINAL)
    assert [r.invocation_id for r in listed] == ["b"]


def test_a_dropped_outcome_cannot_be_completed_by_a_worker(backend: Backend) -> None:
    with pytest.raises(ValueError, match="cannot complete with status"):
        backend.complete_many(
            [Outcome("x", S.CONCURRENCY_CONTROLLED_FINAL)], "w1", T0
        )


# -- reading outcomes -------------------------------------------------------------------------


def test_get_outcomes_returns_only_final_ones(backend: Backend) -> None:
    backend.submit([new("done"), new("running"), new("waiting")])
    claim(backend, limit=2)
    backend.complete_many([success("done")], "w1", T0 + 1)[0]
    outcomes = backend.get_outcomes(["done", "running", "waiting", "missing"])
    assert [o.invocation_id for o in outcomes] == ["done"]
    assert backend.get_outcomes([]) == []


def test_get_finished_since_returns_newly_finished_ids_in_order(backend: Backend) -> None:
    start, ids = backend.get_finished_since(-1)
    assert ids == []
    backend.submit([new(n) for n in "abcde"])
    claim(backend)
    assert backend.get_finished_since(start) == (start, [])
    backend.complete_many([success("b")], "w1", T0 + 1)[0]
    backend.complete_many([Outcome("a", S.FAILED, None, "E: x", "tb")], "w1", T0 + 2)[0]
    backend.complete_many([success("e"), success("c")], "w1", T0 + 3)
    # refused: not listed again
    assert backend.complete_many([success("c")], "w1", T0 + 4)[0] is False
    newest, ids = backend.get_finished_since(start)
    assert ids == ["b", "a", "e", "c"]
    assert newest > start
    assert backend.get_finished_since(newest) == (newest, [])
    backend.complete_many([success("d")], "w1", T0 + 5)[0]
    newer, ids = backend.get_finished_since(newest)
    assert ids == ["d"] and newer > newest


def test_count_invocations_by_app_names_every_app_stored(backend: Backend) -> None:
    """For `status` on a file shared by several apps (issue 10.12)."""
    assert backend.count_invocations_by_app() == {}
    backend.submit([new("a1"), new("a2"), new("b1", app_id=OTHER_APP)])
    claim(backend, limit=1)
    assert backend.complete_many([success("a1")], "w1", T0 + 1) == [True]
    assert backend.count_invocations_by_app() == {APP: 2, OTHER_APP: 1}
    backend.purge(APP)
    assert backend.count_invocations_by_app() == {OTHER_APP: 1}


def test_is_runnable_oracle(backend: Backend) -> None:
    assert not is_runnable(backend, APP, T0)
    backend.submit([new("a")])
    assert is_runnable(backend, APP, T0)
    assert not is_runnable(backend, OTHER_APP, T0)
    claim(backend, now=T0)
    assert not is_runnable(backend, APP, T0 + 1)
    assert is_runnable(backend, APP, T0 + LEASE + 1)  # its lease expired
    claim(backend, "w2", now=T0 + LEASE + 1)
    backend.complete_many([success("a")], "w2", T0 + LEASE + 2)[0]
    assert not is_runnable(backend, APP, T0 + 1000)


# -- waiting for changes ----------------------------------------------------------------------


def wait_in_thread(
    backend: Backend, timeout: float
) -> tuple[threading.Event, Callable[[], tuple[int, int, float]]]:
    """Start a thread that takes a token, signals, then waits for a change with `timeout`.

    Returns the "has its token" event and a function joining the thread that gives
    (token, new token, seconds waited). Tokens are per thread, so both calls run there.
    """
    ready = threading.Event()
    box: list[tuple[int, int, float]] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            token = backend.wait_for_change(None, 0)
            ready.set()
            start = time.monotonic()
            new_token = backend.wait_for_change(token, timeout)
            box.append((token, new_token, time.monotonic() - start))
        except BaseException as exc:  # reported by result()
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=target, name="test-wait-for-change", daemon=True)
    thread.start()

    def result() -> tuple[int, int, float]:
        thread.join(timeout + 5)
        assert not thread.is_alive(), "wait_for_change did not return"
        if errors:
            raise errors[0]
        return box[0]

    return ready, result


def test_wait_for_change_without_a_token_returns_at_once(backend: Backend) -> None:
    start = time.monotonic()
    assert isinstance(backend.wait_for_change(None, 5.0), int)
    assert time.monotonic() - start < 5.0


def test_wait_for_change_wakes_on_a_commit_from_another_connection(
    make_backend: MakeBackend,
) -> None:
    waiter, writer = make_backend(), make_backend()
    writer.submit([new("first")])  # both open; the storage exists
    ready, result = wait_in_thread(waiter, timeout=2.0)
    assert ready.wait(5)
    writer.submit([new("a")])
    token, new_token, waited = result()
    assert new_token != token
    assert waited < 2.0  # woken by the commit, not by the timeout


def test_wait_for_change_wakes_on_a_commit_from_another_thread(backend: Backend) -> None:
    ready, result = wait_in_thread(backend, timeout=2.0)
    assert ready.wait(5)
    backend.submit([new("a")])  # this thread, same backend object
    token, new_token, waited = result()
    assert new_token != token
    assert waited < 2.0


def test_wait_for_change_sees_a_commit_made_before_it_was_called(backend: Backend) -> None:
    token = backend.wait_for_change(None, 0)
    other = threading.Thread(target=lambda: backend.submit([new("a")]))
    other.start()
    other.join(5)
    start = time.monotonic()
    assert backend.wait_for_change(token, 2.0) != token  # missed changes are not allowed
    assert time.monotonic() - start < 2.0


def test_wait_for_change_times_out_when_nothing_changes(backend: Backend) -> None:
    backend.submit([new("a")])
    token = backend.wait_for_change(None, 0)
    start = time.monotonic()
    assert backend.wait_for_change(token, 0.3) == token
    assert 0.25 <= time.monotonic() - start < 2.0


# -- SQLite specifics -------------------------------------------------------------------------


def test_sqlite_file_is_created_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "private.sqlite3"
    backend = SQLiteBackend(str(path))
    try:
        backend.submit([new("a")])
        for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            if name.exists():
                assert stat.S_IMODE(os.stat(name).st_mode) == 0o600, name
    finally:
        backend.close()


def test_sqlite_path_in_a_missing_folder_gives_a_helpful_backend_error(tmp_path: Path) -> None:
    path = tmp_path / "no-such-folder" / "x.sqlite3"
    backend = SQLiteBackend(str(path))
    try:
        with pytest.raises(BackendError) as info:
            backend.submit([new("a")])
    finally:
        backend.close()
    message = str(info.value)
    assert str(path) in message
    assert "folder" in message and "sqlite_db_path" in message
    assert not path.parent.exists()


def test_sqlite_schema_version_mismatch_gives_backend_error(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    first = SQLiteBackend(str(path))
    first.submit([new("a")])
    first.close()
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    finally:
        conn.close()
    second = SQLiteBackend(str(path))
    try:
        with pytest.raises(BackendError, match="schema version 999"):
            second.get_invocation("a")
    finally:
        second.close()


def test_sqlite_close_is_idempotent_and_a_new_thread_gets_a_backend_error(
    tmp_path: Path,
) -> None:
    backend = SQLiteBackend(str(tmp_path / "closed.sqlite3"))
    backend.submit([new("a")])
    backend.close()
    backend.close()
    errors: list[BaseException] = []

    def use() -> None:  # a thread without a connection must not open a new one
        try:
            backend.get_invocation("a")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=use)
    thread.start()
    thread.join(5)
    assert len(errors) == 1 and isinstance(errors[0], BackendError), errors
    assert "closed" in str(errors[0])


def test_sqlite_claim_status_lists_are_the_sources_of_running() -> None:
    # A claim selects rows by status values written literally into its SQL (for the partial
    # indexes) and by the lease column, set exactly while leased; together they must be
    # what status.py allows a claim to start from.
    assert set(statements.CLAIMABLE) | set(statements.LEASED) == set(sources_of(S.RUNNING))
    assert set(statements.LEASED) == set(sources_of(S.FAILED))  # a lost worker's FAILED
    # A claim drops only waiting rows (chosen by those same literal statuses).
    assert set(statements.CLAIMABLE) == set(sources_of(S.CONCURRENCY_CONTROLLED_FINAL))
