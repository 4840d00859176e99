"""Nudges between processes (backend/sqlite/wakeup.py and feed.py): a commit wakes a
backed-off waiter at once, and listener names are cleaned up. Linux only (abstract Unix
sockets)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pynenc_lite.backend.base import NewInvocation
from pynenc_lite.backend.sqlite import SQLiteBackend, wakeup

pytestmark = pytest.mark.skipif(not wakeup.AVAILABLE, reason="nudges need Linux")


def new(invocation_id: str) -> NewInvocation:
    return NewInvocation(invocation_id, "app", "t", b"x", 0.0, 0.0)


def listener_names(backend: SQLiteBackend) -> list[str]:
    return [row[0] for row in backend._db.query("SELECT name FROM listeners")]


def test_a_commit_wakes_a_backed_off_waiter_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "w.sqlite3")
    waiter_side, committer = SQLiteBackend(path), SQLiteBackend(path)
    ready = threading.Event()
    took: list[float] = []

    def waiter() -> None:
        token = waiter_side.wait_for_change(None, 0)
        waiter_side.wait_for_change(token, 0.01)  # names its listener in the database
        waiter_side._feed._local.poll_interval = 1.0  # as after a long idle: the slowest polling
        ready.set()
        start = time.monotonic()
        waiter_side.wait_for_change(token, 10.0)
        took.append(time.monotonic() - start)

    thread = threading.Thread(target=waiter)
    thread.start()
    try:
        assert ready.wait(10)
        committer.submit([new("a")])
        thread.join(10)
        assert took and took[0] < 0.5, took  # polling alone would sleep a whole second
    finally:
        thread.join(10)
        waiter_side.close()
        committer.close()


def test_listener_names_are_removed_on_close_and_when_dead(tmp_path: Path) -> None:
    path = str(tmp_path / "w.sqlite3")
    first, second = SQLiteBackend(path), SQLiteBackend(path)
    token = first.wait_for_change(None, 0)
    first.wait_for_change(token, 0.01)
    name = first._feed._listener.name if first._feed._listener is not None else ""
    assert listener_names(second) == [name]
    first.close()
    assert listener_names(second) == []
    # A listener whose process died without closing: the next nudge to it drops the name.
    second._write_txn(
        lambda c: c.execute(
            "INSERT INTO listeners (name, pid, created_at) VALUES ('pynenc-lite.gone', 1, 0)"
        )
    )
    second._feed._peers_read_at = second._feed._nudged_at = -1e9
    second.submit([new("b")])
    assert listener_names(second) == []
    second.close()
