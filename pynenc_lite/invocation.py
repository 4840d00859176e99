"""Handles on calls: `Invocation` (one call) and `InvocationGroup` (a fan-out).

An invocation's outcome arrives as a `concurrent.futures.Future` from the app's hub (see
`waiting`), so waiting behaves like futures: `timeout=` in seconds, a `TimeoutError`
subclass when it runs out, `as_completed` over a group, and `asyncio` awaiting through
`asyncio.wrap_future` without blocking the event loop.

In sync mode the future is already resolved when the handle is made, and the handle knows it
ran inline (`inline=True`): it never asks storage about it.

This module turns an outcome into a value or a raised exception; it does not store or run
anything. Handles take the `Runtime`, not the app.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from typing import Any, Generic, Iterator, Optional, TypeVar, Union

from pynenc_lite import serializer
from pynenc_lite.backend.base import HistoryEntry, InvocationRecord, Outcome
from pynenc_lite.errors import (
    BackendError,
    ConcurrencyControlledError,
    InvocationCancelledError,
    InvocationNotFoundError,
    InvocationTimeoutError,
)
from pynenc_lite.execution import AnyOutcome, LocalOutcome
from pynenc_lite.runtime import HasRuntime, Runtime, find_runtime, runtime_of
from pynenc_lite.status import InvocationStatus

logger = logging.getLogger(__name__)

R = TypeVar("R")


def check_timeout(timeout: Optional[float]) -> None:
    """The one check of a wait's `timeout`, the same for every wait.

    Raises:
        ValueError: it is not None or a number of seconds >= 0.
    """
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ValueError(
            f"timeout must be None (no limit) or a number of seconds >= 0, got {timeout!r}"
        )


class _Deadline:
    """The time left of one wait, in steps no longer than the pause between looks at storage
    (`no_worker_warning_seconds`)."""

    def __init__(self, timeout: Optional[float], runtime: Runtime) -> None:
        self.start = time.monotonic()
        self.end = None if timeout is None else self.start + timeout
        self.check_every = max(runtime.conf.no_worker_warning_seconds, 0.01)

    def step(self) -> float:
        if self.end is None:
            return self.check_every
        return max(0.0, min(self.check_every, self.end - time.monotonic()))

    def passed(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end

    def waited(self) -> float:
        return time.monotonic() - self.start


class Invocation(Generic[R]):
    """One call of a task. Returned by calling an `@app.task` function.

    `.result` blocks until the value is there and returns it, or re-raises the task's own
    exception with its original type.
    """

    def __init__(
        self,
        runtime: Union[Runtime, HasRuntime],
        task_name: str,
        invocation_id: str,
        future: Optional[concurrent.futures.Future[AnyOutcome]] = None,
        *,
        inline: bool = False,
    ) -> None:
        self.runtime = runtime_of(runtime)  # an app is accepted too, as pynenc code passes it
        self.task_name = task_name
        self.invocation_id = invocation_id
        self._future = future
        self.inline = inline  # ran in the caller's thread (sync mode): nothing is stored
        if inline and (future is None or not future.done()):
            raise ValueError("an inline invocation needs its resolved future")

    @property
    def app(self) -> Any:
        """The app this invocation belongs to (pynenc's `invocation.app`)."""
        return self.runtime.owner

    @property
    def task(self) -> Any:
        """The task this invocation calls (pynenc's `invocation.task`).

        Raises:
            TaskNotFoundError: the task cannot be found in this process.
        """
        return self.runtime.resolve_task(self.task_name)

    def __repr__(self) -> str:
        return f"<Invocation {self.task_name} {self.invocation_id}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled by id, as pynenc does: passed as an argument to another task, it arrives on
        # the worker as a handle on the same stored invocation of the same app. A sync-mode
        # invocation is nowhere stored, so it travels with its outcome.
        if self.inline:
            assert self._future is not None
            return _inline_invocation, (
                self.runtime.app_id, self.task_name, self.invocation_id, self._future.result()
            )
        return _stored_invocation, (self.runtime.app_id, self.task_name, self.invocation_id)

    # -- state ------------------------------------------------------------------------------

    @property
    def future(self) -> concurrent.futures.Future[AnyOutcome]:
        """The future that receives the outcome (registered with the hub on first use)."""
        if self._future is None:
            rt = self.runtime
            future = rt.hub.future_for(self.invocation_id)
            if not future.done() and rt.backend.get_invocation(self.invocation_id) is None:
                raise self._not_stored()
            self._future = future  # type: ignore[assignment]
        assert self._future is not None
        return self._future

    def done(self) -> bool:
        """True when the invocation has a final outcome (without waiting)."""
        if self._future is not None and self._future.done():
            return True
        return self.status.is_final()

    @property
    def status(self) -> InvocationStatus:
        """The stored status now (one read; SUCCESS/FAILED at once for sync calls)."""
        if self._future is not None and self._future.done():
            outcome = self._future.result()
            if isinstance(outcome, LocalOutcome):
                return InvocationStatus.FAILED if outcome.exception else InvocationStatus.SUCCESS
            return outcome.status
        record = self.record()
        if record is None:
            raise self._not_stored()
        return record.status

    def record(self) -> Optional[InvocationRecord]:
        """Everything stored about this invocation (status, attempts, times), or None."""
        if self.inline:
            return None
        return self.runtime.backend.get_invocation(self.invocation_id)

    def history(self) -> list[HistoryEntry]:
        """Every status change (status, time, worker), oldest first; empty for sync calls."""
        if self.inline:
            return []
        return self.runtime.backend.get_history(self.invocation_id)

    @property
    def attempts(self) -> int:
        """How many times a worker started this invocation (1 for a sync call)."""
        record = self.record()
        return 1 if record is None else record.attempts

    def cancel(self) -> bool:
        """Cancel the invocation if it has not finished.

        Work not started yet never starts. Running work is stopped where the runner can (a
        process runner ends the worker process that runs it) and otherwise flagged, so the
        task can check `current_invocation().is_cancelled()`. Waiters get an
        `InvocationCancelledError` (a `concurrent.futures.CancelledError`) at once.

        Returns:
            True if it was cancelled now; False (changing nothing) if it had finished.
        """
        if self.inline:
            return False  # a sync call finished when it was made
        rt = self.runtime
        if not rt.backend.cancel(self.invocation_id, time.time()):
            return False
        if rt.has_hub:
            rt.hub.resolve(
                Outcome(self.invocation_id, InvocationStatus.CANCELLED, error="cancelled")
            )
        return True

    # -- results ----------------------------------------------------------------------------

    @property
    def result(self) -> R:
        """The return value, waiting up to `result_timeout_seconds` (config; None = no limit).

        Raises:
            the task's own exception (original type, worker traceback as its cause);
            InvocationTimeoutError: (a `TimeoutError`) the wait ran out;
            InvocationCancelledError: the invocation was cancelled.
        """
        return self.get_result(self.runtime.conf.result_timeout_seconds)

    def get_result(self, timeout: Optional[float] = None) -> R:
        """The return value, waiting at most `timeout` seconds (None: no limit).

        The invocation is not affected when the wait runs out; ask again later.

        Raises:
            like `result`.
        """
        return self._decode(self._wait(timeout))

    async def async_result(self, timeout: Optional[float] = None) -> R:
        """Await the return value without blocking the event loop. Raises like `result`.

        It looks at storage as `get_result` does (in a worker thread, off the event loop), so
        it also ends when the hub was closed meanwhile, and it gives the no-worker warning.
        """
        check_timeout(timeout)
        loop = asyncio.get_running_loop()
        # The first use registers with the hub and reads storage: off the event loop too.
        registered = self._future
        if registered is None:
            registered = await loop.run_in_executor(None, lambda: self.future)
        future = asyncio.wrap_future(registered)
        deadline = _Deadline(timeout, self.runtime)
        warned = False
        while True:
            # asyncio.wait never cancels what it waits for, so a timeout here leaves the
            # shared future intact for other waiters.
            done, _ = await asyncio.wait({future}, timeout=deadline.step())
            if done:
                return self._decode(future.result())
            if deadline.passed():
                raise self._timeout_error(timeout)
            stored = await loop.run_in_executor(None, self._stored_outcome)
            if stored is not None:
                return self._decode(stored)
            if not warned:
                warned = await loop.run_in_executor(
                    None, self.runtime.warn_if_no_worker, repr(self), deadline.waited()
                )

    def _wait(self, timeout: Optional[float]) -> AnyOutcome:
        check_timeout(timeout)
        future = self.future
        if future.done():
            return future.result()
        deadline = _Deadline(timeout, self.runtime)
        warned = False
        while True:
            try:
                return future.result(timeout=deadline.step())
            except concurrent.futures.TimeoutError:
                pass
            if deadline.passed():
                raise self._timeout_error(timeout)
            stored = self._stored_outcome()
            if stored is not None:
                return stored
            if not warned:
                warned = self.runtime.warn_if_no_worker(repr(self), deadline.waited())

    def _stored_outcome(self) -> Optional[Outcome]:
        """The stored outcome when it is final, else None (a look while waiting: the future
        was not told when its hub was closed meanwhile, say; this wait must still end).

        Raises:
            InvocationNotFoundError: the invocation is no longer stored.
        """
        rt = self.runtime
        backend = rt.backend
        try:
            record = backend.get_invocation(self.invocation_id)
            outcomes = [] if record is None or not record.status.is_final() else (
                backend.get_outcomes([self.invocation_id])
            )
        except BackendError:
            if not rt.was_closed(backend):
                raise
            return None  # the app was closed under us (its next backend is asked next time)
        if record is None:
            raise self._not_stored()
        return outcomes[0] if outcomes else None

    def _not_stored(self) -> InvocationNotFoundError:
        """The error for an invocation that is not stored (nobody will tell its future)."""
        if self.runtime.has_hub:
            self.runtime.hub.forget(self.invocation_id)
        return InvocationNotFoundError(self.runtime.not_found_message(self.invocation_id))

    def _timeout_error(self, timeout: Optional[float]) -> InvocationTimeoutError:
        return InvocationTimeoutError(
            f"{self.task_name} invocation {self.invocation_id} did not finish within "
            f"{timeout}s; it goes on (ask again with get_result(timeout=...)). "
            "If it never runs, check that a worker is running for app "
            f"{self.runtime.app_id!r}."
        )

    def _decode(self, outcome: AnyOutcome) -> R:
        if isinstance(outcome, LocalOutcome):
            if outcome.exception is not None:
                raise outcome.exception
            return outcome.value  # type: ignore[no-any-return]
        if outcome.status is InvocationStatus.SUCCESS:
            assert outcome.payload is not None
            return serializer.loads_value(self.task_name, outcome.payload)  # type: ignore[no-any-return]
        if outcome.status is InvocationStatus.CANCELLED:
            raise InvocationCancelledError(
                f"{self.task_name} invocation {self.invocation_id} was cancelled"
            )
        if outcome.status is InvocationStatus.CONCURRENCY_CONTROLLED_FINAL:
            raise ConcurrencyControlledError(
                f"{self.task_name} invocation {self.invocation_id} never ran and has no "
                "result: the task's running concurrency limit was reached when a worker "
                "came to start it, and the task has reroute_on_concurrency_control=False "
                "(pynenc's default), so the call was dropped. Pass "
                "reroute_on_concurrency_control=True to the task decorator to make such "
                "calls wait their turn"
            )
        raise serializer.load_exception(outcome.payload, outcome.error, outcome.traceback)


def _stored_invocation(app_id: str, task_name: str, invocation_id: str) -> Invocation[Any]:
    return Invocation(find_runtime(app_id), task_name, invocation_id)


def _inline_invocation(
    app_id: str, task_name: str, invocation_id: str, outcome: LocalOutcome
) -> Invocation[Any]:
    future: concurrent.futures.Future[AnyOutcome] = concurrent.futures.Future()
    future.set_result(outcome)
    return Invocation(find_runtime(app_id), task_name, invocation_id, future, inline=True)


class InvocationGroup(Generic[R]):
    """The invocations of one fan-out (`task.parallelize(...)`), in input order."""

    def __init__(self, invocations: list[Invocation[R]]) -> None:
        self.invocations = invocations

    def __iter__(self) -> Iterator[Invocation[R]]:
        return iter(self.invocations)

    def _register(self) -> None:
        """Register every invocation's future with one read, instead of one per wait."""
        missing = [i for i in self.invocations if i._future is None]
        if missing:
            futures = missing[0].runtime.hub.futures_for([i.invocation_id for i in missing])
            for invocation, future in zip(missing, futures):
                invocation._future = future  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.invocations)

    def __repr__(self) -> str:
        return f"<InvocationGroup of {len(self.invocations)}>"

    @property
    def results(self) -> Results[R]:
        """The results as each invocation finishes (completion order, as pynenc yields them);
        iterating re-raises a failure when it is met (the others go on running). Waits up to
        `result_timeout_seconds` in all. For input order: `results_in_order` or
        `get_results()`."""
        return Results(self)

    @property
    def results_in_order(self) -> Iterator[R]:
        """Each result in input order, waiting for each in turn; re-raises the first failure
        met in that order (the others go on running)."""
        self._register()
        for invocation in self.invocations:
            yield invocation.result

    def get_results(self, timeout: Optional[float] = None) -> list[R]:
        """All results in input order, waiting at most `timeout` seconds in total.

        Raises:
            the first failure in input order; InvocationTimeoutError when time runs out.
        """
        check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        self._register()
        values = []
        for invocation in self.invocations:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(invocation.get_result(remaining))
        return values

    def as_completed(self, timeout: Optional[float] = None) -> Iterator[Invocation[R]]:
        """Yield the invocations as they finish (like `concurrent.futures.as_completed`).

        Like a single wait, it looks at storage between notifications (so it ends even when
        the hub was closed meanwhile) and gives the no-worker warning.

        Raises:
            InvocationTimeoutError: `timeout` seconds passed before all finished.
            InvocationNotFoundError: one of them is not stored (purged, expired, wrong id).
        """
        check_timeout(timeout)
        self._register()
        pending: dict[Any, list[Invocation[R]]] = {}
        for invocation in self.invocations:
            pending.setdefault(invocation.future, []).append(invocation)
        if not pending:
            return
        runtime = self.invocations[0].runtime
        deadline = _Deadline(timeout, runtime)
        warned = looked = False
        while pending:
            done, _ = concurrent.futures.wait(
                pending, timeout=deadline.step(), return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in done:
                yield from pending.pop(future)
            if not pending or done:
                continue
            if deadline.passed():
                raise InvocationTimeoutError(
                    f"{len(pending)} of {len(self.invocations)} invocations did not finish "
                    f"within {timeout}s; they go on running."
                )
            # One read for every invocation still pending: outcomes stored but not told.
            by_id = {group[0].invocation_id: future for future, group in pending.items()}
            backend = runtime.backend
            try:
                outcomes = backend.get_outcomes(list(by_id))
                if not looked:
                    # Once: an id that is not stored at all would be waited for in vain.
                    final = {o.invocation_id for o in outcomes}
                    for invocation_id, future in by_id.items():
                        if invocation_id not in final and (
                            backend.get_invocation(invocation_id) is None
                        ):
                            raise pending[future][0]._not_stored()
                    looked = True
            except BackendError:
                if not runtime.was_closed(backend):
                    raise
                continue  # the app was closed under us: its next backend is asked next time
            for outcome in outcomes:
                future = by_id[outcome.invocation_id]
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_result(outcome)  # unless the hub told it just now
                yield from pending.pop(future)
            if not warned and pending:
                first = next(iter(pending.values()))[0]
                warned = runtime.warn_if_no_worker(repr(first), deadline.waited())


class Results(Generic[R]):
    """The results of a group in completion order (`InvocationGroup.results`): iterate it,
    or `list()` it; each iteration waits anew."""

    def __init__(self, group: InvocationGroup[R]) -> None:
        self._group = group

    def __iter__(self) -> Iterator[R]:
        group = self._group
        if not group.invocations:
            return
        timeout = group.invocations[0].runtime.conf.result_timeout_seconds
        for invocation in group.as_completed(timeout):
            yield invocation.result

    def __repr__(self) -> str:
        return (
            f"<results of {len(self._group)} invocations, in completion order: iterate or "
            "list() them; results_in_order for input order>"
        )


# pynenc's names for the same handles (`from pynenc_lite.invocation import DistributedInvocation`).
DistributedInvocation = ConcurrentInvocation = BaseInvocation = Invocation
DistributedInvocationGroup = ConcurrentInvocationGroup = BaseInvocationGroup = InvocationGroup


def __getattr__(name: str) -> Any:
    # pynenc's submodule paths under this module (see pynenc_lite.pynenc_paths).
    from pynenc_lite import pynenc_paths

    return pynenc_paths.submodule(__name__, name)
