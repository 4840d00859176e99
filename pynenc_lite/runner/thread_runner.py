"""The thread runner: claims this app's invocations and runs them on a pool of threads.

    dispatcher thread                 worker threads (max_threads)       heartbeat thread
    ─────────────────                 ─────────────────────────────       ────────────────
    wait for an idle thread           take from the queue                 every interval:
    claim up to that many ──queue──►  start (PENDING -> RUNNING)          extend our leases,
    none? hub.wait_for_work()         run the function                    say we are alive
                                      complete; resolve waiting caller

`run()` blocks: it starts the threads above and waits for `stop_runner_loop()` (or, on the
main thread, SIGINT/SIGTERM). Stopping is graceful: no new claims, running tasks get
`shutdown_grace_seconds` to finish, then whatever this runner still holds is handed back
to the queue at once. A second signal skips the grace period.

Work reaches an idle thread and a result reaches a caller in this process by notification
(see `waiting`); changes from other processes are noticed by the hub's watcher. An idle
runner sleeps in `hub.wait_for_work`, waking once a second to look for expired leases.

The runner does not decide what an invocation's outcome means: `execution.run_claimed`
packages it; the backend stores it only if this runner still holds the claim.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
import types
import uuid
from typing import TYPE_CHECKING, Any, Callable, Optional

from pynenc_lite.backend.base import ClaimedInvocation, WorkerInfo
from pynenc_lite.runner.execution import run_claimed

if TYPE_CHECKING:
    from pynenc_lite.app import Pynenc

logger = logging.getLogger(__name__)

# How often an idle dispatcher looks for work that no notification announces (leases that
# expired, retries whose time came).
IDLE_CHECK_SECONDS = 1.0
# How often the main thread checks the signal flags while run() blocks on it.
SIGNAL_CHECK_SECONDS = 0.05


def new_worker_id() -> str:
    """`host:pid:random`, unique per runner start, readable in status listings."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class ThreadRunner:
    """Runs an app's tasks on threads of this process.

    Args:
        app: the app whose tasks to run.
        threads: worker threads (default: `max_threads` from the configuration).
        clock: the wall clock (seconds since the epoch); tests can pass a fake one.
    """

    def __init__(
        self,
        app: Pynenc,
        *,
        threads: Optional[int] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.threads = int(threads if threads is not None else app.conf.max_threads)
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        self.clock = clock
        self.worker_id = ""
        # Guards _idle, _active, _stopping and _force; notified when a worker thread
        # finishes an invocation and when a stop is asked for.
        self._cond = threading.Condition()
        self._idle = 0
        self._active = 0
        self._stopping = False
        self._force = False
        self._signals = 0  # set from signal handlers only; read by the main thread
        self._queue: queue.SimpleQueue[Optional[ClaimedInvocation]] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._done = threading.Event()
        self._done.set()
        self._background: Optional[threading.Thread] = None

    def __repr__(self) -> str:
        return f"<ThreadRunner {self.worker_id or '(not running)'} threads={self.threads}>"

    @property
    def is_running(self) -> bool:
        """True from the start of `run()` until it has shut down."""
        return not self._done.is_set()

    # -- public control ---------------------------------------------------------------------

    def run(self, *, burst: bool = False) -> None:
        """Run tasks until `stop_runner_loop()` (or SIGINT/SIGTERM on the main thread).

        Args:
            burst: return once nothing is runnable and nothing is running (drain mode).

        Raises:
            RuntimeError: this runner is already running.
        """
        if not self._done.is_set():
            raise RuntimeError(f"{self!r} is already running")
        self._done.clear()
        self._ready.clear()
        with self._cond:
            self._stopping = self._force = False
            self._idle, self._active = self.threads, 0
        self._signals = 0
        self.worker_id = new_worker_id()
        on_main = threading.current_thread() is threading.main_thread()
        previous = self._install_signal_handlers() if on_main else {}
        try:
            self._run(burst, on_main)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._done.set()

    def stop_runner_loop(self) -> None:
        """Ask the runner to stop gracefully; returns at once (`run()` returns when done)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self.app._hub is not None:
            self.app.hub.notify_work()

    def wait_until_stopped(self, timeout: Optional[float] = None) -> bool:
        """Wait for `run()` to return. Returns False if `timeout` seconds passed first."""
        return self._done.wait(timeout)

    def __enter__(self) -> ThreadRunner:
        """Start `run()` in a background thread; return once it accepts work."""
        self._background = threading.Thread(
            target=self.run, name="pynenc-lite-runner", daemon=True
        )
        self._background.start()
        while not self._ready.wait(0.05):
            if not self._background.is_alive():
                raise RuntimeError(f"{self!r} failed to start; see the log for the reason")
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop_runner_loop()
        if self._background is not None:
            self._background.join()
            self._background = None

    # -- the loop ---------------------------------------------------------------------------

    def _run(self, burst: bool, on_main: bool) -> None:
        app, c = self.app, self.app.conf
        backend, hub = app.backend, app.hub
        info = WorkerInfo(
            self.worker_id, app.app_id, socket.gethostname(), os.getpid(), self.threads, self.clock()
        )
        backend.heartbeat(info, self.clock(), c.lease_seconds)
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
            # The calling thread only supervises, so a signal handler never has to take a
            # lock the dispatcher might hold.
            while dispatcher.is_alive():
                dispatcher.join(SIGNAL_CHECK_SECONDS if on_main else None)
                if self._signals:
                    self._on_signal()
        finally:
            self._shutdown(workers, heartbeat)

    def _dispatch(self, burst: bool) -> None:
        app, c = self.app, self.app.conf
        backend, hub = app.backend, app.hub
        while True:
            with self._cond:
                while self._idle == 0 and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                free = self._idle
            epoch = hub.work_epoch
            try:
                claimed = backend.claim(
                    app_id=app.app_id,
                    worker_id=self.worker_id,
                    limit=free,
                    now=self.clock(),
                    lease_seconds=c.lease_seconds,
                    max_lost_attempts=c.max_lost_attempts,
                )
            except Exception:
                logger.exception("claiming work failed; trying again shortly")
                hub.wait_for_work(epoch, IDLE_CHECK_SECONDS)
                continue
            if claimed:
                with self._cond:
                    self._idle -= len(claimed)
                    self._active += len(claimed)
                for item in claimed:
                    self._queue.put(item)
                continue
            if burst:
                with self._cond:
                    if self._active == 0:
                        return
                    self._cond.wait(IDLE_CHECK_SECONDS)  # until a thread finishes
                continue
            hub.wait_for_work(epoch, IDLE_CHECK_SECONDS)

    def _work(self) -> None:
        app = self.app
        backend, hub = app.backend, app.hub
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                attempt = backend.start(item.invocation_id, self.worker_id, self.clock())
                if attempt is None:
                    logger.debug("invocation %s is no longer ours; skipped", item.invocation_id)
                else:
                    outcome = run_claimed(app, item, attempt, self.worker_id)
                    if backend.complete(outcome, self.worker_id, self.clock()):
                        hub.resolve(outcome)
            except Exception:
                # Storage failed: the claim stays leased and is recovered when the lease
                # expires, so nothing is lost.
                logger.exception("storing the outcome of %s failed", item.invocation_id)
            finally:
                with self._cond:
                    self._idle += 1
                    self._active -= 1
                    self._cond.notify_all()

    def _heartbeat(self, info: WorkerInfo) -> None:
        c = self.app.conf
        backend = self.app.backend
        while not self._done.wait(c.heartbeat_interval_seconds):
            try:
                backend.heartbeat(info, self.clock(), c.lease_seconds)
            except Exception:
                logger.exception("heartbeat of %s failed; will try again", self.worker_id)

    # -- stopping ---------------------------------------------------------------------------

    def _install_signal_handlers(self) -> dict[int, Any]:
        def handler(signum: int, frame: Optional[types.FrameType]) -> None:
            self._signals += 1  # only a flag: the main thread acts on it

        return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(self) -> None:
        if self._signals == 1 and not self._stopping:
            logger.info("signal received: finishing running tasks (again to stop at once)")
            self.stop_runner_loop()
        elif self._signals > 1:
            with self._cond:
                self._force = True
                self._cond.notify_all()

    def _shutdown(self, workers: list[threading.Thread], heartbeat: threading.Thread) -> None:
        self.stop_runner_loop()
        app, c = self.app, self.app.conf
        deadline = time.monotonic() + c.shutdown_grace_seconds
        with self._cond:
            while self._active and not self._force:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                # Short waits, so a second signal (a flag read by this thread) is seen soon.
                self._cond.wait(min(remaining, SIGNAL_CHECK_SECONDS))
                if self._signals > 1:
                    self._force = True
            unfinished = self._active
        # Unstarted claims still queued are skipped by the threads (start() fails once
        # the claims are handed back); the None markers end the threads.
        try:
            handed_back = app.backend.release(self.worker_id)
            app.backend.remove_worker(self.worker_id)
        except Exception:
            handed_back = -1
            logger.exception("handing back work failed; its leases will expire instead")
        for _ in workers:
            self._queue.put(None)
        logger.info(
            "runner %s stopped (%d still running after the grace period, %s handed back)",
            self.worker_id,
            unfinished,
            handed_back if handed_back >= 0 else "none",
        )
