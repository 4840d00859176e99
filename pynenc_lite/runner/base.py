"""What every runner shares: starting in a background thread (`with app.runner:`), and
turning SIGINT/SIGTERM into flags that the supervising thread acts on; and the check that
the storage answers before a worker starts (`storage_problem`).

A signal handler here only counts signals. Acting on them (stopping, forwarding) happens in
the thread that called `run()`, so a handler never runs code that takes a lock the
interrupted code might hold. That thread sleeps on a wake-up pipe: the interpreter writes
to it when a signal arrives (`signal.set_wakeup_fd`), and `_wake()` writes to it when the
runner's own state changes, so supervising costs nothing while nothing happens.
"""

from __future__ import annotations

import abc
import atexit
import logging
import multiprocessing.connection
import os
import signal
import threading
import time
import types
import weakref
from typing import TYPE_CHECKING, Any, Optional, Sequence

from pynenc_lite.errors import PynencError

if TYPE_CHECKING:
    from pynenc_lite.runtime import Runtime

logger = logging.getLogger(__name__)

# How often `__enter__` checks that the runner it started in the background is still alive.
READY_CHECK_SECONDS = 0.05
# How long leaving `with runner:` waits for the runner to stop before it says so and goes on
# (longer than the default grace period plus the time to hand work back).
EXIT_JOIN_SECONDS = 60.0
# How long, at interpreter exit, runners still running in the background get to stop.
EXIT_STOP_SECONDS = 2.0

# Runners running now. One still running in a background thread when the interpreter exits
# is asked to stop first, so its threads are not frozen inside SQLite calls on the way out.
_running_runners: weakref.WeakSet[BaseRunner] = weakref.WeakSet()


@atexit.register
def _stop_running_runners() -> None:
    runners = list(_running_runners)
    for runner in runners:
        runner.stop_runner_loop()
    for runner in runners:
        runner.wait_until_stopped(EXIT_STOP_SECONDS)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# While a runner stops, how long one call to unreachable storage may keep retrying (see
# `Backend.set_retry_budget`), and how long the stop waits for a thread still inside such a
# call: together they bound a stop at about the grace period plus a few seconds.
STOP_RETRY_SECONDS = 1.0


def storage_problem(runtime: Runtime) -> Optional[str]:
    """Why the app's storage cannot be used now (one line), or None when it answers.

    One cheap read through the backend: opening a SQLite file creates it and its tables, so a
    missing folder or a read-only file shows here; over TCP the request keeps reconnecting
    for `broker_retry_seconds` first. The worker command and each worker process ask this
    before they start running tasks.
    """
    try:
        runtime.backend.count_live_workers(runtime.app_id, time.time())
    except (PynencError, OSError) as exc:
        return str(exc)
    return None


def block_stop_signals() -> None:
    """Hold SIGINT/SIGTERM pending in this (main) thread until a runner installs its handlers
    (`BaseRunner._begin` unblocks them), so a stop asked for during start-up is not lost.
    A command line calls this first thing. Does nothing where signal masks do not exist."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def unblock_stop_signals() -> None:
    """Undo `block_stop_signals` (what was held back is delivered now)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


