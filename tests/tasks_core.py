"""Task functions for the core tests, at module level so any runner can import them by name
(`tests.tasks_core.<function>`), including worker processes started with `spawn`.

`app` is made at import time with harmless defaults; every test reconfigures it through the
`core_app` fixture (tests/conftest.py), which gives it a fresh configuration, its own app_id
and its own SQLite file under `tmp_path`, and closes it afterwards.

Tasks that must be synchronized with a test (started / release / barrier) find their
`threading` objects here by name: the test creates them, the task waits on them, and every
wait has a timeout so a bug fails a test instead of hanging it. These only work with runners
in the test's own process (thread runner, sync mode).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Optional

from pynenc_lite import Pynenc, current_invocation

app = Pynenc(app_id="tests-core")

# A task waits at most this long for a test's signal; reached only when something is broken.
TASK_WAIT_SECONDS = 10.0

# -- synchronization with the test (same process only) ---------------------------------------

# Guards the dicts and lists below.
_lock = threading.Lock()
_events: dict[str, threading.Event] = {}
_barriers: dict[str, threading.Barrier] = {}
# What eager / ordering tests record: (label, value) tuples, in the order they happened.
calls: list[tuple[str, Any]] = []


def event(name: str) -> threading.Event:
    """The event called `name` (made on first use)."""
    with _lock:
        return _events.setdefault(name, threading.Event())


def make_barrier(name: str, parties: int) -> threading.Barrier:
    """Create the barrier called `name` for `parties` threads (a test calls this first)."""
    with _lock:
        barrier = _barriers[name] = threading.Barrier(parties, timeout=TASK_WAIT_SECONDS)
        return barrier


def record(label: str, value: Any) -> None:
    with _lock:
        calls.append((label, value))


def recorded(label: str) -> list[Any]:
    """The values recorded under `label`, in order."""
    with _lock:
        return [value for got, value in calls if got == label]


def reset() -> None:
    """Forget every event, barrier and record (between tests)."""
    with _lock:
        _events.clear()
        _barriers.clear()
        calls.clear()


# -- direct tasks: values, arguments, errors ------------------------------------------------


@app.direct_task
def add(a: int, b: int = 10) -> int:
    return a + b


@app.direct_task
def describe_call(
    a: Any, b: Any = "b-default", *args: Any, c: Any = "c-default", **kwargs: Any
) -> Any:
    return {"a": a, "b": b, "args": list(args), "c": c, "kwargs": kwargs}


@app.direct_task
def raise_value_error(message: str) -> None:
    raise ValueError(message)  # marker: the raising line of raise_value_error


class NeedsTwoArgsError(Exception):
    """Pickles fine but cannot be unpickled: pickle calls cls(*self.args) with one arg."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.code = code
        self.detail = detail


@app.direct_task
def raise_needs_two_args(code: int, detail: str) -> None:
    raise NeedsTwoArgsError(code, detail)


@app.direct_task
def identity(value: Any) -> Any:
    return value


@app.direct_task
def return_lock() -> Any:
    return threading.Lock()


@app.direct_task
def return_lambda() -> Any:
    return lambda: "not picklable"


@app.direct_task
def apply(func: Callable[[Any], Any], value: Any) -> Any:
    return func(value)


# -- fan-out --------------------------------------------------------------------------------


def _one_part_per_item(arguments: dict[str, Any]) -> list[tuple[Any, ...]]:
    items = arguments["items"]
    return [([item], arguments["key"], len(items)) for item in items]


def _concat(results: list[list[Any]]) -> list[Any]:
    return [value for part in results for value in part]


@app.direct_task(parallel_func=_one_part_per_item, aggregate_func=_concat)
def finish_in_reverse(items: list[int], key: str, total: Optional[int] = None) -> list[int]:
    """Each part waits for the part after it to finish, so parts finish in reverse order."""
    total = len(items) if total is None else total
    (item,) = items
    if item + 1 < total and not event(f"{key}-done-{item + 1}").wait(TASK_WAIT_SECONDS):
        raise TimeoutError(f"part {item + 1} never finished")
    record(key, item)
    event(f"{key}-done-{item}").set()
    return [item * 10]


