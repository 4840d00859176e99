"""Operations: concurrency control, result expiry, purge, requeue and status history."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from pynenc_lite import (
    InvocationNotFoundError,
    InvocationStatus,
    Pynenc,
    PynencConfig,
    ThreadRunner,
)
from pynenc_lite.backend.sqlite import connection
from tests import tasks_ops as ops

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Pynenc]:
    ops.app.close()
    ops.app.conf = PynencConfig(
        app_id="ops",
        config_values={
            "sqlite_db_path": str(tmp_path / "ops.sqlite3"),
            "heartbeat_interval_seconds": 0.2,
            "result_timeout_seconds": 30.0,
            "max_threads": 8,
        },
        environ={},
    )
    ops.gate.clear()
    ops.running_now.clear()
    ops.most_at_once.clear()
    yield ops.app
    ops.gate.set()
    ops.app.close()


# -- registration concurrency ---------------------------------------------------------------


def test_registration_task_returns_the_waiting_invocation(app: Pynenc) -> None:
    first = ops.one_waiting_at_a_time(1)
    again = ops.one_waiting_at_a_time(2)  # other arguments: TASK ignores them
    assert again.invocation_id == first.invocation_id
    ThreadRunner(app, threads=2).run(burst=True)
    assert first.get_result(5) == 1 and again.get_result(5) == 1
    later = ops.one_waiting_at_a_time(3)  # the first one ran: a new one is queued
    assert later.invocation_id != first.invocation_id


def test_registration_arguments_and_keys(app: Pynenc) -> None:
    a = ops.one_per_arguments(1, y=2)
    assert ops.one_per_arguments(1, 2).invocation_id == a.invocation_id  # same, bound by name
    assert ops.one_per_arguments(1, 3).invocation_id != a.invocation_id
    u = ops.one_per_user("ana", "first")
    assert ops.one_per_user("ana", "second").invocation_id == u.invocation_id
    assert ops.one_per_user("bo", "first").invocation_id != u.invocation_id
    group = ops.one_per_user.parallelize([("cy", "a"), ("cy", "b"), ("di", "c")])
    ids = [i.invocation_id for i in group]
    assert ids[0] == ids[1] != ids[2]  # also within one batch


def test_registration_shares_the_result_with_direct_waiters(app: Pynenc) -> None:
    invocations = [ops.one_waiting_at_a_time(i) for i in range(5)]
    assert len({i.invocation_id for i in invocations}) == 1
    with app.runner:
        assert [i.get_result(10) for i in invocations] == [0] * 5


def test_keys_need_key_arguments(app: Pynenc) -> None:
    from pynenc_lite import ConcurrencyControlType as CC

    with pytest.raises(ValueError, match="key_arguments"):
        app.task(running_concurrency=CC.KEYS)(ops.quick.func)
    with pytest.raises(ValueError, match=r"key_arguments \['nope'\] are not parameters"):
        app.task(running_concurrency=CC.KEYS, key_arguments=["nope"])(ops.quick.func)
    with pytest.raises(ValueError, match="must be one of"):
        app.task(running_concurrency="SOMETIMES")(ops.quick.func)


# -- running concurrency --------------------------------------------------------------------


def test_running_limit_one_in_threads(app: Pynenc) -> None:
    group = ops.one_at_a_time.parallelize([(i,) for i in range(20)])
    with app.runner:
        ops.gate.set()  # each task then returns at once
        assert group.get_results(30) == list(range(20))
    assert ops.most_at_once == {"task": 1}  # never two at once, though 8 threads were idle


def test_running_limit_n_holds_the_rest_back(app: Pynenc) -> None:
    group = ops.three_per_key.parallelize([("k", i) for i in range(12)])
    other = ops.three_per_key.parallelize([("other", i) for i in range(3)])
    with app.runner:
        assert group.get_results(30) == list(range(12))
        assert other.get_results(30) == list(range(3))
    # Never more than 3 per key (12 calls of "k" with 8 threads would allow up to 8).
    assert 1 <= ops.most_at_once["k"] <= 3 and 1 <= ops.most_at_once["other"] <= 3
    records = [app.backend.get_invocation(i.invocation_id) for i in group]
    assert all(r is not None and r.status is InvocationStatus.SUCCESS for r in records)


@pytest.mark.slow
def test_running_limit_holds_across_processes(app: Pynenc, tmp_path: Path) -> None:
    """4 worker processes x 4 threads hammer one key whose limit is 2."""
    counter = tmp_path / "counter"
    counter.write_text("0 0")
    group = ops.two_per_key_across_processes.parallelize(
        [("shared", i, str(counter)) for i in range(300)]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYNENC__")}
    env.update(PYNENC__SQLITE_DB_PATH=str(app.conf.sqlite_db_path), PYNENC__APP_ID="ops",
               PYTHONPATH=str(ROOT))
    worker = subprocess.Popen(
        [sys.executable, "-m", "pynenc_lite.worker", "tests.tasks_ops:app",
         "--processes", "4", "--threads", "4", "--burst"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    assert worker.returncode == 0, output.decode(errors="replace")
    assert group.get_results(10) == list(range(300))
    now, most = (int(v) for v in counter.read_text().split())
    assert now == 0
    assert most == 2, f"at most {most} ran at once (limit 2)"


# -- history, requeue, expiry, purge --------------------------------------------------------


def test_history_records_every_transition_with_its_worker(app: Pynenc) -> None:
    invocation = ops.retried_once()
    with app.runner as runner:
        invocation.get_result(10)
        worker = runner.worker_id
    steps = [(h.status, h.worker_id) for h in invocation.history()]
    assert steps == [
        (InvocationStatus.REGISTERED, None),
        (InvocationStatus.RUNNING, worker),
        (InvocationStatus.RETRY, worker),
        (InvocationStatus.RUNNING, worker),
        (InvocationStatus.SUCCESS, worker),
    ]
    times = [h.at for h in invocation.history()]
    assert times == sorted(times)
    assert invocation.attempts == 2


def test_requeue_runs_failed_work_again(app: Pynenc) -> None:
    failed = ops.fails()
    ThreadRunner(app, threads=1).run(burst=True)
    assert failed.status is InvocationStatus.FAILED
    assert app.backend.requeue(app.app_id, task_name=ops.fails.name, now=time.time()) == 1
    assert failed.status is InvocationStatus.REGISTERED
    ThreadRunner(app, threads=1).run(burst=True)
    record = app.backend.get_invocation(failed.invocation_id)
    assert record is not None and record.status is InvocationStatus.FAILED
    assert record.attempts == 2
    statuses = [h.status for h in failed.history()]
    assert statuses.count(InvocationStatus.REGISTERED) == 2


def test_results_expire_and_say_so(app: Pynenc) -> None:
    app.conf.result_ttl_seconds = 0.05
    invocation = ops.quick(7)
    with app.runner:
        assert invocation.get_result(10) == 7
        deadline = time.monotonic() + 10
        while app.backend.get_invocation(invocation.invocation_id) is not None:
            assert time.monotonic() < deadline, "the runner never deleted the expired result"
            time.sleep(0.01)
    again = app.get_invocation  # reading an expired invocation is a clear error
    with pytest.raises(InvocationNotFoundError, match="result_ttl_seconds"):
        again(invocation.invocation_id)
    stale = type(invocation)(app, invocation.task_name, invocation.invocation_id)
    with pytest.raises(InvocationNotFoundError, match="result_ttl_seconds"):
        stale.get_result(1)


def test_purge_empties_the_app(app: Pynenc) -> None:
    invocations = [ops.quick(i) for i in range(5)]
    ThreadRunner(app, threads=2).run(burst=True)
    pending = ops.quick(99)
    assert app.purge() == 6
    assert app.backend.get_stats(app.app_id, time.time()).counts_by_status == {}
    with pytest.raises(InvocationNotFoundError):
        app.get_invocation(pending.invocation_id)
    assert invocations[0].history() == []


@pytest.mark.slow
def test_database_stops_growing_under_steady_load(app: Pynenc, tmp_path: Path) -> None:
    """Waves of short tasks with a short time-to-live: freed pages are reused, so after a
    few waves the file stops growing. Measured after a full checkpoint each wave, so the
    main file holds everything (the WAL is bounded by checkpoints and journal_size_limit)."""
    app.conf.result_ttl_seconds = 0.2
    db = Path(str(app.conf.sqlite_db_path))
    sizes = []
    wal_sizes = []
    with app.runner:
        for _ in range(12):
            group = ops.quick.parallelize([(i,) for i in range(1000)])
            group.get_results(60)
            deadline = time.monotonic() + 30
            while app.backend.get_stats(app.app_id, time.time()).counts_by_status:
                assert time.monotonic() < deadline, "expired results were not deleted"
                time.sleep(0.05)
            wal = Path(f"{db}-wal")
            wal_sizes.append(wal.stat().st_size if wal.exists() else 0)
            with contextlib.closing(sqlite3.connect(db)) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            sizes.append(db.stat().st_size)
    print("database file size (bytes) after each wave of 1,000 tasks:", sizes)
    print("WAL size (bytes) before each checkpoint:", wal_sizes)
    settled = sizes[6]
    # Twelve thousand invocations went through; the file holds about one wave's worth.
    assert max(sizes[6:]) - settled <= 0.02 * settled, sizes
    assert sizes[-1] < 2 * sizes[1], sizes
    # The WAL's bound: after a checkpoint it is cut back to journal_size_limit; between two,
    # it grows until the watcher's passive checkpoint (about twice a second) or, when a busy
    # machine starves those (one wave reached 30 MB under load, before and after the
    # architecture rework), until a commit's safety-net checkpoint at wal_autocheckpoint
    # pages. Each WAL frame is a page plus a 24-byte header.
    with contextlib.closing(sqlite3.connect(db)) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    bound = connection._AUTOCHECKPOINT_PAGES * (page_size + 24) + connection._WAL_SIZE_LIMIT_BYTES
    assert max(wal_sizes) <= bound, (wal_sizes, bound)
