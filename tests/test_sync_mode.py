"""Sync mode (`dev_mode_force_sync_tasks`): every call runs inline in the caller's thread,
with no runner and no database, while still pickling what would cross to a worker.

Each test runs in `tmp_path` as the current directory, so a database created by mistake at
the default path (<app_id>.pynenc.sqlite3 in the current directory) would be seen.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest

from pynenc_lite import (
    InvocationStatus,
    Pynenc,
    RemoteTaskError,
    SerializationError,
)
from tests import tasks_core
from tests.helpers import pynenc_threads, sqlite_files

ConfigureApp = Callable[..., Pynenc]

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["env", "assignment"])
def sync_app(
    request: pytest.FixtureRequest,
    configure_core_app: ConfigureApp,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[Pynenc]:
    """`tasks_core.app` in sync mode, set by the environment variable or by assignment, with
    no explicit database path (the default one would land in the current directory)."""
    monkeypatch.chdir(tmp_path)
    if request.param == "env":
        monkeypatch.setenv("PYNENC__DEV_MODE_FORCE_SYNC_TASKS", "True")
        app = configure_core_app(sqlite_db_path=None)
        assert app.conf.source_of("dev_mode_force_sync_tasks") == "env"
    else:
        app = configure_core_app(sqlite_db_path=None)
        app.conf.dev_mode_force_sync_tasks = True
    assert app.conf.dev_mode_force_sync_tasks is True
    threads_before = pynenc_threads()
    files_before = set(sqlite_files(tmp_path, REPO_ROOT))
    yield app
    started = {t.name for t in pynenc_threads() - threads_before}
    assert not started, f"sync mode started threads: {sorted(started)}"
    created = set(sqlite_files(tmp_path, REPO_ROOT)) - files_before
    assert not created, f"sync mode created database files: {sorted(created)}"
    assert not (tmp_path / f"{app.app_id}.pynenc.sqlite3").exists()


def test_values_are_the_same_as_on_a_worker(sync_app: Pynenc) -> None:
    assert tasks_core.add(1, 2) == 3
    assert tasks_core.add(5) == 15
    assert tasks_core.describe_call(1, c=2) == {
        "a": 1, "b": "b-default", "args": [], "c": 2, "kwargs": {}
    }


def test_task_runs_eagerly_at_call_time(sync_app: Pynenc) -> None:
    invocation = tasks_core.record_call("eager", 1)
    assert tasks_core.recorded("eager") == [1]  # before .result is read
    assert invocation.status is InvocationStatus.SUCCESS
    assert invocation.done()
    assert invocation.result == 1
    assert invocation.get_result(timeout=0) == 1
    assert invocation.attempts == 1


def test_exceptions_keep_their_type(sync_app: Pynenc) -> None:
    with pytest.raises(ValueError) as info:
        tasks_core.raise_value_error("sync bad")
    assert type(info.value) is ValueError
    assert str(info.value) == "sync bad"
    invocation = tasks_core.fail_with_value_error("task bad")
    assert invocation.status is InvocationStatus.FAILED
    with pytest.raises(ValueError):
        _ = invocation.result


def test_exception_that_cannot_make_the_trip_is_reported_as_on_a_worker(
    sync_app: Pynenc,
) -> None:
    with pytest.raises(RemoteTaskError, match="NeedsTwoArgsError"):
        tasks_core.raise_needs_two_args(3, "sync")


def test_unpicklable_argument_raises_serialization_error(sync_app: Pynenc) -> None:
    with pytest.raises(SerializationError, match="tests.tasks_core.apply"):
        tasks_core.apply(lambda v: v, 1)


def test_unpicklable_result_raises_serialization_error(sync_app: Pynenc) -> None:
    with pytest.raises(SerializationError, match="tests.tasks_core.return_lock"):
        tasks_core.return_lock()


def test_pickle_round_trip_can_be_turned_off(sync_app: Pynenc) -> None:
    sync_app.conf.dev_mode_pickle_round_trip = False
    assert tasks_core.apply(lambda v: v * 2, 21) == 42
    lock = tasks_core.return_lock()
    assert hasattr(lock, "acquire")


def test_round_trip_gives_copies_not_the_same_objects(sync_app: Pynenc) -> None:
    value = {"list": [1, 2]}
    result = tasks_core.identity(value)
    assert result == value and result is not value
    sync_app.conf.dev_mode_pickle_round_trip = False
    assert tasks_core.identity(value) is value


def test_fan_out(sync_app: Pynenc) -> None:
    assert tasks_core.sum_pairs_by_tuples([1, 2, 3, 4, 5]) == [3, 7, 5]
    assert tasks_core.sum_pairs_by_dicts([1, 2, 3, 4, 5]) == [3, 7, 5]


def test_parallelize(sync_app: Pynenc) -> None:
    group = tasks_core.multiply.parallelize([(i, 3) for i in range(5)])
    assert list(group.results_in_order) == [0, 3, 6, 9, 12]
    assert sorted(group.results) == [0, 3, 6, 9, 12]
    assert len(list(group.as_completed(timeout=1))) == 5


def test_async_direct_task_outside_an_event_loop(sync_app: Pynenc) -> None:
    async def main() -> int:
        return await tasks_core.async_add(2, 3)

    assert asyncio.run(main()) == 5


def test_async_fan_out(sync_app: Pynenc) -> None:
    async def main() -> list[int]:
        return await tasks_core.async_sum_pairs([1, 2, 3])

    assert asyncio.run(main()) == [3, 3]


def test_runs_in_the_callers_thread(sync_app: Pynenc) -> None:
    sync_app.conf.dev_mode_pickle_round_trip = False  # to pass a lambda
    assert tasks_core.apply(lambda _: threading.get_ident(), None) == threading.get_ident()


def test_pynenc_made_with_the_env_variable_is_in_sync_mode(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYNENC__DEV_MODE_FORCE_SYNC_TASKS", "True")
    before = pynenc_threads()
    app = Pynenc(app_id="sync-env")

    @app.direct_task
    def double(x: int) -> int:
        return 2 * x

    @app.task
    def triple(x: int) -> int:
        return 3 * x

    try:
        assert double(4) == 8
        assert triple(4).result == 12
    finally:
        app.close()
    assert pynenc_threads() - before == set()
    assert sqlite_files(tmp_path) == []


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
def test_ctrl_c_and_exit_in_an_inline_task_stop_the_caller(
    sync_app: Pynenc, stop: type[BaseException]
) -> None:
    @sync_app.task
    def stops() -> None:
        raise stop()

    with pytest.raises(stop):  # at the call, not hidden in an Invocation
        stops()
