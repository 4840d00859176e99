"""The process runner: a supervised pool of worker processes on this host.

    supervisor (the process that called run())        worker process × N (spawned)
    ──────────────────────────────────────────        ───────────────────────────
    start N children, each with a known worker id ──► import the app by `module:attr`,
      and a control pipe                               run a ThreadRunner under that id
    wait on their sentinels                            (own SQLite connection, own threads,
    a child died?  expire its leases at once and       own heartbeats)
      start a replacement (with back-off when
      children keep dying)
    SIGINT/SIGTERM: "stop" down every control pipe ──► graceful stop (its own SIGTERM or
      (a second signal: "stop-now"), wait for the      SIGINT, or both, count as ONE stop)
      children's graceful stop, SIGKILL stragglers
    (supervisor killed: the pipes close)          ──► EOF: graceful stop, then exit

The supervisor does not forward signals. systemd (`KillMode=control-group`), `kill -TERM
-PGID` and Ctrl-C signal every process of the group at once: a child that counted its own
signal and a forwarded one as two would skip its grace period and hand running work back.
So a child counts its own signal and the supervisor's "stop" as one stop; only a second
signal from outside (to the child itself, or "stop-now" from the supervisor that got it)
skips the grace. The pipe also tells a child that its supervisor died (SIGKILL, OOM): the
read end sees EOF at once, and the child stops claiming, finishes or hands back what it runs
and exits, instead of working on as an orphan next to the workers of a restarted command.

Children use the `spawn` start method on every platform, so behaviour on Linux matches macOS
and no SQLite connection or lock is ever inherited across a fork. Each child claims work
itself from the shared database; the supervisor only watches them.

When a child dies, the supervisor marks its leases expired instead of handing its work
back: the next claim then counts a lost attempt, so a task that kills its process (say with
`os._exit`) ends FAILED with `WorkerLostError` after `max_lost_attempts`, instead of
crashing workers for ever.

A child that cannot use the storage as it starts (a database that cannot be opened, a server
unreachable for `broker_retry_seconds`) logs one line and exits with `EXIT_NO_STORAGE`; the
supervisor does not start another one (each would fail the same way), stops the others and
`run()` raises `BackendError`. Storage that fails later, while children run, is retried by
the children themselves (claims, heartbeats and stores are tried again, with back-off).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Optional, Union

from pynenc_lite import logs
from pynenc_lite.errors import BackendError
from pynenc_lite.importing import find_target, import_object
from pynenc_lite.runner.base import (
    STOP_RETRY_SECONDS,
    BaseRunner,
    block_stop_signals,
    storage_problem,
)
from pynenc_lite.runner.thread_runner import (
    EXIT_HARD_STOP,
    STOP,
    STOP_NOW,
    ThreadRunner,
    new_worker_id,
)
from pynenc_lite.runtime import HasRuntime, Runtime, runtime_of

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from pynenc_lite.conf import PynencConfig

logger = logging.getLogger(__name__)

# Extra time, beyond shutdown_grace_seconds, that children get to hand back their work.
STOP_MARGIN_SECONDS = 5.0
# A child that dies sooner than this after starting counts as crash-looping.
QUICK_DEATH_SECONDS = 1.0
MAX_RESPAWN_DELAY_SECONDS = 5.0
# Exit code of a worker process that could not use the storage as it started (sysexits'
# EX_CONFIG): the supervisor stops instead of starting it again and again.
EXIT_NO_STORAGE = 78


# What `_child_log_level` passes when the supervisor shows the library's default output.
_DEFAULT_OUTPUT = "default"


def _child_main(
    target: str,
    conf: PynencConfig,
    worker_id: str,
    threads: int,
    burst: bool,
    log_level: Optional[str],
    control: Connection,
) -> None:
    """Entry point of a worker process (module level, so `spawn` can import it).

    `control` is the read end of the pipe from the supervisor (see the module docstring).
    """
    # SIGINT/SIGTERM wait (pending) until the runner below has its handlers: a stop asked
    # for while the app imports is then a graceful stop, not a traceback.
    block_stop_signals()
    if log_level == _DEFAULT_OUTPUT:  # the supervisor prints the library's default output
        logs.install_default_handler(conf.logging_level, conf.log_stream)
    elif log_level:
        logging.basicConfig(
            level=log_level,
            format="%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s",
        )
    # The target was checked by the supervisor (`find_target`, or the worker command's
    # `load_app`); sys.path comes with the spawn, so importing it here finds the same app.
    runtime = runtime_of(import_object(target))
    runtime.conf = conf  # the supervisor's configuration, including run-time assignments
    problem = _check_storage(runtime, control)
    if problem == _STOPPED:
        return  # told to stop (or orphaned) while waiting for the storage: nothing held
    if problem is not None:
        logger.error("worker process %d cannot use the storage: %s", os.getpid(), problem)
        sys.exit(EXIT_NO_STORAGE)
    runner = ThreadRunner(
        runtime, threads=threads, worker_id=worker_id, hard_stop=True, control=control
    )
    runner.run(burst=burst)
    # All handed back, or left to its leases. End now: at interpreter exit, threads still
    # inside calls to storage that stopped answering (the hub's watcher) would be waited for.
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    logging.shutdown()
    os._exit(0)


_STOPPED = "(stopped while checking)"


def _check_storage(runtime: Runtime, control: Connection) -> Optional[str]:
    """`storage_problem` in a helper thread while this one watches the control pipe: a
    server that is down retries for `broker_retry_seconds`, and a stop (or the supervisor's
    death) meanwhile must not wait for that. Returns `_STOPPED` for a stop."""
    answer_reader, answer_writer = multiprocessing.Pipe(duplex=False)

    def check() -> None:
        answer_writer.send(storage_problem(runtime))

    threading.Thread(target=check, name="pynenc-lite-storage-check", daemon=True).start()
    ready = multiprocessing.connection.wait([answer_reader, control])
    if answer_reader in ready:
        problem: Optional[str] = answer_reader.recv()
        return problem
    return _STOPPED


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
        self._controls: dict[str, Connection] = {}  # id -> write end of its control pipe
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
            BackendError: a worker process could not use the storage as it started (its
                own log line says why); the others were stopped.
        """
        previous = self._begin()
        failure = ""
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
                    self._forget(worker_id)
                    if burst and process.exitcode == 0:
                        continue
                    if process.exitcode == EXIT_NO_STORAGE:
                        failure = (
                            f"worker process {process.pid} could not use the storage as it "
                            "started (its error is logged above); not starting more: fix the "
                            "storage, then start the worker again"
                        )
                        self.stop_runner_loop()
                        break
                    self._recover(worker_id, process)
                    # A process that ended itself to stop a task is not crash-looping.
                    quick = (
                        time.monotonic() - started < QUICK_DEATH_SECONDS
                        and process.exitcode != EXIT_HARD_STOP
                    )
                    delay = min(max(delay * 2, 0.1), MAX_RESPAWN_DELAY_SECONDS) if quick else 0.0
                    if delay and self._pause_unless_stopped(delay):
                        break
                    self._spawn(context, target, burst, log_level)
                if self._signals:
                    self.stop_runner_loop()
        finally:
            try:
                self._stop_children()
            finally:
                self._end(previous)
        if failure:
            raise BackendError(failure)

    def _spawn(self, context: Any, target: str, burst: bool, log_level: Optional[str]) -> None:
        self._started += 1
        worker_id = new_worker_id(f"w{self._started}")
        reader, writer = context.Pipe(duplex=False)
        process = context.Process(
            target=_child_main,
            args=(target, self.runtime.conf, worker_id, self.threads, burst, log_level, reader),
            name=f"pynenc-lite-worker-{self._started}",
            daemon=False,
        )
        process.start()
        reader.close()  # the child has its copy: when we die, it sees EOF on it
        self._children[worker_id] = (process, time.monotonic())
        self._controls[worker_id] = writer

    def _tell(self, worker_id: str, message: bytes) -> None:
        """Send `message` down a child's control pipe (a child that is gone is skipped)."""
        control = self._controls.get(worker_id)
        if control is None:
            return
        try:
            control.send_bytes(message)
        except OSError:
            pass  # it died already: its sentinel tells the rest

    def _forget(self, worker_id: str) -> None:
        """Drop a dead child's control pipe."""
        control = self._controls.pop(worker_id, None)
        if control is not None:
            control.close()

    def _pause_unless_stopped(self, seconds: float) -> bool:
        """Wait `seconds` before starting a child again, on the wake-up pipe so that a signal
        or `stop_runner_loop()` ends the wait at once. Returns True if a stop came."""
        logger.info("worker processes keep dying as they start; starting another in %.1fs", seconds)
        deadline = time.monotonic() + seconds
        while not (self._stop_requested.is_set() or self._signals):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._sleep_until_woken(timeout=remaining)
        return True

    def _recover(self, worker_id: str, process: BaseProcess, *, replaced: bool = True) -> bool:
        """Expire a dead child's leases at once (its work is claimed again, counting a lost
        attempt) and say how it ended (and, if `replaced`, that a new process replaces it).
        Returns False if the storage could not be reached."""
        replacing = "; a new process replaces it" if replaced else ""
        try:
            expired = self.runtime.backend.expire_leases(worker_id)
        except Exception as exc:
            expired = -1
            logger.warning(
                "could not expire the leases of %s now (%s); they run out on their own",
                worker_id,
                exc,
            )
        if process.exitcode == 0:
            # Stopped gracefully on its own (a signal sent to it alone): it handed back its
            # work; only a lease it could not hand back was expired above.
            logger.info("worker process %s (pid %s) stopped%s", worker_id, process.pid, replacing)
            return expired >= 0
        if process.exitcode == EXIT_HARD_STOP:
            logger.info(
                "worker process %s (pid %s) ended itself to stop a task (time limit or "
                "cancel)%s",
                worker_id,
                process.pid,
                replacing,
            )
            return expired >= 0
        held = (
            f"holding {expired} invocation(s), claimed again now"
            if expired >= 0
            else "(what it held is claimed again when the leases run out)"
        )
        logger.error(
            "worker process %s (pid %s) exited with code %s %s%s",
            worker_id,
            process.pid,
            process.exitcode,
            held,
            replacing,
        )
        return expired >= 0

    def _stop_children(self) -> None:
        """Tell every child to stop (graceful), wait, then SIGKILL stragglers and recover.

        Bounded whatever the storage does: children get `shutdown_grace_seconds` plus
        `STOP_MARGIN_SECONDS`, and expiring the leases of the ones that had to be killed
        (or that crashed meanwhile) retries unreachable storage for `STOP_RETRY_SECONDS`
        once, not once per child.
        """
        grace = self.runtime.conf.shutdown_grace_seconds
        for worker_id in self._children:
            self._tell(worker_id, STOP)
        deadline = time.monotonic() + grace + STOP_MARGIN_SECONDS
        forwarded = self._signals
        pending = dict(self._children)
        ended: list[tuple[str, BaseProcess]] = []  # (worker id, process) that ended
        while True:
            for worker_id, (process, _) in list(pending.items()):
                if not process.is_alive():
                    process.join()
                    del pending[worker_id]
                    ended.append((worker_id, process))
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0:
                break
            # Sentinels of every child not yet seen dead: one that dies after the check
            # above still wakes this wait (leaving it out would sleep the whole grace).
            self._sleep_until_woken([p.sentinel for p, _ in pending.values()], remaining)
            if self._signals > max(forwarded, 1):
                # A second signal: the children skip their grace period too.
                forwarded = self._signals
                for worker_id in pending:
                    self._tell(worker_id, STOP_NOW)
        for worker_id, (process, _) in pending.items():
            if process.is_alive():  # (it may have ended since the last look)
                logger.error(
                    "worker process %s did not stop within %.0fs; killing it",
                    process.pid,
                    grace + STOP_MARGIN_SECONDS,
                )
                process.kill()
            process.join()
            ended.append((worker_id, process))
        self._children.clear()
        for worker_id in list(self._controls):
            self._forget(worker_id)
        # A child that exited 0 handed its work back; the others' leases are expired now.
        lost = [(w, p) for w, p in ended if p.exitcode not in (0, EXIT_NO_STORAGE)]
        if lost:
            backend = self.runtime.backend
            backend.set_retry_budget(STOP_RETRY_SECONDS)
            try:
                for worker_id, process in lost:
                    if not self._recover(worker_id, process, replaced=False):
                        break  # storage unreachable: the other leases run out on their own
            finally:
                backend.set_retry_budget(None)

    @staticmethod
    def _child_log_level() -> Optional[str]:
        # Spawned children start with no logging set up; give them the parent's level when
        # the parent configured logging, the library's default output when the parent shows
        # it, else leave theirs alone.
        root = logging.getLogger()
        if root.handlers:
            return logging.getLevelName(root.level)
        return _DEFAULT_OUTPUT if logs.has_default_handler() else None
