"""The invocation status model, kept as data in one place.

    REGISTERED ──claim──► RUNNING ──complete──► SUCCESS | FAILED
        ▲                    │  ▲
        └──── hand back ─────┘  └── lease expired: claimed again by another worker
    RETRY ──(its time comes)──► claimed like REGISTERED
    REGISTERED/RETRY ──claim, its running limit reached──► CONCURRENCY_CONTROLLED_FINAL
                       (only a call whose task has reroute_on_concurrency_control=False;
                        the others stay where they are and wait their turn)
    any non-final status ──cancel──► CANCELLED
    FAILED ──requeue (admin)──► REGISTERED

A claim starts the invocation in the same step: runners claim only as many invocations as
they have idle threads, so there is no "claimed but waiting" state worth a transaction.

Backends enforce these transitions with conditional updates (`... WHERE status IN (...)`)
built from `sources_of()`, so the rules cannot drift between backends. This module holds no
I/O and no clocks.
"""

from __future__ import annotations

import enum


class InvocationStatus(str, enum.Enum):
    """Where an invocation is in its life. The value is what the database stores."""

    REGISTERED = "REGISTERED"  # accepted and waiting for a worker
    RUNNING = "RUNNING"  # claimed by a worker and running there (lease kept by heartbeats)
    RETRY = "RETRY"  # failed, waiting for its retry time before it can be claimed again
    SUCCESS = "SUCCESS"  # finished and returned a value
    FAILED = "FAILED"  # finished by raising, or could not be run at all
    CANCELLED = "CANCELLED"  # cancelled before it finished
    # Never ran: its running limit was reached when a claim came to it, and its task does
    # not reroute (pynenc's name; reading its result raises ConcurrencyControlledError).
    CONCURRENCY_CONTROLLED_FINAL = "CONCURRENCY_CONTROLLED_FINAL"

    def is_final(self) -> bool:
        """True when the invocation will never change status again."""
        return self in FINAL_STATUSES

    def __str__(self) -> str:
        return self.value


S = InvocationStatus

FINAL_STATUSES = frozenset({S.SUCCESS, S.FAILED, S.CANCELLED, S.CONCURRENCY_CONTROLLED_FINAL})

# Statuses a claim may take an invocation from without any lease check.
CLAIMABLE_STATUSES = frozenset({S.REGISTERED, S.RETRY})

# Statuses that hold a lease: a worker owns them until it finishes or the lease expires.
LEASED_STATUSES = frozenset({S.RUNNING})

# target status -> statuses it may be entered from. The single source of truth.
ALLOWED_TRANSITIONS: dict[InvocationStatus, frozenset[InvocationStatus]] = {
    S.REGISTERED: LEASED_STATUSES | {S.FAILED},  # hand back on shutdown; admin requeue
    S.RUNNING: CLAIMABLE_STATUSES | LEASED_STATUSES,  # claim; re-claim after lease expiry
    S.RETRY: LEASED_STATUSES,  # failed with retries left: queued again at its retry time
    S.SUCCESS: LEASED_STATUSES,
    S.FAILED: LEASED_STATUSES,  # raised, could not be run, or its worker was lost too often
    S.CANCELLED: CLAIMABLE_STATUSES | LEASED_STATUSES,
    S.CONCURRENCY_CONTROLLED_FINAL: CLAIMABLE_STATUSES,  # a claim that found its limit reached
}


def sources_of(target: InvocationStatus) -> tuple[str, ...]:
    """The stored values an invocation may have just before entering `target`."""
    return tuple(sorted(s.value for s in ALLOWED_TRANSITIONS[target]))
