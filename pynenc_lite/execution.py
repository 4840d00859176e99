"""Running a task: the one execution path shared by sync mode and the runners.

    call_task        the function, with `current_invocation()` set; a coroutine is run to
                     completion (the same detection on every path)
    run_claimed      a runner's claimed invocation -> Outcome (SUCCESS, RETRY or FAILED)
    run_inline       sync mode's call -> LocalOutcome, retrying at once as the policy allows

On a runner every `BaseException` a task raises fails its invocation: a task raising
SystemExit, KeyboardInterrupt or asyncio.CancelledError must not end a worker thread and leave
the invocation RUNNING for ever. Inline (sync mode) the same holds, except that
KeyboardInterrupt and SystemExit go straight up, as they would without the library: the
caller's thread is the one a Ctrl-C or `sys.exit()` is meant to stop.

It does no storage I/O: runners store the outcomes, sync mode hands them to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import inspect
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Union

from pynenc_lite import serializer
from pynenc_lite.backend.base import ClaimedInvocation, Outcome
from pynenc_lite.conf import PynencConfig
from pynenc_lite.options import TaskOptions
from pynenc_lite.status import InvocationStatus

if TYPE_CHECKING:
    from pynenc_lite.runtime import RegisteredTask, Runtime

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunningInvocation:
    """What a running task can learn about itself (see `current_invocation()`)."""

    invocation_id: str
    task_name: str
    attempt: int  # 1 on the first run; higher after a retry or a lost worker
    retries: int  # retries used before this attempt
    worker_id: str
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event, repr=False)

    def is_cancelled(self) -> bool:
        """True once the invocation was cancelled (or failed for its time limit) while it
        runs: a long task can check this and return early. The runner learns of it at its
        next heartbeat."""
        return self.cancelled.is_set()


# The options of a task that cannot be found (its failure is reported as it is).
DEFAULT_OPTIONS = TaskOptions()

_current: contextvars.ContextVar[Optional[RunningInvocation]] = contextvars.ContextVar(
    "pynenc_lite_current_invocation", default=None
)


def run_coroutine_blocking(coroutine: Any) -> Any:
    """Run a coroutine to completion from synchronous code, even inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    # A loop runs in this thread (sync mode called from async code): use a fresh thread.
    box: list[Any] = []

    def target() -> None:
        try:
            box.append((True, asyncio.run(coroutine)))
        except BaseException as exc:  # handed back to the calling thread below
            box.append((False, exc))

    thread = threading.Thread(target=target, name="pynenc-lite-inline-async")
    thread.start()
    thread.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value


def current_invocation() -> Optional[RunningInvocation]:
    """The invocation the calling code runs in, when called from inside a task (on a
    runner, or inline in sync mode)."""
    return _current.get()


@contextlib.contextmanager
def running_as(running: RunningInvocation) -> Iterator[RunningInvocation]:
    """Make `running` the `current_invocation()` inside the block."""
    token = _current.set(running)
    try:
        yield running
    finally:
        _current.reset(token)


@dataclasses.dataclass(frozen=True)
class LocalOutcome:
    """The outcome of a call run inline (sync mode): a value, or an exception to raise."""

    invocation_id: str
    value: Any = None
    exception: Optional[BaseException] = None


AnyOutcome = Union[Outcome, LocalOutcome]


def call_task(
    task: RegisteredTask, args: tuple[Any, ...], kwargs: dict[str, Any], running: RunningInvocation
) -> Any:
    """Call the task's function as `running` (what `current_invocation()` returns inside);
    a coroutine it returns is run to completion. Raises whatever the task raises."""
    with running_as(running):
        value = task.func(*args, **kwargs)
        if inspect.iscoroutine(value):
            value = run_coroutine_blocking(value)
    return value


