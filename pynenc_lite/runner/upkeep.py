"""The runners' upkeep: the work a runner does besides running tasks.

    leases       `keep_leases`: the heartbeat thread; every interval, extend the leases of
                 what we run (and of outcomes not stored yet) and say we are alive; give up
                 what the backend says is no longer ours (`give_up_lost`: cancelled, taken over)
    time limits  `enforce_time_limits`: fail every invocation past its limit at once
    cron         `fire_due`: store the invocations of cron moments that came, exactly once
                 however many workers check (one conditional write per task and moment)
    expiry       `expire_results`: delete one small batch of results older than their TTL
    schedule     `PeriodicUpkeep`: when the dispatcher fires cron and expires results

Leases and time limits act on a thread runner's `WorkPool` (`runner/pool.py`): they abandon
running entries and add outcomes, and in a worker process of a process runner
(`hard_stop`) they ask for the process to end, since only that stops a running thread.

Firing: every runner calls `fire_due()` about twice a second. For each cron task it reads the
latest moment already handled and asks the backend to move it forward in one conditional
write (`advance_cron`), storing the invocation in the same transaction, so each moment fires
exactly once however many workers run. After downtime, the missed moments fire once in
total (catch-up "once", the default), once each ("all", at most 100), or not at all unless
the latest is less than a minute old ("skip"). The first time a task is seen, nothing fires:
its schedule starts from then.

These take a `Runtime` and a time (`now`, passed in so tests drive the clock). Claiming,
storing outcomes and deciding when to wake are the dispatcher's (`runner/dispatcher.py`).
"""

from __future__ import annotations

import datetime
import logging
import threading
from typing import Callable, Optional

from pynenc_lite import serializer
from pynenc_lite.backend.base import NewInvocation, WorkerInfo
from pynenc_lite.cron import CronSchedule
from pynenc_lite.errors import TaskTimeLimitError
from pynenc_lite.execution import failure_outcome
from pynenc_lite.runner.pool import WorkPool
from pynenc_lite.runtime import Runtime

logger = logging.getLogger(__name__)

CATCH_UP_MODES = ("once", "all", "skip")
MAX_CATCH_UP = 100
SKIP_TOLERANCE_SECONDS = 60.0
# How many finished invocations past result_ttl_seconds one expiry pass deletes (small, so a
# purge never holds the write lock for long).
EXPIRY_BATCH = 200
# How often cron schedules are checked (each moment still fires once, whoever checks).
CRON_CHECK_SECONDS = 0.5
# How often finished invocations past result_ttl_seconds are looked for.
EXPIRY_CHECK_SECONDS = 5.0


# -- leases and time limits -----------------------------------------------------------------


def keep_leases(
    runtime: Runtime,
    pool: WorkPool,
    info: WorkerInfo,
    *,
    stop: threading.Event,
    clock: Callable[[], float],
    hard_stop: bool,
) -> None:
    """The heartbeat thread: every `heartbeat_interval_seconds` until `stop` is set, extend
    the leases of what `pool` holds and record the worker `info` as alive; give up what the
    backend says is no longer ours. A failed heartbeat is logged and tried again."""
    c = runtime.conf
    backend = runtime.backend
    while not stop.wait(c.heartbeat_interval_seconds):
        try:
            lost = backend.heartbeat(info, pool.held_ids(), clock(), c.lease_seconds)
        except Exception:
            logger.exception("heartbeat of %s failed; will try again", info.worker_id)
            continue
        if lost:
            give_up_lost(pool, lost, hard_stop=hard_stop)


def give_up_lost(pool: WorkPool, invocation_ids: list[str], *, hard_stop: bool) -> None:
    """Invocations we run that are no longer ours (cancelled, or taken over): flag them for
    their tasks and drop their outcomes; with `hard_stop`, ask for the process to end."""
    for entry in pool.abandon(invocation_ids):
        invocation_id = entry.claimed.invocation_id
        logger.info(
            "invocation %s of %s is no longer ours while it runs (cancelled?); %s",
            invocation_id,
            entry.claimed.task_name,
            "ending this worker process to stop it" if hard_stop
            else "flagged for the task to notice (a thread cannot be stopped)",
        )
        if hard_stop:
            pool.ask_hard_stop(f"invocation {invocation_id} was cancelled")


def enforce_time_limits(pool: WorkPool, now: float, *, hard_stop: bool) -> None:
    """Fail every invocation of `pool` past its time limit (the caller is released as soon
    as the dispatcher stores the outcome). A thread cannot be stopped: its task runs on and
    its own outcome is dropped; with `hard_stop`, ask for the process to end instead."""
    for entry in pool.abandon_late(now):
        assert entry.options.time_limit_seconds is not None
        error = TaskTimeLimitError(
            f"task {entry.claimed.task_name} exceeded its time limit of "
            f"{entry.options.time_limit_seconds}s (invocation {entry.claimed.invocation_id})"
        )
        pool.add_outcome(failure_outcome(entry.claimed, entry.options, error, now))
        if hard_stop:
            pool.ask_hard_stop(str(error))
        else:
            logger.warning(
                "%s; a thread cannot be stopped, so it runs on and its result will be "
                "discarded (use a process runner to end it for real)",
                error,
            )


