"""The operations of the TCP layer: which `Backend` methods travel, and how their values do.

Holds the allowlist (`OPS`) with the shape of every argument and result, read from the
`Backend` contract's own type annotations so the two cannot drift; the validators that turn
untrusted plain data into backend values; `to_plain` / `attach_blobs`, which move `bytes`
between a value and a frame's blobs; and the schema fingerprint both ends compare in the
handshake. It holds no sockets (that is `wire`) and no retry policy (that is `client`).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import inspect
import math
import typing
from typing import Any, Callable, Mapping, Sequence, TypeVar

from pynenc_lite.backend.base import Backend
from pynenc_lite.backend.tcp.wire import ProtocolError
from pynenc_lite.status import InvocationStatus

# JSON nesting our messages need is 4 levels; anything much deeper is not ours.
_MAX_DEPTH = 8

T = TypeVar("T")
Validator = Callable[[Any], Any]


# -- plain values ---------------------------------------------------------------------------


def to_plain(value: Any, blobs: list[bytes]) -> Any:
    """Turn a backend value into JSON-able data, moving every `bytes` into `blobs`.

    Dataclasses become lists of their fields in declaration order (the order `OPS` expects),
    status enums their string value.
    """
    if isinstance(value, bytes):
        blobs.append(value)
        return {"$b": len(blobs) - 1}
    if isinstance(value, InvocationStatus):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [to_plain(getattr(value, f.name), blobs) for f in dataclasses.fields(value)]
    if isinstance(value, (list, tuple)):
        return [to_plain(item, blobs) for item in value]
    if isinstance(value, dict):
        return {str(key): to_plain(item, blobs) for key, item in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, collections.abc.Sequence):  # a caller's own sequence type
        return [to_plain(item, blobs) for item in value]
    raise TypeError(f"cannot send a {type(value).__name__} to the server: {value!r}")


def attach_blobs(value: Any, blobs: Sequence[bytes], depth: int = 0) -> Any:
    """Replace every `{"$b": index}` in decoded JSON with its blob.

    Raises:
        ProtocolError: a bad blob reference, or nesting deeper than any message needs.
    """
    if depth > _MAX_DEPTH:
        raise ProtocolError("frame header is nested too deeply")
    if isinstance(value, list):
        return [attach_blobs(item, blobs, depth + 1) for item in value]
    if isinstance(value, dict):
        if "$b" in value:
            index = value["$b"]
            if len(value) != 1 or type(index) is not int or not 0 <= index < len(blobs):
                raise ProtocolError(f"bad blob reference {value!r}")
            return blobs[index]
        return {key: attach_blobs(item, blobs, depth + 1) for key, item in value.items()}
    return value


# -- validators: untrusted plain data -> backend values -------------------------------------
# Each takes one decoded value and returns it checked (and converted), or raises
# ProtocolError naming what was wrong. The server runs them on every argument, the client on
# every result, so neither side trusts the other's data shapes.


def _fail(expected: str, raw: Any) -> ProtocolError:
    text = repr(raw)
    return ProtocolError(f"expected {expected}, got {text[:80]}{'...' if len(text) > 80 else ''}")


def STR(raw: Any) -> str:  # noqa: N802 - validators are named after the type they accept
    if not isinstance(raw, str):
        raise _fail("a string", raw)
    return raw


def INT(raw: Any) -> int:  # noqa: N802
    # bool is an int subclass: refuse it; SQLite stores at most 64-bit integers.
    if type(raw) is not int or not -(2**63) <= raw < 2**63:
        raise _fail("a 64-bit integer", raw)
    return raw


def FLOAT(raw: Any) -> float:  # noqa: N802
    try:
        value = float(raw) if type(raw) in (int, float) else math.nan
    except OverflowError:  # an int too large for a float
        value = math.nan
    if not math.isfinite(value):
        raise _fail("a finite number", raw)
    return value


def BOOL(raw: Any) -> bool:  # noqa: N802
    if type(raw) is not bool:
        raise _fail("true or false", raw)
    return raw


def BYTES(raw: Any) -> bytes:  # noqa: N802
    if not isinstance(raw, bytes):
        raise _fail("a blob", raw)
    return raw


def NONE(raw: Any) -> None:  # noqa: N802
    if raw is not None:
        raise _fail("null", raw)
    return None


def STATUS(raw: Any) -> InvocationStatus:  # noqa: N802
    try:
        return InvocationStatus(STR(raw))
    except ValueError:
        raise _fail("an invocation status", raw) from None


def optional(inner: Validator) -> Validator:
    """Accept null or what `inner` accepts."""
    return lambda raw: None if raw is None else inner(raw)


def list_of(inner: Validator) -> Validator:
    """Accept a list whose every item `inner` accepts."""

    def check(raw: Any) -> list[Any]:
        if not isinstance(raw, list):
            raise _fail("a list", raw)
        return [inner(item) for item in raw]

    return check


def tuple_of(*items: Validator) -> Validator:
    """Accept a list of exactly these items, returned as a tuple."""

    def check(raw: Any) -> tuple[Any, ...]:
        if not isinstance(raw, list) or len(raw) != len(items):
            raise _fail(f"a list of {len(items)} items", raw)
        return tuple(v(item) for v, item in zip(items, raw))

    return check


def dict_of(inner: Validator) -> Validator:
    """Accept an object (string keys) whose every value `inner` accepts."""

    def check(raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise _fail("an object", raw)
        return {STR(key): inner(value) for key, value in raw.items()}

    return check


def record(cls: Callable[..., T], *fields: Validator) -> Callable[[Any], T]:
    """Accept a dataclass sent as the list of its fields (see `to_plain`)."""
    fields_check = tuple_of(*fields)
    return lambda raw: cls(*fields_check(raw))


_SCALARS: dict[Any, Validator] = {
    str: STR,
    int: INT,
    float: FLOAT,
    bool: BOOL,
    bytes: BYTES,
    type(None): NONE,
    InvocationStatus: STATUS,
}


def validator_for(hint: Any) -> Validator:
    """The validator of a type annotation of the backend protocol.

    The shapes on the wire are read from `Backend`'s own annotations (and those of its
    dataclasses), so the protocol cannot drift from it. A type the wire cannot carry fails
    here, at import time, instead of at the first request.

    Raises:
        TypeError: an annotation this protocol has no encoding for.
    """
    if hint in _SCALARS:
        return _SCALARS[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union and len(args) == 2 and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return optional(validator_for(inner))
    if origin in (list, collections.abc.Sequence) and len(args) == 1:
        return list_of(validator_for(args[0]))
    if origin is dict and len(args) == 2 and args[0] is str:
        return dict_of(validator_for(args[1]))
    if origin is tuple and args and Ellipsis not in args:
        return tuple_of(*(validator_for(a) for a in args))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return record(hint, *(validator_for(hints[f.name]) for f in dataclasses.fields(hint)))
    raise TypeError(f"the wire protocol has no encoding for {hint!r}")


def type_name(hint: Any) -> str:
    """A spelling of an annotation that is the same on every Python version (for `SCHEMA`)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return f"Optional[{', '.join(type_name(a) for a in args if a is not type(None))}]"
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(map(type_name, args))}]"
    return str(getattr(hint, "__name__", hint))


