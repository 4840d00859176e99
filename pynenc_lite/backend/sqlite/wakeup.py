"""Nudges between processes on one host: a datagram that says "I just committed".

    waiting process (its hub's watcher)              committing process
    ───────────────────────────────────              ──────────────────
    binds an abstract Unix socket                    after COMMIT: one datagram to every
      \\0pynenc-lite.<file>.<pid>.<random>             listener named in the database
    names it in the database (`listeners`)           (the names are re-read at most every
    sleeps in select() on it, not in time.sleep()     0.2 s; a dead one is dropped)

The database's own change check (`PRAGMA data_version`) stays the source of truth: a nudge
only ends a sleep early. A missed nudge (a listener too new to be known yet, a full socket
buffer) costs one polling interval, never a lost change. With nudges a waiter can poll
rarely (so an idle worker costs almost nothing) and still wakes within microseconds of a
commit by another process.

Abstract Unix sockets exist only on Linux; elsewhere `AVAILABLE` is False and waiting polls
as before. This module does no SQL: `feed.py` stores and reads the names.
"""

from __future__ import annotations

import os
import secrets
import select
import socket
import sys
from typing import Iterable

AVAILABLE = sys.platform.startswith("linux") and hasattr(socket, "AF_UNIX")


def _address(name: str) -> str:
    return "\0" + name  # the abstract namespace: no file, gone with the process


class Listener:
    """A socket this process waits on; `name` is what other processes send to."""

    def __init__(self, prefix: str) -> None:
        self.name = f"{prefix}.{os.getpid()}.{secrets.token_hex(4)}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.bind(_address(self.name))
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise

    def wait(self, timeout: float) -> bool:
        """Sleep until nudged or `timeout` seconds pass. Returns True when nudged, and when
        the listener was closed (by another thread): the caller then looks and finds out."""
        try:
            ready, _, _ = select.select([self._sock], [], [], max(0.0, timeout))
        except (ValueError, OSError):  # closed before or during the wait
            return True
        if not ready:
            return False
        try:
            while self._sock.recv(64):  # several nudges may be queued: one wake is enough
                pass
        except OSError:  # BlockingIOError: all read; or closed meanwhile
            pass
        return True

    def close(self) -> None:
        self._sock.close()


class Nudger:
    """Sends nudges; safe to share between threads (each send is one system call)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def nudge(self, names: Iterable[str]) -> list[str]:
        """Nudge every named listener. Returns the names nobody listens on any more."""
        gone = []
        for name in names:
            try:
                self._sock.sendto(b"!", _address(name))
            except (ConnectionRefusedError, FileNotFoundError):
                gone.append(name)  # its process ended without saying goodbye
            except OSError:
                pass  # a full buffer means nudges are already waiting there
        return gone

    def close(self) -> None:
        self._sock.close()
