"""The invocation status model, kept as data in one place.

    REGISTERED ──claim──► PENDING ──start──► RUNNING ──complete──► SUCCESS | FAILED
        ▲   ▲                │                  │
        │   └──hand back─────┴──────────────────┤   (graceful shutdown returns claimed work)
        │                                       │
        └────────── lease expired: claimed again by another worker (PENDING)
    RETRY ──(its time comes)──► claimed like REGISTERED
    any non-final status ──cancel──► CANCELLED

Backends enforce these transitions with conditional updates (`... WHERE status IN (...)`)
built from `sources_of()`, so the rules cannot drift between backends. This module holds no
I/O and no clocks.
"""

from __future__ import annotations

import enum


class InvocationStatus(str, enum.Enum):
    """Where an invocation is in its life. The value is what the database stores."""

    REGISTERED = "REGISTERED"  # accepted and waiting for a worker
    PENDING = "PENDING"  # claimed by a worker (holds a lease), not started yet
    RUNNING = "RUNNING"  # the function is executing on a worker (lease kept by heartbeats)
    RETRY = "RETRY"  # failed, waiting for its retry time before it can be claimed again
    SUCCESS = "SUCCESS"  # finished and returned a value
    FAILED = "FAILED"  # finished by raising, or could not be run at all
    CANCELLED = "CANCELLED"  # cancelled before it finished

    def is_final(self) -> bool:
        """True when the invocation will never change status again."""
        return self in FINAL_STATUSES

    def __str__(self) -> str:
        return self.value


S = InvocationStatus

FINAL_STATUSES = frozenset({S.SUCCESS, S.FAILED, S.CANCELLED})

# Statuses a claim may take an invocation from without any lease check.
CLAIMABLE_STATUSES = frozenset({S.REGISTERED, S.RETRY})

# Statuses that hold a lease: a worker owns them until it finishes or the lease expires.
LEASED_STATUSES = frozenset({S.PENDING, S.RUNNING})

# target status -> statuses it may be entered from. The single source of truth.
ALLOWED_TRANSITIONS: dict[InvocationStatus, frozenset[InvocationStatus]] = {
    S.REGISTERED: LEASED_STATUSES,  # hand back on shutdown
    S.PENDING: CLAIMABLE_STATUSES | LEASED_STATUSES,  # claim; re-claim after lease expiry
    S.RUNNING: frozenset({S.PENDING}),
    S.RETRY: frozenset({S.RUNNING}),
    S.SUCCESS: frozenset({S.RUNNING}),
    S.FAILED: frozenset({S.PENDING, S.RUNNING}),  # PENDING: lost too often, or unloadable
    S.CANCELLED: CLAIMABLE_STATUSES | LEASED_STATUSES,
}


def sources_of(target: InvocationStatus) -> tuple[str, ...]:
    """The stored values an invocation may have just before entering `target`."""
    return tuple(sorted(s.value for s in ALLOWED_TRANSITIONS[target]))


def can_transition(source: InvocationStatus, target: InvocationStatus) -> bool:
    """True when the model allows `source -> target`."""
    return source in ALLOWED_TRANSITIONS[target]
