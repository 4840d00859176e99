"""The thread runner: claims this app's invocations and runs them on a pool of threads.

    dispatcher thread (writes claims and outcomes)    worker threads (max_threads)
    ────────────────────────────────────────────       ────────────────────────────
    wait until: outcomes to store, or an idle thread
      and a hint that work may be there
    store every waiting outcome in ONE transaction  ◄── outcome ── run the function
      and hand each to its waiting caller (hub)
    claim up to <idle threads> in ONE transaction   ──  queue  ──► take the next claim
                                                      heartbeat thread: every interval,
                                                      extend our leases, say we are alive

The dispatcher batches: under load, one commit stores many outcomes and one claim takes work
for every idle thread, so storage costs are shared instead of paid per task. When idle it
costs nothing: hints arrive by notification (a submission in this process, or the hub's
watcher seeing another process commit), plus one look per second for expired leases.

`run()` blocks until `stop_runner_loop()` (or, on the main thread, SIGINT/SIGTERM). Stopping
is graceful: no new claims; running tasks get `shutdown_grace_seconds` to finish and their
outcomes are stored; whatever is still running then is handed back to the queue at once.
A second signal ends the grace period early.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from typing import Callable, Optional, Union

from pynenc_lite.backend.base import ClaimedInvocation, Outcome, WorkerInfo
from pynenc_lite.errors import TaskTimeLimitError
from pynenc_lite.execution import (
    DEFAULT_OPTIONS,
    failure_outcome,
    run_claimed,
    running_for,
)
from pynenc_lite.runner import upkeep
from pynenc_lite.runner.base import BaseRunner
from pynenc_lite.runtime import HasRuntime, Runtime, runtime_of

logger = logging.getLogger(__name__)

# How often an idle dispatcher looks for work that no notification announces (leases that
# expired, retries whose time came).
IDLE_CHECK_SECONDS = 1.0
# Longest pause between attempts to store outcomes while storage fails.
STORE_RETRY_MAX_SECONDS = 2.0
# How long stopping waits for idle worker threads to end.
THREAD_EXIT_SECONDS = 5.0
# How often cron schedules are checked (each moment still fires once, whoever checks).
CRON_CHECK_SECONDS = 0.5
# How often finished invocations past result_ttl_seconds are looked for.
EXPIRY_CHECK_SECONDS = 5.0
# Exit code of a worker process that ended itself to stop a task (time limit, cancel).
EXIT_HARD_STOP = 75


class _Running:
    """One claimed invocation handed to a worker thread. Fields after `claimed` change only
    under the runner's condition."""

    def __init__(
        self, claimed: ClaimedInvocation, worker_id: str, runtime: Runtime, now: float
    ) -> None:
        self.claimed = claimed
        self.info = running_for(claimed, worker_id)
        try:
            self.options = runtime.resolve_task(claimed.task_name).options
        except Exception:
            self.options = DEFAULT_OPTIONS  # run_claimed reports why the task is missing
        limit = self.options.time_limit_seconds
        self.deadline = None if limit is None else now + limit
        self.abandoned = False  # its outcome was decided elsewhere: drop the thread's own


def new_worker_id(suffix: str = "") -> str:
    """`host:pid[-suffix]:random`, unique per runner start, readable in status listings.

    A process runner names its children `host:<its pid>-w<n>:random`.
    """
    pid = f"{os.getpid()}-{suffix}" if suffix else str(os.getpid())
    return f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}"


