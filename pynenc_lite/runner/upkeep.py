"""The runners' upkeep: the periodic work every runner does besides running tasks.

    cron       `fire_due`: store the invocations of cron moments that came, exactly once
               however many workers check (one conditional write per task and moment)
    expiry     `expire_results`: delete one small batch of results older than their TTL

Firing: every runner calls `fire_due()` about twice a second. For each cron task it reads the
latest moment already handled and asks the backend to move it forward in one conditional
write (`advance_cron`), storing the invocation in the same transaction, so each moment fires
exactly once however many workers run. After downtime, the missed moments fire once in
total (catch-up "once", the default), once each ("all", at most 100), or not at all unless
the latest is less than a minute old ("skip"). The first time a task is seen, nothing fires:
its schedule starts from then.

These are functions of a `Runtime` and a time (`now`, passed in so tests drive the clock);
when to call them is the thread runner's business.
"""

from __future__ import annotations

import datetime
import logging

from pynenc_lite import serializer
from pynenc_lite.backend.base import NewInvocation
from pynenc_lite.cron import CronSchedule
from pynenc_lite.runtime import Runtime

logger = logging.getLogger(__name__)

CATCH_UP_MODES = ("once", "all", "skip")
MAX_CATCH_UP = 100
SKIP_TOLERANCE_SECONDS = 60.0
# How many finished invocations past result_ttl_seconds one expiry pass deletes (small, so a
# purge never holds the write lock for long).
EXPIRY_BATCH = 200


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
