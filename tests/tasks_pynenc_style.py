"""Tasks written the way a pynenc program writes them, with only the module name changed
(used by tests/test_pynenc_compat.py)."""

from __future__ import annotations

import threading
from typing import Any

from pynenc_lite.conf.config_task import ConcurrencyControlType

from pynenc_lite import PynencBuilder
from pynenc_lite.invocation import DistributedInvocation

app = (
    PynencBuilder()
    .app_id("pynenc-style")
    .thread_runner(min_threads=1, max_threads=4)
    .logging_level("info")
    .custom_config(result_timeout_seconds=20.0)
    .build()
)

release_first = threading.Event()


@app.task
def add(x: int, y: int) -> int:
    add.logger.info(f"adding {x} and {y} in {add.task_id} {add.invocation.invocation_id}")
    return x + y


@app.task
def double_result(invocation: DistributedInvocation[int]) -> int:
    # An invocation passed as an argument: usable on the worker, as in pynenc.
    return invocation.result * 2


@app.task
def finish_first_last(i: int) -> int:
    if i == 0:
        release_first.wait(20)  # the test releases it once another result was yielded
    return i


first_started = threading.Event()


@app.task(running_concurrency=ConcurrencyControlType.TASK)
def one_at_a_time(i: int) -> int:
    if i == 0:
        first_started.set()
        release_first.wait(20)  # holds the task's one running slot until the test releases it
    return i


# pynenc's in-memory components: the queue lives in this process, served by threads.
memory_app = (
    PynencBuilder()
    .app_id("pynenc-style-memory")
    .memory()
    .thread_runner(min_threads=1, max_threads=2)
    .custom_config(result_timeout_seconds=20.0)
    .build()
)


@memory_app.task
def multiply(x: int, y: int) -> int:
    return x * y


def reset() -> Any:
    release_first.clear()
    first_started.clear()
