"""`@app.direct_task`: the call site keeps its shape — it blocks, returns the value, and
re-raises the task's own exception — with a thread runner in the same process.

Fan-out (`parallel_func` / `aggregate_func`) and `async def` tasks are covered here too.
Task functions live in tests/tasks_core.py.
"""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from pynenc_lite import Pynenc, RemoteTaskError, SerializationError
from pynenc_lite.serializer import RemoteTraceback
from tests import tasks_core
from tests.helpers import WAIT_SECONDS


def stored_invocations(db_path: str) -> int:
    """How many invocations the SQLite file holds (read with a separate connection)."""
    conn = sqlite3.connect(db_path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM invocations").fetchone()[0])
    finally:
        conn.close()


# -- values and arguments -------------------------------------------------------------------


def test_returns_the_value(running_app: Pynenc) -> None:
    assert tasks_core.add(1, 2) == 3


def test_keyword_arguments_and_defaults(running_app: Pynenc) -> None:
    assert tasks_core.add(5) == 15
    assert tasks_core.add(b=2, a=1) == 3
    assert tasks_core.describe_call("x") == {
        "a": "x", "b": "b-default", "args": [], "c": "c-default", "kwargs": {}
    }
    assert tasks_core.describe_call(1, 2, 3, 4, c=5, d={"nested": [6]}) == {
        "a": 1, "b": 2, "args": [3, 4], "c": 5, "kwargs": {"d": {"nested": [6]}}
    }


def test_values_keep_their_type(running_app: Pynenc) -> None:
    value = {"tuple": (1, 2), "set": {3}, "bytes": b"\x00\xff", "none": None, "float": 1.5}
    assert tasks_core.apply(dict, value) == value


# -- the task's own exception ---------------------------------------------------------------


def test_exception_is_reraised_with_its_original_type_and_message(running_app: Pynenc) -> None:
    with pytest.raises(ValueError) as info:
        tasks_core.raise_value_error("bad input 42")
    assert type(info.value) is ValueError
    assert str(info.value) == "bad input 42"


def test_except_valueerror_works_at_the_call_site(running_app: Pynenc) -> None:
    try:
        tasks_core.raise_value_error("caught")
    except ValueError as exc:
        caught = exc
    assert str(caught) == "caught"


def test_worker_traceback_is_the_cause(running_app: Pynenc) -> None:
    with pytest.raises(ValueError) as info:
        tasks_core.raise_value_error("with traceback")
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "marker: the raising line of raise_value_error" in cause.text
    assert "tasks_core.py" in cause.text
    assert "ValueError: with traceback" in cause.text
    # No note is added: a note would change what pytest.raises(match=...) sees, so a
    # user's test would behave differently in sync mode and on a worker.
    assert getattr(info.value, "__notes__", []) == []
    with pytest.raises(ValueError, match="^exact message$"):
        tasks_core.raise_value_error("exact message")


def test_exception_that_cannot_be_unpickled_becomes_remote_task_error(
    running_app: Pynenc,
) -> None:
    with pytest.raises(RemoteTaskError) as info:
        tasks_core.raise_needs_two_args(7, "boom")
    message = str(info.value)
    assert "NeedsTwoArgsError" in message
    assert "code 7: boom" in message
    assert "raise NeedsTwoArgsError(code, detail)" in info.value.remote_traceback
    # It pickled fine: the message says which side failed, and why.
    assert "was pickled on the worker but cannot be unpickled" in message
    assert "could not be pickled" not in message and "TypeError" in message


def test_exception_that_cannot_be_pickled_says_so(running_app: Pynenc) -> None:
    with pytest.raises(RemoteTaskError, match="could not be pickled on the worker") as info:
        tasks_core.apply(_raise_holding_a_lock, 1)
    assert "_raise_holding_a_lock" in info.value.remote_traceback


class _LockedError(Exception):
    pass


def _raise_holding_a_lock(value: int) -> None:
    raise _LockedError(threading.Lock())


# -- what cannot be pickled -----------------------------------------------------------------


@pytest.mark.parametrize(
    "task", [tasks_core.return_lock, tasks_core.return_lambda], ids=["lock", "lambda"]
)
def test_result_that_cannot_be_pickled_raises_serialization_error(
    running_app: Pynenc, task: Callable[[], Any]
) -> None:
    with pytest.raises(SerializationError) as info:
        task()
    assert task.name in str(info.value)  # type: ignore[attr-defined]
    assert "cannot be pickled" in str(info.value)


def test_arguments_that_cannot_be_pickled_fail_at_the_call_and_store_nothing(
    core_app: Pynenc,
) -> None:
    core_app.backend.next_run_at(core_app.app_id)  # create the database file now
    with pytest.raises(SerializationError) as info:
        tasks_core.apply(lambda v: v, 1)
    assert "tests.tasks_core.apply" in str(info.value)
    assert "arguments" in str(info.value)
    path = core_app.conf.sqlite_db_path
    assert path is not None
    assert stored_invocations(path) == 0


# -- fan-out --------------------------------------------------------------------------------


def test_fan_out_returns_results_in_input_order_when_parts_finish_in_reverse(
    running_app: Pynenc,
) -> None:
    key = uuid.uuid4().hex
    # Part i waits for part i+1, so they finish 5, 4, ..., 0; all 6 run at once (8 threads).
    assert tasks_core.finish_in_reverse(list(range(6)), key) == [0, 10, 20, 30, 40, 50]
    assert tasks_core.recorded(key) == [5, 4, 3, 2, 1, 0]


def test_fan_out_items_as_tuples(running_app: Pynenc) -> None:
    assert tasks_core.sum_pairs_by_tuples([1, 2, 3, 4, 5]) == [3, 7, 5]


def test_fan_out_items_as_dicts(running_app: Pynenc) -> None:
    assert tasks_core.sum_pairs_by_dicts([1, 2, 3, 4, 5]) == [3, 7, 5]


def test_fan_out_with_no_parts_aggregates_an_empty_list(running_app: Pynenc) -> None:
    assert tasks_core.sum_pairs_by_tuples([]) == []


def test_fan_out_item_of_a_bad_type_is_a_clear_type_error(core_app: Pynenc) -> None:
    with pytest.raises(TypeError) as info:
        tasks_core.sum_bad_items([1, 2])
    message = str(info.value)
    assert "parallel_func of tests.tasks_core.sum_bad_items" in message
    assert "tuple" in message and "dict" in message
    assert "got int" in message


def test_parallel_func_without_aggregate_func_fails_at_decoration(
    make_app: Callable[..., Pynenc],
) -> None:
    app = make_app()

    def split(arguments: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [(x,) for x in arguments["xs"]]

    def work(xs: Any) -> Any:
        return xs

    with pytest.raises(ValueError, match="aggregate_func"):
        app.direct_task(parallel_func=split)(work)
    with pytest.raises(ValueError, match="parallel_func"):
        app.direct_task(aggregate_func=list)(work)
    assert app.tasks == {}


# -- async def ------------------------------------------------------------------------------


def test_async_direct_task_is_awaitable_and_returns_the_value(running_app: Pynenc) -> None:
    call = tasks_core.async_add(1, 2)
    assert inspect.isawaitable(call)

    async def main() -> Any:
        return await call

    assert asyncio.run(main()) == 3


def test_async_direct_task_does_not_block_the_event_loop(running_app: Pynenc) -> None:
    name = uuid.uuid4().hex

    async def set_the_event_from_the_loop() -> str:
        await asyncio.sleep(0)
        tasks_core.event(name).set()
        return "loop ran"

    async def main() -> list[Any]:
        # The task waits for an event that only the other coroutine sets: if awaiting the
        # task blocked the loop, that coroutine could not run and the task would time out.
        return list(
            await asyncio.wait_for(
                asyncio.gather(
                    tasks_core.async_wait_for_event(name), set_the_event_from_the_loop()
                ),
                WAIT_SECONDS,
            )
        )

    assert asyncio.run(main()) == [True, "loop ran"]


def test_async_fan_out(running_app: Pynenc) -> None:
    async def main() -> Any:
        return await tasks_core.async_sum_pairs([1, 2, 3, 4, 5])

    assert asyncio.run(main()) == [3, 7, 5]


def test_async_direct_task_reraises_the_original_exception(running_app: Pynenc) -> None:
    async def main() -> Any:
        return await tasks_core.async_raise_value_error("async bad")

    with pytest.raises(ValueError) as info:
        asyncio.run(main())
    assert type(info.value) is ValueError
    assert str(info.value) == "async bad"


def test_several_async_calls_run_concurrently(running_app: Pynenc) -> None:
    async def main() -> list[int]:
        return list(await asyncio.gather(*(tasks_core.async_add(i, i) for i in range(20))))

    assert asyncio.run(main()) == [2 * i for i in range(20)]


def test_unused_path_does_not_create_database_for_decorating(tmp_path: Path) -> None:
    # Decorating and configuring never open the database: only the first call does.
    app = Pynenc(
        app_id=f"lazy-{uuid.uuid4().hex[:8]}",
        config_values={"sqlite_db_path": str(tmp_path / "lazy.sqlite3")},
    )

    @app.direct_task
    def never_called() -> None: ...

    app.close()
    assert not (tmp_path / "lazy.sqlite3").exists()
