"""The process runner: a supervised pool of worker processes on this host.

    supervisor (the process that called run())        worker process × N (spawned)
    ──────────────────────────────────────────        ───────────────────────────
    start N children, each with a known worker id ──► import the app by `module:attr`,
    wait on their sentinels                            run a ThreadRunner under that id
    a child died?  expire its leases at once and       (own SQLite connection, own threads,
      start a replacement (with back-off when          own heartbeats; SIGTERM = graceful)
      children keep dying)
    SIGINT/SIGTERM: forward SIGTERM, wait for the
      children's graceful stop, SIGKILL stragglers

Children use the `spawn` start method on every platform, so behaviour on Linux matches macOS
and no SQLite connection or lock is ever inherited across a fork. Each child claims work
itself from the shared database; the supervisor only watches them.

When a child dies, the supervisor marks its leases expired instead of handing its work
back: the next claim then counts a lost attempt, so a task that kills its process (say with
`os._exit`) ends FAILED with `WorkerLostError` after `max_lost_attempts`, instead of
crashing workers for ever.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Optional, Union

from pynenc_lite.importing import find_target, import_object
from pynenc_lite.runner.base import BaseRunner
from pynenc_lite.runner.thread_runner import EXIT_HARD_STOP, ThreadRunner, new_worker_id
from pynenc_lite.runtime import HasRuntime, Runtime, runtime_of

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from pynenc_lite.conf import PynencConfig

logger = logging.getLogger(__name__)

# Extra time, beyond shutdown_grace_seconds, that children get to hand back their work.
STOP_MARGIN_SECONDS = 5.0
# A child that dies sooner than this after starting counts as crash-looping.
QUICK_DEATH_SECONDS = 1.0
MAX_RESPAWN_DELAY_SECONDS = 5.0


def _child_main(
    target: str,
    conf: PynencConfig,
    worker_id: str,
    threads: int,
    burst: bool,
    log_level: Optional[str],
) -> None:
    """Entry point of a worker process (module level, so `spawn` can import it)."""
    # Ctrl-C in a terminal reaches every process of the group; the supervisor alone decides,
    # and passes a SIGTERM on. An ignored signal stays ignored by the runner below.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if log_level:
        logging.basicConfig(
            level=log_level,
            format="%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s",
        )
    # The target was checked by the supervisor (`find_target`, or the worker command's
    # `load_app`); sys.path comes with the spawn, so importing it here finds the same app.
    runtime = runtime_of(import_object(target))
    runtime.conf = conf  # the supervisor's configuration, including run-time assignments
    ThreadRunner(runtime, threads=threads, worker_id=worker_id, hard_stop=True).run(burst=burst)


class ProcessRunner(BaseRunner):
    """Runs an app's tasks in `processes` worker processes × `threads` threads each.

    Args:
        app: the app (or its `Runtime`); the app must be importable by worker processes
            (a module-level variable).
        processes: worker processes (default `runner_processes`; 0 means one per CPU).
        threads: threads per process (default `max_threads`).
        target: `module:attr` of the app (default: found among imported modules).
    """

    def __init__(
        self,
        app: Union[Runtime, HasRuntime],
        *,
        processes: Optional[int] = None,
        threads: Optional[int] = None,
        target: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.app = app
        self.runtime = runtime_of(app)
        # Here, not in the callers: no way of making one serves a queue kept in memory.
        self.runtime.require_shared_storage("a ProcessRunner")
        conf = self.runtime.conf
        count = conf.runner_processes if processes is None else processes
        self.processes = int(count) if count else (os.cpu_count() or 1)
        self.threads = int(threads if threads is not None else conf.max_threads)
        if self.processes < 1 or self.threads < 1:
            raise ValueError(
                f"processes and threads must be >= 1, got {self.processes} and {self.threads}"
            )
        self._target = target
        self._children: dict[str, tuple[BaseProcess, float]] = {}  # id -> (process, start)
        self._stop_requested = threading.Event()
        self._started = 0  # worker processes started so far, for their names

    def __repr__(self) -> str:
        return f"<ProcessRunner {self.processes} processes x {self.threads} threads>"

    @property
    def child_pids(self) -> list[int]:
        """PIDs of the worker processes alive now."""
        return [p.pid for p, _ in list(self._children.values()) if p.pid and p.is_alive()]

    def _reset(self) -> None:
        self._stop_requested.clear()

    def stop_runner_loop(self) -> None:
        """Ask every worker process to stop gracefully; returns at once."""
        self._stop_requested.set()
        self._wake()

    def run(self, *, burst: bool = False) -> None:
        """Start the worker processes and supervise them until stopped.

        Args:
            burst: each process drains what is runnable, then exits; run() returns when all
                have (exited processes are not replaced).

        Raises:
            RuntimeError: already running.
            TargetError: the app cannot be imported by worker processes.
        """
        previous = self._begin()
        try:
            owner = self.runtime.owner if self.runtime.owner is not None else self.app
            target = self._target or find_target(owner)
            context = multiprocessing.get_context("spawn")
            log_level = self._child_log_level()
            delay = 0.0
            for _ in range(self.processes):
                self._spawn(context, target, burst, log_level)
            logger.info(
                "process runner for app %r started %d worker processes x %d threads (%s)",
                self.runtime.app_id,
                self.processes,
                self.threads,
                target,
            )
            self._ready.set()
            while self._children and not self._stop_requested.is_set():
                self._sleep_until_woken([p.sentinel for p, _ in self._children.values()])
                if self._signals:
                    self.stop_runner_loop()
                    break
                for worker_id, (process, started) in list(self._children.items()):
                    if process.is_alive():
                        continue
                    process.join()
                    del self._children[worker_id]
                    if burst and process.exitcode == 0:
                        continue
                    self._recover(worker_id, process)
                    # A process that ended itself to stop a task is not crash-looping.
                    quick = (
                        time.monotonic() - started < QUICK_DEATH_SECONDS
                        and process.exitcode != EXIT_HARD_STOP
                    )
                    delay = min(max(delay * 2, 0.1), MAX_RESPAWN_DELAY_SECONDS) if quick else 0.0
                    if delay and self._stop_requested.wait(delay):
                        break
                    self._spawn(context, target, burst, log_level)
        finally:
            try:
                self._stop_children()
            finally:
                self._end(previous)

    def _spawn(self, context: Any, target: str, burst: bool, log_level: Optional[str]) -> None:
        self._started += 1
        worker_id = new_worker_id(f"w{self._started}")
        process = context.Process(
            target=_child_main,
            args=(target, self.runtime.conf, worker_id, self.threads, burst, log_level),
            name=f"pynenc-lite-worker-{self._started}",
            daemon=False,
        )
        process.start()
        self._children[worker_id] = (process, time.monotonic())

    def _recover(self, worker_id: str, process: BaseProcess) -> None:
        try:
            expired = self.runtime.backend.expire_leases(worker_id)
        except Exception:
            expired = -1
            logger.exception("could not expire the leases of %s; they expire on time", worker_id)
        if process.exitcode == EXIT_HARD_STOP:
            logger.info(
                "worker process %s (pid %s) ended itself to stop a task (time limit or "
                "cancel); a new process replaces it",
                worker_id,
                process.pid,
            )
            return
        logger.error(
            "worker process %s (pid %s) exited with code %s holding %s invocation(s); they "
            "will be claimed again, and a new process replaces it",
            worker_id,
            process.pid,
            process.exitcode,
            expired if expired >= 0 else "some",
        )

    def _stop_children(self) -> None:
        """SIGTERM every child (graceful), wait, then SIGKILL stragglers and recover."""
        grace = self.runtime.conf.shutdown_grace_seconds
        for process, _ in self._children.values():
            if process.is_alive() and process.pid:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace + STOP_MARGIN_SECONDS
        forwarded = self._signals
        pending = dict(self._children)
        while True:
            for worker_id, (process, _) in list(pending.items()):
                if not process.is_alive():
                    process.join()
                    del pending[worker_id]
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0:
                break
            # Sentinels of every child not yet seen dead: one that dies after the check
            # above still wakes this wait (leaving it out would sleep the whole grace).
            self._sleep_until_woken([p.sentinel for p, _ in pending.values()], remaining)
            if self._signals > max(forwarded, 1):
                # A second signal: pass it on, so the children skip their grace period.
                forwarded = self._signals
                for process, _ in pending.values():
                    if process.is_alive() and process.pid:
                        os.kill(process.pid, signal.SIGTERM)
        for worker_id, (process, _) in pending.items():
            logger.error("worker process %s did not stop in time; killing it", process.pid)
            process.kill()
            process.join()
            self._recover(worker_id, process)
        self._children.clear()

    @staticmethod
    def _child_log_level() -> Optional[str]:
        # Spawned children start with no logging set up; give them the parent's level when
        # the parent configured logging, else leave theirs alone.
        root = logging.getLogger()
        return logging.getLevelName(root.level) if root.handlers else None