class ThreadRunner(BaseRunner):
    """Runs an app's tasks on threads of this process.

    Args:
        app: the app whose tasks to run (or its `Runtime`).
        threads: worker threads (default: `max_threads` from the configuration).
        worker_id: the id this runner claims under (default: a new one per `run()`); a
            process runner names its children so it can recover their work if they die.
        hard_stop: end this whole process to stop a task past its time limit or cancelled
            while running (set by the process runner in its worker processes).
        clock: the wall clock (seconds since the epoch); tests can pass a fake one.
    """

    def __init__(
        self,
        app: Union[Runtime, HasRuntime],
        *,
        threads: Optional[int] = None,
        worker_id: Optional[str] = None,
        hard_stop: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.app = app
        self.runtime = runtime_of(app)
        self.hard_stop = hard_stop
        self.threads = int(threads if threads is not None else self.runtime.conf.max_threads)
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        self.clock = clock
        self._fixed_worker_id = worker_id
        self.worker_id = worker_id or ""
        # Guards every field below up to _force. Notified when an outcome is ready, when
        # work may have appeared, and when a stop is asked for.
        self._cond = threading.Condition()
        self._outcomes: list[Outcome] = []
        self._idle = 0
        self._active = 0
        self._work_hint = True  # work may be waiting: worth a claim when a thread is idle
        self._stopping = False
        self._force = False
        self._running: dict[str, _Running] = {}  # invocation id -> what runs it
        self._hard_stop_reason = ""
        self._next_due: Optional[float] = None  # earliest delayed run or retry (dispatcher only)
        self._store_delay = 0.0  # back-off after a failed store (dispatcher only)
        self._store_not_before = 0.0  # monotonic time before which no store is tried
        self._queue: queue.SimpleQueue[Optional[_Running]] = queue.SimpleQueue()
        self._generation = 0  # which run the threads belong to (see _reset)
        self._exited = 0  # worker threads of this run that ended
        self._stop_heartbeat = threading.Event()
        self._dispatcher_done = threading.Event()

    def __repr__(self) -> str:
        return f"<ThreadRunner {self.worker_id or '(not running)'} threads={self.threads}>"

    # -- public control ---------------------------------------------------------------------

    def run(self, *, burst: bool = False) -> None:
        """Run tasks until `stop_runner_loop()` (or SIGINT/SIGTERM on the main thread).

        Args:
            burst: return once nothing is runnable and nothing is running (drain mode).

        Raises:
            RuntimeError: this runner is already running.
        """
        previous = self._begin()
        try:
            self._run(burst)
        finally:
            self._end(previous)

    def _reset(self) -> None:
        with self._cond:
            # A new generation: threads left running a task by an earlier run (abandoned
            # after its grace period) must not touch this run's queue or counters.
            self._generation += 1
            self._queue = queue.SimpleQueue()
            self._outcomes = []
            self._running = {}
            self._hard_stop_reason = ""
            self._idle, self._active, self._exited = self.threads, 0, 0
            self._work_hint, self._stopping, self._force = True, False, False
        self.worker_id = self._fixed_worker_id or new_worker_id()
        self._stop_heartbeat.clear()
        self._dispatcher_done.clear()

    def stop_runner_loop(self) -> None:
        """Ask the runner to stop gracefully; returns at once (`run()` returns when done)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._wake()

    # -- the loop ---------------------------------------------------------------------------

    def _run(self, burst: bool) -> None:
        app = self.runtime
        backend, hub = app.backend, app.hub
        info = WorkerInfo(
            self.worker_id,
            app.app_id,
            socket.gethostname(),
            os.getpid(),
            self.threads,
            self.clock(),
        )
        backend.heartbeat(info, [], self.clock(), app.conf.lease_seconds)
        workers = [
            threading.Thread(
                target=self._work,
                args=(self._queue, self._generation),
                name=f"pynenc-lite-worker-{i}",
                daemon=True,
            )
            for i in range(self.threads)
        ]
        heartbeat = threading.Thread(
            target=self._heartbeat, args=(info,), name="pynenc-lite-heartbeat", daemon=True
        )
        dispatcher = threading.Thread(
            target=self._dispatch, args=(burst,), name="pynenc-lite-dispatcher", daemon=True
        )
        hub.add_work_listener(self._hint_work)
        for thread in (*workers, heartbeat, dispatcher):
            thread.start()
        logger.info(
            "runner %s started for app %r on %r with %d threads",
            self.worker_id,
            app.app_id,
            backend,
            self.threads,
        )
        self._ready.set()
        try:
            # This thread only supervises, so a signal handler never interrupts code that
            # holds a lock: it sets a flag, read here.
            while not self._dispatcher_done.is_set():
                self._sleep_until_woken()  # the dispatcher wakes us when it returns
                if self._signals:
                    self._on_signal()
            dispatcher.join()
        finally:
            hub.remove_work_listener(self._hint_work)
            self._finish(workers, heartbeat)

    def _hint_work(self) -> None:
        with self._cond:
            self._work_hint = True
            self._cond.notify_all()

    def _dispatch(self, burst: bool) -> None:
        try:
            self._dispatch_loop(burst)
        finally:
            self._dispatcher_done.set()
            self._wake()

    def _dispatch_loop(self, burst: bool) -> None:
        c = self.runtime.conf
        has_cron = any(t.options.cron for t in self.runtime.tasks.values()) and not burst
        next_cron = next_expiry = self.clock()
        grace_end: Optional[float] = None  # once stopping
        while True:
            now = self.clock()
            if has_cron and now >= next_cron:
                next_cron = now + CRON_CHECK_SECONDS
                self._fire_cron(now)
            if now >= next_expiry:
                full = self._expire_results(now)
                # Short time-to-live (tests, tiny disks): look as often as results expire.
                interval = min(EXPIRY_CHECK_SECONDS, c.result_ttl_seconds)
                next_expiry = now + (0.0 if full else interval)
            with self._cond:
                while True:
                    if self._hard_stop_reason:
                        break
                    if self._outcomes and time.monotonic() >= self._store_not_before:
                        break
                    if self._stopping:
                        if grace_end is None:
                            grace_end = time.monotonic() + c.shutdown_grace_seconds
                        settled = self._active == 0 and not self._outcomes
                        if settled or self._force or time.monotonic() >= grace_end:
                            return
                        until = grace_end
                        if self._outcomes:  # a failed store waiting for its retry
                            until = min(until, self._store_not_before)
                        self._cond.wait(max(0.0, until - time.monotonic()))
                        continue
                    if self._idle and self._work_hint:
                        break
                    if burst and self._active == 0 and not self._outcomes:
                        return
                    timeout = self._next_wake(now, next_cron if has_cron else None)
                    if timeout <= 0:
                        self._work_hint = True  # something came due: look at everything
                        break
                    if not self._cond.wait(timeout):
                        self._work_hint = True  # look for expired leases and due retries
                    now = self.clock()
                # Time limits first: a claim below could otherwise take back (as a lost
                # lease) an invocation whose limit has just passed.
                self._enforce_time_limits(self.clock())
                outcomes = []
                if time.monotonic() >= self._store_not_before:
                    outcomes, self._outcomes = self._outcomes, []
                want = 0 if self._stopping else self._idle
                if want and self._work_hint:
                    self._work_hint = False  # a hint arriving from now on asks again
                else:
                    want = 0
                hard_stop = self._hard_stop_reason
            if outcomes:
                self._store(outcomes)
                # A finished invocation may let one held back by its running limit through.
                want = want or (0 if self._stopping else self._idle)
            if hard_stop:
                self._stop_process(hard_stop)
            if want:
                claimed = self._claim(want)
                if len(claimed) == want:
                    self._hint_work()  # the claim was full: more may be waiting
                else:
                    self._next_due = self._read_next_due()

    def _read_next_due(self) -> Optional[float]:
        try:
            return self.runtime.backend.next_run_at(self.runtime.app_id)
        except Exception:
            logger.exception("reading the next delayed run failed")
            return None

    def _next_wake(self, now: float, next_cron: Optional[float]) -> float:
        """Seconds until the dispatcher must look again without being notified: a delayed
        run or retry coming due, a time limit, a cron check, or the periodic look for
        expired leases."""
        times = [now + IDLE_CHECK_SECONDS]
        if self._outcomes:  # waiting to retry a failed store
            times.append(now + max(0.0, self._store_not_before - time.monotonic()))
        if self._next_due is not None and self._next_due > now:
            times.append(self._next_due)
        times += [r.deadline for r in self._running.values() if r.deadline is not None]
        if next_cron is not None:
            times.append(next_cron)
        return min(times) - now

    def _enforce_time_limits(self, now: float) -> None:
        """Fail every invocation past its time limit (the caller is released at once)."""
        with self._cond:
            late = [
                r for r in self._running.values()
                if r.deadline is not None and r.deadline <= now and not r.abandoned
            ]
            for r in late:
                r.abandoned = True  # the thread's own outcome, if it ever comes, is dropped
                del self._running[r.claimed.invocation_id]  # a retry may run under this id
                r.info.cancelled.set()  # a cooperative task can notice and return
                assert r.options.time_limit_seconds is not None
                error = TaskTimeLimitError(
                    f"task {r.claimed.task_name} exceeded its time limit of "
                    f"{r.options.time_limit_seconds}s (invocation {r.claimed.invocation_id})"
                )
                self._outcomes.append(failure_outcome(r.claimed, r.options, error, now))
                if self.hard_stop:
                    self._hard_stop_reason = str(error)
                else:
                    logger.warning(
                        "%s; a thread cannot be stopped, so it runs on and its result will be "
                        "discarded (use a process runner to end it for real)",
                        error,
                    )

    def _expire_results(self, now: float) -> bool:
        """Delete one small batch of results older than `result_ttl_seconds`.
        Returns True when the batch was full (more may be waiting)."""
        try:
            return upkeep.expire_results(self.runtime, now)
        except Exception:
            logger.exception("deleting expired results failed; trying again later")
            return False

    def _fire_cron(self, now: float) -> None:
        try:
            fired = upkeep.fire_due(self.runtime, now, self.runtime.conf.cron_catch_up)
        except Exception:
            logger.exception("firing cron tasks failed; trying again shortly")
            return
        if fired:
            self._hint_work()

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
            with self._cond:
                self._outcomes[:0] = outcomes
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
            entries = [_Running(item, self.worker_id, self.runtime, now) for item in claimed]
            with self._cond:
                self._idle -= len(claimed)
                self._active += len(claimed)
                for entry in entries:
                    earlier = self._running.get(entry.claimed.invocation_id)
                    if earlier is not None:
                        # Our own lease ran out (heartbeats stalled) and we took it back:
                        # the earlier attempt's outcome no longer counts.
                        earlier.abandoned = True
                        earlier.info.cancelled.set()
                    self._running[entry.claimed.invocation_id] = entry
            for entry in entries:
                self._queue.put(entry)
        return claimed

    def _work(self, work: queue.SimpleQueue[Optional[_Running]], generation: int) -> None:
        while True:
            entry = work.get()
            if entry is None:
                with self._cond:
                    if generation == self._generation:
                        self._exited += 1
                        self._cond.notify_all()
                return
            outcome: Optional[Outcome] = None
            try:
                outcome = run_claimed(self.runtime, entry.claimed, entry.info, self.clock)
            except BaseException:  # a bug here must not cost the pool a thread
                logger.exception(
                    "running invocation %s failed inside pynenc_lite; its lease will expire "
                    "and it runs again",
                    entry.claimed.invocation_id,
                )
            with self._cond:
                if generation != self._generation:
                    return  # our run ended without us (abandoned): its successor is not ours
                invocation_id = entry.claimed.invocation_id
                if self._running.get(invocation_id) is entry:
                    # (A retry of an abandoned attempt may hold the id by now: not ours.)
                    del self._running[invocation_id]
                if outcome is not None and not entry.abandoned:
                    self._outcomes.append(outcome)
                self._idle += 1
                self._active -= 1
                self._cond.notify_all()

    def _heartbeat(self, info: WorkerInfo) -> None:
        c = self.runtime.conf
        backend = self.runtime.backend
        while not self._stop_heartbeat.wait(c.heartbeat_interval_seconds):
            with self._cond:
                # Outcomes not stored yet still need their leases (a slow or failing store).
                running = [*self._running, *(o.invocation_id for o in self._outcomes)]
            try:
                lost = backend.heartbeat(info, running, self.clock(), c.lease_seconds)
            except Exception:
                logger.exception("heartbeat of %s failed; will try again", self.worker_id)
                continue
            if lost:
                self._on_lost(lost)

    def _on_lost(self, invocation_ids: list[str]) -> None:
        """Invocations we run that are no longer ours (cancelled, or taken over)."""
        with self._cond:
            for invocation_id in invocation_ids:
                entry = self._running.get(invocation_id)
                if entry is None or entry.abandoned:
                    continue
                entry.abandoned = True
                del self._running[invocation_id]
                entry.info.cancelled.set()
                logger.info(
                    "invocation %s of %s is no longer ours while it runs (cancelled?); %s",
                    invocation_id,
                    entry.claimed.task_name,
                    "ending this worker process to stop it" if self.hard_stop
                    else "flagged for the task to notice (a thread cannot be stopped)",
                )
                if self.hard_stop:
                    self._hard_stop_reason = f"invocation {invocation_id} was cancelled"
            self._cond.notify_all()

    def _stop_process(self, reason: str) -> None:
        """Hard stop (process runner children only): hand back our other work and end this
        process, which is the only way to stop a running Python thread. The supervisor
        starts a replacement."""
        logger.warning(
            "%s: ending worker process %d; its other work is handed back", reason, os.getpid()
        )
        self._stop_heartbeat.set()
        try:
            self.runtime.backend.release(self.worker_id, self.clock())
            self.runtime.backend.remove_worker(self.worker_id)
        finally:
            logging.shutdown()
            os._exit(EXIT_HARD_STOP)

    # -- stopping ---------------------------------------------------------------------------

    def _on_signal(self) -> None:
        if self._signals > 1:
            with self._cond:
                self._force = True  # a second signal: stop waiting for running tasks
                self._cond.notify_all()
        elif not self._stopping:
            logger.info("signal received: finishing running tasks (again to stop at once)")
            self.stop_runner_loop()

    def _finish(self, workers: list[threading.Thread], heartbeat: threading.Thread) -> None:
        """After the dispatcher returned: hand back what is still running, end the threads."""
        self.stop_runner_loop()
        # Stop heartbeats first: one after remove_worker() would announce us alive again.
        self._stop_heartbeat.set()
        heartbeat.join()
        backend = self.runtime.backend
        with self._cond:
            unfinished = self._active
            for entry in self._running.values():
                entry.abandoned = True  # handed back below: a late outcome must be dropped
        try:
            handed_back = backend.release(self.worker_id, self.clock())
            backend.remove_worker(self.worker_id)
        except Exception:
            handed_back = 0
            logger.exception("handing back work failed; its leases will expire instead")
        for _ in workers:
            self._queue.put(None)
        # Wait for the idle threads to end, so run() returns with no thread of ours left
        # but those still inside an abandoned task (they end when it returns).
        with self._cond:
            self._cond.wait_for(
                lambda: self._exited >= self.threads - unfinished, THREAD_EXIT_SECONDS
            )
        logger.info(
            "runner %s stopped (%d task(s) still running were abandoned, %d handed back)",
            self.worker_id,
            unfinished,
            handed_back,
        )