def _pairs_as_tuples(arguments: dict[str, Any]) -> list[tuple[Any, ...]]:
    values = arguments["values"]
    return [(values[i : i + 2],) for i in range(0, len(values), 2)]


def _pairs_as_dicts(arguments: dict[str, Any]) -> list[dict[str, Any]]:
    values = arguments["values"]
    return [{"values": values[i : i + 2]} for i in range(0, len(values), 2)]


@app.direct_task(parallel_func=_pairs_as_tuples, aggregate_func=_concat)
def sum_pairs_by_tuples(values: list[int]) -> list[int]:
    """The sum of each pair of values: a whole call and its fan-out give the same list."""
    return [sum(values[i : i + 2]) for i in range(0, len(values), 2)]


@app.direct_task(parallel_func=_pairs_as_dicts, aggregate_func=_concat)
def sum_pairs_by_dicts(values: list[int]) -> list[int]:
    return [sum(values[i : i + 2]) for i in range(0, len(values), 2)]


def _bare_items(arguments: dict[str, Any]) -> list[Any]:
    return list(arguments["values"])  # plain ints: neither tuples nor dicts


@app.direct_task(parallel_func=_bare_items, aggregate_func=_concat)
def sum_bad_items(values: list[int]) -> list[int]:
    return [sum(values)]


# -- async ----------------------------------------------------------------------------------


@app.direct_task
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


@app.direct_task
async def async_wait_for_event(name: str) -> bool:
    """True once the test sets event `name` (False when it never does)."""
    return await asyncio.to_thread(event(name).wait, TASK_WAIT_SECONDS)


@app.direct_task(parallel_func=_pairs_as_tuples, aggregate_func=_concat)
async def async_sum_pairs(values: list[int]) -> list[int]:
    await asyncio.sleep(0)
    return [sum(values[i : i + 2]) for i in range(0, len(values), 2)]


@app.direct_task
async def async_raise_value_error(message: str) -> None:
    await asyncio.sleep(0)
    raise ValueError(message)


# -- synchronization with the test ----------------------------------------------------------


@app.direct_task
def wait_at_barrier(name: str) -> int:
    """Waits until `parties` calls meet at barrier `name`; returns this call's index."""
    with _lock:
        barrier = _barriers[name]
    return barrier.wait()


@app.direct_task
def block_until_released(started: str, release: str, value: Any) -> Any:
    event(started).set()
    if not event(release).wait(TASK_WAIT_SECONDS):
        raise TimeoutError(f"event {release!r} was never set")
    return value


# -- plain tasks (return an Invocation) -----------------------------------------------------


@app.task
def multiply(a: int, b: int) -> int:
    return a * b


@app.task
def record_call(label: str, value: Any) -> Any:
    record(label, value)
    return value


@app.task
def fail_with_value_error(message: str) -> None:
    raise ValueError(message)


@app.task
def wait_for_release(started: str, release: str, value: Any) -> Any:
    event(started).set()
    if not event(release).wait(TASK_WAIT_SECONDS):
        raise TimeoutError(f"event {release!r} was never set")
    return value


@app.task
def wait_for_event_in_order(label: str, index: int, wait_for: Optional[str]) -> int:
    """Waits for event `wait_for` (if any), records `index`, then sets `{label}-{index}`."""
    if wait_for is not None and not event(wait_for).wait(TASK_WAIT_SECONDS):
        raise TimeoutError(f"event {wait_for!r} was never set")
    record(label, index)
    event(f"{label}-{index}").set()
    return index


@app.task
def wait_for_attempt_release(started: str, release: str, value: Any) -> tuple[Any, int]:
    """Like wait_for_release, with events per attempt: `{started}-{n}` / `{release}-{n}`."""
    running = current_invocation()
    attempt = running.attempt if running is not None else 0
    event(f"{started}-{attempt}").set()
    if not event(f"{release}-{attempt}").wait(TASK_WAIT_SECONDS):
        raise TimeoutError(f"event {release}-{attempt} was never set")
    return value, attempt
