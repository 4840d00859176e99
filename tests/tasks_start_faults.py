"""Tasks for the worker lifecycle tests whose worker processes fail as they start, as the
environment tells them (`python -m pynenc_lite.worker tests.tasks_start_faults:app`).

Only a worker process (a `spawn` child: it has a parent process) misbehaves; the worker
command itself, and the tests, import this module unharmed.

    TEST_START_FAULT=crash               the worker process exits with code 1 while importing
    TEST_START_FAULT=remove-db-folder    it deletes TEST_DB_FOLDER first, so the database it
                                         is about to open is gone (storage unreachable)
"""

from __future__ import annotations

import multiprocessing
import os
import shutil

from pynenc_lite import Pynenc

app = Pynenc("start_faults")


@app.task
def noop() -> None:
    """Nothing: the app needs one task to be served."""


_FAULT = os.environ.get("TEST_START_FAULT", "")
if _FAULT and multiprocessing.parent_process() is not None:
    if _FAULT == "crash":
        os._exit(1)
    if _FAULT == "remove-db-folder":
        shutil.rmtree(os.environ["TEST_DB_FOLDER"], ignore_errors=True)
