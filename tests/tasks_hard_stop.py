"""Tasks for the hard-stop tests: a task past its time limit in a worker process whose
first attempt to store an outcome fails (`python -m pynenc_lite.worker
tests.tasks_hard_stop:app`).

In a worker process (a `spawn` child), with TEST_FAIL_STORE_ONCE naming a file that exists,
the first `complete_many` deletes that file and raises `BackendError`, as a storage hiccup
would; every later one stores normally. The tests import this module unharmed.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from typing import Sequence

from pynenc_lite import Pynenc
from pynenc_lite.backend.base import Outcome
from pynenc_lite.backend.sqlite import SQLiteBackend
from pynenc_lite.errors import BackendError

app = Pynenc("hard_stop_tests")


@app.task(time_limit_seconds=0.5)
def spins(log_path: str) -> None:
    """Appends its process id to `log_path`, then never returns: only ending its process
    stops it."""
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)
    never = threading.Event()
    while True:
        never.wait(0.05)


_FLAG = os.environ.get("TEST_FAIL_STORE_ONCE", "")
if _FLAG and multiprocessing.parent_process() is not None:
    _store = SQLiteBackend.complete_many

    def _complete_many_failing_once(
        self: SQLiteBackend, outcomes: Sequence[Outcome], worker_id: str, now: float
    ) -> list[bool]:
        try:
            os.unlink(_FLAG)
        except FileNotFoundError:
            return _store(self, outcomes, worker_id, now)
        raise BackendError("storage hiccup injected by the test")

    SQLiteBackend.complete_many = _complete_many_failing_once  # type: ignore[method-assign]