READ, WRITE, QUIET_WRITE = "read", "write", "quiet write"
RESEND, BY_HAND = "resend", "by hand"


@dataclasses.dataclass(frozen=True)
class Op:
    """One allowed operation: its keyword arguments, its result, its kind, and what a client
    does when it sent the request but lost the reply.

    Kinds, for the server:
    READ: only reads.
    WRITE: may make work or outcomes appear; the server wakes every long-poll at once.
    QUIET_WRITE: changes only what nobody waits for (leases, heartbeats), so it wakes nobody
    at once; if it does change something waited for (a claim that fails an invocation whose
    worker was lost too often), the server's database monitor notices within milliseconds.

    After a lost reply, for the client (`client.RemoteBackend`, whose docstring gives the
    reason for each operation):
    RESEND: send it again; its method is generated from the `Backend` contract.
    BY_HAND: a method of its own finds out what the lost attempt did.
    """

    params: Mapping[str, Validator]
    result: Validator
    kind: str
    after_lost_reply: str
    signature: str  # for the schema fingerprint

    @property
    def read_only(self) -> bool:
        return self.kind == READ

    @property
    def wakes_waiters(self) -> bool:
        return self.kind == WRITE


def _backend_op(name: str, kind: str, after_lost_reply: str) -> Op:
    method = getattr(Backend, name)  # AttributeError at import: not a Backend method
    hints = typing.get_type_hints(method)
    params = [p for p in inspect.signature(method).parameters if p != "self"]
    return Op(
        params={p: validator_for(hints[p]) for p in params},
        result=validator_for(hints["return"]),
        kind=kind,
        after_lost_reply=after_lost_reply,
        signature=f"{name}({', '.join(f'{p}: {type_name(hints[p])}' for p in params)}) -> "
        f"{type_name(hints['return'])}",
    )


