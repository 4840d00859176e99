"""From calls of a task to invocations: stored for workers, or run inline in sync mode.

    calls ──► NewInvocation records (pickled arguments, concurrency keys)
          ──► hub.futures_for (awaited calls: registered BEFORE storing, so no outcome
              can arrive unseen)
          ──► backend.submit (one atomic unit for all the calls) ──► hub.notify_work()
          ──► Invocation handles

It does not wait for anything (see `invocation`) nor run stored work (see `runner`).
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from typing import Any, Optional

from pynenc_lite import serializer
from pynenc_lite.backend.base import NewInvocation
from pynenc_lite.execution import run_inline
from pynenc_lite.invocation import Invocation
from pynenc_lite.runtime import RegisteredTask, Runtime

Call = tuple[tuple[Any, ...], dict[str, Any]]


def new_invocation_id() -> str:
    """A fresh, unique invocation id (128 random bits, hex; like uuid4().hex, cheaper)."""
    return os.urandom(16).hex()


def invoke(
    runtime: Runtime,
    task: RegisteredTask,
    calls: list[Call],
    *,
    awaited: bool,
    run_at: Optional[float] = None,
) -> list[Invocation[Any]]:
    """Turn calls of `task` into invocations: stored for workers, or run inline in sync
    mode. `awaited=True` registers for the results before storing (the caller will wait).
    `run_at` (epoch seconds) delays the start; sync mode runs at once regardless.

    Raises:
        SerializationError: an argument cannot be pickled (nothing is stored then).
    """
    if runtime.is_sync:
        round_trip = runtime.conf.dev_mode_pickle_round_trip
        invocations: list[Invocation[Any]] = []
        for args, kwargs in calls:
            invocation_id = new_invocation_id()
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            future.set_result(run_inline(task, args, kwargs, invocation_id, round_trip=round_trip))
            invocations.append(Invocation(runtime, task.name, invocation_id, future, inline=True))
        return invocations
    now = time.time()
    records = [
        _new_invocation(runtime.app_id, task, args, kwargs, now, now if run_at is None else run_at)
        for args, kwargs in calls
    ]
    hub = runtime.hub
    # Registered before storing, so that no outcome can arrive unseen; kept here, since a
    # fast worker may resolve (and the hub forget) them before submit() returns.
    futures: list[Optional[concurrent.futures.Future[Any]]] = [None] * len(records)
    if awaited:
        futures = list(hub.futures_for([r.invocation_id for r in records], check_stored=False))
    try:
        ids = runtime.backend.submit(records)
    except BaseException:
        for r in records:
            hub.forget(r.invocation_id)
        raise
    hub.notify_work()
    handles: list[Invocation[Any]] = []
    for record, invocation_id, awaited_future in zip(records, ids, futures):
        if awaited_future is not None and invocation_id != record.invocation_id:
            # Registration concurrency: an equal call is already waiting; share it.
            hub.forget(record.invocation_id)
            awaited_future = hub.future_for(invocation_id)
        handles.append(Invocation(runtime, task.name, invocation_id, awaited_future))
    return handles


def _new_invocation(
    app_id: str,
    task: RegisteredTask,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    now: float,
    run_at: float,
) -> NewInvocation:
    options = task.options
    registration_key = running_key = None
    if options.uses_concurrency_control:
        arguments = task.arguments_by_name(args, kwargs)
        registration_key = options.concurrency_key(
            options.registration_concurrency, task.name, arguments
        )
        running_key = options.concurrency_key(options.running_concurrency, task.name, arguments)
    return NewInvocation(
        new_invocation_id(),
        app_id,
        task.name,
        serializer.dumps_call(task.name, args, kwargs),
        run_at,
        now,
        registration_key,
        running_key,
        options.running_concurrency_limit,
        options.max_lost_attempts,
        options.reroute_on_concurrency_control,
    )