class BaseRunner(abc.ABC):
    """A runner: `run()` blocks until stopped; `stop_runner_loop()` asks it to stop."""

    def __init__(self) -> None:
        self._signals = 0  # written by signal handlers only; read by the supervising thread
        self._ready = threading.Event()  # set once run() accepts work
        self._done = threading.Event()  # set while run() is not running
        self._done.set()
        self._background: Optional[threading.Thread] = None
        self._wake_fds: Optional[tuple[int, int]] = None  # (read, write) while running
        self._previous_wakeup_fd = -1
        # Makes "is it running? then mark it running" one step for concurrent run() calls.
        self._start_lock = threading.Lock()

    def _reset(self) -> None:  # noqa: B027 - runners without state to clear keep it empty
        """Clear the state of a previous run (called by run() before it starts)."""

    @abc.abstractmethod
    def run(self, *, burst: bool = False) -> None:
        """Run tasks until stopped; with `burst=True`, until nothing is left to run."""

    @abc.abstractmethod
    def stop_runner_loop(self) -> None:
        """Ask `run()` to stop gracefully; returns at once."""

    @property
    def is_running(self) -> bool:
        """True from the start of `run()` until it has shut down."""
        return not self._done.is_set()

    def wait_until_stopped(self, timeout: Optional[float] = None) -> bool:
        """Wait for `run()` to return. Returns False if `timeout` seconds passed first."""
        return self._done.wait(timeout)

    def __enter__(self) -> Any:
        """Start `run()` in a background thread; return once it accepts work.

        Raises:
            RuntimeError: the runner stopped before it was ready (the log says why).
        """
        self._background = threading.Thread(
            target=self.run, name="pynenc-lite-runner", daemon=True
        )
        self._background.start()
        while not self._ready.wait(READY_CHECK_SECONDS):
            if not self._background.is_alive():
                raise RuntimeError(f"{self!r} failed to start; see the log for the reason")
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop_runner_loop()
        if self._background is not None:
            # Bounded: a stop that hangs (storage that stopped answering) is reported, not
            # waited for in silence. The runner thread is a daemon and keeps trying.
            self._background.join(EXIT_JOIN_SECONDS)
            if self._background.is_alive():
                logger.warning(
                    "%r did not stop within %.0fs of leaving its `with` block; it goes on "
                    "stopping in the background",
                    self,
                    EXIT_JOIN_SECONDS,
                )
            self._background = None

    def _begin(self) -> dict[int, Any]:
        """Mark the start of run(): flags reset, wake-up pipe made, and on the main thread
        signal handlers installed. Returns the previous handlers, for `_end`.

        Raises:
            RuntimeError: already running.
        """
        with self._start_lock:
            if not self._done.is_set():
                raise RuntimeError(f"{self!r} is already running")
            # Reset before marking it running: a stop asked for from now on is kept.
            self._reset()
            self._done.clear()
            _running_runners.add(self)
        self._ready.clear()
        self._signals = 0
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self._wake_fds = (read_fd, write_fd)
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: Optional[types.FrameType]) -> None:
            self._signals += 1

        self._previous_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        # A signal the process ignores (a worker process ignores SIGINT; so does `nohup`)
        # stays ignored.
        previous: dict[int, Any] = {
            sig: signal.signal(sig, handler)
            for sig in STOP_SIGNALS
            if signal.getsignal(sig) is not signal.SIG_IGN
        }
        unblock_stop_signals()  # what `block_stop_signals` held back reaches our handler now
        return previous

    def _wake(self) -> None:
        """Wake the supervising thread (safe from any thread)."""
        fds = self._wake_fds
        if fds is not None:
            try:
                os.write(fds[1], b"w")
            except (BlockingIOError, OSError):
                pass  # the pipe is full (a wake-up is pending anyway) or already closed

    def _sleep_until_woken(self, also: Sequence[Any] = (), timeout: Optional[float] = None) -> None:
        """Block until `_wake()`, a signal, one of `also` (sentinels, connections) is ready,
        or `timeout` seconds pass."""
        assert self._wake_fds is not None
        read_fd = self._wake_fds[0]
        multiprocessing.connection.wait([read_fd, *also], timeout)
        try:
            while os.read(read_fd, 512):
                pass
        except BlockingIOError:
            pass

    def _end(self, previous_handlers: dict[int, Any]) -> None:
        if previous_handlers or self._previous_wakeup_fd != -1:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            self._previous_wakeup_fd = -1
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        if self._wake_fds is not None:
            for fd in self._wake_fds:
                os.close(fd)
            self._wake_fds = None
        _running_runners.discard(self)
        self._done.set()
