"""Tasks for the lifecycle tests (retries, time limits, cancel, delays, cron), importable by
worker processes as `tests.tasks_lifecycle`."""

from __future__ import annotations

import os
import threading
import time

from pynenc_lite import Pynenc, RetryError, TaskTimeLimitError, current_invocation

app = Pynenc("lifecycle_tests")

# Set by tests to let blocked tasks finish; a task never waits on it for long.
release = threading.Event()
ran: list[str] = []  # names of tasks that ran in this process, for "never started" checks


def _attempt() -> int:
    running = current_invocation()
    return running.attempt if running else 1


@app.direct_task(max_retries=3, retry_for=(ValueError,), retry_delay_seconds=0.01)
def flaky_until_third() -> int:
    """Fails on attempts 1 and 2, succeeds on 3: returns the attempt number."""
    if _attempt() < 3:
        raise ValueError(f"attempt {_attempt()} fails")
    return _attempt()


@app.direct_task(max_retries=2, retry_for=["builtins.ValueError"], retry_delay_seconds=0.01)
def always_fails() -> None:
    raise ValueError(f"attempt {_attempt()} fails")


@app.direct_task(max_retries=1, retry_delay_seconds=60)
def asks_for_retry() -> int:
    """Asks for its own retry with a short delay, overriding the 60 s back-off."""
    if _attempt() == 1:
        raise RetryError("not ready yet", delay_seconds=0.01)
    return _attempt()


@app.direct_task(max_retries=2)
def not_retried_for_other_errors() -> None:
    raise KeyError("retry_for defaults to RetryError only")


@app.direct_task(time_limit_seconds=0.2)
def blocks_past_limit() -> str:
    release.wait(30)
    return "finished late"


@app.direct_task(time_limit_seconds=0.3, max_retries=1, retry_for=TaskTimeLimitError,
                 retry_delay_seconds=0.01)
def slow_first_time() -> int:
    """Runs past its limit on attempt 1 (until released), fast on attempt 2."""
    if _attempt() == 1:
        release.wait(30)
    return _attempt()


@app.direct_task(time_limit_seconds=0.5)
def spins_in_process(pid_file: str) -> None:
    """Writes its pid, then never returns: only ending its process stops it."""
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(0.05)


@app.task
def runs_until_cancelled(pid_file: str) -> str:
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    running = current_invocation()
    assert running is not None
    deadline = time.monotonic() + 30
    while not running.is_cancelled() and time.monotonic() < deadline:
        time.sleep(0.01)
    return "noticed the cancel" if running.is_cancelled() else "never cancelled"


@app.task
def record_run(tag: str) -> str:
    ran.append(tag)
    return tag


@app.task(cron="*/5 * * * *")
def every_five_minutes() -> str:
    return "tick"
