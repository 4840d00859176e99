"""The wire format between `pynenc_lite.server` and `pynenc_lite.backend.remote`.

Holds the framing, the handshake proofs, the per-frame MAC, the table of operations (`OPS`)
with the shape of every argument and result, and the checks that turn untrusted plain data
into backend values. It holds no sockets policy (timeouts, retries, threads): the server and
the client decide those.

One frame:

    ┌──────────────┬──────────────┬────────────────┬────────────────┬──────────────┐
    │ header_len:4 │  body_len:4  │ header (JSON)  │ body (bytes)   │ tag: 0 or 32 │
    └──────────────┴──────────────┴────────────────┴────────────────┴──────────────┘
      big-endian unsigned          UTF-8 object     blobs, back to   HMAC-SHA256 once
                                                    back             authenticated

The header is a small JSON object: the operation name and its plain arguments. Every `bytes`
value (pickled arguments and results: opaque here) travels raw in the body; in the JSON it
is `{"$b": index}` and the header lists the blob sizes. Why not base64 inside the JSON:
payloads can be megabytes, and raw bytes cost neither the 33 % growth nor a pass through a
text codec, while the JSON that must be parsed stays small and bounded by its own limit.
Nothing in a frame is ever unpickled: JSON and bytes only.

Handshake (frames without a tag), then every frame carries a tag:

    server ── hello {proto, nonce_s, limits} ─────────────────────────► client
    server ◄── auth {nonce_c, proof_c = HMAC(secret, "client"|nonce_s|nonce_c)} ── client
    server ── welcome {proof_s = HMAC(secret, "server"|nonce_s|nonce_c)} ─► client
    session key = HMAC(secret, "session"|nonce_s|nonce_c)
    tag = HMAC(session key, direction | sequence number | frame without tag)

A fresh server nonce per connection makes a recorded `auth` useless on another connection;
the client's proof check stops a fake server (one that does not know the secret) from
feeding pickles to clients; the tags stop anyone on the path from changing, injecting,
replaying or reordering frames after the handshake. They do not hide anything: use TLS for
that (the same frames run inside it).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import hmac
import inspect
import json
import logging
import math
import os
import secrets
import socket
import struct
import time
import typing
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar, Union

from pynenc_lite.backend.base import Backend
from pynenc_lite.errors import BackendError, ConfigError
from pynenc_lite.status import InvocationStatus

PROTOCOL_NAME = "pynenc_lite/1"
DEFAULT_PORT = 7470
NONCE_BYTES = 32
TAG_BYTES = 32
_PREFIX = struct.Struct("!II")
# Frames before authentication are tiny; an unauthenticated peer can make the server hold
# at most this much per connection.
HANDSHAKE_MAX_HEADER_BYTES = 1024
# JSON nesting our messages need is 4 levels; anything much deeper is not ours.
_MAX_DEPTH = 8

logger = logging.getLogger(__name__)

T = TypeVar("T")
Buffer = Union[bytes, memoryview]
Validator = Callable[[Any], Any]


class ProtocolError(BackendError):
    """A frame broke the wire format (malformed, oversized, bad tag, bad arguments)."""


class IdleTimeoutError(ProtocolError):
    """Nothing at all arrived before the idle deadline (a clean point to hang up)."""


@dataclasses.dataclass(frozen=True)
class FrameLimits:
    """Upper bounds on one frame, checked before anything is allocated for it."""

    max_header_bytes: int = 4 * 1024 * 1024
    max_body_bytes: int = 64 * 1024 * 1024
    max_blobs: int = 1_000_000


HANDSHAKE_LIMITS = FrameLimits(max_header_bytes=HANDSHAKE_MAX_HEADER_BYTES, max_body_bytes=0)


# -- secrets and proofs ---------------------------------------------------------------------


def new_nonce() -> bytes:
    """A fresh random nonce for one handshake."""
    return secrets.token_bytes(NONCE_BYTES)


def proof(secret: bytes, role: str, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """What `role` ("client", "server" or "session") derives from the secret and both nonces.

    The role is part of the message, so a server's proof can never be replayed as a client's
    (or the other way round), and the session key is neither.
    """
    message = role.encode("ascii") + b"|" + server_nonce + b"|" + client_nonce
    return hmac.new(secret, message, hashlib.sha256).digest()


def read_secret_file(path: str) -> bytes:
    """The secret held in `path`, without surrounding whitespace.

    Raises:
        ConfigError: the file cannot be read or is empty.
    """
    try:
        with open(path, "rb") as file:
            secret = file.read().strip()
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ConfigError(f"cannot read the secret file {path!r}: {exc}") from exc
    if not secret:
        raise ConfigError(f"the secret file {path!r} is empty")
    if os.name == "posix" and mode & 0o077:
        logger.warning("the secret file %s can be read by other users; chmod 600 it", path)
    return secret


class SessionMac:
    """Signs and checks the frames of one authenticated connection.

    Each direction has its own sequence number, part of every tag, so a frame replayed,
    dropped or reordered within the connection fails the check as surely as a changed one.
    Not thread-safe: one connection is used by one thread at a time.
    """

    def __init__(self, key: bytes, *, is_server: bool) -> None:
        self._key = key
        self._send_dir = b"S" if is_server else b"C"
        self._recv_dir = b"C" if is_server else b"S"
        self._sent = 0
        self._received = 0

    def _tag(self, direction: bytes, seq: int, parts: Sequence[Buffer]) -> bytes:
        mac = hmac.new(self._key, direction + seq.to_bytes(8, "big"), hashlib.sha256)
        for part in parts:
            mac.update(part)
        return mac.digest()

    def sign(self, parts: Sequence[Buffer]) -> bytes:
        """The tag of the next outgoing frame made of `parts`."""
        self._sent += 1
        return self._tag(self._send_dir, self._sent, parts)

    def verify(self, parts: Sequence[Buffer], tag: bytes) -> None:
        """Check the tag of the next incoming frame (constant-time compare).

        Raises:
            ProtocolError: the tag does not match.
        """
        self._received += 1
        if not hmac.compare_digest(self._tag(self._recv_dir, self._received, parts), tag):
            raise ProtocolError("frame tag mismatch (changed, replayed or forged frame)")


# -- framing --------------------------------------------------------------------------------


def encode_frame(
    header: Mapping[str, Any], blobs: Sequence[bytes], mac: Optional[SessionMac]
) -> bytes:
    """One frame, ready for `sendall`. `header` must be JSON-able; blobs go in the body."""
    document = dict(header)
    document["blobs"] = [len(blob) for blob in blobs]
    header_bytes = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
    body = b"".join(blobs)
    prefix = _PREFIX.pack(len(header_bytes), len(body))
    tag = mac.sign((prefix, header_bytes, body)) if mac is not None else b""  # = whole frame
    return b"".join((prefix, header_bytes, body, tag))


class FrameReader:
    """Reads the frames of one connection, usually with one `recv` call per frame.

    It asks the socket for more than the frame it needs (the peer never sends a second
    frame before the first is answered, so there is rarely more), and keeps any bytes past
    the frame for the next one.
    """

    _CHUNK = 65536

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()

    @property
    def has_unread(self) -> bool:
        """True when bytes past the last frame were received (the peer sent unasked)."""
        return bool(self._buffer)

    def _fill(self, goal: int, deadline: float) -> None:
        buffer = self._buffer
        while len(buffer) < goal:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("timed out")
            self._sock.settimeout(remaining)
            # At least a chunk (fewer calls), at most 1 MiB (a huge frame is not allocated
            # whole before its bytes arrive).
            chunk = self._sock.recv(min(max(goal - len(buffer), self._CHUNK), 1 << 20))
            if not chunk:
                raise ConnectionResetError("connection closed by the peer")
            buffer += chunk

    def read(
        self,
        *,
        limits: FrameLimits,
        mac: Optional[SessionMac],
        idle_deadline: float,
        frame_seconds: float,
    ) -> tuple[dict[str, Any], list[bytes]]:
        """Read one frame: its header object and its blobs.

        Args:
            idle_deadline: monotonic time by which the frame must start arriving.
            frame_seconds: how long the rest of it may take once it started.

        Raises:
            IdleTimeoutError: not one byte arrived before `idle_deadline`.
            ProtocolError: the frame is malformed, too large or fails its tag check.
            OSError: the connection failed or was closed (also a timeout mid-frame).
        """
        if not self._buffer:
            try:
                self._fill(1, idle_deadline)
            except socket.timeout:
                raise IdleTimeoutError("no frame arrived before the idle timeout") from None
        deadline = time.monotonic() + frame_seconds
        self._fill(_PREFIX.size, deadline)
        header_len, body_len = _PREFIX.unpack_from(self._buffer)
        if header_len > limits.max_header_bytes or body_len > limits.max_body_bytes:
            raise ProtocolError(
                f"frame too large: header {header_len} bytes (limit "
                f"{limits.max_header_bytes}), body {body_len} bytes (limit "
                f"{limits.max_body_bytes})"
            )
        tag_len = TAG_BYTES if mac is not None else 0
        end = _PREFIX.size + header_len + body_len
        self._fill(end + tag_len, deadline)
        frame = bytes(self._buffer[: end + tag_len])
        del self._buffer[: end + tag_len]
        view = memoryview(frame)
        header_bytes = view[_PREFIX.size : _PREFIX.size + header_len]
        body = view[_PREFIX.size + header_len : end]
        if mac is not None:
            mac.verify((view[:end],), frame[end:])
        header = _parse_header(bytes(header_bytes))
        sizes = header.pop("blobs", None)
        if (
            not isinstance(sizes, list)
            or len(sizes) > limits.max_blobs
            or not all(type(size) is int and size >= 0 for size in sizes)
            or sum(sizes) != body_len
        ):
            raise ProtocolError("frame header has no valid 'blobs' list matching the body length")
        blobs, offset = [], 0
        for size in sizes:
            blobs.append(bytes(body[offset : offset + size]))
            offset += size
        return header, blobs


def recv_frame(
    sock: socket.socket,
    *,
    limits: FrameLimits,
    mac: Optional[SessionMac],
    idle_deadline: float,
    frame_seconds: float,
) -> tuple[dict[str, Any], list[bytes]]:
    """Read one frame with a reader of its own (see `FrameReader.read`): for a connection
    that reads one frame and then stops, or alternates strictly with the peer."""
    return FrameReader(sock).read(
        limits=limits, mac=mac, idle_deadline=idle_deadline, frame_seconds=frame_seconds
    )


def _parse_header(header_bytes: bytes) -> dict[str, Any]:
    try:
        header = json.loads(header_bytes.decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not a JSON object")
    return header


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


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


def STR(raw: Any) -> str:  # noqa: N802 - validators read as type names in the OPS table
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


@dataclasses.dataclass(frozen=True)
class Op:
    """One allowed operation: its keyword arguments, its result, and its kind.

    READ: only reads; a client may send it again after a lost reply.
    WRITE: may make work or outcomes appear; the server wakes every long-poll at once.
    QUIET_WRITE: changes only what nobody waits for (leases, heartbeats), so it wakes nobody
    at once; if it does change something waited for (a claim that fails an invocation whose
    worker was lost too often), the server's database monitor notices within milliseconds.
    """

    params: Mapping[str, Validator]
    result: Validator
    kind: str
    signature: str  # for the schema fingerprint

    @property
    def read_only(self) -> bool:
        return self.kind == READ

    @property
    def wakes_waiters(self) -> bool:
        return self.kind == WRITE


def _backend_op(name: str, kind: str) -> Op:
    method = getattr(Backend, name)
    hints = typing.get_type_hints(method)
    params = [p for p in inspect.signature(method).parameters if p != "self"]
    return Op(
        params={p: validator_for(hints[p]) for p in params},
        result=validator_for(hints["return"]),
        kind=kind,
        signature=f"{name}({', '.join(f'{p}: {type_name(hints[p])}' for p in params)}) -> "
        f"{type_name(hints['return'])}",
    )


# The allowlist: operation name -> kind. Each is the `Backend` method of that name, called by
# the server with checked keyword arguments (except wait_for_change, which the server's
# change feed answers). Adding an operation to the wire is one line here.
_ALLOWED = {
    # callers
    "submit": WRITE,
    "get_outcomes": READ,
    "get_finished_since": READ,
    "get_invocation": READ,
    "count_live_workers": READ,
    "cancel": WRITE,
    "get_args": READ,
    "get_history": READ,
    "get_stats": READ,
    "list_invocations": READ,
    "requeue": WRITE,
    "purge": WRITE,
    "purge_expired": QUIET_WRITE,
    # runners
    "claim": QUIET_WRITE,
    "complete_many": WRITE,
    "release": WRITE,
    "expire_leases": WRITE,
    "heartbeat": QUIET_WRITE,
    "remove_worker": QUIET_WRITE,
    "next_run_at": READ,
    "get_cron_moment": READ,
    "advance_cron": WRITE,
    # waiting
    "wait_for_change": READ,
}
OPS: dict[str, Op] = {
    name: _backend_op(name, kind) for name, kind in _ALLOWED.items() if hasattr(Backend, name)
}


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
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


# Sent in the server's hello: a client built from another version of the backend protocol
# (different operations or fields) is told so plainly instead of failing request by request.
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
