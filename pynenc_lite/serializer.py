"""Turning calls, values and exceptions into bytes and back (pickle), with clear errors.

Everything that crosses from a caller to a worker goes through here, in sync mode too, so
what would fail on a worker fails the same way in a test. A task's exception comes back as
itself (same type, same message) with the worker's traceback text attached as its
`__cause__`. When it cannot make the trip, the caller gets a
`RemoteTaskError` naming the original type and message instead.

This module does not touch storage or threads.
"""

from __future__ import annotations

import pickle
import traceback
from typing import Any, Optional

from pynenc_lite.errors import RemoteTaskError, SerializationError, WorkerLostError

PROTOCOL = pickle.HIGHEST_PROTOCOL

CallArgs = tuple[tuple[Any, ...], dict[str, Any]]


class RemoteTraceback(Exception):
    """Carries the worker's traceback text; set as the `__cause__` of a re-raised error."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\nTraceback on the worker:\n{self.text}"


def dumps_call(task_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Pickle a call's arguments.

    Raises:
        SerializationError: an argument cannot be pickled; the message names the task.
    """
    try:
        return pickle.dumps((args, kwargs), PROTOCOL)
    except Exception as exc:
        raise SerializationError(
            f"the arguments of {task_name} cannot be pickled ({type(exc).__name__}: {exc}); "
            "pass plain data (numbers, strings, lists, dicts, dataclasses defined at module "
            "level) instead of open files, locks, sockets or lambdas."
        ) from exc


def loads_call(task_name: str, data: bytes) -> CallArgs:
    """Unpickle a call's arguments.

    Raises:
        SerializationError: they cannot be loaded here (a class is missing, say).
    """
    try:
        args, kwargs = pickle.loads(data)
    except Exception as exc:
        raise SerializationError(
            f"the arguments of {task_name} cannot be unpickled on this worker "
            f"({type(exc).__name__}: {exc}); make sure every class they use is importable "
            "here (same code, same PYTHONPATH as the caller)."
        ) from exc
    return tuple(args), dict(kwargs)


def dumps_value(task_name: str, value: Any) -> bytes:
    """Pickle a task's return value.

    Raises:
        SerializationError: the value cannot be pickled; the message names the task.
    """
    try:
        return pickle.dumps(value, PROTOCOL)
    except Exception as exc:
        raise SerializationError(
            f"the result of {task_name} cannot be pickled ({type(exc).__name__}: {exc}); "
            "return plain data instead."
        ) from exc


def loads_value(task_name: str, data: bytes) -> Any:
    """Unpickle a task's return value.

    Raises:
        SerializationError: it cannot be loaded in this process.
    """
    try:
        return pickle.loads(data)
    except Exception as exc:
        raise SerializationError(
            f"the result of {task_name} cannot be unpickled here ({type(exc).__name__}: "
            f"{exc}); make sure the classes it uses are importable in the caller."
        ) from exc


def describe_exception(exc: BaseException) -> str:
    """`Type: message`, the readable form stored beside every failure."""
    return f"{type(exc).__qualname__}: {exc}"


def dumps_exception(exc: BaseException) -> tuple[Optional[bytes], str, str]:
    """Package a task's exception as (pickled exception, error line, traceback text).

    The pickle is checked by loading it back at once: many exception classes pickle fine but
    fail to load (an `__init__` with extra required arguments), and it is better to learn
    that here than in the caller. An exception that cannot make the round trip is replaced
    by a pickled `RemoteTaskError` saying which step failed on the worker and why.
    """
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    payload, substitute = _pickle_exception(exc, text)
    if substitute is not None:
        payload = pickle.dumps(substitute, PROTOCOL)
    return payload, describe_exception(exc), text


def _pickle_exception(
    exc: BaseException, text: str
) -> tuple[Optional[bytes], Optional[RemoteTaskError]]:
    """The pickle of `exc` when it loads back, else the `RemoteTaskError` that stands for it."""
    try:
        payload = pickle.dumps(exc, PROTOCOL)
    except Exception as dump_exc:
        reason = f"could not be pickled on the worker ({type(dump_exc).__name__}: {dump_exc})"
    else:
        try:
            pickle.loads(payload)
            return payload, None
        except Exception as load_exc:
            reason = (
                "was pickled on the worker but cannot be unpickled again "
                f"({type(load_exc).__name__}: {load_exc}); an exception class whose __init__ "
                "needs other arguments than it passes to Exception.__init__ does this: pass "
                "them all to super().__init__ or define __reduce__"
            )
    return None, RemoteTaskError(
        f"{describe_exception(exc)} (the exception {reason}, so it is reported as this "
        "error; its traceback is in .remote_traceback)",
        text,
    )


def load_exception(
    payload: Optional[bytes], error: Optional[str], remote_traceback: Optional[str]
) -> BaseException:
    """The exception to raise in the caller for a failed invocation.

    The original exception when it can be loaded, with the worker traceback attached;
    otherwise a `RemoteTaskError` that names the original type and message.
    """
    tb_text = remote_traceback or ""
    if payload is not None:
        try:
            exc = pickle.loads(payload)
        except Exception as load_exc:
            return RemoteTaskError(
                f"{error} (the exception could not be unpickled in the caller: "
                f"{type(load_exc).__name__}: {load_exc})",
                tb_text,
            )
        if isinstance(exc, BaseException):
            if tb_text:
                # The cause, not a note: a note would change what `pytest.raises(match=)`
                # matches, so tests would differ between sync mode and workers.
                exc.__cause__ = RemoteTraceback(tb_text)
            return exc
    lost = WorkerLostError.from_error_line(error)
    if lost is not None:
        return lost
    return RemoteTaskError(
        f"{error or 'the task failed'} (no pickled exception was stored, so it is reported "
        "as this error; its traceback is in .remote_traceback)",
        tb_text,
    )


def round_trip_exception(exc: BaseException) -> BaseException:
    """What a distributed caller would receive for `exc`, for sync mode.

    Returns `exc` itself when it survives pickling (keeping the local traceback, which is
    more useful than a copy's), otherwise the `RemoteTaskError` a caller would get.
    """
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    _, substitute = _pickle_exception(exc, text)
    return exc if substitute is None else substitute
