"""Small helpers shared by the tests: bounded waiting, thread and file bookkeeping.

Nothing here sleeps to wait for an event: `wait_until` polls a condition with a deadline,
so a bug fails the test instead of hanging it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from pynenc_lite.backend.base import Backend
from pynenc_lite.status import InvocationStatus

# Upper bound for any single wait in the tests; reached only when something is broken.
WAIT_SECONDS = 10.0


def wait_until(
    predicate: Callable[[], object], timeout: float = WAIT_SECONDS, interval: float = 0.002
) -> None:
    """Poll `predicate` until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate!r}")
        time.sleep(interval)


def pynenc_threads() -> set[threading.Thread]:
    """The live threads started by pynenc_lite (their names start with `pynenc-lite-`)."""
    return {t for t in threading.enumerate() if t.name.startswith("pynenc-lite-")}


def alive(threads: Iterable[threading.Thread]) -> list[str]:
    """Names of the given threads that are still alive (for assertion messages)."""
    return sorted(t.name for t in threads if t.is_alive())


def sqlite_files(*folders: Path) -> list[Path]:
    """Every SQLite-looking file (database, -wal, -shm) directly in the given folders."""
    found: list[Path] = []
    for folder in folders:
        for pattern in ("*.sqlite3*", "*.db", "*.db-*"):
            found.extend(folder.glob(pattern))
    return sorted(found)


def run_in_thread(target: Callable[[], object], name: str = "test-helper") -> threading.Thread:
    """Start `target` in a daemon thread and return the thread (join it with a timeout)."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def is_runnable(backend: Backend, app_id: str, now: float) -> bool:
    """Would a claim at `now` find anything? Read from the stored records only (the contract
    has no such question): a waiting invocation that is due, or a running one whose lease
    ran out."""
    for record in backend.list_invocations(app_id, limit=1_000_000):
        waiting = record.status in (InvocationStatus.REGISTERED, InvocationStatus.RETRY)
        if waiting and record.run_at <= now:
            return True
        lease = record.lease_expires_at
        if record.status is InvocationStatus.RUNNING and lease is not None and lease < now:
            return True
    return False
