"""The thread runner's work pool: the state its threads share, and the worker-thread loop.

    dispatcher ── mark_claimed ──► queue ──► worker thread: run_claimed ──► finished
         ▲                                                                     │
         └──────────── take_batch ◄── outcomes waiting to be stored ◄──────────┘
    upkeep (heartbeats, time limits) ── abandon / add_outcome / ask_hard_stop

`WorkPool` holds everything the dispatcher, the worker threads and the upkeep of one run
share, under ONE condition variable: the outcomes waiting to be stored, how many threads are
idle or busy, the table of running entries, the hint that work may be waiting, the stop
flags and the reason for a hard stop. It is changed through its methods; only the dispatcher
also reads its fields directly, holding `cond`, to decide when to wake (and sets `work_hint`
itself when a timer ran out).

A runner makes a new pool for every `run()`. A thread left running a task by an earlier run
(abandoned after its grace period) keeps the pool of that run, so it never touches the
queue or the counters of a later one.

It does not talk to storage (the dispatcher and the upkeep do) and does not decide when to
claim or store (the dispatcher does); worker threads never touch the backend.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, Iterable, Optional

from pynenc_lite.backend.base import ClaimedInvocation, Outcome
from pynenc_lite.execution import DEFAULT_OPTIONS, run_claimed, running_for
from pynenc_lite.runtime import Runtime

logger = logging.getLogger(__name__)


class RunningEntry:
    """One claimed invocation handed to a worker thread. `abandoned` changes only under the
    pool's condition."""

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


