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
import logging
import time
from typing import Any, Generic, Iterator, Optional, TypeVar, Union

from pynenc_lite import serializer
from pynenc_lite.backend.base import HistoryEntry, InvocationRecord, Outcome
from pynenc_lite.errors import (
    InvocationCancelledError,
    InvocationNotFoundError,
    InvocationTimeoutError,
)
from pynenc_lite.execution import AnyOutcome, LocalOutcome
from pynenc_lite.runtime import HasRuntime, Runtime, runtime_of
from pynenc_lite.status import InvocationStatus

logger = logging.getLogger(__name__)

R = TypeVar("R")


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

    def __repr__(self) -> str:
        return f"<Invocation {self.task_name} {self.invocation_id}>"

    # -- state ------------------------------------------------------------------------------

    @property
    def future(self) -> concurrent.futures.Future[AnyOutcome]:
        """The future that receives the outcome (registered with the hub on first use)."""
        if self._future is None:
            rt = self.runtime
            future = rt.hub.future_for(self.invocation_id)
            if not future.done() and rt.backend.get_invocation(self.invocation_id) is None:
                rt.hub.forget(self.invocation_id)
                raise InvocationNotFoundError(rt.not_found_message(self.invocation_id))
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
            raise InvocationNotFoundError(self.runtime.not_found_message(self.invocation_id))
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
        """Await the return value without blocking the event loop. Raises like `result`."""
        future = asyncio.wrap_future(self.future)
        # asyncio.wait never cancels what it waits for, so a timeout here leaves the shared
        # future intact for other waiters.
        done, _ = await asyncio.wait({future}, timeout=timeout)
        if not done:
            raise self._timeout_error(timeout)
        return self._decode(future.result())

    def _wait(self, timeout: Optional[float]) -> AnyOutcome:
        future = self.future
        if future.done():
            return future.result()
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be None or >= 0 seconds, got {timeout}")
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        rt = self.runtime
        check_every = max(rt.conf.no_worker_warning_seconds, 0.01)
        warned = False
        while True:
            step = check_every
            if deadline is not None:
                step = min(check_every, deadline - time.monotonic())
            try:
                return future.result(timeout=max(step, 0))
            except concurrent.futures.TimeoutError:
                pass
            if deadline is not None and time.monotonic() >= deadline:
                raise self._timeout_error(timeout)
            record = rt.backend.get_invocation(self.invocation_id)
            if record is None:
                rt.hub.forget(self.invocation_id)
                raise InvocationNotFoundError(rt.not_found_message(self.invocation_id))
            if record.status.is_final():
                # Stored, but our future was not told (its hub was closed meanwhile, say):
                # read the outcome directly rather than wait for a signal that won't come.
                for outcome in rt.backend.get_outcomes([self.invocation_id]):
                    return outcome
            if not warned:
                warned = rt.warn_if_no_worker(repr(self), time.monotonic() - start)

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
        raise serializer.load_exception(outcome.payload, outcome.error, outcome.traceback)


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
    def results(self) -> Iterator[R]:
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
        deadline = None if timeout is None else time.monotonic() + timeout
        self._register()
        values = []
        for invocation in self.invocations:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(invocation.get_result(remaining))
        return values

    def as_completed(self, timeout: Optional[float] = None) -> Iterator[Invocation[R]]:
        """Yield the invocations as they finish (like `concurrent.futures.as_completed`).

        Raises:
            InvocationTimeoutError: `timeout` seconds passed before all finished.
        """
        self._register()
        by_future: dict[Any, list[Invocation[R]]] = {}
        for invocation in self.invocations:
            by_future.setdefault(invocation.future, []).append(invocation)
        try:
            for future in concurrent.futures.as_completed(by_future, timeout=timeout):
                yield from by_future[future]
        except concurrent.futures.TimeoutError:
            pending = sum(not f.done() for f in by_future)
            raise InvocationTimeoutError(
                f"{pending} of {len(self.invocations)} invocations did not finish within "
                f"{timeout}s; they go on running."
            ) from None
