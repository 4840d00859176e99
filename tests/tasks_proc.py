"""Tasks for the worker-process tests, imported as `tests.tasks_proc` both by the tests and
by worker processes (`python -m pynenc_lite.worker tests.tasks_proc:app` from the repository
root), so task names agree on both sides."""

from __future__ import annotations

import os
import threading
import time

from pynenc_lite import Pynenc, current_invocation

app = Pynenc("proc_tests")


@app.task
def record(i: int, log_path: str) -> int:
    """Append `i` to a log (one small O_APPEND write is atomic), return i * 2."""
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{i}\n".encode())
    finally:
        os.close(fd)
    return i * 2


@app.task
def slow_record(i: int, log_path: str, seconds: float) -> int:
    """Like record, after working for `seconds` (so a kill finds it in flight)."""
    time.sleep(seconds)  # stands for real work; nothing waits on this sleep
    return record.func(i, log_path)  # type: ignore[attr-defined, no-any-return]


@app.direct_task
def add(a: int, b: int) -> int:
    return a + b


@app.direct_task
def worker_pid() -> int:
    return os.getpid()


@app.direct_task
def attempt_number() -> int:
    running = current_invocation()
    assert running is not None
    return running.attempt


@app.direct_task
def exit_process() -> None:
    os._exit(3)


@app.direct_task
def echo(value: object) -> object:
    return value


@app.task
def wait_for_file(path: str, timeout: float) -> str:
    """Run until `path` exists (the test creates it), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    done = threading.Event()
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout}s")
        done.wait(0.01)
    return "finished"