class WorkPool:
    """The state shared by one run's dispatcher, worker threads and upkeep.

    Args:
        threads: how many worker threads the run has (all idle at first).
    """

    def __init__(self, threads: int) -> None:
        # Guards every field below. A re-entrant lock: the dispatcher holds it through its
        # wait and calls the methods below, which take it too. Notified when an outcome is
        # ready or a thread is idle again (finished), when work may have appeared
        # (hint_work), when a stop is asked for (stop, force_stop, ask_hard_stop) and when a
        # worker thread ends (thread_exited).
        self.cond = threading.Condition()
        self.outcomes: list[Outcome] = []  # waiting to be stored by the dispatcher
        self.idle = threads  # threads waiting for a claim
        self.active = 0  # threads running a task (abandoned ones included, until they end)
        self.exited = 0  # threads that ended
        self.running: dict[str, RunningEntry] = {}  # invocation id -> what runs it
        self.work_hint = True  # work may be waiting: worth a claim when a thread is idle
        self.stopping = False  # no more claims; the run ends once settled
        self.force = False  # stop without waiting for running tasks
        self.hard_stop_reason = ""  # set: the process must end (process runner children)
        # Claims for the worker threads; None tells one thread to end. Not under `cond`:
        # the dispatcher puts, the worker threads get.
        self._queue: queue.SimpleQueue[Optional[RunningEntry]] = queue.SimpleQueue()

    # -- worker threads ---------------------------------------------------------------------

    def work(self, runtime: Runtime, clock: Callable[[], float]) -> None:
        """The loop of one worker thread: take the next claim, run it, hand in its outcome;
        return when told to end."""
        claims = self._queue
        while True:
            entry = claims.get()
            if entry is None:
                self.thread_exited()
                return
            outcome: Optional[Outcome] = None
            try:
                outcome = run_claimed(runtime, entry.claimed, entry.info, clock)
            except BaseException:  # a bug here must not cost the pool a thread
                logger.exception(
                    "running invocation %s failed inside pynenc_lite; its lease will expire "
                    "and it runs again",
                    entry.claimed.invocation_id,
                )
            self.finished(entry, outcome)

    def finished(self, entry: RunningEntry, outcome: Optional[Outcome]) -> None:
        """A worker thread is done with `entry`: keep its outcome (unless the entry was
        abandoned) for the dispatcher to store, and count the thread idle again."""
        with self.cond:
            invocation_id = entry.claimed.invocation_id
            if self.running.get(invocation_id) is entry:
                # (A retry of an abandoned attempt may hold the id by now: not ours.)
                del self.running[invocation_id]
            if outcome is not None and not entry.abandoned:
                self.outcomes.append(outcome)
            self.idle += 1
            self.active -= 1
            self.cond.notify_all()

    def thread_exited(self) -> None:
        """A worker thread ends (told to by `end_threads`)."""
        with self.cond:
            self.exited += 1
            self.cond.notify_all()

    # -- the dispatcher ---------------------------------------------------------------------

    def hint_work(self) -> None:
        """Work may be waiting (a submission, another process's commit, a full claim)."""
        with self.cond:
            self.work_hint = True
            self.cond.notify_all()

    def take_batch(self, store: bool) -> tuple[list[Outcome], int, str]:
        """Take what the dispatcher acts on in one pass.

        Args:
            store: whether to take the waiting outcomes (False while a failed store waits
                for its retry).

        Returns:
            the outcomes to store, how many claims to ask for (the idle threads, if work
            may be waiting and the run is not stopping; the hint is used up), and the
            hard-stop reason ("" for none).
        """
        with self.cond:
            outcomes: list[Outcome] = []
            if store:
                outcomes, self.outcomes = self.outcomes, []
            want = 0 if self.stopping else self.idle
            if want and self.work_hint:
                self.work_hint = False  # a hint arriving from now on asks again
            else:
                want = 0
            return outcomes, want, self.hard_stop_reason

    def idle_for_claims(self) -> int:
        """Idle threads to claim for (0 once stopping). Read without the lock: only the
        dispatcher makes threads busy, so for it the count can only have grown since."""
        return 0 if self.stopping else self.idle

    def put_back(self, outcomes: list[Outcome]) -> None:
        """Outcomes whose store failed: keep them, first in line, for the next try."""
        with self.cond:
            self.outcomes[:0] = outcomes

    def mark_claimed(self, entries: list[RunningEntry]) -> None:
        """Record freshly claimed entries as running and hand them to the worker threads."""
        with self.cond:
            self.idle -= len(entries)
            self.active += len(entries)
            for entry in entries:
                earlier = self.running.get(entry.claimed.invocation_id)
                if earlier is not None:
                    # Our own lease ran out (heartbeats stalled) and we took it back: the
                    # earlier attempt's outcome no longer counts.
                    earlier.abandoned = True
                    earlier.info.cancelled.set()
                self.running[entry.claimed.invocation_id] = entry
        for entry in entries:
            self._queue.put(entry)

    # -- upkeep -----------------------------------------------------------------------------

    def held_ids(self) -> list[str]:
        """Ids whose leases we still need: running, or finished with the outcome not stored
        yet (a slow or failing store)."""
        with self.cond:
            return [*self.running, *(o.invocation_id for o in self.outcomes)]

    def abandon(self, invocation_ids: Iterable[str]) -> list[RunningEntry]:
        """Give up the running entries of these ids (their outcome is decided elsewhere):
        drop them from the table, so a retry under the same id is tracked on its own, and
        flag them for their tasks to notice. The threads run on; their outcomes are dropped.

        Returns:
            the entries given up (ids not running, or already given up, are skipped).
        """
        with self.cond:
            given_up = []
            for invocation_id in invocation_ids:
                entry = self.running.get(invocation_id)
                if entry is None or entry.abandoned:
                    continue
                entry.abandoned = True
                del self.running[invocation_id]
                entry.info.cancelled.set()
                given_up.append(entry)
            return given_up

    def abandon_late(self, now: float) -> list[RunningEntry]:
        """`abandon` every entry past its deadline; returns them."""
        with self.cond:
            late = [
                invocation_id for invocation_id, r in self.running.items()
                if r.deadline is not None and r.deadline <= now
            ]
            return self.abandon(late) if late else []

    def add_outcome(self, outcome: Outcome) -> None:
        """An outcome decided outside the worker threads (a time limit), to be stored."""
        with self.cond:
            self.outcomes.append(outcome)

    def ask_hard_stop(self, reason: str) -> None:
        """The process must end (process runner children): the dispatcher does it."""
        with self.cond:
            self.hard_stop_reason = reason
            self.cond.notify_all()

    # -- stopping ---------------------------------------------------------------------------

    def stop(self) -> None:
        """No more claims; the dispatcher returns once running tasks are done."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def force_stop(self) -> None:
        """Stop waiting for running tasks (a second signal)."""
        with self.cond:
            self.force = True
            self.cond.notify_all()

    def hand_back_all(self) -> int:
        """Mark everything still running abandoned (the runner hands it back to the queue
        next, so a late outcome must be dropped). Returns how many tasks still run."""
        with self.cond:
            for entry in self.running.values():
                entry.abandoned = True
            return self.active

    def end_threads(self, threads: int, still_running: int, timeout: float) -> None:
        """Tell every worker thread to end, and wait up to `timeout` seconds for the idle
        ones to do so (those still inside a task end when it returns)."""
        for _ in range(threads):
            self._queue.put(None)
        with self.cond:
            self.cond.wait_for(lambda: self.exited >= threads - still_running, timeout)
