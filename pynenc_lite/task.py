"""Decorated functions: `Task` (from `@app.task`) and `DirectTask` (from `@app.direct_task`).

A task is known everywhere by its name, `module.qualname` of the function, so a worker in
another process finds the same function by importing that module. The objects here only
shape calls — turning `f(x)` into invocation requests (`invoke`) and results back into
values; storage keeps them and the runners run them. A task holds the app's `Runtime`, not
the app.

    @app.task            f(x) -> Invocation       (returns at once; .result waits)
    @app.direct_task     f(x) -> value            (blocks; re-raises the task's exception)
      + parallel_func    f(xs) -> aggregate_func([f_part(*a) for a in parallel_func(args)])
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import inspect
import logging
import time
from typing import Any, Callable, Generic, Iterable, Optional, TypeVar, Union

from pynenc_lite.execution import RunningInvocation, current_invocation
from pynenc_lite.importing import import_object
from pynenc_lite.invocation import Invocation, InvocationGroup
from pynenc_lite.invoke import Call, invoke
from pynenc_lite.options import TaskOptions
from pynenc_lite.runtime import HasRuntime, Runtime, runtime_of

logger = logging.getLogger(__name__)

R = TypeVar("R")

class Arguments(dict):  # type: ignore[type-arg]
    """A call's arguments by name (pynenc's `Arguments`): a dict, plus `.kwargs`."""

    @property
    def kwargs(self) -> dict[str, Any]:
        """The arguments as keyword arguments."""
        return dict(self)


def to_call(item: Any, where: str) -> Call:
    """One call's arguments from a `parallel_func`/`parallelize` item.

    Raises:
        TypeError: the item is neither a tuple (positional) nor a dict (keyword).
    """
    if isinstance(item, tuple):
        return item, {}
    if isinstance(item, dict):
        return (), item
    raise TypeError(
        f"{where} must give a tuple of positional arguments or a dict of keyword arguments "
        f"for each call, got {type(item).__name__}: {item!r:.80}. Wrap a single argument "
        "as (value,)."
    )


def _load_task(module: str, qualname: str) -> Any:
    return import_object(f"{module}:{qualname}")


class Task(Generic[R]):
    """A function registered with an app; calling it returns an `Invocation` at once."""

    def __init__(
        self, runtime: Union[Runtime, HasRuntime], func: Callable[..., Any], options: dict[str, Any]
    ) -> None:
        self.runtime = runtime_of(runtime)  # an app is accepted too
        self.func = func
        # A spawned worker process imports the parent's script as __mp_main__; name its
        # tasks as the parent does, so both sides agree.
        module = "__main__" if func.__module__ == "__mp_main__" else func.__module__
        self.name = f"{module}.{func.__qualname__}"
        self.options = TaskOptions.from_decorator(self.name, options)
        self.is_async = inspect.iscoroutinefunction(func)
        self._signature = inspect.signature(func)
        functools.update_wrapper(self, func)
        missing = set(self.options.key_arguments) - set(self._signature.parameters)
        if missing:
            raise ValueError(
                f"task {self.name}: key_arguments {sorted(missing)} are not parameters of "
                f"{self.name}{self._signature}"
            )
        if "<locals>" in func.__qualname__:
            logger.warning(
                "task %s is defined inside a function: only runners in this process can find "
                "it; define it at module level to run it on worker processes",
                self.name,
            )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    @property
    def app(self) -> Any:
        """The app this task is registered with (pynenc's `task.app`)."""
        return self.runtime.owner

    @property
    def task_id(self) -> str:
        """pynenc's task id: `module.function`, the same as `name`."""
        return self.name

    @property
    def logger(self) -> logging.Logger:
        """A logger for this task (`pynenc_lite.tasks.<task name>`), for use inside it; its
        records go where the library's go."""
        return logging.getLogger(f"pynenc_lite.tasks.{self.name}")

    @property
    def invocation(self) -> RunningInvocation:
        """The invocation running now in this thread (its `invocation_id`, attempt, ...), as
        pynenc's `task.invocation` gives inside a task.

        Raises:
            RuntimeError: called outside a running task.
        """
        running = current_invocation()
        if running is None:
            raise RuntimeError(
                f"{self.name}.invocation is only known inside a running task; outside one, "
                "keep the Invocation that calling the task returned"
            )
        return running

    def args(self, *args: Any, **kwargs: Any) -> Arguments:
        """A call's arguments by name, as pynenc's `task.args(...)`: checked against the
        signature, usable as an item of `parallelize`.

        Raises:
            TypeError: they do not fit the function's signature.
        """
        return Arguments(self.arguments_by_name(args, kwargs))

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled by reference, like a function: the receiving process imports it.
        return _load_task, (self.func.__module__, self.func.__qualname__)

    def __call__(self, *args: Any, **kwargs: Any) -> Invocation[R]:
        return invoke(self.runtime, self, [(args, kwargs)], awaited=False)[0]

    def arguments_by_name(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's arguments by parameter name, defaults applied.

        Raises:
            TypeError: they do not fit the function's signature (the message shows it).
        """
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}{self._signature}: {exc}") from None
        bound.apply_defaults()
        return dict(bound.arguments)

    def call_later(self, countdown_seconds: float, *args: Any, **kwargs: Any) -> Invocation[R]:
        """Store a call that no worker starts before `countdown_seconds` from now.

        It is kept in the database, so it survives restarts; with a worker up it starts
        within about a second of its time. In sync mode it runs at once.

        Raises:
            ValueError: a negative countdown.
        """
        if countdown_seconds < 0:
            raise ValueError(f"countdown_seconds must be >= 0, got {countdown_seconds}")
        run_at = time.time() + countdown_seconds
        return invoke(self.runtime, self, [(args, kwargs)], awaited=False, run_at=run_at)[0]

    def call_at(self, when: datetime.datetime, *args: Any, **kwargs: Any) -> Invocation[R]:
        """Store a call that no worker starts before `when` (a timezone-aware datetime).

        Raises:
            ValueError: `when` has no timezone (it would be ambiguous across hosts).
        """
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(
                f"call_at needs a timezone-aware datetime, got {when!r}; use for example "
                "datetime.now(timezone.utc) + timedelta(minutes=5)"
            )
        run_at = when.timestamp()
        return invoke(self.runtime, self, [(args, kwargs)], awaited=False, run_at=run_at)[0]

    def parallelize(self, param_iter: Iterable[Any]) -> InvocationGroup[R]:
        """Submit one invocation per item, all in one atomic write.

        Args:
            param_iter: tuples of positional arguments or dicts of keyword arguments.

        Returns:
            the group, whose `.results` come in input order.
        """
        calls = [to_call(item, f"parallelize() of {self.name}") for item in param_iter]
        return InvocationGroup(invoke(self.runtime, self, calls, awaited=False))


class DirectTask(Task[R]):
    """A task called like the plain function: it blocks and returns the value.

    With `parallel_func`, one call fans out: `parallel_func(arguments_by_name)` gives the
    arguments of each part, the parts run as invocations of this same function, and
    `aggregate_func(results_in_input_order)` gives the value returned to the caller.
    An `async def` function gives an awaitable wrapper that does not block the event loop.
    """

    def __init__(
        self,
        runtime: Union[Runtime, HasRuntime],
        func: Callable[..., Any],
        options: dict[str, Any],
        parallel_func: Optional[Callable[[dict[str, Any]], Iterable[Any]]] = None,
        aggregate_func: Optional[Callable[[list[Any]], Any]] = None,
    ) -> None:
        super().__init__(runtime, func, options)
        if parallel_func is not None and aggregate_func is None:
            raise ValueError(
                f"direct_task {self.name}: parallel_func needs an aggregate_func to combine "
                "the parts' results (it receives them as a list in input order)"
            )
        if aggregate_func is not None and parallel_func is None:
            raise ValueError(
                f"direct_task {self.name}: aggregate_func is only used with parallel_func"
            )
        self.parallel_func = parallel_func
        self.aggregate_func = aggregate_func

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.is_async:
            return self._call_async(args, kwargs)
        invocations = invoke(self.runtime, self, self._calls(args, kwargs), awaited=True)
        timeout = self.runtime.conf.result_timeout_seconds
        if self.parallel_func is None:
            return invocations[0].get_result(timeout)
        assert self.aggregate_func is not None
        return self.aggregate_func(InvocationGroup(invocations).get_results(timeout))

    async def _call_async(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        invocations = invoke(self.runtime, self, self._calls(args, kwargs), awaited=True)
        timeout = self.runtime.conf.result_timeout_seconds
        if self.parallel_func is None:
            return await invocations[0].async_result(timeout)
        assert self.aggregate_func is not None
        results = await asyncio.gather(*(i.async_result(timeout) for i in invocations))
        return self.aggregate_func(list(results))

    def _calls(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Call]:
        if self.parallel_func is None:
            return [(args, kwargs)]
        where = f"parallel_func of {self.name}"
        arguments = self.arguments_by_name(args, kwargs)
        return [to_call(item, where) for item in self.parallel_func(arguments)]
