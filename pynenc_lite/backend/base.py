"""The backend protocol: the only way the app and the runners touch stored state.

(The records built once per call — NewInvocation, ClaimedInvocation, Outcome — are plain
dataclasses rather than frozen ones: a frozen dataclass is several times slower to build,
and these are built on the hot path. Treat them as read-only all the same.)

A backend stores invocations and their outcomes and hands out leases on them. Each method is
one atomic unit (one SQL transaction, one network request). It only ever sees plain data —
ids, task names, bytes, numbers and status strings — and never a callable: it does not pickle
or unpickle anything, so it can sit behind a network server that must not run user code.

What it does not do: decide *how* to wait in-process (that is `pynenc_lite.waiting`), run
tasks (`pynenc_lite.runner`), or know about the app's configuration object.

Times (`now`) are float seconds since the epoch and are passed in by the caller, so tests can
drive leases and expiry with a fake clock.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Optional, Sequence

from pynenc_lite.status import InvocationStatus


@dataclasses.dataclass
class NewInvocation:
    """A call to be stored: `args` is the pickled `(args, kwargs)` pair, opaque here."""

    invocation_id: str
    app_id: str
    task_name: str
    args: bytes
    run_at: float  # earliest time a worker may claim it
    created_at: float
    # Concurrency control (see options.py): a call whose registration key matches an
    # invocation still waiting to run is not stored again; at most `running_limit`
    # invocations sharing a running key run at once.
    registration_key: Optional[str] = None
    running_key: Optional[str] = None
    running_limit: int = 1
    # How many times its worker may vanish before it FAILS (the task's option); None: the
    # claiming runner's `max_lost_attempts`.
    max_lost_attempts: Optional[int] = None
    # What a claim does with it while its running key is at its limit: True, leave it
    # waiting for its turn; False, drop it (CONCURRENCY_CONTROLLED_FINAL, it never runs).
    # The task option's default is pynenc's False, and `invoke` always passes it; this
    # default is what a record that says nothing asks for: to wait, as every call once did.
    reroute_on_concurrency_control: bool = True


@dataclasses.dataclass
class ClaimedInvocation:
    """An invocation a worker now holds a lease on."""

    invocation_id: str
    task_name: str
    args: bytes
    attempt: int  # 1 on the first run; counts every start, including after a lost worker
    retries: int  # how many retries were already used (RETRY outcomes so far)


@dataclasses.dataclass
class Outcome:
    """How an invocation ended.

    `payload` is the pickled return value (SUCCESS) or the pickled exception (FAILED), or
    None when there is nothing loadable; `error` is a readable `Type: message` line and
    `traceback` the worker's traceback text, both readable without unpickling anything.
    A RETRY outcome is not final: it carries the failure and `retry_at`, when the invocation
    may run again.
    """

    invocation_id: str
    status: InvocationStatus
    payload: Optional[bytes] = None
    error: Optional[str] = None
    traceback: Optional[str] = None
    retry_at: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class InvocationRecord:
    """Everything stored about one invocation except its payloads, for inspection."""

    invocation_id: str
    app_id: str
    task_name: str
    status: InvocationStatus
    attempts: int  # how many times it was claimed (started)
    lost_attempts: int  # how many times its worker vanished while holding it
    retries: int  # how many times it was put back to RETRY after a failure
    owner: Optional[str]
    lease_expires_at: Optional[float]
    run_at: float
    created_at: float
    started_at: Optional[float]
    finished_at: Optional[float]
    error: Optional[str]  # the last failure, also while waiting for a retry
    traceback: Optional[str] = None  # the worker's traceback text of that failure


@dataclasses.dataclass(frozen=True)
class HistoryEntry:
    """One status change of an invocation."""

    status: InvocationStatus
    at: float
    worker_id: Optional[str]  # the worker that caused it, when one did


@dataclasses.dataclass(frozen=True)
class WorkerStatus:
    """A worker as the database last heard of it."""

    worker_id: str
    hostname: str
    pid: int
    threads: int
    started_at: float
    last_heartbeat_at: float


@dataclasses.dataclass(frozen=True)
class AppStats:
    """A snapshot of one app's queue, for `python -m pynenc_lite status`."""

    app_id: str
    counts_by_status: dict[str, int]
    counts_by_task: dict[str, dict[str, int]]  # task name -> status -> count
    oldest_waiting_since: Optional[float]  # run_at of the oldest runnable REGISTERED/RETRY
    workers: list[WorkerStatus]
    finished_last_minute: int


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """A runner announcing itself in heartbeats."""

    worker_id: str
    app_id: str
    hostname: str
    pid: int
    threads: int
    started_at: float


