"""The thread runner's life: starting, refusing a second run, stopping from another thread,
graceful stop with work in flight, and handing back what outlives the grace period.

Tasks in flight are held by events the test sets (tests/tasks_core.py), never by sleeps.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Callable

import pytest

from pynenc_lite import InvocationStatus, Pynenc
from tests import tasks_core
from tests.helpers import WAIT_SECONDS, alive, pynenc_threads, run_in_thread, wait_until

ConfigureApp = Callable[..., Pynenc]
REPO_ROOT = Path(__file__).resolve().parent.parent
WATCHER = "pynenc-lite-watcher"  # the hub's thread: it belongs to the app, not the runner


def names() -> tuple[str, str]:
    return uuid.uuid4().hex, uuid.uuid4().hex


def test_with_runner_starts_and_stops_it(core_app: Pynenc) -> None:
    before = pynenc_threads()
    runner = core_app.runner
    assert not runner.is_running
    with runner as entered:
        assert entered is runner
        assert runner.is_running
        assert tasks_core.add(1, 2) == 3
        started = pynenc_threads() - before
        started_names = {t.name for t in started}
        assert {"pynenc-lite-dispatcher", "pynenc-lite-heartbeat"} <= started_names
        assert sum(n.startswith("pynenc-lite-worker-") for n in started_names) == 8
    assert not runner.is_running
    # Once `with` has exited, the runner's own threads have ended (no task was in flight).
    left = alive(t for t in started if t.name != WATCHER)
    assert left == [], f"runner threads still alive after the with block: {left}"


def test_runner_threads_end_soon_after_a_stop(core_app: Pynenc) -> None:
    before = pynenc_threads()
    with core_app.runner:
        assert tasks_core.add(1, 2) == 3
        started = pynenc_threads() - before
    wait_until(lambda: alive(t for t in started if t.name != WATCHER) == [])


def test_run_while_running_raises_runtime_error(core_app: Pynenc) -> None:
    runner = core_app.runner
    with runner:
        with pytest.raises(RuntimeError, match="already running"):
            runner.run()
        with pytest.raises(RuntimeError, match="already running"):
            runner.run(burst=True)
        assert tasks_core.add(2, 2) == 4  # the first run is not disturbed
    assert not runner.is_running


def test_runner_can_be_run_again_after_a_stop(core_app: Pynenc) -> None:
    runner = core_app.runner
    for value in range(3):
        with runner:
            assert tasks_core.add(value, 1) == value + 1
        assert not runner.is_running


def test_stop_runner_loop_from_another_thread_makes_run_return(core_app: Pynenc) -> None:
    runner = core_app.runner
    thread = run_in_thread(runner.run, name="test-runner")
    assert tasks_core.add(2, 3) == 5  # it runs work
    runner.stop_runner_loop()
    thread.join(WAIT_SECONDS)
    assert not thread.is_alive(), "run() did not return after stop_runner_loop()"
    assert not runner.is_running


def test_stop_from_another_thread_while_run_blocks_the_main_thread(core_app: Pynenc) -> None:
    runner = core_app.runner
    started, release = names()
    tasks_core.event(release).set()
    invocation = tasks_core.wait_for_release(started, release, "ran")

    def stop_once_it_ran() -> None:
        tasks_core.event(started).wait(WAIT_SECONDS)
        runner.stop_runner_loop()  # even on a timeout, so run() below always returns

    stopper = run_in_thread(stop_once_it_ran, name="test-stopper")
    runner.run()  # app.runner.run() as a worker script would call it
    stopper.join(WAIT_SECONDS)
    assert invocation.status is InvocationStatus.SUCCESS
    assert invocation.result == "ran"


def test_graceful_stop_lets_the_task_in_flight_finish(configure_core_app: ConfigureApp) -> None:
    app = configure_core_app(shutdown_grace_seconds=WAIT_SECONDS)
    runner = app.runner
    started, release = names()
    with runner:
        invocation = tasks_core.wait_for_release(started, release, "finished")
        assert tasks_core.event(started).wait(WAIT_SECONDS)
        runner.stop_runner_loop()
        queued_after_stop = tasks_core.multiply(2, 2)
        assert not runner.wait_until_stopped(0.2), "stopped without waiting for its task"
        tasks_core.event(release).set()
        assert runner.wait_until_stopped(WAIT_SECONDS)
    assert invocation.status is InvocationStatus.SUCCESS
    assert invocation.result == "finished"
    assert invocation.attempts == 1
    # A stopping runner claims nothing new.
    assert queued_after_stop.status is InvocationStatus.REGISTERED


def test_work_still_running_after_the_grace_period_is_handed_back(
    configure_core_app: ConfigureApp,
) -> None:
    app = configure_core_app(shutdown_grace_seconds=0)
    runner = app.runner
    started, release = names()
    before = pynenc_threads()
    with runner:
        invocation = tasks_core.wait_for_release(started, release, "second run")
        assert tasks_core.event(started).wait(WAIT_SECONDS)
        run_threads = pynenc_threads() - before
    assert not runner.is_running  # returned at once, with the task still blocked
    record = invocation.record()
    assert record is not None
    assert record.status is InvocationStatus.REGISTERED
    assert record.owner is None and record.lease_expires_at is None
    assert (record.attempts, record.lost_attempts) == (1, 0)
    # Let the abandoned thread finish (its outcome is dropped), then run the work again.
    tasks_core.event(release).set()
    wait_until(lambda: alive(t for t in run_threads if t.name != WATCHER) == [])
    runner.run(burst=True)
    assert invocation.result == "second run"
    assert invocation.attempts == 2


def test_runner_run_again_ignores_the_task_it_abandoned(
    configure_core_app: ConfigureApp,
) -> None:
    # A run that ended with a task still blocked (0 s grace) handed the invocation back, but
    # its worker thread runs on. A new run() of the same runner claims it again (attempt 2).
    # The abandoned attempt finishing first must not count: its claim was given up, so its
    # outcome is not stored and the new run keeps waiting for its own attempt.
    app = configure_core_app(shutdown_grace_seconds=0, max_threads=2)
    runner = app.runner
    started, release = names()
    with runner:
        invocation = tasks_core.wait_for_attempt_release(started, release, "value")
        assert tasks_core.event(f"{started}-1").wait(WAIT_SECONDS)
    burst = run_in_thread(lambda: runner.run(burst=True), name="test-burst")
    try:
        assert tasks_core.event(f"{started}-2").wait(WAIT_SECONDS)
        tasks_core.event(f"{release}-1").set()  # the abandoned attempt returns first
        burst.join(0.5)  # time for a wrongly counted stale outcome to show
        assert burst.is_alive(), "run(burst=True) returned while its own task still ran"
        assert invocation.status is InvocationStatus.RUNNING, "the stale outcome was stored"
        tasks_core.event(f"{release}-2").set()
        burst.join(3.0)  # it takes milliseconds; a short bound keeps a failure cheap
        assert not burst.is_alive(), "run(burst=True) did not return once the queue was empty"
        assert invocation.result == ("value", 2)
    finally:
        tasks_core.event(f"{release}-1").set()
        tasks_core.event(f"{release}-2").set()
        if burst.is_alive():
            runner.stop_runner_loop()
            burst.join(WAIT_SECONDS)


def test_close_stops_a_running_runner(core_app: Pynenc) -> None:
    runner = core_app.runner
    with runner:
        assert tasks_core.add(1, 1) == 2
        core_app.close()
        assert not runner.is_running


def test_closing_the_app_while_its_watcher_is_busy_is_safe(tmp_path: Path) -> None:
    # Regression: close() used to close the watcher thread's SQLite connection under it,
    # which logged errors and could crash the interpreter. A subprocess, so a crash is a
    # failure here rather than the end of the test run.
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from pynenc_lite import InvocationTimeoutError, Pynenc
        from tests import tasks_core

        for i in range(30):
            app = tasks_core.app
            app.conf.sqlite_db_path = os.path.join({str(tmp_path)!r}, f"{{i}}.sqlite3")
            invocation = tasks_core.multiply(1, 1)
            try:
                invocation.get_result(timeout=0.005)  # the watcher starts polling
            except InvocationTimeoutError:
                pass
            for _ in range(10):  # commits keep the watcher busy reading
                tasks_core.multiply(1, 1)
            app.close()
        print("done")
        """
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("PYNENC__")}
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, f"exit code {completed.returncode}\n{completed.stderr}"
    assert completed.stdout.strip() == "done"
    assert "Traceback" not in completed.stderr, completed.stderr
