"""The change feed: waiting until another connection commits, and telling others we did.

    waiting thread (the hub's watcher)              any thread after a commit
    ──────────────────────────────────              ─────────────────────────
    wait_for_change(token): polls                   nudge_peers(): one datagram to every
      PRAGMA data_version, backing off,               other listener named in `listeners`
      and sleeps on its Listener (Linux)              (names re-read at most every 0.2 s)

`PRAGMA data_version` reads no table: it changes on a connection when another connection
commits. `wait_for_change` polls it, starting at `poll_min_seconds` and backing off. On Linux
the waiting thread also names a datagram socket in the `listeners` table and sleeps on it;
the write transaction of every backend method nudges the other listeners (`wakeup.py`), so the
back-off may go up to a second while a commit still wakes the waiter within microseconds.
Without nudges the back-off stops at `poll_max_seconds`. `maintain` checkpoints the WAL
from the same watcher thread, off the callers' path.

What it deliberately does not: read or write invocations, or run the write transactions of
other modules (the backend calls `nudge_peers` after each of them).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from typing import Optional

from pynenc_lite.backend.sqlite import wakeup
from pynenc_lite.backend.sqlite.connection import Database, is_busy
from pynenc_lite.errors import BackendError

logger = logging.getLogger(__name__)

# With nudges (wakeup.py), a waiter polls this rarely: the nudge ends its sleep at once.
_NUDGED_POLL_MAX_SECONDS = 1.0
# Commits closer together than this share one nudge.
_NUDGE_SPACING_SECONDS = 0.002
# How often a committing process re-reads the names of the listeners it nudges.
_LISTENERS_REFRESH_SECONDS = 0.2


class ChangeFeed:
    """Change detection and nudges for one database. Thread-safe; one thread per process
    waits with the listener (the hub's watcher), other waiting threads poll."""

    def __init__(self, db: Database, *, poll_min_seconds: float, poll_max_seconds: float) -> None:
        self._db = db
        self.poll_min_seconds = poll_min_seconds
        self.poll_max_seconds = poll_max_seconds
        # Per waiting thread: its back-off (`poll_interval`) and when it last saw a change
        # (`changed_at`), kept between calls.
        self._local = threading.local()
        # The listener belongs to the one thread that waits with it; the nudger is shared.
        # Guards _listener, _listener_owner, _nudger and _closed: each socket is made
        # outside it and kept only if the feed is still open and nobody kept one first, so
        # a socket made while another thread closes the feed is closed, never left for the
        # garbage collector (a ResourceWarning). Never held during a database call.
        self._lock = threading.Lock()
        self._closed = False
        self._prefix = "pynenc-lite." + hashlib.sha1(db.path.encode()).hexdigest()[:12]
        self._listener: Optional[wakeup.Listener] = None
        self._listener_owner: Optional[tuple[int, int]] = None  # (pid, thread id)
        self._nudger: Optional[wakeup.Nudger] = None
        # The nudge state below is a cache that two racing commits at worst refresh or use
        # twice; no lock.
        self._peers: list[str] = []  # listener names to nudge, as last read
        self._peers_read_at = -1e9
        self._nudged_at = -1e9

    # -- waiting ----------------------------------------------------------------------------

    def wait_for_change(self, token: Optional[int], timeout: float) -> int:
        """See `Backend.wait_for_change`: the token is this thread's `data_version`."""
        local = self._local

        def version() -> int:
            return int(self._db.query("PRAGMA data_version")[0][0])

        current = version()
        if token is None:
            return current
        # The back-off carries over between calls from the same thread: a watcher that
        # saw nothing change keeps polling slowly until something does. With a nudge
        # listener it may poll much more slowly: a nudge ends the sleep at once.
        listener = self._own_listener()
        ceiling = _NUDGED_POLL_MAX_SECONDS if listener is not None else self.poll_max_seconds
        interval = getattr(local, "poll_interval", self.poll_min_seconds)
        deadline = time.monotonic() + timeout
        while current == token:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if listener is not None:
                if listener.wait(min(interval, remaining)):
                    # Under load nudges come with every commit: look at most every
                    # poll_min_seconds, so one look serves many commits.
                    since = time.monotonic() - getattr(local, "changed_at", 0.0)
                    if since < self.poll_min_seconds:
                        time.sleep(self.poll_min_seconds - since)
            else:
                time.sleep(min(interval, remaining))
            interval = min(interval * 1.5, ceiling)
            current = version()
        if current == token:
            local.poll_interval = interval
        else:
            local.poll_interval = self.poll_min_seconds
            local.changed_at = time.monotonic()
        return current

    def _own_listener(self) -> Optional[wakeup.Listener]:
        """This thread's nudge listener, made and named in the database on first use; None
        where nudges are not available or another thread already waits with it."""
        if not wakeup.AVAILABLE or self._db.read_only:
            return None  # a read-only open cannot name a listener in the database
        me = (os.getpid(), threading.get_ident())
        with self._lock:
            if self._closed:
                return None
            owner = self._listener_owner
            if self._listener is not None and owner is not None:
                if owner == me:
                    return self._listener
                if owner[0] == os.getpid():
                    return None  # one listener per process: other threads poll
        listener: Optional[wakeup.Listener] = None
        try:
            listener = wakeup.Listener(self._prefix)
            name = listener.name
            self._db.write(
                lambda c: c.execute(
                    "INSERT OR REPLACE INTO listeners (name, pid, created_at) VALUES (?, ?, ?)",
                    (name, os.getpid(), time.time()),
                )
            )
        except (OSError, BackendError):
            if listener is not None:
                listener.close()
            logger.debug("no nudge listener; waiting polls instead", exc_info=True)
            return None
        self.nudge_peers()  # as after every other write transaction of the backend
        with self._lock:
            kept = not self._closed and not (
                self._listener is not None
                and self._listener_owner is not None
                and self._listener_owner[0] == os.getpid()
            )
            if kept:
                self._listener, self._listener_owner = listener, me
        if not kept:
            # Closed meanwhile (or another thread of this process got there first): its
            # name stays listed until a nudge to it fails and the nudger drops it.
            listener.close()
            return None
        return listener

    def maintain(self) -> None:
        """Checkpoint the WAL, PASSIVE: copies what no reader still needs, never waits for a
        lock, never blocks writers. Runs on this thread's own connection."""
        if self._db.read_only or self._db.memory:
            return  # nothing this process wrote to copy, or no WAL at all

        def checkpoint(conn: sqlite3.Connection) -> Optional[tuple[int, int, int]]:
            try:
                row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.OperationalError as exc:
                if is_busy(exc):
                    return None  # another checkpoint is running: fine
                raise
            return (int(row[0]), int(row[1]), int(row[2]))

        done = self._db.read(checkpoint)
        if done is not None:
            logger.debug(
                "checkpoint of %s: WAL %s pages (busy=%s)", self._db.path, done[1], done[0]
            )

    # -- nudging ----------------------------------------------------------------------------

    def nudge_peers(self) -> None:
        """Tell the other waiting processes that something was committed (best effort)."""
        try:
            now = time.monotonic()
            if now - self._nudged_at < _NUDGE_SPACING_SECONDS:
                # Nudged a moment ago: the others were woken then and, having just seen a
                # change, poll quickly for a while; under load this saves a nudge a commit.
                return
            self._nudged_at = now
            if now - self._peers_read_at > _LISTENERS_REFRESH_SECONDS:
                own = self._listener.name if self._listener is not None else None
                rows = self._db.query("SELECT name FROM listeners")
                self._peers = [row[0] for row in rows if row[0] != own]
                self._peers_read_at = now
            if not self._peers:
                return
            nudger = self._nudger or self._make_nudger()
            if nudger is None:
                return  # closed
            gone = nudger.nudge(self._peers)
            if gone:
                self._peers = [name for name in self._peers if name not in gone]
                self._db.write(
                    lambda c: c.executemany(
                        "DELETE FROM listeners WHERE name = ?", [(name,) for name in gone]
                    )
                )
        except Exception:
            # Nudges only speed waiting up; polling still notices every change.
            logger.debug("nudging other processes failed", exc_info=True)

    def _make_nudger(self) -> Optional[wakeup.Nudger]:
        """The shared nudger, made now if no other thread made it first; None once closed."""
        made = wakeup.Nudger()
        with self._lock:
            if not self._closed and self._nudger is None:
                self._nudger = made
            nudger = self._nudger
        if nudger is not made:
            made.close()
        return nudger

    def close(self) -> None:
        """Drop this process's listener name from the database and close the sockets (a
        thread still waiting on the listener wakes up; see `wakeup.Listener.wait`)."""
        with self._lock:
            self._closed = True
            listener, owner = self._listener, self._listener_owner
            nudger = self._nudger
            self._listener = self._nudger = None
        if listener is not None and owner is not None:
            if owner[0] == os.getpid():
                try:
                    self._db.write(
                        lambda c: c.execute(
                            "DELETE FROM listeners WHERE name = ?", (listener.name,)
                        )
                    )
                except Exception:
                    pass  # others drop the name when a nudge to it fails
            listener.close()
        if nudger is not None:
            nudger.close()
