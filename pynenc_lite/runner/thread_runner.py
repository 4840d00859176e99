"""The thread runner: claims this app's invocations and runs them on a pool of threads.

    supervising thread (run())   dispatcher thread          worker threads   heartbeat thread
    ──────────────────────────   ───────────────────        ──────────────   ────────────────
    start the threads; sleep     store outcomes and claim   run one claim    extend leases,
    until woken; act on signals  in batches (dispatcher.py) at a time        give up lost
    finish: hand back, join                                 (pool.py)        work (upkeep.py)
                          └────── all share one WorkPool (pool.py) ──────┘

This module composes them: `ThreadRunner` makes a `WorkPool` and a `Dispatcher` per run,
starts the threads, turns signals into a graceful or forced stop, ends the process on a hard
stop, and hands back what is still running when it finishes. Claiming and storing are the
dispatcher's; heartbeats, time limits, cron and expiry are `upkeep`'s; the worker-thread
loop and the state the threads share are the pool's.

`run()` blocks until `stop_runner_loop()` (or, on the main thread, SIGINT/SIGTERM, or in a
worker process a message on its control pipe). Stopping is graceful: no new claims; running
tasks get `shutdown_grace_seconds` to finish and their outcomes are stored; whatever is
still running then is handed back to the queue at once. A second signal ends the grace
period early.

In a worker process of a process runner, the supervisor's control pipe carries `STOP` and
`STOP_NOW`; it closes (EOF) when the supervisor dies. A SIGTERM or SIGINT to this process and
the supervisor's `STOP` count as ONE stop (a group signal brings both); a second signal to
this process, or `STOP_NOW`, skips the grace. EOF is a stop too: an orphan must not go on
claiming work.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Callable, Optional, Union

from pynenc_lite.backend.base import WorkerInfo
from pynenc_lite.runner import upkeep
from pynenc_lite.runner.base import STOP_RETRY_SECONDS, BaseRunner
from pynenc_lite.runner.dispatcher import IDLE_CHECK_SECONDS, Dispatcher
from pynenc_lite.runner.pool import WorkPool
from pynenc_lite.runtime import HasRuntime, Runtime, runtime_of

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

__all__ = [
    "EXIT_HARD_STOP",
    "IDLE_CHECK_SECONDS",
    "STOP",
    "STOP_NOW",
    "ThreadRunner",
    "new_worker_id",
]

logger = logging.getLogger(__name__)

# How long stopping waits for idle worker threads to end.
THREAD_EXIT_SECONDS = 5.0
# How long stopping waits for the heartbeat thread (milliseconds unless it is inside a call
# to storage that stopped answering; that call is not worth waiting for).
HEARTBEAT_JOIN_SECONDS = 0.2
# Once stopping, how long after the grace period the dispatcher may take to return (it
# only does not when it is inside a call to storage that stopped answering).
DISPATCHER_JOIN_SECONDS = 0.5
# Exit code of a worker process that ended itself to stop a task (time limit, cancel).
EXIT_HARD_STOP = 75
# Messages on a worker process's control pipe from its supervisor: stop gracefully; stop
# without waiting for running tasks (the supervisor got a second signal).
STOP = b"stop"
STOP_NOW = b"stop-now"


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
        control: in a worker process, the read end of the supervisor's control pipe
            (`STOP`, `STOP_NOW`; EOF when the supervisor is gone).
    """

    def __init__(
        self,
        app: Union[Runtime, HasRuntime],
        *,
        threads: Optional[int] = None,
        worker_id: Optional[str] = None,
        hard_stop: bool = False,
        clock: Callable[[], float] = time.time,
        control: Optional[Connection] = None,
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
        # This run's shared state; replaced by _reset, so threads an earlier run abandoned
        # inside a task keep their own and never touch this run's.
        self._pool = WorkPool(self.threads)
        self._stop_heartbeat = threading.Event()  # set: the heartbeat thread returns
        self._dispatcher_done = threading.Event()  # set when the dispatcher thread returns
        self._control = control
        # What the control pipe asked for; read and written by the supervising thread only.
        self._asked_to_stop = False
        self._asked_to_stop_now = False

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
        self._pool = WorkPool(self.threads)
        self.worker_id = self._fixed_worker_id or new_worker_id()
        self._stop_heartbeat.clear()
        self._dispatcher_done.clear()
        self._asked_to_stop = self._asked_to_stop_now = False

    def stop_runner_loop(self) -> None:
        """Ask the runner to stop gracefully; returns at once (`run()` returns when done)."""
        self._pool.stop()
        self._wake()

    # -- the run ----------------------------------------------------------------------------

    def _run(self, burst: bool) -> None:
        app = self.runtime
        backend, hub, pool = app.backend, app.hub, self._pool
        info = WorkerInfo(
            self.worker_id,
            app.app_id,
            socket.gethostname(),
            os.getpid(),
            self.threads,
            self.clock(),
        )
        backend.heartbeat(info, [], self.clock(), app.conf.lease_seconds)
        dispatcher = Dispatcher(
            app,
            pool,
            worker_id=self.worker_id,
            clock=self.clock,
            hard_stop=self.hard_stop,
            stop_process=self._stop_process,
        )
        workers = [
            threading.Thread(
                target=pool.work,
                args=(app, self.clock),
                name=f"pynenc-lite-worker-{i}",
                daemon=True,
            )
            for i in range(self.threads)
        ]
        heartbeat = threading.Thread(
            target=upkeep.keep_leases,
            args=(app, pool, info),
            kwargs={"stop": self._stop_heartbeat, "clock": self.clock, "hard_stop": self.hard_stop},
            name="pynenc-lite-heartbeat",
            daemon=True,
        )
        dispatching = threading.Thread(
            target=self._dispatch,
            args=(dispatcher, burst),
            name="pynenc-lite-dispatcher",
            daemon=True,
        )
        hub.add_work_listener(pool.hint_work)
        for thread in (*workers, heartbeat, dispatching):
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
            self._supervise(dispatching)
        finally:
            hub.remove_work_listener(pool.hint_work)
            self._finish(pool, heartbeat)

    def _supervise(self, dispatching: threading.Thread) -> None:
        """Sleep until the dispatcher returns, acting on stop requests meanwhile.

        This thread only supervises, so a signal handler never interrupts code that holds a
        lock: it sets a flag, read here. Once stopping, the dispatcher gets the grace period
        and `DISPATCHER_JOIN_SECONDS` more: one still inside a call to storage that stopped
        answering (a TCP call retries for `broker_retry_seconds`) is left behind, and the
        run finishes without it.
        """
        give_up_at: Optional[float] = None
        while not self._dispatcher_done.is_set():
            timeout = None if give_up_at is None else max(0.0, give_up_at - time.monotonic())
            # The dispatcher wakes us when it returns; signals and the supervisor too.
            self._sleep_until_woken(
                [self._control] if self._control is not None else [], timeout
            )
            self._read_control()
            if self._signals or self._asked_to_stop:
                self._on_stop_request()
            if self._pool.stopping:
                grace = 0.0 if self._pool.force else self.runtime.conf.shutdown_grace_seconds
                latest = time.monotonic() + grace + DISPATCHER_JOIN_SECONDS
                give_up_at = latest if give_up_at is None else min(give_up_at, latest)
            if give_up_at is not None and time.monotonic() >= give_up_at:
                if self._dispatcher_done.is_set():
                    break
                logger.warning(
                    "the dispatcher of %s is still waiting for the storage after the grace "
                    "period; finishing without it",
                    self.worker_id,
                )
                return
        dispatching.join()

    def _dispatch(self, dispatcher: Dispatcher, burst: bool) -> None:
        try:
            dispatcher.run(burst=burst)
        finally:
            self._dispatcher_done.set()
            self._wake()

    def _stop_process(self, reason: str, outcomes_stored: bool) -> None:
        """Hard stop (process runner children only): end this process, which is the only
        way to stop a running Python thread. The supervisor starts a replacement.

        Our other work is handed back only if every outcome was stored (`outcomes_stored`),
        that of the invocation whose time limit caused the stop included. Otherwise nothing
        is handed back: `release` would put that invocation back as new, to run again
        without counting an attempt. Its lease (and our others) is left to run out instead:
        it is then claimed again as a lost attempt, counted against `max_lost_attempts`,
        and still gets exactly one outcome. (A cancelled invocation is final already:
        `release` never touches it.)"""
        backend = self.runtime.backend
        self._stop_heartbeat.set()
        try:
            if outcomes_stored:
                logger.warning(
                    "%s: ending worker process %d; its other work is handed back",
                    reason,
                    os.getpid(),
                )
                backend.set_retry_budget(STOP_RETRY_SECONDS)
                backend.release(self.worker_id, self.clock())
                backend.remove_worker(self.worker_id)
            else:
                logger.error(
                    "%s: ending worker process %d; outcomes could not be stored, so nothing "
                    "is handed back: its leases run out and what it held runs again as a "
                    "lost attempt",
                    reason,
                    os.getpid(),
                )
        finally:
            logging.shutdown()
            os._exit(EXIT_HARD_STOP)

    # -- stopping ---------------------------------------------------------------------------

    def _read_control(self) -> None:
        """Take the supervisor's messages off the control pipe; EOF means it is gone."""
        control = self._control
        if control is None:
            return
        try:
            while control.poll():
                message = control.recv_bytes()
                self._asked_to_stop = True
                if message == STOP_NOW:
                    self._asked_to_stop_now = True
        except (EOFError, OSError):
            control.close()
            self._control = None  # stop watching it
            self._asked_to_stop = True
            logger.warning(
                "the supervisor of worker process %d is gone: claiming nothing more, "
                "finishing running tasks (up to %ss), then exiting",
                os.getpid(),
                self.runtime.conf.shutdown_grace_seconds,
            )

    def _on_stop_request(self) -> None:
        # One signal to this process and the supervisor's STOP are one stop (a group signal
        # brings both): only a second signal, or STOP_NOW, skips the grace period.
        if self._signals > 1 or self._asked_to_stop_now:
            self._pool.force_stop()
        if not self._pool.stopping:
            logger.info("asked to stop: finishing running tasks (a second signal stops at once)")
            self.stop_runner_loop()

    def _finish(self, pool: WorkPool, heartbeat: threading.Thread) -> None:
        """After the dispatcher returned: hand back what is still running, end the threads."""
        self.stop_runner_loop()
        # Stop heartbeats first: one after remove_worker() would announce us alive again.
        # (One stuck in a call to unreachable storage is not waited for: that call can only
        # extend leases of what we still hold, and the worker row it may write goes stale.)
        self._stop_heartbeat.set()
        heartbeat.join(HEARTBEAT_JOIN_SECONDS)
        backend = self.runtime.backend
        unfinished = pool.hand_back_all()
        # Storage that stopped answering must not hold the stop up: what cannot be handed
        # back now keeps its lease, which runs out (that is what leases are for).
        backend.set_retry_budget(STOP_RETRY_SECONDS)
        try:
            handed_back = backend.release(self.worker_id, self.clock())
            backend.remove_worker(self.worker_id)
        except Exception as exc:
            handed_back = 0
            logger.error(
                "handing back work failed (%s); its leases run out instead, after "
                "lease_seconds",
                exc,
            )
        finally:
            backend.set_retry_budget(None)
        # Wait for the idle threads to end, so run() returns with no thread of ours left
        # but those still inside an abandoned task (they end when it returns).
        pool.end_threads(self.threads, unfinished, THREAD_EXIT_SECONDS)
        logger.info(
            "runner %s stopped (%d task(s) still running were abandoned, %d handed back)",
            self.worker_id,
            unfinished,
            handed_back,
        )
