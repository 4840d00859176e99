"""Closing a SQLite backend while other threads still use it (issue 10.9).

On Python 3.9 the default suite showed a `ResourceWarning` for an unclosed AF_UNIX socket
(a nudge listener or nudger of `backend/sqlite/feed.py`, made by a thread that raced the
close), and one segmentation fault in 17 runs, most likely a SQLite connection closed by one
thread while another was inside a call on it. Each test here makes one such interleaving
happen for certain, by doing the other thread's step at the exact point (a wrapped
constructor, or a thread parked inside a read on events), and checks the outcome: nothing
is closed under a user, nothing made after a close is left open.
"""

from __future__ import annotations

import gc
import secrets
import sqlite3
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest

from pynenc_lite.backend.base import NewInvocation
from pynenc_lite.backend.sqlite import SQLiteBackend, connection, wakeup
from pynenc_lite.backend.tcp.client import RemoteBackend
from pynenc_lite.backend.tcp.engine import BrokerServer
from pynenc_lite.errors import BackendError

WAIT_SECONDS = 10.0

needs_nudges = pytest.mark.skipif(not wakeup.AVAILABLE, reason="nudges are Linux-only")


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[SQLiteBackend]:
    made = SQLiteBackend(str(tmp_path / "closing.sqlite3"))
    yield made
    made.close()


def no_resource_warnings() -> Any:
    """Collect garbage inside a recording context: any socket left open warns here."""

    class Check:
        def __enter__(self) -> Check:
            self.recorder = warnings.catch_warnings(record=True)
            self.caught = self.recorder.__enter__()
            warnings.simplefilter("always")
            return self

        def __exit__(self, *exc: object) -> None:
            gc.collect()
            self.recorder.__exit__(*exc)
            leaks = [w for w in self.caught if issubclass(w.category, ResourceWarning)]
            assert not leaks, [str(w.message) for w in leaks]

    return Check()


def test_close_waits_for_a_read_in_progress_on_another_thread(backend: SQLiteBackend) -> None:
    backend.submit([NewInvocation("a", "app", "t", b"x", 0.0, 0.0)])
    inside, go = threading.Event(), threading.Event()
    results: list[Any] = []

    def slow_read(c: sqlite3.Connection) -> Any:
        first = c.execute("SELECT id FROM invocations").fetchall()
        inside.set()
        assert go.wait(WAIT_SECONDS)
        return first + c.execute("SELECT COUNT(*) FROM invocations").fetchall()

    def reader() -> None:
        try:
            results.append(backend._db.read(slow_read))
        except BaseException as exc:
            results.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    assert inside.wait(WAIT_SECONDS)
    closer = threading.Thread(target=backend.close)
    closer.start()
    closer.join(0.2)
    closing_waited = closer.is_alive()  # it must: the reader is inside a call
    go.set()
    thread.join(WAIT_SECONDS)
    closer.join(WAIT_SECONDS)
    assert results == [[("a",), (1,)]], results
    assert closing_waited
    with pytest.raises(BackendError, match="was closed"):
        backend.get_invocation("a")


def test_a_connection_opened_while_closing_is_closed_not_used(
    backend: SQLiteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_connect = sqlite3.connect

    def connect_then_close(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        backend.close()  # lands between the connect and the bookkeeping
        return conn

    monkeypatch.setattr(connection.sqlite3, "connect", connect_then_close)
    with no_resource_warnings():
        with pytest.raises(BackendError, match="was closed"):
            backend.get_invocation("a")
        monkeypatch.undo()


@needs_nudges
def test_a_listener_that_cannot_be_named_is_closed(tmp_path: Path) -> None:
    path = str(tmp_path / "locked.sqlite3")
    backend = SQLiteBackend(path, busy_timeout_seconds=0.01)
    try:
        token = backend.wait_for_change(None, 0)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            with no_resource_warnings():
                backend.wait_for_change(token, 0.01)  # cannot name its listener: polls
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    finally:
        backend.close()


@needs_nudges
def test_a_listener_made_while_closing_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feed is closed (by another thread) after the waiting thread made its listener but
    before it kept it: nothing closes the feed again, so the listener must not be kept."""
    backend = SQLiteBackend(str(tmp_path / "listener.sqlite3"))
    feeds = [backend._feed]
    real_listener = wakeup.Listener

    def listener_then_close(prefix: str) -> wakeup.Listener:
        made = real_listener(prefix)
        feeds[0].close()  # another thread closes the feed right now
        return made

    token = backend.wait_for_change(None, 0)
    monkeypatch.setattr(wakeup, "Listener", listener_then_close)
    with no_resource_warnings():
        backend.wait_for_change(token, 0.01)
        backend._db.close()  # the rest of SQLiteBackend.close(); the feed was closed above
        del backend
        feeds.clear()


@needs_nudges
def test_a_nudger_made_while_closing_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like the listener: a nudger made by a committing thread while another closes."""
    path = str(tmp_path / "nudge.sqlite3")
    waiter, writer = SQLiteBackend(path), SQLiteBackend(path)
    try:
        token = waiter.wait_for_change(None, 0)
        waiter.wait_for_change(token, 0.001)  # names its listener: a peer to nudge
        feeds = [writer._feed]
        real_nudger = wakeup.Nudger

        def nudger_then_close() -> wakeup.Nudger:
            made = real_nudger()
            feeds[0].close()  # another thread closes the feed right now
            return made

        monkeypatch.setattr(wakeup, "Nudger", nudger_then_close)
        with no_resource_warnings():
            writer.submit([NewInvocation("a", "app", "t", b"x", 0.0, 0.0)])
            writer._db.close()
            del writer
            feeds.clear()
    finally:
        waiter.close()


@needs_nudges
def test_a_closed_listener_ends_a_wait_instead_of_raising() -> None:
    listener = wakeup.Listener("pynenc-lite.test")
    listener.close()
    assert listener.wait(0.01) is True


def test_stopping_a_server_ends_its_database_monitor_first(tmp_path: Path) -> None:
    """The monitor thread watches the SQLite file while a client long-polls; the server
    must not close the backend (its connections and nudge sockets) under it."""
    secret = secrets.token_bytes(32)
    storage = SQLiteBackend(str(tmp_path / "served.sqlite3"))
    server = BrokerServer(("127.0.0.1", 0), storage, secret=secret)
    server.start()
    client = RemoteBackend("127.0.0.1", server.port, secret=secret, retry_seconds=5.0)
    try:
        token = client.wait_for_change(None, 0)
        waiting = threading.Thread(target=lambda: client.wait_for_change(token, 0.3))
        waiting.start()  # starts the server's monitor thread
        waiting.join(WAIT_SECONDS)
        assert any(t.name == "pynenc-lite-feed-monitor" for t in threading.enumerate())
    finally:
        client.close()
        server.stop()
    assert not [t for t in threading.enumerate() if t.name == "pynenc-lite-feed-monitor"]
