"""The library's own exceptions.

Every error pynenc_lite raises for its own reasons derives from `PynencError`, so one
`except PynencError:` catches them all. A task's own exception is *not* wrapped: it is
re-raised at the call site with its original type (see `pynenc_lite.serializer`).

Errors that describe a wait that ran out also derive from the builtin `TimeoutError`, and a
cancelled invocation's error from `concurrent.futures.CancelledError`, so code written for
`concurrent.futures` keeps working.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any, Optional


class PynencError(Exception):
    """Root of every error raised by pynenc_lite itself."""


class ConfigError(PynencError, ValueError):
    """A configuration field is unknown or has a value of the wrong kind."""


class BackendError(PynencError):
    """The storage behind the queue could not be opened, read or written."""


class InvocationTimeoutError(PynencError, TimeoutError):
    """A wait for an invocation's result ran out of time (the invocation goes on)."""


class InvocationCancelledError(PynencError, concurrent.futures.CancelledError):
    """The invocation was cancelled before it produced a result."""


class TaskNotFoundError(PynencError):
    """A worker could not find the function for a task name (not importable there)."""


class RemoteTaskError(PynencError):
    """A task failed on a worker and its exception could not be brought back as itself.

    Raised when the original exception could not be pickled on the worker or unpickled in the
    caller; the message names the original type and message, and `remote_traceback` holds the
    worker's traceback text.
    """

    def __init__(self, message: str, remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[Any, ...]:
        # Travels from worker to caller with its traceback text.
        return type(self), (str(self), self.remote_traceback)


class SerializationError(PynencError):
    """Arguments or a result could not be pickled or unpickled."""


class WorkerLostError(PynencError):
    """The worker running the invocation vanished (crashed, killed, or its host stopped) too
    many times in a row, so the invocation was failed instead of being tried again.

    A backend records this failure without pickling anything, as a plain error line; this
    class owns that line's format in both directions (`error_line` writes it, `from_error_line`
    reads it back), so the backends and the caller's decoding cannot drift apart.
    """

    @classmethod
    def error_line(cls, message: str) -> str:
        """The stored `error` text of a lost-worker failure with this message."""
        return f"{cls.__name__}: {message}"

    @classmethod
    def from_error_line(cls, error: Optional[str]) -> Optional[WorkerLostError]:
        """The error a caller receives for a stored error line, or None when the line is
        not a lost-worker failure."""
        prefix = f"{cls.__name__}: "
        if error is None or not error.startswith(prefix):
            return None
        return cls(error[len(prefix):])


class RetryError(PynencError):
    """Raise inside a task to ask for another attempt (within the task's `max_retries`).

    Args:
        message: why the task wants to be retried.
        delay_seconds: wait this long before the retry instead of the task's back-off delay.
    """

    def __init__(
        self, message: str = "retry requested", delay_seconds: Optional[float] = None
    ) -> None:
        super().__init__(message)
        self.delay_seconds = delay_seconds

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self), self.delay_seconds)


class TaskTimeLimitError(PynencError, TimeoutError):
    """A task ran longer than its `time_limit_seconds` and was failed (the message names the
    task and the limit). On a process runner its process was ended; on a thread runner the
    thread cannot be stopped and runs on, but its result is discarded."""


class CronError(PynencError, ValueError):
    """A cron expression is malformed; the message names the field and the accepted values."""


class TargetError(PynencError):
    """A target (`module:attr`, a module, or a file) does not name an importable app; the
    message says what to change."""


class ConcurrencyControlledError(PynencError, KeyError):
    """The invocation never ran: running concurrency control held it back and its task has
    `reroute_on_concurrency_control=False`, so it was dropped (pynenc's
    CONCURRENCY_CONTROLLED_FINAL). A KeyError, as pynenc raises for such a result."""

    def __str__(self) -> str:  # KeyError would show the message's repr
        return str(self.args[0]) if self.args else ""


class InvocationNotFoundError(PynencError, LookupError):
    """No such invocation is stored: its result expired (`result_ttl_seconds`), the app's
    data was purged, or the id is wrong."""
