"""Task lifecycle: retries with back-off, time limits, cancellation, delayed runs and cron.

Delays here are milliseconds of real time (retry_delay_seconds=0.01) or an injected `now`
(cron), so nothing sleeps for long; every wait has a timeout.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest

from pynenc_lite import (
    CronError,
    CronSchedule,
    InvocationCancelledError,
    InvocationStatus,
    Pynenc,
    PynencConfig,
    TaskOptions,
    TaskTimeLimitError,
    ThreadRunner,
)
from pynenc_lite.runner import upkeep
from tests import tasks_lifecycle as tl

ROOT = Path(__file__).resolve().parent.parent
UTC = datetime.timezone.utc


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Pynenc]:
    tl.app.close()
    tl.app.conf = PynencConfig(
        app_id="lifecycle",
        config_values={
            "sqlite_db_path": str(tmp_path / "lifecycle.sqlite3"),
            "heartbeat_interval_seconds": 0.05,
            "lease_seconds": 5.0,
            "result_timeout_seconds": 20.0,
            "shutdown_grace_seconds": 0.0,
        },
        environ={},
    )
    tl.release.clear()
    tl.ran.clear()
    yield tl.app
    tl.release.set()
    tl.app.close()


@pytest.fixture
def running(app: Pynenc) -> Iterator[Pynenc]:
    with app.runner:
        yield app


# -- retries --------------------------------------------------------------------------------


def test_backoff_schedule_doubles_and_is_capped() -> None:
    options = TaskOptions(retry_delay_seconds=1, retry_backoff=2, retry_max_delay_seconds=5,
                          retry_jitter=0)
    assert [options.retry_delay(n) for n in range(5)] == [1, 2, 4, 5, 5]


def test_backoff_jitter_stays_within_its_fraction() -> None:
    random.seed(7)
    options = TaskOptions(retry_delay_seconds=10, retry_backoff=1, retry_jitter=0.1)
    delays = [options.retry_delay(0) for _ in range(200)]
    assert all(9 <= d <= 11 for d in delays)
    assert len(set(delays)) > 100  # really spread, not one value


def test_retry_then_success(running: Pynenc) -> None:
    assert tl.flaky_until_third() == 3
    invocation = next(iter(running.backend.get_finished_since(0)[1]))
    record = running.backend.get_invocation(invocation)
    assert record is not None and record.retries == 2 and record.attempts == 3


def test_retries_exhausted_raise_the_last_error(running: Pynenc) -> None:
    with pytest.raises(ValueError, match="attempt 3 fails"):
        tl.always_fails()


def test_retry_error_asks_for_its_own_delay(running: Pynenc) -> None:
    start = time.monotonic()
    assert tl.asks_for_retry() == 2
    assert time.monotonic() - start < 10  # not the 60 s back-off


def test_other_exceptions_are_not_retried(running: Pynenc) -> None:
    with pytest.raises(KeyError):
        tl.not_retried_for_other_errors()
    ids = running.backend.get_finished_since(0)[1]
    record = running.backend.get_invocation(ids[-1])
    assert record is not None and record.retries == 0 and record.attempts == 1


def test_sync_mode_retries_inline(app: Pynenc, tmp_path: Path) -> None:
    app.conf.dev_mode_force_sync_tasks = True
    assert tl.flaky_until_third() == 3
    with pytest.raises(ValueError, match="attempt 3 fails"):
        tl.always_fails()
    start = time.monotonic()
    assert tl.asks_for_retry() == 2  # retried inline at once, without the delay
    assert time.monotonic() - start < 1
    assert not (tmp_path / "lifecycle.sqlite3").exists()


def test_bad_options_are_rejected_at_decoration(app: Pynenc) -> None:
    with pytest.raises(TypeError, match="unknown task option 'max_retry'"):
        app.task(max_retry=3)(lambda: None)
    with pytest.raises(ValueError, match="max_retries must be a whole number"):
        app.task(max_retries=-1)(lambda: None)
    with pytest.raises(ValueError, match="retry_for must be exception classes"):
        app.task(retry_for=[42])(lambda: None)
    with pytest.raises(CronError, match="minute field: 99 is outside 0-59"):
        app.task(cron="99 * * * *")(lambda: None)


# -- time limits ----------------------------------------------------------------------------


def test_thread_runner_fails_the_call_at_the_limit(running: Pynenc) -> None:
    start = time.monotonic()
    limit = r"blocks_past_limit exceeded its time limit of 0.2s"
    with pytest.raises(TaskTimeLimitError, match=limit):
        tl.blocks_past_limit()
    assert time.monotonic() - start < 5
    assert issubclass(TaskTimeLimitError, TimeoutError)
    tl.release.set()  # the thread runs on; its late result must not replace the failure
    ids = running.backend.get_finished_since(0)[1]
    assert running.backend.get_outcomes(ids)[0].status is InvocationStatus.FAILED


def test_time_limit_failures_can_be_retried(running: Pynenc) -> None:
    assert tl.slow_first_time() == 2
    tl.release.set()


def _worker(db: Path, tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYNENC__")}
    env.update(PYNENC__SQLITE_DB_PATH=str(db), PYNENC__APP_ID="lifecycle",
               PYNENC__HEARTBEAT_INTERVAL_SECONDS="0.05", PYTHONPATH=str(ROOT))
    with open(tmp_path / "worker.log", "wb") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, "-m", "pynenc_lite.worker", "tests.tasks_lifecycle:app",
             "--processes", "1", "--threads", "1", *args],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )


@pytest.fixture
def worker_process(app: Pynenc, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = _worker(Path(app.conf.sqlite_db_path or ""), tmp_path)
    try:
        yield process
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


def _pid_from(path: Path, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"{path} was not written"
        time.sleep(0.01)
    return int(path.read_text())


def _gone(pid: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.01)
    return False


def test_process_runner_ends_the_child_at_the_limit(
    app: Pynenc, worker_process: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    with pytest.raises(TaskTimeLimitError, match="time limit of 0.5s"):
        tl.spins_in_process(str(pid_file))
    assert _gone(_pid_from(pid_file)), "the worker process running the task was not ended"
    # A replacement process serves the next call.
    assert tl.record_run("replacement").get_result(20) == "replacement"


# -- cancellation ---------------------------------------------------------------------------


def test_cancel_before_start_never_runs(app: Pynenc) -> None:
    invocation = tl.record_run("cancelled")
    assert invocation.cancel() is True
    assert invocation.status is InvocationStatus.CANCELLED
    with pytest.raises(InvocationCancelledError) as caught:
        invocation.get_result(5)
    assert isinstance(caught.value, concurrent.futures.CancelledError)
    ThreadRunner(app, threads=1).run(burst=True)
    assert tl.ran == []


def test_cancelling_a_finished_invocation_changes_nothing(running: Pynenc) -> None:
    invocation = tl.record_run("done")
    assert invocation.get_result(10) == "done"
    assert invocation.cancel() is False
    assert invocation.status is InvocationStatus.SUCCESS


def test_cancel_while_running_on_threads_flags_the_task(running: Pynenc, tmp_path: Path) -> None:
    invocation = tl.runs_until_cancelled(str(tmp_path / "pid"))
    _pid_from(tmp_path / "pid")
    assert invocation.cancel() is True
    with pytest.raises(InvocationCancelledError):
        invocation.get_result(5)  # the waiter is released at once
    record = running.backend.get_invocation(invocation.invocation_id)
    assert record is not None and record.status is InvocationStatus.CANCELLED


def test_cancel_while_running_on_a_process_ends_it(
    app: Pynenc, worker_process: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    invocation = tl.runs_until_cancelled(str(tmp_path / "pid"))
    pid = _pid_from(tmp_path / "pid")
    assert invocation.cancel() is True
    assert _gone(pid), "the worker process running the cancelled task was not ended"
    assert invocation.status is InvocationStatus.CANCELLED


# -- delayed runs ---------------------------------------------------------------------------


def test_delayed_run_survives_a_worker_restart(app: Pynenc) -> None:
    invocation = tl.record_run.call_later(0.5, "late")
    record = app.backend.get_invocation(invocation.invocation_id)
    assert record is not None
    ThreadRunner(app, threads=1).run(burst=True)  # a worker that stops before it is due
    assert tl.ran == [] and invocation.status is InvocationStatus.REGISTERED
    with app.runner:  # a new worker, after a "restart"
        assert invocation.get_result(10) == "late"
    after = app.backend.get_invocation(invocation.invocation_id)
    assert after is not None and after.started_at is not None
    assert after.started_at >= record.run_at


def test_call_at_needs_an_aware_datetime(app: Pynenc) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        tl.record_run.call_at(datetime.datetime(2030, 1, 1), "x")
    when = datetime.datetime.now(UTC) + datetime.timedelta(seconds=0.2)
    with app.runner:
        assert tl.record_run.call_at(when, "at").get_result(10) == "at"


# -- cron -----------------------------------------------------------------------------------


def test_cron_parser_fields() -> None:
    s = CronSchedule("*/15 9-17 * * mon-fri")
    sunday_noon = datetime.datetime(2026, 11, 29, 12, 7, tzinfo=UTC)
    assert s.latest_at_or_before(sunday_noon) == datetime.datetime(2026, 11, 27, 17, 45, tzinfo=UTC)
    leap = CronSchedule("0 0 29 2 *").latest_at_or_before(sunday_noon)
    assert leap is not None and leap.date() == datetime.date(2024, 2, 29)
    # Both day fields restricted: either matches (classic cron).
    either = CronSchedule("0 0 1 * 1").latest_at_or_before(sunday_noon)
    assert either is not None and either.date() == datetime.date(2026, 11, 23)  # a Monday
    assert CronSchedule("0 12 * * 7").latest_at_or_before(sunday_noon) == datetime.datetime(
        2026, 11, 29, 12, 0, tzinfo=UTC
    )  # 7 is Sunday too


@pytest.mark.parametrize(
    "expression, message",
    [
        ("* * * *", "has 4 fields"),
        ("60 * * * *", "minute field: 60 is outside 0-59"),
        ("* 24 * * *", "hour field: 24 is outside 0-23"),
        ("* * 0 * *", "day of month field: 0 is outside 1-31"),
        ("* * * 13 *", "month field: 13 is outside 1-12"),
        ("* * * * 8", "day of week field: 8 is outside 0-7"),
        ("*/0 * * * *", "step '0' must be a number >= 1"),
        ("5-1 * * * *", "runs backwards"),
        ("x * * * *", "'x' is not a number"),
        ("1,,2 * * * *", "empty entry"),
    ],
)
def test_bad_cron_strings(expression: str, message: str) -> None:
    with pytest.raises(CronError, match=message):
        CronSchedule(expression)


def _cron_invocations(app: Pynenc) -> list[str]:
    conn = app.backend._db.conn()  # type: ignore[attr-defined]
    rows = conn.execute("SELECT id FROM invocations WHERE task_name LIKE '%every_five_minutes'")
    return sorted(r[0] for r in rows)


def test_cron_first_sight_then_each_moment_once(app: Pynenc) -> None:
    t0 = datetime.datetime(2026, 11, 29, 12, 1, tzinfo=UTC).timestamp()
    assert upkeep.fire_due(app.runtime, t0) == 0  # first sight: the schedule starts now
    assert upkeep.fire_due(app.runtime, t0 + 60) == 0  # 12:02: no moment yet
    assert upkeep.fire_due(app.runtime, t0 + 4 * 60) == 1  # 12:05
    assert upkeep.fire_due(app.runtime, t0 + 4 * 60 + 30) == 0  # same moment again: nothing
    assert len(_cron_invocations(app)) == 1


@pytest.mark.parametrize("mode, expected", [("once", 1), ("all", 6), ("skip", 0)])
def test_cron_missed_moments_after_downtime(app: Pynenc, mode: str, expected: int) -> None:
    t0 = datetime.datetime(2026, 11, 29, 12, 1, tzinfo=UTC).timestamp()
    upkeep.fire_due(app.runtime, t0, mode)
    # Down for half an hour: moments 12:05 ... 12:30 were missed; now is 12:32.
    assert upkeep.fire_due(app.runtime, t0 + 31 * 60, mode) == expected
    assert len(_cron_invocations(app)) == expected


def test_cron_fires_once_with_four_worker_processes(app: Pynenc, tmp_path: Path) -> None:
    """Four processes race to fire the same moments; each moment is stored exactly once."""
    t0 = datetime.datetime(2026, 11, 29, 12, 1, tzinfo=UTC).timestamp()
    upkeep.fire_due(app.runtime, t0)
    script = textwrap.dedent(
        f"""
        import sys
        from pynenc_lite import PynencConfig
        from pynenc_lite.runner import upkeep
        from tests import tasks_lifecycle as tl
        tl.app.conf = PynencConfig(app_id="lifecycle", environ={{}},
            config_values={{"sqlite_db_path": {str(app.conf.sqlite_db_path)!r}}})
        fired = 0
        for minute in range(0, 60):  # 12:01 .. 13:00, every process the same moments
            fired += upkeep.fire_due(tl.app.runtime, {t0} + minute * 60)
        print(fired)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYNENC__")}
    env["PYTHONPATH"] = str(ROOT)
    racers = [
        subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in racers]
    assert all(p.returncode == 0 for p in racers), outputs
    fired = sum(int(out.decode().strip()) for out, _ in outputs)
    ids = _cron_invocations(app)
    assert fired == len(ids) == 12  # 12:05, 12:10, ..., 13:00 — each once
    assert len(set(ids)) == 12


def test_an_unimportable_retry_for_name_does_not_break_the_runner(app: Pynenc) -> None:
    """A dotted name in retry_for that does not import must not lose the failure nor stop
    the runner (deciding about a retry used to raise in the worker thread and, past a time
    limit, in the dispatcher)."""

    def boom() -> None:
        raise ValueError("boom")

    def stuck() -> None:
        tl.release.wait(10)

    bad = app.direct_task(retry_for="nosuchmodule.Boom", max_retries=2)(boom)
    slow = app.direct_task(retry_for="nosuchmodule.Boom", max_retries=2,
                           time_limit_seconds=0.2)(stuck)
    with app.runner:
        with pytest.raises(ValueError, match="boom"):
            bad()
        with pytest.raises(TaskTimeLimitError):
            slow()
        assert tl.record_run("still serving").get_result(10) == "still serving"
    tl.release.set()
