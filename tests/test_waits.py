"""Every way of waiting ends: it falls back to the stored outcome when its hub was closed
meanwhile, it warns when no worker runs, it takes its timeout the same way as every other
wait, and the hub stays responsive while its watcher is stuck in a slow backend read."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from typing import Any

import pytest

from pynenc_lite import InvocationNotFoundError, InvocationTimeoutError, Pynenc, ThreadRunner
from pynenc_lite.backend.sqlite import SQLiteBackend
from pynenc_lite.waiting import Hub
from tests import tasks_core
from tests.conftest import ConfigureApp
from tests.helpers import WAIT_SECONDS, run_in_thread, wait_until


def _run_after_closing(app: Pynenc) -> None:
    """Close the app (its hub goes, pending futures stay unresolved), then work the queue
    with a new hub: only a wait that looks at storage can end now."""
    app.close()
    ThreadRunner(app, threads=2).run(burst=True)


def test_async_result_reads_the_stored_outcome_after_the_hub_closed(
    configure_core_app: ConfigureApp,
) -> None:
    app = configure_core_app(no_worker_warning_seconds=0.05)
    invocation = tasks_core.multiply(6, 7)
    assert not invocation.future.done()  # registered with the hub that is about to close
    _run_after_closing(app)
    assert asyncio.run(invocation.async_result(timeout=WAIT_SECONDS)) == 42


def test_as_completed_reads_stored_outcomes_after_the_hub_closed(
    configure_core_app: ConfigureApp,
) -> None:
    app = configure_core_app(no_worker_warning_seconds=0.05)
    group = tasks_core.multiply.parallelize([(i, 2) for i in range(5)])
    for invocation in group:
        assert not invocation.future.done()
    _run_after_closing(app)
    finished = list(group.as_completed(timeout=WAIT_SECONDS))
    assert sorted(i.result for i in finished) == [0, 2, 4, 6, 8]


def test_async_direct_task_waiting_across_app_close_returns(
    configure_core_app: ConfigureApp,
) -> None:
    app = configure_core_app(no_worker_warning_seconds=0.05)

    async def main() -> Any:
        call = asyncio.ensure_future(tasks_core.async_add(2, 3))
        deadline = time.monotonic() + WAIT_SECONDS
        while not app.backend.list_invocations(app.app_id):  # until the call is stored
            assert time.monotonic() < deadline, "the async call was never stored"
            await asyncio.sleep(0.005)
        await asyncio.get_running_loop().run_in_executor(None, _run_after_closing, app)
        return await asyncio.wait_for(call, WAIT_SECONDS)

    assert asyncio.run(main()) == 5


@pytest.mark.parametrize("way", ["async_result", "as_completed"])
def test_async_and_group_waits_warn_when_no_worker_runs(
    configure_core_app: ConfigureApp, caplog: pytest.LogCaptureFixture, way: str
) -> None:
    app = configure_core_app(no_worker_warning_seconds=0.05)
    caplog.set_level(logging.WARNING, logger="pynenc_lite")
    group = tasks_core.multiply.parallelize([(1, 1)])
    with pytest.raises(InvocationTimeoutError):
        if way == "async_result":
            asyncio.run(group.invocations[0].async_result(timeout=0.5))
        else:
            list(group.as_completed(timeout=0.5))
    [message] = [r.getMessage() for r in caplog.records if "no worker" in r.getMessage()]
    assert app.app_id in message and app.sqlite_db_path in message  # names where it looked


@pytest.mark.parametrize("timeout", [-1, -0.5, float("nan"), "1", True])
def test_every_wait_rejects_a_bad_timeout_the_same_way(
    configure_core_app: ConfigureApp, timeout: Any
) -> None:
    configure_core_app()
    group = tasks_core.multiply.parallelize([(1, 1)])
    invocation = group.invocations[0]
    waits = [
        lambda: invocation.get_result(timeout),
        lambda: asyncio.run(invocation.async_result(timeout)),
        lambda: group.get_results(timeout),
        lambda: list(group.as_completed(timeout)),
    ]
    for wait in waits:
        with pytest.raises(ValueError, match="timeout must be None"):
            wait()


class _StuckReads(SQLiteBackend):
    """A backend whose 'what finished since' read can be made to hang (a reconnect)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.stuck = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()

    def get_finished_since(self, seq: int) -> tuple[int, list[str]]:
        if self.stuck.is_set():
            self.entered.set()
            self.release.wait(WAIT_SECONDS)
        return super().get_finished_since(seq)


def test_hub_answers_while_its_watcher_is_stuck_in_a_backend_read(tmp_path: Any) -> None:
    backend = _StuckReads(str(tmp_path / "stuck.sqlite3"))
    hub = Hub(backend)
    try:
        hub.add_work_listener(lambda: None)  # the watcher runs, nobody waits for outcomes
        backend.stuck.set()
        backend.wait_for_change(None, 0)
        backend.submit([])  # any commit: the watcher looks, and gets stuck reading
        wait_until(backend.entered.is_set)
        answered = concurrent.futures.Future[None]()

        def register() -> None:
            hub.futures_for(["x"], check_stored=False)
            hub.forget("x")
            answered.set_result(None)

        run_in_thread(register)
        answered.result(timeout=2.0)  # before the fix: blocked until the read returned
    finally:
        backend.release.set()
        hub.close()
        backend.close()


def test_as_completed_of_an_id_that_is_not_stored_says_so(
    configure_core_app: ConfigureApp,
) -> None:
    app = configure_core_app(no_worker_warning_seconds=0.05)
    group = tasks_core.multiply.parallelize([(1, 1), (2, 2)])
    app.purge()  # the rows are gone; a wait would never end
    with pytest.raises(InvocationNotFoundError, match="result_ttl_seconds"):
        list(group.as_completed(timeout=WAIT_SECONDS))
