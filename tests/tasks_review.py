"""Tasks for the adversarial review tests (tests/test_review_*.py)."""

from __future__ import annotations

import asyncio
import threading

from pynenc_lite import Pynenc, TaskTimeLimitError, current_invocation

app = Pynenc("review_tests")

# Events the tests drive; every wait in a task is bounded, so a bug cannot hang the suite.
started = {1: threading.Event(), 2: threading.Event()}
release = {1: threading.Event(), 2: threading.Event()}


def reset() -> None:
    for event in (*started.values(), *release.values()):
        event.clear()


def _attempt() -> int:
    running = current_invocation()
    return running.attempt if running else 1


@app.task(time_limit_seconds=5.0, max_retries=1, retry_for=TaskTimeLimitError,
          retry_delay_seconds=0.0, retry_jitter=0.0)
def blocks_each_attempt() -> int:
    """Attempt n sets started[n] and blocks until release[n] (at most 3 s)."""
    n = min(_attempt(), 2)
    started[n].set()
    release[n].wait(3.0)
    return n


@app.task
def raises_cancelled_error() -> None:
    """What an async task gets when something inside it is cancelled (a BaseException)."""
    raise asyncio.CancelledError("an inner await was cancelled")


@app.task
async def async_cancelled() -> None:
    raise asyncio.CancelledError()


@app.task
def add(x: int, y: int) -> int:
    return x + y