class Backend(abc.ABC):
    """Storage for invocations. Implementations: SQLite (`backend.sqlite`), remote (TCP)."""

    # -- callers ----------------------------------------------------------------------------

    @abc.abstractmethod
    def submit(self, invocations: Sequence[NewInvocation]) -> list[str]:
        """Store new invocations as REGISTERED, all in one atomic unit.

        Returns the id that stands for each one: its own, or — when its registration key
        matches an invocation of the app still waiting to run — that invocation's id (and
        nothing new is stored for it).
        """

    @abc.abstractmethod
    def get_outcomes(self, invocation_ids: Sequence[str]) -> list[Outcome]:
        """Outcomes of those of the given invocations that are final (others are left out)."""

    @abc.abstractmethod
    def get_finished_since(self, seq: int) -> tuple[int, list[str]]:
        """Ids of invocations that became final after the outcome sequence number `seq`.

        Returns the newest sequence number and the ids, oldest first. `seq=-1` returns the
        current sequence number and no ids (a starting point for a watcher).
        """

    @abc.abstractmethod
    def get_invocation(self, invocation_id: str) -> Optional[InvocationRecord]:
        """The stored record, or None when there is no such invocation."""

    @abc.abstractmethod
    def count_live_workers(self, app_id: str, since: float) -> int:
        """How many workers of `app_id` sent a heartbeat at or after `since`."""

    # -- runners ----------------------------------------------------------------------------

    @abc.abstractmethod
    def claim(
        self,
        *,
        app_id: str,
        worker_id: str,
        limit: int,
        now: float,
        lease_seconds: float,
        max_lost_attempts: int,
    ) -> list[ClaimedInvocation]:
        """Lease up to `limit` runnable invocations of `app_id` to `worker_id` and mark them
        RUNNING (a claim is a start: runners claim only for idle threads).

        Runnable: REGISTERED or RETRY whose `run_at <= now`, or RUNNING whose lease expired
        (its worker vanished). A waiting one whose running key already has its
        `running_limit` invocations RUNNING (counting those this claim starts) is skipped
        and stays waiting, or, when its `reroute_on_concurrency_control` is False, becomes
        CONCURRENCY_CONTROLLED_FINAL in the same atomic unit (a final outcome, with no
        payload and an error line naming the option). An expired one that was already lost
        as many times as its own `NewInvocation.max_lost_attempts` allows (or, where it has
        none, this call's `max_lost_attempts`) is FAILED instead of being handed out again,
        with the error line of `errors.WorkerLostError.error_line`. Nothing is ever deleted
        by a claim. A claim that finds nothing should be cheap (SQLite answers it with a
        read, no write lock).
        """

    @abc.abstractmethod
    def complete_many(self, outcomes: Sequence[Outcome], worker_id: str, now: float) -> list[bool]:
        """Record outcomes, in one atomic unit, for those `worker_id` still holds: final ones
        (SUCCESS, FAILED), or RETRY, which queues the invocation again at `retry_at`.

        Returns one flag per outcome: False where the claim was lost meanwhile (its lease
        expired and the invocation was taken over); such a late outcome changes nothing, so
        every invocation has exactly one outcome.
        """

    @abc.abstractmethod
    def release(self, worker_id: str, now: float) -> int:
        """Hand every invocation `worker_id` holds back to REGISTERED (graceful shutdown),
        recording the change at `now`. Returns how many were handed back."""

    @abc.abstractmethod
    def expire_leases(self, worker_id: str) -> int:
        """End every lease `worker_id` holds now, because that worker is known to be dead.

        Its invocations are then recovered by the next claim exactly as if the leases had
        run out (counting a lost attempt). Returns how many leases were ended.
        """

    @abc.abstractmethod
    def heartbeat(
        self, worker: WorkerInfo, running: Sequence[str], now: float, lease_seconds: float
    ) -> list[str]:
        """Record that `worker` is alive and extend the leases of the `running` invocations
        it still holds to `now + lease_seconds` (a lease it holds but does not list runs out).

        Returns those of the `running` invocation ids the worker no longer holds (cancelled,
        or taken over after its lease expired), so the runner can stop or flag them.
        """

    @abc.abstractmethod
    def cancel(self, invocation_id: str, now: float) -> bool:
        """Cancel an invocation that is not final yet (waiting, delayed, or running).

        Returns False, changing nothing, when it already finished (or does not exist).
        A running invocation's worker learns of it at its next heartbeat.
        """

    @abc.abstractmethod
    def get_cron_moment(self, app_id: str, task_name: str) -> Optional[float]:
        """The latest cron moment already handled for a task, or None if never seen."""

    @abc.abstractmethod
    def advance_cron(
        self,
        app_id: str,
        task_name: str,
        expected: Optional[float],
        moment: float,
        invocations: Sequence[NewInvocation],
    ) -> bool:
        """Atomically move a task's handled cron moment from `expected` to `moment` and store
        `invocations` (possibly none). Only the first of several workers doing this for the
        same `expected` succeeds; the others get False and store nothing — so each moment
        fires exactly once however many workers run."""

    @abc.abstractmethod
    def remove_worker(self, worker_id: str) -> None:
        """Forget a worker that stopped cleanly."""

    @abc.abstractmethod
    def next_run_at(self, app_id: str) -> Optional[float]:
        """The earliest `run_at` of the app's waiting (REGISTERED or RETRY) invocations, so
        an idle runner can wake when a delayed run or a retry comes due; None if none wait."""

    # -- waiting ----------------------------------------------------------------------------

    @abc.abstractmethod
    def wait_for_change(self, token: Optional[int], timeout: float) -> int:
        """Block until the stored data may have changed since `token`, or `timeout` passes.

        Returns a new token to pass next time. With `token=None` returns at once with a
        starting token. Spurious returns are allowed; missed changes are not. A token is only
        meaningful to the thread that got it (SQLite's change counter is per connection, and
        each thread has its own): one watcher thread per process calls this.
        """

    # -- operations -------------------------------------------------------------------------

    @abc.abstractmethod
    def get_history(self, invocation_id: str) -> list[HistoryEntry]:
        """Every status change of the invocation, oldest first (empty if unknown)."""

    @abc.abstractmethod
    def get_args(self, invocation_id: str) -> Optional[bytes]:
        """The pickled `(args, kwargs)` of an invocation, for inspection; None if unknown."""

    @abc.abstractmethod
    def list_invocations(
        self,
        app_id: str,
        *,
        status: Optional[InvocationStatus] = None,
        task_name: Optional[str] = None,
        limit: int = 50,
    ) -> list[InvocationRecord]:
        """The app's newest invocations first, optionally of one status and/or task."""

    @abc.abstractmethod
    def get_stats(self, app_id: str, now: float) -> AppStats:
        """Counts by status and task, the oldest waiting work, workers, recent throughput."""

    @abc.abstractmethod
    def count_invocations_by_app(self) -> dict[str, int]:
        """How many invocations each app has stored, for every app in this storage (apps
        with none are left out): several apps may share one file or server, and an operator
        who asks about the wrong one should be told which ones are there."""

    @abc.abstractmethod
    def requeue(
        self,
        app_id: str,
        *,
        invocation_ids: Optional[Sequence[str]] = None,
        task_name: Optional[str] = None,
        now: float,
    ) -> int:
        """Put FAILED invocations of the app (those ids, or all of a task, or all) back to
        REGISTERED, keeping their history. Returns how many were requeued."""

    @abc.abstractmethod
    def purge(self, app_id: str) -> int:
        """Delete everything stored for the app (invocations, history, cron state, workers).
        Returns how many invocations were deleted."""

    @abc.abstractmethod
    def purge_expired(self, app_id: str, finished_before: float, limit: int) -> int:
        """Delete up to `limit` final invocations of the app that finished before
        `finished_before`, with their history. Returns how many were deleted."""

    def maintain(self) -> None:  # noqa: B027 - an optional hook; doing nothing is right
        """Housekeeping that is better done off the callers' path (called by the hub's
        watcher about twice a second while there is activity). Default: nothing."""

    def close(self) -> None:  # noqa: B027 - an optional hook; doing nothing is right
        """Release connections and sockets held by this backend (idempotent)."""

    def set_retry_budget(self, seconds: Optional[float]) -> None:  # noqa: B027 - optional hook
        """Make calls started from now on give up on unreachable storage after about
        `seconds` of retrying (None: back to the backend's own setting). A stopping runner
        uses it so an outage cannot hold its stop up: what it cannot hand back keeps its
        lease, which runs out. A local hook, never sent to a server. Default: nothing (SQLite
        does not retry an unreachable file)."""
