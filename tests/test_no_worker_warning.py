"""A blocking call with no worker alive says what to start, then times out; it never hangs
silently."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Callable

import pytest

from pynenc_lite import InvocationTimeoutError, Pynenc
from tests import tasks_core

ConfigureApp = Callable[..., Pynenc]


def no_worker_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("pynenc_lite") and r.levelno == logging.WARNING
        and "no worker" in r.getMessage()
    ]


def test_blocking_call_without_a_worker_warns_then_times_out(
    configure_core_app: ConfigureApp, caplog: pytest.LogCaptureFixture
) -> None:
    app = configure_core_app(no_worker_warning_seconds=0.1, result_timeout_seconds=0.6)
    caplog.set_level(logging.WARNING, logger="pynenc_lite")
    with pytest.raises(InvocationTimeoutError):
        tasks_core.add(1, 2)
    [message] = no_worker_warnings(caplog)  # once per wait, not once per check
    assert "app.runner.run()" in message
    assert "python -m pynenc_lite.worker" in message
    assert "PYNENC__DEV_MODE_FORCE_SYNC_TASKS" in message
    assert app.app_id in message
    assert "tests.tasks_core.add" in message


def test_invocation_result_without_a_worker_warns_too(
    configure_core_app: ConfigureApp, caplog: pytest.LogCaptureFixture
) -> None:
    configure_core_app(no_worker_warning_seconds=0.1, result_timeout_seconds=0.4)
    caplog.set_level(logging.WARNING, logger="pynenc_lite")
    invocation = tasks_core.multiply(2, 2)
    with pytest.raises(InvocationTimeoutError):
        _ = invocation.result
    assert len(no_worker_warnings(caplog)) == 1


def test_no_warning_while_a_worker_runs_the_call(
    configure_core_app: ConfigureApp, caplog: pytest.LogCaptureFixture
) -> None:
    app = configure_core_app(no_worker_warning_seconds=0.1)
    caplog.set_level(logging.WARNING, logger="pynenc_lite")
    started, release = uuid.uuid4().hex, uuid.uuid4().hex
    # A slow task: it runs for several warning periods (released by a timer, the
    # slowness is the scenario here, not a way to wait for something).
    timer = threading.Timer(0.5, tasks_core.event(release).set)
    with app.runner:
        timer.start()
        try:
            assert tasks_core.block_until_released(started, release, "done") == "done"
        finally:
            timer.cancel()
    assert no_worker_warnings(caplog) == []
