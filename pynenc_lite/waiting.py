"""How a process waits: for a result to arrive, or for work to appear — without polling slowly.

    in this process                               other processes
    ───────────────                               ───────────────
    caller ── submit ──► notify_work() ─┐          commits to the database
                                        ▼                 │
    runner dispatcher ◄── work listener                   │
                                                          ▼
    runner ── complete ──► resolve(outcome)          watcher thread: backend.wait_for_change()
                                        │                 │  (SQLite: PRAGMA data_version,
                                        ▼                 │   fast after activity, backing off)
    caller ◄── Future[Outcome] ◄────────┴─────────────────┘  then get_finished_since(seq)

Hand-offs inside one process are direct (`threading.Condition` and
`concurrent.futures.Future`): microseconds, no sleeping. Changes made by other processes are
noticed by one watcher thread per hub, which runs only while somebody waits. It asks the
backend what finished since the last outcome sequence number it saw, so each check costs one
indexed query whatever the number of waiters.

This module does not decide what a result means (see `invocation`) nor run tasks (`runner`).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import threading
import time
import weakref
from typing import Callable, Optional

from pynenc_lite.backend.base import Backend, Outcome

logger = logging.getLogger(__name__)

# Hubs whose watcher may be running. At exit they are closed (and their watchers joined)
# before the interpreter tears down: a daemon watcher still inside a SQLite call while its
# connection is freed would crash the process on the way out.
_live_hubs: weakref.WeakSet[Hub] = weakref.WeakSet()


@atexit.register
def _close_live_hubs() -> None:
    for hub in list(_live_hubs):
        hub.close(timeout=1.0)


# How often, at most, the watcher lets the backend tidy up after changes (SQLite: a passive
# WAL checkpoint, so that no caller's commit has to do one).
MAINTENANCE_SECONDS = 0.5


class Hub:
    """The meeting point of callers, runners and the watcher for one backend in one process."""

    def __init__(self, backend: Backend, *, watch_timeout_seconds: float = 0.1) -> None:
        self._backend = backend
        self._watch_timeout_seconds = watch_timeout_seconds
        # Guards _futures, _work_listeners, _seq, _watcher and _closed. Notified when
        # somebody starts waiting (so the idle watcher wakes up), and on close.
        self._cond = threading.Condition()
        self._futures: dict[str, concurrent.futures.Future[Outcome]] = {}
        self._work_listeners: list[Callable[[], None]] = []
        self._seq: Optional[int] = None  # newest outcome sequence number the watcher saw
        self._watcher: Optional[threading.Thread] = None
        self._closed = False

    # -- results ----------------------------------------------------------------------------

    def future_for(
        self, invocation_id: str, *, check_stored: bool = True
    ) -> concurrent.futures.Future[Outcome]:
        """The future that receives `invocation_id`'s outcome (shared by all its waiters).

        Register it *before* submitting to skip the stored check (`check_stored=False`);
        registering afterwards needs the check, since the outcome may already be stored.
        """
        self._ensure_seq()
        with self._cond:
            future = self._futures.get(invocation_id)
            if future is None:
                future = self._futures[invocation_id] = concurrent.futures.Future()
                self._ensure_watcher()
                self._cond.notify_all()
        if check_stored:
            for outcome in self._backend.get_outcomes([invocation_id]):
                self.resolve(outcome)
        return future

    def futures_for(
        self, invocation_ids: list[str], *, check_stored: bool = True
    ) -> list[concurrent.futures.Future[Outcome]]:
        """`future_for` for many invocations: one lock, one stored-outcome read for all."""
        self._ensure_seq()
        futures = []
        with self._cond:
            for invocation_id in invocation_ids:
                future = self._futures.get(invocation_id)
                if future is None:
                    future = self._futures[invocation_id] = concurrent.futures.Future()
                futures.append(future)
            self._ensure_watcher()
            self._cond.notify_all()
        if check_stored:
            for outcome in self._backend.get_outcomes(invocation_ids):
                self.resolve(outcome)
        return futures

    def resolve(self, outcome: Outcome) -> None:
        """Hand a final outcome to whoever waits for it (called once the outcome is stored)."""
        with self._cond:
            future = self._futures.pop(outcome.invocation_id, None)
        if future is not None:
            future.set_result(outcome)

    def forget(self, invocation_id: str) -> None:
        """Stop watching for an invocation nobody waits for any more."""
        with self._cond:
            self._futures.pop(invocation_id, None)

    # -- work -------------------------------------------------------------------------------

    def notify_work(self) -> None:
        """Say that work may have appeared (a submission in this process, or a change seen
        by the watcher): every work listener is called."""
        with self._cond:
            listeners = list(self._work_listeners)
        for listener in listeners:
            listener()

    def add_work_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` (quickly, without blocking) whenever work may have appeared.

        While a listener is registered the watcher keeps looking for changes made by other
        processes, so a runner hears about their submissions too.
        """
        self._ensure_seq()
        with self._cond:
            self._work_listeners.append(listener)
            self._ensure_watcher()
            self._cond.notify_all()

    def remove_work_listener(self, listener: Callable[[], None]) -> None:
        """Stop calling `listener` (no error when it was not registered)."""
        with self._cond:
            if listener in self._work_listeners:
                self._work_listeners.remove(listener)

    # -- the watcher ------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Stop the watcher and wait (up to `timeout` seconds) until it has, so the backend
        can be closed safely afterwards. Futures still pending are left unresolved."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            watcher = self._watcher
        # The watcher notices within one watch timeout (it never waits longer per call).
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout)
            if watcher.is_alive():
                logger.warning("the watcher of %r did not stop within %ss", self._backend, timeout)

    def _ensure_seq(self) -> None:
        # The starting point must be read before the first future is registered, so that no
        # outcome stored after that registration can have a smaller number.
        if self._seq is None:
            seq, _ = self._backend.get_finished_since(-1)
            with self._cond:
                if self._seq is None:
                    self._seq = seq

    def _ensure_watcher(self) -> None:
        if self._watcher is None and not self._closed:  # caller holds self._cond
            self._watcher = threading.Thread(
                target=self._watch, name="pynenc-lite-watcher", daemon=True
            )
            _live_hubs.add(self)
            self._watcher.start()

    def _has_waiters(self) -> bool:
        return bool(self._futures) or bool(self._work_listeners) or self._closed

    def _watch(self) -> None:
        token: Optional[int] = None
        failures = 0
        next_maintenance = time.monotonic() + MAINTENANCE_SECONDS
        while True:
            with self._cond:
                self._cond.wait_for(self._has_waiters)
                if self._closed:
                    return
            try:
                if token is None:
                    # The first reading counts as a change: whatever was stored between the
                    # first registration and now must be collected without waiting for
                    # another commit (on an idle system none may come).
                    token = new_token = self._backend.wait_for_change(None, 0)
                    first = True
                else:
                    new_token = self._backend.wait_for_change(token, self._watch_timeout_seconds)
                    first = False
                failures = 0
            except Exception:
                failures += 1
                logger.exception(
                    "watching %r for changes failed (%d in a row)", self._backend, failures
                )
                time.sleep(min(0.05 * failures, 2.0))
                continue
            if new_token == token and not first:
                continue
            token = new_token
            self.notify_work()
            now = time.monotonic()
            if now >= next_maintenance:
                next_maintenance = now + MAINTENANCE_SECONDS
                try:
                    self._backend.maintain()
                except Exception:
                    logger.exception("maintenance of %r failed", self._backend)
            try:
                self._collect_finished()
            except Exception:
                logger.exception("reading finished invocations from %r failed", self._backend)

    def _collect_finished(self) -> None:
        with self._cond:
            nobody_waits = not self._futures
            seq = self._seq if self._seq is not None else -1
        if nobody_waits:
            # Skip ahead. The read happens outside the lock (over TCP it may take a reconnect,
            # and callers must not wait for that); the new starting point is taken only if
            # still nobody waits. A future registered after the read belongs to a call
            # submitted after it, whose outcome gets a larger number; one registered for an
            # outcome stored earlier reads it itself (`check_stored`).
            newest, _ = self._backend.get_finished_since(-1)
            with self._cond:
                if not self._futures:
                    self._seq = newest
                    return
        # The lock is never held across a backend call: resolve/future_for stay responsive.
        new_seq, finished = self._backend.get_finished_since(seq)
        with self._cond:
            self._seq = new_seq
            wanted = [i for i in finished if i in self._futures]
        if wanted:
            for outcome in self._backend.get_outcomes(wanted):
                self.resolve(outcome)
