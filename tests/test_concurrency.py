"""Many caller threads at once against one in-process thread runner."""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any, Callable

import pytest

from pynenc_lite import Pynenc
from tests import tasks_core
from tests.helpers import WAIT_SECONDS

CALLERS = 32
CALLS_PER_CALLER = 50


def run_callers(count: int, body: Callable[[int], Any]) -> tuple[list[Any], list[BaseException]]:
    """Run `body(index)` in `count` threads released together; return results and errors."""
    start = threading.Barrier(count, timeout=WAIT_SECONDS)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []
    lock = threading.Lock()

    def target(index: int) -> None:
        try:
            start.wait()
            results[index] = body(index)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [
        threading.Thread(target=target, args=(i,), name=f"test-caller-{i}", daemon=True)
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"callers still blocked: {stuck}"
    return results, errors


def test_many_callers_each_making_many_direct_calls(running_app: Pynenc) -> None:
    def calls(index: int) -> list[int]:
        return [tasks_core.add(index, n) for n in range(CALLS_PER_CALLER)]

    results, errors = run_callers(CALLERS, calls)
    assert errors == []
    assert results == [
        [index + n for n in range(CALLS_PER_CALLER)] for index in range(CALLERS)
    ]


def test_many_callers_fanning_out_at_once(running_app: Pynenc) -> None:
    def calls(index: int) -> list[list[int]]:
        return [tasks_core.sum_pairs_by_tuples([index, n, 1]) for n in range(10)]

    results, errors = run_callers(16, calls)
    assert errors == []
    assert results == [[[index + n, 1] for n in range(10)] for index in range(16)]


def test_concurrent_calls_really_run_at_the_same_time(running_app: Pynenc) -> None:
    # Each call waits at a barrier for 5 parties: it only passes if all 5 calls run at once
    # on the runner's threads (more than the 2 cores this must work on).
    name = uuid.uuid4().hex
    tasks_core.make_barrier(name, 5)
    results, errors = run_callers(5, lambda _: tasks_core.wait_at_barrier(name))
    assert errors == []
    assert sorted(results) == [0, 1, 2, 3, 4]


def test_many_short_lived_caller_threads_do_not_leak_connections(running_app: Pynenc) -> None:
    # A thread-per-request server calls tasks from threads that then end. Whatever each
    # thread opened must not stay open for the life of the app.
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("counts open files through /proc/self/fd (Linux)")

    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    def one_call(value: int) -> None:
        assert tasks_core.add(value, 1) == value + 1

    one_call(0)  # this thread's own connection exists from now on
    before = open_files()
    for value in range(100):
        thread = threading.Thread(target=one_call, args=(value,), name="test-short-lived")
        thread.start()
        thread.join(WAIT_SECONDS)
        assert not thread.is_alive()
    grown = open_files() - before
    assert grown < 20, f"{grown} more files open after 100 short-lived caller threads ended"