# The allowlist: operation name -> (kind, after a lost reply). Each is the `Backend` method of
# that name, called by the server with checked keyword arguments (except wait_for_change,
# which the server's change feed answers). Adding an operation to the wire is one line here
# (and, for mypy, the one-line proxy in `client.RemoteBackend`).
_ALLOWED: dict[str, tuple[str, str]] = {
    # callers
    "submit": (WRITE, BY_HAND),
    "get_outcomes": (READ, RESEND),
    "get_finished_since": (READ, RESEND),
    "get_invocation": (READ, RESEND),
    "count_live_workers": (READ, RESEND),
    "cancel": (WRITE, BY_HAND),
    "get_args": (READ, RESEND),
    "get_history": (READ, RESEND),
    "get_stats": (READ, RESEND),
    "count_invocations_by_app": (READ, RESEND),
    "list_invocations": (READ, RESEND),
    "requeue": (WRITE, RESEND),
    "purge": (WRITE, RESEND),
    "purge_expired": (QUIET_WRITE, RESEND),
    # runners
    "claim": (QUIET_WRITE, RESEND),
    "complete_many": (WRITE, BY_HAND),
    "release": (WRITE, RESEND),
    "expire_leases": (WRITE, RESEND),
    "heartbeat": (QUIET_WRITE, RESEND),
    "remove_worker": (QUIET_WRITE, RESEND),
    "next_run_at": (READ, RESEND),
    "get_cron_moment": (READ, RESEND),
    "advance_cron": (WRITE, BY_HAND),
    # waiting
    "wait_for_change": (READ, RESEND),
}
OPS: dict[str, Op] = {name: _backend_op(name, *rules) for name, rules in _ALLOWED.items()}


def _dataclasses_of(ops: Mapping[str, Op]) -> list[type]:
    """Every dataclass that appears in the operations' annotations, nested ones too."""
    found: list[type] = []

    def visit(hint: Any) -> None:
        for arg in typing.get_args(hint):
            visit(arg)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint) and hint not in found:
            found.append(hint)
            for nested in typing.get_type_hints(hint).values():
                visit(nested)

    for name in ops:
        for hint in typing.get_type_hints(getattr(Backend, name)).values():
            visit(hint)
    return found


def _fingerprint() -> str:
    parts = [op.signature for op in OPS.values()]
    for cls in _dataclasses_of(OPS):
        hints = typing.get_type_hints(cls)
        fields = ", ".join(f"{f.name}: {type_name(hints[f.name])}" for f in dataclasses.fields(cls))
        parts.append(f"{cls.__name__}({fields})")
    # The statuses too: a client that does not know one would refuse every reply holding it.
    parts.append(f"InvocationStatus({', '.join(s.value for s in InvocationStatus)})")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


# Sent in the server's hello: a client built from another version of the backend protocol
# (different operations, fields or statuses) is told so plainly instead of failing request
# by request.
SCHEMA = _fingerprint()


def check_args(op: Op, raw: Any) -> dict[str, Any]:
    """The checked keyword arguments of a request for `op`.

    Raises:
        ProtocolError: not an object with exactly the operation's arguments, or a bad value.
    """
    if not isinstance(raw, dict) or set(raw) != set(op.params):
        names = ", ".join(sorted(op.params))
        raise ProtocolError(f"arguments must be exactly: {names}")
    checked = {}
    for name, validator in op.params.items():
        try:
            checked[name] = validator(raw[name])
        except ProtocolError as exc:
            raise ProtocolError(f"argument {name!r}: {exc}") from None
    return checked
