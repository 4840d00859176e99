"""`@app.task`, `Invocation` and `InvocationGroup`: handles that behave like futures.

Most tests run without a runner first (to see the REGISTERED state and the timeouts), then
drain the queue with `app.runner.run(burst=True)` in the test thread.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from pynenc_lite import (
    Invocation,
    InvocationGroup,
    InvocationStatus,
    InvocationTimeoutError,
    Pynenc,
    PynencError,
)
from tests import tasks_core
from tests.helpers import WAIT_SECONDS, is_runnable

SHORT_TIMEOUT = 0.2  # for waits that are meant to run out


# -- Invocation ------------------------------------------------------------------------------


def test_task_call_returns_a_registered_invocation_at_once(core_app: Pynenc) -> None:
    invocation = tasks_core.multiply(6, 7)  # no runner: this must not block
    assert isinstance(invocation, Invocation)
    assert isinstance(invocation.invocation_id, str) and invocation.invocation_id
    assert invocation.task_name == "tests.tasks_core.multiply"
    assert invocation.status is InvocationStatus.REGISTERED
    assert not invocation.done()


def test_invocation_ids_are_unique(core_app: Pynenc) -> None:
    ids = {tasks_core.multiply(1, 1).invocation_id for _ in range(50)}
    assert len(ids) == 50


def test_status_and_result_after_the_runner_ran(core_app: Pynenc) -> None:
    invocation = tasks_core.multiply(6, 7)
    core_app.runner.run(burst=True)
    assert invocation.status is InvocationStatus.SUCCESS
    assert invocation.done()
    assert invocation.result == 42
    assert invocation.get_result(timeout=0) == 42
    assert invocation.attempts == 1


def test_failed_invocation_reraises_the_original_exception(core_app: Pynenc) -> None:
    invocation = tasks_core.fail_with_value_error("no good")
    core_app.runner.run(burst=True)
    assert invocation.status is InvocationStatus.FAILED
    with pytest.raises(ValueError) as info:
        _ = invocation.result
    assert str(info.value) == "no good"


def test_get_result_times_out_as_a_builtin_timeout_error(core_app: Pynenc) -> None:
    invocation = tasks_core.multiply(2, 3)
    with pytest.raises(InvocationTimeoutError) as info:
        invocation.get_result(timeout=SHORT_TIMEOUT)
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, PynencError)
    assert invocation.invocation_id in str(info.value)
    # The wait running out changes nothing: the invocation runs later and can be asked again.
    assert invocation.status is InvocationStatus.REGISTERED
    core_app.runner.run(burst=True)
    assert invocation.get_result(timeout=WAIT_SECONDS) == 6


def test_except_timeouterror_catches_the_timeout(core_app: Pynenc) -> None:
    invocation = tasks_core.multiply(2, 3)
    try:
        invocation.get_result(timeout=0)
    except TimeoutError:
        timed_out = True
    assert timed_out


def test_negative_timeout_is_rejected(core_app: Pynenc) -> None:
    invocation = tasks_core.multiply(2, 3)
    with pytest.raises(ValueError, match="timeout"):
        invocation.get_result(timeout=-1)


def test_async_result(running_app: Pynenc) -> None:
    invocation = tasks_core.multiply(4, 5)

    async def main() -> int:
        return await invocation.async_result(timeout=WAIT_SECONDS)

    assert asyncio.run(main()) == 20


def test_async_result_times_out_and_can_be_awaited_again(core_app: Pynenc) -> None:
    invocation = tasks_core.multiply(4, 5)

    async def wait(timeout: float) -> int:
        return await invocation.async_result(timeout=timeout)

    with pytest.raises(InvocationTimeoutError):
        asyncio.run(wait(SHORT_TIMEOUT))
    core_app.runner.run(burst=True)
    assert asyncio.run(wait(WAIT_SECONDS)) == 20


# -- re-attaching by id ----------------------------------------------------------------------


def test_get_invocation_reattaches_by_id(core_app: Pynenc) -> None:
    invocation_id = tasks_core.multiply(3, 4).invocation_id
    core_app.runner.run(burst=True)
    again = core_app.get_invocation(invocation_id)
    assert again.invocation_id == invocation_id
    assert again.task_name == "tests.tasks_core.multiply"
    assert again.status is InvocationStatus.SUCCESS
    assert again.result == 12


def test_get_invocation_before_it_ran_gets_the_result_later(core_app: Pynenc) -> None:
    invocation_id = tasks_core.multiply(3, 5).invocation_id
    again = core_app.get_invocation(invocation_id)
    assert again.status is InvocationStatus.REGISTERED
    with core_app.runner:
        assert again.get_result(timeout=WAIT_SECONDS) == 15


def test_get_invocation_from_another_app_instance_on_the_same_database(
    core_app: Pynenc, tmp_path: Path
) -> None:
    # A second app object stands for another process: it shares only the SQLite file, so its
    # result arrives through the database (the hub's watcher), not in-process hand-off.
    invocation = tasks_core.multiply(7, 8)
    other = Pynenc(
        app_id=core_app.app_id,
        config_values={"sqlite_db_path": core_app.conf.sqlite_db_path},
    )
    try:
        again = other.get_invocation(invocation.invocation_id)
        with core_app.runner:
            assert again.get_result(timeout=WAIT_SECONDS) == 56
    finally:
        other.close()


def test_get_invocation_of_an_unknown_id_raises_lookup_error(core_app: Pynenc) -> None:
    with pytest.raises(LookupError, match="no-such-id"):
        core_app.get_invocation("no-such-id")


# -- InvocationGroup -------------------------------------------------------------------------


def test_parallelize_results_in_input_order(core_app: Pynenc) -> None:
    group = tasks_core.multiply.parallelize([(i, i) for i in range(10)] + [{"a": 2, "b": 50}])
    assert isinstance(group, InvocationGroup)
    assert len(group) == 11
    assert all(i.status is InvocationStatus.REGISTERED for i in group)
    core_app.runner.run(burst=True)
    expected = [i * i for i in range(10)] + [100]
    assert list(group.results_in_order) == expected
    assert sorted(group.results) == sorted(expected)  # completion order, as pynenc
    assert group.get_results(timeout=WAIT_SECONDS) == expected


def test_parallelize_results_keep_input_order_when_finishing_in_reverse(
    running_app: Pynenc,
) -> None:
    label = uuid.uuid4().hex
    count = 6  # all run at once: the runner has 8 threads
    group = tasks_core.wait_for_event_in_order.parallelize(
        [(label, i, f"{label}-{i + 1}" if i + 1 < count else None) for i in range(count)]
    )
    assert group.get_results(timeout=WAIT_SECONDS) == list(range(count))
    assert tasks_core.recorded(label) == list(reversed(range(count)))


def test_get_results_times_out_without_a_runner(core_app: Pynenc) -> None:
    group = tasks_core.multiply.parallelize([(1, 1), (2, 2)])
    with pytest.raises(InvocationTimeoutError):
        group.get_results(timeout=SHORT_TIMEOUT)


def test_results_reraise_the_first_failure_in_input_order(core_app: Pynenc) -> None:
    group = tasks_core.fail_with_value_error.parallelize([("first",), ("second",)])
    core_app.runner.run(burst=True)
    with pytest.raises(ValueError) as info:
        group.get_results(timeout=WAIT_SECONDS)
    assert str(info.value) == "first"


def test_as_completed_yields_every_invocation_once(core_app: Pynenc) -> None:
    group = tasks_core.multiply.parallelize([(i, 2) for i in range(12)])
    core_app.runner.run(burst=True)
    yielded = list(group.as_completed(timeout=WAIT_SECONDS))
    assert len(yielded) == 12
    assert {i.invocation_id for i in yielded} == {i.invocation_id for i in group}
    assert sorted(i.result for i in yielded) == [2 * i for i in range(12)]


def test_as_completed_while_they_run(running_app: Pynenc) -> None:
    label = uuid.uuid4().hex
    group = tasks_core.wait_for_event_in_order.parallelize(
        [(label, i, f"{label}-{i + 1}" if i < 3 else None) for i in range(4)]
    )
    yielded = [i.result for i in group.as_completed(timeout=WAIT_SECONDS)]
    assert sorted(yielded) == [0, 1, 2, 3]


def test_as_completed_times_out_without_a_runner(core_app: Pynenc) -> None:
    group = tasks_core.multiply.parallelize([(1, 1)])
    with pytest.raises(InvocationTimeoutError):
        list(group.as_completed(timeout=SHORT_TIMEOUT))


def test_parallelize_rejects_an_item_of_a_bad_type(core_app: Pynenc) -> None:
    with pytest.raises(TypeError, match=r"parallelize\(\) of tests.tasks_core.multiply"):
        tasks_core.multiply.parallelize([(1, 2), 3])


# -- draining the queue ----------------------------------------------------------------------


def test_burst_run_drains_the_queue_and_returns(core_app: Pynenc) -> None:
    invocations = [tasks_core.multiply(i, 10) for i in range(40)]
    core_app.runner.run(burst=True)
    assert [i.status for i in invocations] == [InvocationStatus.SUCCESS] * 40
    assert [i.result for i in invocations] == [10 * i for i in range(40)]
    assert not is_runnable(core_app.backend, core_app.app_id, float("inf"))
    assert not core_app.runner.is_running


def test_burst_run_on_an_empty_queue_returns(core_app: Pynenc) -> None:
    core_app.runner.run(burst=True)
    assert not core_app.runner.is_running
