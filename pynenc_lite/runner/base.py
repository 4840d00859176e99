"""What every runner shares: starting in a background thread (`with app.runner:`), and
turning SIGINT/SIGTERM into flags that the supervising thread acts on.

A signal handler here only counts signals. Acting on them (stopping, forwarding) happens in
the thread that called `run()`, between short waits, so a handler never runs code that
takes a lock the interrupted code might hold.
"""

from __future__ import annotations

import abc
import signal
import threading
import types
from typing import Any, Optional

# How often the thread that called run() checks the signal flags.
SIGNAL_CHECK_SECONDS = 0.05


class BaseRunner(abc.ABC):
    """A runner: `run()` blocks until stopped; `stop_runner_loop()` asks it to stop."""

    def __init__(self) -> None:
        self._signals = 0  # written by signal handlers only; read by the supervising thread
        self._ready = threading.Event()  # set once run() accepts work
        self._done = threading.Event()  # set while run() is not running
        self._done.set()
        self._background: Optional[threading.Thread] = None

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
        while not self._ready.wait(SIGNAL_CHECK_SECONDS):
            if not self._background.is_alive():
                raise RuntimeError(f"{self!r} failed to start; see the log for the reason")
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop_runner_loop()
        if self._background is not None:
            self._background.join()
            self._background = None

    def _begin(self) -> dict[int, Any]:
        """Mark the start of run(): flags reset, signal handlers installed on the main thread.

        Returns the previous handlers, for `_end`.

        Raises:
            RuntimeError: already running.
        """
        if not self._done.is_set():
            raise RuntimeError(f"{self!r} is already running")
        self._done.clear()
        self._ready.clear()
        self._signals = 0
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: Optional[types.FrameType]) -> None:
            self._signals += 1

        # A signal the process ignores (a worker process ignores SIGINT; so does `nohup`)
        # stays ignored.
        return {
            sig: signal.signal(sig, handler)
            for sig in (signal.SIGINT, signal.SIGTERM)
            if signal.getsignal(sig) is not signal.SIG_IGN
        }

    def _end(self, previous_handlers: dict[int, Any]) -> None:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        self._done.set()
