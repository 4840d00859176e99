"""Tasks for the operations tests (concurrency control, expiry, history), importable by
worker processes as `tests.tasks_ops`."""

from __future__ import annotations

import fcntl
import os
import threading
import time

from pynenc_lite import ConcurrencyControlType as CC
from pynenc_lite import Pynenc, RetryError, current_invocation

app = Pynenc("ops_tests")

gate = threading.Event()
_lock = threading.Lock()
running_now: dict[str, int] = {}  # key -> how many run now
most_at_once: dict[str, int] = {}  # key -> the most that ran at once


@app.task(registration_concurrency=CC.TASK)
def one_waiting_at_a_time(x: int) -> int:
    return x


@app.task(registration_concurrency=CC.ARGUMENTS)
def one_per_arguments(x: int, y: int = 0) -> int:
    return x + y


@app.task(registration_concurrency=CC.KEYS, key_arguments=["user"])
def one_per_user(user: str, note: str) -> str:
    return f"{user}:{note}"


def _enter_and_leave(key: str, hold: float) -> None:
    with _lock:
        running_now[key] = running_now.get(key, 0) + 1
        most_at_once[key] = max(most_at_once.get(key, 0), running_now[key])
    gate.wait(hold)
    with _lock:
        running_now[key] -= 1


# Held-back calls must run later in these tests: they wait (pynenc's default drops them,
# see tests/test_concurrency_controlled.py).
@app.task(running_concurrency=CC.TASK, reroute_on_concurrency_control=True)
def one_at_a_time(i: int) -> int:
    _enter_and_leave("task", 0.005)
    return i


@app.task(running_concurrency=CC.KEYS, key_arguments=["key"], running_concurrency_limit=3,
          reroute_on_concurrency_control=True)
def three_per_key(key: str, i: int) -> int:
    _enter_and_leave(key, 0.005)
    return i


@app.task(running_concurrency=CC.KEYS, key_arguments=["key"], running_concurrency_limit=2,
          reroute_on_concurrency_control=True)
def two_per_key_across_processes(key: str, i: int, counter_path: str) -> int:
    """Counts how many run at once across processes, in a file guarded by flock."""

    def change(delta: int) -> None:
        with open(counter_path, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            now, most = (int(v) for v in f.read().split())
            now += delta
            f.seek(0)
            f.truncate()
            f.write(f"{now} {max(most, now)}")
            f.flush()  # before unlocking, or the next reader finds the file empty
            fcntl.flock(f, fcntl.LOCK_UN)

    change(+1)
    try:
        time.sleep(0.002)  # stands for work, so that runs overlap
    finally:
        change(-1)
    return i


@app.task
def quick(i: int) -> int:
    return i


@app.task(max_retries=1, retry_delay_seconds=0.01)
def retried_once() -> str:
    running = current_invocation()
    if running is not None and running.attempt == 1:
        raise RetryError("first attempt asks for a retry")
    return f"pid {os.getpid()}"


@app.task
def fails() -> None:
    raise ValueError("fails on purpose")