def run_inline(
    task: RegisteredTask,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    invocation_id: str,
    *,
    round_trip: bool,
) -> LocalOutcome:
    """Run a call in this thread now (sync mode), retrying at once while the task's retry
    policy allows (tests should not sleep). With `round_trip`, arguments, the result and the
    exception make the same pickle round trip as on a worker. What the task raises becomes
    the outcome's exception.

    Raises:
        SerializationError: an argument cannot be pickled (the call is not made).
    """
    if round_trip:
        args, kwargs = serializer.loads_call(
            task.name, serializer.dumps_call(task.name, args, kwargs)
        )
    retries = 0
    while True:
        running = RunningInvocation(invocation_id, task.name, retries + 1, retries, "inline")
        try:
            value = call_task(task, args, kwargs, running)
            if round_trip:
                value = serializer.loads_value(task.name, serializer.dumps_value(task.name, value))
            return LocalOutcome(invocation_id, value=value)
        except (KeyboardInterrupt, SystemExit):
            raise  # stops the caller, as without the library (see the module docstring)
        except BaseException as exc:
            if task.options.should_retry(exc, retries):
                retries += 1
                logger.info("sync call of %s failed (%r); retry %d", task.name, exc, retries)
                continue
            error = serializer.round_trip_exception(exc) if round_trip else exc
            return LocalOutcome(invocation_id, exception=error)


def run_claimed(
    runtime: Runtime,
    claimed: ClaimedInvocation,
    running: RunningInvocation,
    clock: Callable[[], float],
) -> Outcome:
    """Run `claimed` in this thread as `running` (what `current_invocation()` returns) and
    return its outcome. Never raises."""
    options = DEFAULT_OPTIONS
    started = time.perf_counter()
    log = logger.isEnabledFor(logging.INFO)
    try:
        task = runtime.resolve_task(claimed.task_name)
        options = task.options
        args, kwargs = serializer.loads_call(claimed.task_name, claimed.args)
        if log:
            logger.info(
                "start %s %s attempt %d (%s)",
                claimed.task_name,
                claimed.invocation_id[:8],
                claimed.attempt,
                describe_arguments(task, args, kwargs, runtime.conf),
            )
        value = call_task(task, args, kwargs, running)
        payload = serializer.dumps_value(claimed.task_name, value)
        outcome = Outcome(claimed.invocation_id, InvocationStatus.SUCCESS, payload)
    except BaseException as exc:  # every kind: see the module docstring
        outcome = failure_outcome(claimed, options, exc, clock())
    if log:
        logger.info(
            "finish %s %s attempt %d in %.3fs: %s%s",
            claimed.task_name,
            claimed.invocation_id[:8],
            claimed.attempt,
            time.perf_counter() - started,
            outcome.status,
            f" ({outcome.error})" if outcome.error else "",
        )
    return outcome


def describe_arguments(
    task: RegisteredTask, args: tuple[Any, ...], kwargs: dict[str, Any], conf: PynencConfig
) -> str:
    """The arguments for a log line, as `argument_print_mode` allows: HIDDEN, KEYS (names
    only), FULL, or TRUNCATED (each value cut at `truncate_arguments_length`)."""
    mode = conf.argument_print_mode
    if mode == "HIDDEN":
        return "arguments hidden"
    try:
        named = task.arguments_by_name(args, kwargs)
    except TypeError:
        named = {**{str(i): a for i, a in enumerate(args)}, **kwargs}
    if mode == "KEYS":
        return ", ".join(named)
    limit = conf.truncate_arguments_length
    shown = []
    for name, value in named.items():
        text = repr(value)
        if mode == "TRUNCATED" and len(text) > limit:
            text = text[:limit] + "..."
        shown.append(f"{name}={text}")
    return ", ".join(shown)


def running_for(claimed: ClaimedInvocation, worker_id: str) -> RunningInvocation:
    """The `current_invocation()` value for a claimed invocation."""
    return RunningInvocation(
        claimed.invocation_id, claimed.task_name, claimed.attempt, claimed.retries, worker_id
    )


def failure_outcome(
    claimed: ClaimedInvocation, options: TaskOptions, exc: BaseException, now: float
) -> Outcome:
    """RETRY at the policy's next time when `exc` is retryable and retries are left,
    else FAILED; both carry the error and traceback."""
    payload, error, text = serializer.dumps_exception(exc)
    if options.should_retry(exc, claimed.retries):
        delay = options.retry_delay(claimed.retries, exc)
        logger.info(
            "invocation %s of %s failed (%s); retry %d of %d in %.2fs",
            claimed.invocation_id,
            claimed.task_name,
            error,
            claimed.retries + 1,
            options.max_retries,
            delay,
        )
        return Outcome(
            claimed.invocation_id, InvocationStatus.RETRY, None, error, text, retry_at=now + delay
        )
    logger.debug("invocation %s of %s failed: %s", claimed.invocation_id, claimed.task_name, error)
    return Outcome(claimed.invocation_id, InvocationStatus.FAILED, payload, error, text)