# -- cron and expiry ------------------------------------------------------------------------


def cron_invocation_id(app_id: str, task_name: str, moment: float) -> str:
    """The id of a cron moment's invocation. It names the app: two apps sharing one database
    or server, each with a cron task of the same name, must not collide."""
    return f"cron-{app_id}-{task_name}-{int(moment)}"


def fire_due(runtime: Runtime, now: float, catch_up: str = "once") -> int:
    """Store the invocations of every cron task of the app whose moment has come.

    Safe to call from any number of workers at once: each moment fires once.
    Returns how many invocations this call stored.
    """
    if catch_up not in CATCH_UP_MODES:
        raise ValueError(f"catch_up must be one of {CATCH_UP_MODES}, got {catch_up!r}")
    fired = 0
    backend = runtime.backend
    app_id = runtime.app_id
    for task in list(runtime.tasks.values()):
        if task.options.cron is None:
            continue
        schedule = CronSchedule(task.options.cron, runtime.conf.cron_timezone)
        now_utc = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
        latest = schedule.latest_at_or_before(now_utc)
        if latest is None:
            continue
        handled = backend.get_cron_moment(app_id, task.name)
        if handled is not None and latest.timestamp() <= handled:
            continue
        moments: list[datetime.datetime] = []
        if handled is not None:  # first sight fires nothing: the schedule starts now
            if catch_up == "all":
                after = datetime.datetime.fromtimestamp(handled, datetime.timezone.utc)
                moments = schedule.moments_between(after, latest, MAX_CATCH_UP)
            elif catch_up == "once" or now - latest.timestamp() < SKIP_TOLERANCE_SECONDS:
                moments = [latest]
        invocations = [
            NewInvocation(
                cron_invocation_id(app_id, task.name, m.timestamp()),
                app_id,
                task.name,
                serializer.dumps_call(task.name, (), {}),
                m.timestamp(),
                now,
                max_lost_attempts=task.options.max_lost_attempts,
            )
            for m in moments
        ]
        if backend.advance_cron(app_id, task.name, handled, latest.timestamp(), invocations):
            fired += len(invocations)
            if invocations:
                logger.info(
                    "cron %s (%s): fired for %s", task.name, schedule.expression,
                    ", ".join(m.isoformat() for m in moments),
                )
    return fired


def expire_results(runtime: Runtime, now: float) -> bool:
    """Delete one batch of the app's results older than `result_ttl_seconds`.

    Returns True when the batch was full (more may be waiting).
    """
    deleted = runtime.backend.purge_expired(
        runtime.app_id, now - runtime.conf.result_ttl_seconds, EXPIRY_BATCH
    )
    if deleted:
        logger.debug("deleted %d expired invocation(s)", deleted)
    return deleted == EXPIRY_BATCH


class PeriodicUpkeep:
    """When a dispatcher fires cron tasks and expires results; failures are logged and
    tried again later.

    Args:
        runtime: whose tasks and results.
        cron: whether to fire cron tasks at all (not in burst mode, nor without cron tasks).
        on_fired: called after cron stored invocations (work may be waiting).
        now: the current time; both run at the first `run_due`.
    """

    def __init__(
        self, runtime: Runtime, *, cron: bool, on_fired: Callable[[], None], now: float
    ) -> None:
        self.runtime = runtime
        self.cron = cron and any(t.options.cron for t in runtime.tasks.values())
        self._on_fired = on_fired
        self._next_cron = self._next_expiry = now

    @property
    def next_cron(self) -> Optional[float]:
        """When cron is next checked (None: never), so an idle dispatcher wakes for it."""
        return self._next_cron if self.cron else None

    def run_due(self, now: float) -> None:
        """Fire cron and expire results if their time came."""
        if self.cron and now >= self._next_cron:
            self._next_cron = now + CRON_CHECK_SECONDS
            self._fire_cron(now)
        if now >= self._next_expiry:
            full = self._expire_results(now)
            # Short time-to-live (tests, tiny disks): look as often as results expire.
            interval = min(EXPIRY_CHECK_SECONDS, self.runtime.conf.result_ttl_seconds)
            self._next_expiry = now + (0.0 if full else interval)

    def _fire_cron(self, now: float) -> None:
        try:
            fired = fire_due(self.runtime, now, self.runtime.conf.cron_catch_up)
        except Exception:
            logger.exception("firing cron tasks failed; trying again shortly")
            return
        if fired:
            self._on_fired()

    def _expire_results(self, now: float) -> bool:
        """Returns True when the batch was full (more may be waiting)."""
        try:
            return expire_results(self.runtime, now)
        except Exception:
            logger.exception("deleting expired results failed; trying again later")
            return False
