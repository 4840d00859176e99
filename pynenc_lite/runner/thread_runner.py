"""The thread runner: claims this app's invocations and runs them on a pool of threads.

    dispatcher thread (the runner's only writer)       worker threads (max_threads)
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
from typing import TYPE_CHECKING, Callable, Optional

from pynenc_lite.backend.base import ClaimedInvocation, Outcome, WorkerInfo
from pynenc_lite.runner.base import BaseRunner
from pynenc_lite.runner.execution import run_claimed

if TYPE_CHECKING:
    from pynenc_lite.app import Pynenc

logger = logging.getLogger(__name__)

# How often an idle dispatcher looks for work that no notification announces (leases that
# expired, retries whose time came).
IDLE_CHECK_SECONDS = 1.0


def new_worker_id(suffix: str = "") -> str:
    """`host:pid[-suffix]:random`, unique per runner start, readable in status listings.

    A process runner names its children `host:<its pid>-w<n>:random`.
    """
    pid = f"{os.getpid()}-{suffix}" if suffix else str(os.getpid())
    return f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}"


class ThreadRunner(BaseRunner):
    """Runs an app's tasks on threads of this process.

    Args:
        app: the app whose tasks to run.
        threads: worker threads (default: `max_threads` from the configuration).
        worker_id: the id this runner claims under (default: a new one per `run()`); a
            process runner names its children so it can recover their work if they die.
        clock: the wall clock (seconds since the epoch); tests can pass a fake one.
    """

    def __init__(
        self,
        app: Pynenc,
        *,
        threads: Optional[int] = None,
        worker_id: Optional[str] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.app = app
        self.threads = int(threads if threads is not None else app.conf.max_threads)
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
        self._queue: queue.SimpleQueue[Optional[ClaimedInvocation]] = queue.SimpleQueue()
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
            with self._cond:
                self._outcomes = []
                self._idle, self._active = self.threads, 0
                self._work_hint, self._stopping, self._force = True, False, False
            self.worker_id = self._fixed_worker_id or new_worker_id()
            self._stop_heartbeat.clear()
            self._dispatcher_done.clear()
            self._run(burst, on_main=bool(previous))
        finally:
            self._end(previous)

    def stop_runner_loop(self) -> None:
        """Ask the runner to stop gracefully; returns at once (`run()` returns when done)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._wake()

    # -- the loop ---------------------------------------------------------------------------

    def _run(self, burst: bool, on_main: bool) -> None:
        app = self.app
        backend, hub = app.backend, app.hub
        info = WorkerInfo(
            self.worker_id, app.app_id, socket.gethostname(), os.getpid(), self.threads, self.clock()
        )
        backend.heartbeat(info, self.clock(), app.conf.lease_seconds)
        workers = [
            threading.Thread(target=self._work, name=f"pynenc-lite-worker-{i}", daemon=True)
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
        c = self.app.conf
        deadline: Optional[float] = None  # end of the grace period, once stopping
        while True:
            with self._cond:
                while True:
                    if self._outcomes:
                        break
                    if self._stopping:
                        if deadline is None:
                            deadline = time.monotonic() + c.shutdown_grace_seconds
                        if self._active == 0 or self._force or time.monotonic() >= deadline:
                            return
                        self._cond.wait(deadline - time.monotonic())
                        continue
                    if self._idle and self._work_hint:
                        break
                    if burst and self._active == 0:
                        return
                    if not self._cond.wait(IDLE_CHECK_SECONDS):
                        self._work_hint = True  # look for expired leases and due retries
                outcomes, self._outcomes = self._outcomes, []
                want = 0 if self._stopping else self._idle
                if want:
                    self._work_hint = False  # a hint arriving from now on asks again
            if outcomes:
                self._store(outcomes)
            if want:
                claimed = self._claim(want)
                if len(claimed) == want:
                    self._hint_work()  # the claim was full: more may be waiting

    def _store(self, outcomes: list[Outcome]) -> None:
        try:
            flags = self.app.backend.complete_many(outcomes, self.worker_id, self.clock())
        except Exception:
            # The claims stay leased until this worker stops heartbeating them or hands
            # them back, then they run again: at-least-once, nothing lost.
            logger.exception("storing %d outcome(s) failed", len(outcomes))
            return
        hub = self.app.hub
        for outcome, accepted in zip(outcomes, flags):
            if accepted:
                hub.resolve(outcome)

    def _claim(self, limit: int) -> list[ClaimedInvocation]:
        c = self.app.conf
        try:
            claimed = self.app.backend.claim(
                app_id=self.app.app_id,
                worker_id=self.worker_id,
                limit=limit,
                now=self.clock(),
                lease_seconds=c.lease_seconds,
                max_lost_attempts=c.max_lost_attempts,
            )
        except Exception:
            logger.exception("claiming work failed; trying again within %ss", IDLE_CHECK_SECONDS)
            return []
        if claimed:
            with self._cond:
                self._idle -= len(claimed)
                self._active += len(claimed)
            for item in claimed:
                self._queue.put(item)
        return claimed

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            outcome = run_claimed(self.app, item, item.attempt, self.worker_id)
            with self._cond:
                self._outcomes.append(outcome)
                self._idle += 1
                self._active -= 1
                self._cond.notify_all()

    def _heartbeat(self, info: WorkerInfo) -> None:
        c = self.app.conf
        backend = self.app.backend
        while not self._stop_heartbeat.wait(c.heartbeat_interval_seconds):
            try:
                backend.heartbeat(info, self.clock(), c.lease_seconds)
            except Exception:
                logger.exception("heartbeat of %s failed; will try again", self.worker_id)

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
        backend = self.app.backend
        with self._cond:
            unfinished = self._active
        try:
            handed_back = backend.release(self.worker_id)
            backend.remove_worker(self.worker_id)
        except Exception:
            handed_back = 0
            logger.exception("handing back work failed; its leases will expire instead")
        for _ in workers:
            self._queue.put(None)
        logger.info(
            "runner %s stopped (%d task(s) still running were abandoned, %d handed back)",
            self.worker_id,
            unfinished,
            handed_back,
        )
