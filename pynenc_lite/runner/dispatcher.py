"""The thread runner's dispatcher: the one thread that stores outcomes and claims work.

    loop:
      fire cron, expire results (when due)
      wait on the pool until: outcomes to store, or an idle thread and a hint that work
        may be there (or a stop, a hard stop, a deadline, the periodic look)
      fail what is past its time limit          (before claiming: see below)
      store EVERY waiting outcome in ONE complete_many, hand each final one to the hub
      claim for ALL idle threads in ONE claim; a full claim hints again at once

Under load, one commit stores many outcomes and one claim feeds many threads, so the fixed
cost of a transaction (over TCP, of a round trip) is shared instead of paid per task. Idle,
it costs nothing: hints arrive by notification (a submission in this process, or the hub's
watcher seeing another process commit), plus one look per `IDLE_CHECK_SECONDS` for expired
leases and due retries.

It holds the dispatcher's own state (back-off after a failed store, the earliest delayed
run, the end of the grace period). The shared state is the `WorkPool`'s; heartbeats, time
limits, cron and expiry are `upkeep`'s; ending the process on a hard stop is the runner's.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from pynenc_lite.backend.base import ClaimedInvocation, Outcome
from pynenc_lite.runner import upkeep
from pynenc_lite.runner.pool import RunningEntry, WorkPool
from pynenc_lite.runtime import Runtime

logger = logging.getLogger(__name__)

# How often an idle dispatcher looks for work that no notification announces (leases that
# expired, retries whose time came).
IDLE_CHECK_SECONDS = 1.0
# Longest pause between attempts to store outcomes while storage fails.
STORE_RETRY_MAX_SECONDS = 2.0
# Before a hard stop ends the process, how long storing the waiting outcomes is retried
# (heartbeats keep their leases meanwhile).
HARD_STOP_STORE_SECONDS = 5.0


class Dispatcher:
    """Stores the outcomes and claims the work of one run of a thread runner.

    Args:
        runtime: the app's runtime (backend, hub, configuration, tasks).
        pool: the run's shared state.
        worker_id: the id claims and outcomes are made under.
        clock: the wall clock (seconds since the epoch).
        hard_stop: the process ends to stop a task (process runner children): passed to
            the time limits.
        stop_process: called when the pool asks for a hard stop, with the reason and
            whether every outcome was stored first (only then may the process hand its
            other work back); does not return.
    """

    def __init__(
        self,
        runtime: Runtime,
        pool: WorkPool,
        *,
        worker_id: str,
        clock: Callable[[], float],
        hard_stop: bool,
        stop_process: Callable[[str, bool], None],
    ) -> None:
        self.runtime = runtime
        self.pool = pool
        self.worker_id = worker_id
        self.clock = clock
        self.hard_stop = hard_stop
        self._stop_process = stop_process
        self._next_due: Optional[float] = None  # earliest delayed run or retry
        self._store_delay = 0.0  # back-off after a failed store
        self._store_not_before = 0.0  # monotonic time before which no store is tried

    def run(self, *, burst: bool) -> None:
        """Dispatch until the pool is stopping and settled (or forced, or the grace period
        passed); with `burst`, also once nothing is runnable and nothing is running."""
        c = self.runtime.conf
        pool = self.pool
        periodic = upkeep.PeriodicUpkeep(
            self.runtime, cron=not burst, on_fired=pool.hint_work, now=self.clock()
        )
        grace_end: Optional[float] = None  # once stopping
        while True:
            now = self.clock()
            periodic.run_due(now)
            with pool.cond:
                while True:
                    if pool.hard_stop_reason:
                        break
                    if pool.outcomes and time.monotonic() >= self._store_not_before:
                        break
                    if pool.stopping:
                        if grace_end is None:
                            grace_end = time.monotonic() + c.shutdown_grace_seconds
                        settled = pool.active == 0 and not pool.outcomes
                        if settled or pool.force or time.monotonic() >= grace_end:
                            return
                        until = grace_end
                        if pool.outcomes:  # a failed store waiting for its retry
                            until = min(until, self._store_not_before)
                        pool.cond.wait(max(0.0, until - time.monotonic()))
                        continue
                    if pool.idle and pool.work_hint:
                        break
                    if burst and pool.active == 0 and not pool.outcomes:
                        return
                    timeout = self._next_wake(now, periodic.next_cron)
                    if timeout <= 0:
                        pool.work_hint = True  # something came due: look at everything
                        break
                    if not pool.cond.wait(timeout):
                        pool.work_hint = True  # look for expired leases and due retries
                    now = self.clock()
                # Time limits first: a claim below could otherwise take back (as a lost
                # lease) an invocation whose limit has just passed.
                upkeep.enforce_time_limits(pool, self.clock(), hard_stop=self.hard_stop)
                outcomes, want, hard_stop = pool.take_batch(
                    store=time.monotonic() >= self._store_not_before
                )
            if outcomes:
                self._store(outcomes)
                # A finished invocation may let one held back by its running limit through.
                want = want or pool.idle_for_claims()
            if hard_stop:
                self._stop_process(hard_stop, self._store_before_hard_stop())
            if want:
                claimed = self._claim(want)
                if len(claimed) == want:
                    pool.hint_work()  # the claim was full: more may be waiting
                else:
                    self._next_due = self._read_next_due()

    def _next_wake(self, now: float, next_cron: Optional[float]) -> float:
        """Seconds until the dispatcher must look again without being notified: a delayed
        run or retry coming due, a time limit, a cron check, or the periodic look for
        expired leases. Called with the pool's condition held."""
        times = [now + IDLE_CHECK_SECONDS]
        if self.pool.outcomes:  # waiting to retry a failed store
            times.append(now + max(0.0, self._store_not_before - time.monotonic()))
        if self._next_due is not None and self._next_due > now:
            times.append(self._next_due)
        times += [r.deadline for r in self.pool.running.values() if r.deadline is not None]
        if next_cron is not None:
            times.append(next_cron)
        return min(times) - now

    def _read_next_due(self) -> Optional[float]:
        try:
            return self.runtime.backend.next_run_at(self.runtime.app_id)
        except Exception:
            logger.exception("reading the next delayed run failed")
            return None

    def _store(self, outcomes: list[Outcome]) -> None:
        try:
            flags = self.runtime.backend.complete_many(outcomes, self.worker_id, self.clock())
        except Exception:
            # Keep them (their leases are kept by heartbeats) and try again shortly: a
            # finished task must not run again because storage hiccupped once.
            self._store_delay = min(max(self._store_delay * 2, 0.05), STORE_RETRY_MAX_SECONDS)
            logger.exception(
                "storing %d outcome(s) failed; trying again in %.2fs",
                len(outcomes),
                self._store_delay,
            )
            self.pool.put_back(outcomes)
            self._store_not_before = time.monotonic() + self._store_delay
            return
        self._store_delay = 0.0
        hub = self.runtime.hub
        for outcome, accepted in zip(outcomes, flags):
            if accepted and outcome.status.is_final():
                hub.resolve(outcome)
            elif accepted and outcome.retry_at is not None:
                due = self._next_due
                self._next_due = outcome.retry_at if due is None else min(due, outcome.retry_at)

    def _store_before_hard_stop(self) -> bool:
        """Store every waiting outcome before the process ends, retrying for up to
        `HARD_STOP_STORE_SECONDS`. Returns True when none is left.

        Among them is the failure of the invocation whose time limit caused the hard stop.
        Handing work back (`release`) covers every invocation this worker holds: with that
        failure unstored, it would put the invocation back as new and it would run again,
        without counting an attempt. So the runner hands back only once this returns True.
        """
        pool = self.pool
        deadline = time.monotonic() + HARD_STOP_STORE_SECONDS
        while True:
            with pool.cond:
                outcomes, pool.outcomes = pool.outcomes, []
            if not outcomes:
                return True
            wait = self._store_not_before - time.monotonic()
            if wait > 0:
                if time.monotonic() + wait >= deadline:
                    pool.put_back(outcomes)
                    return False
                with pool.cond:
                    pool.cond.wait(wait)
            self._store(outcomes)

    def _claim(self, limit: int) -> list[ClaimedInvocation]:
        c = self.runtime.conf
        now = self.clock()
        try:
            claimed = self.runtime.backend.claim(
                app_id=self.runtime.app_id,
                worker_id=self.worker_id,
                limit=limit,
                now=now,
                lease_seconds=c.lease_seconds,
                max_lost_attempts=c.max_lost_attempts,
            )
        except Exception:
            logger.exception("claiming work failed; trying again within %ss", IDLE_CHECK_SECONDS)
            return []
        if claimed:
            self.pool.mark_claimed(
                [RunningEntry(item, self.worker_id, self.runtime, now) for item in claimed]
            )
        return claimed
