"""The wire format of the TCP layer: frames, their limits, the handshake and the per-frame MAC.

Holds how bytes on a connection become a header object and blobs and back, how both ends
prove they know the shared secret, and how every later frame is signed. It knows nothing of
backends or operations (that is `ops`) and holds no socket policy beyond one handshake:
timeouts, retries and threads are for the client (`client`) and the server (`engine`).

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

Versions: `PROTOCOL_NAME` changes whenever the frames or the set of operations change in a
way the other end would misread. The server says its version first, in the hello; a client
of another version hangs up there with one line naming both versions (a client of
pynenc_lite/1 prints the hello's first 100 characters, so the hello's second field says
what to do). The hello's `schema` (see `ops.SCHEMA`) catches the finer drift of argument
and record shapes between builds of one version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import struct
import time
from typing import Any, Mapping, Optional, Sequence, Union

from pynenc_lite.errors import BackendError, ConfigError

PROTOCOL_NAME = "pynenc_lite/2"
DEFAULT_PORT = 7470
NONCE_BYTES = 32
TAG_BYTES = 32
_PREFIX = struct.Struct("!II")
# Frames before authentication are tiny; an unauthenticated peer can make the server hold
# at most this much per connection.
HANDSHAKE_MAX_HEADER_BYTES = 1024
# What to do about a version mismatch, said to peers of any version.
_UPGRADE_HINT = "run the same pynenc_lite version on the server, the callers and the workers"
# The same, short enough to fit the 100 characters of a hello that a pynenc_lite/1 client
# shows when it does not understand it (the hello's second field, after the version).
HELLO_HINT = "run one pynenc_lite version on server, callers and workers"

logger = logging.getLogger(__name__)

Buffer = Union[bytes, memoryview]


class ProtocolError(BackendError):
    """A frame broke the wire format (malformed, oversized, bad tag, bad arguments)."""


class IdleTimeoutError(ProtocolError):
    """Nothing at all arrived before the idle deadline (a clean point to hang up)."""


class AuthenticationError(BackendError):
    """The handshake failed: wrong secret on either side, not a pynenc_lite server, or one
    that speaks another version of the protocol. Not worth retrying."""


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


# -- the handshake --------------------------------------------------------------------------


def serve_handshake(
    sock: socket.socket,
    reader: FrameReader,
    secret: bytes,
    *,
    schema: str,
    offer: Mapping[str, Any],
    deadline: float,
    peer: str,
) -> Optional[SessionMac]:
    """The server's side: say hello, check the client's proof, prove ours.

    Args:
        schema: the operations' fingerprint (`ops.SCHEMA`), for the client to compare.
        offer: what the client should know of this server (its limits and timeouts).
        deadline: monotonic time by which the client must have authenticated.
        peer: how to name the client in the log.

    Returns:
        The session's MAC, or None when the client's proof was wrong (it was told so, and
        the refusal logged).

    Raises:
        ProtocolError: no or a malformed authentication frame before `deadline`.
        OSError: the connection failed, or the client left before authenticating.
    """
    server_nonce = new_nonce()
    hello = {"hello": PROTOCOL_NAME, "upgrade": HELLO_HINT}  # these two first: see HELLO_HINT
    hello.update(schema=schema, nonce=server_nonce.hex(), **offer)
    sock.sendall(encode_frame(hello, [], None))
    try:
        header, _ = reader.read(
            limits=HANDSHAKE_LIMITS,
            mac=None,
            idle_deadline=deadline,
            frame_seconds=max(deadline - time.monotonic(), 0.0),
        )
    except IdleTimeoutError:
        raise ProtocolError("no authentication before the handshake timeout") from None
    except ConnectionResetError as exc:
        raise ConnectionResetError(
            f"the client left before authenticating ({exc}); if it is a pynenc_lite client, "
            f"it may speak another protocol than {PROTOCOL_NAME}: {_UPGRADE_HINT}"
        ) from None
    try:
        client_nonce = bytes.fromhex(header["nonce"])
        claimed = bytes.fromhex(header["proof"])
    except (KeyError, TypeError, ValueError):
        raise ProtocolError("malformed authentication frame") from None
    if len(client_nonce) != NONCE_BYTES or set(header) != {"nonce", "proof"}:
        raise ProtocolError("malformed authentication frame")
    if not hmac.compare_digest(proof(secret, "client", server_nonce, client_nonce), claimed):
        logger.warning("refused %s: authentication failed (wrong secret?)", peer)
        refusal = {"error": "AuthenticationError", "message": "authentication failed"}
        sock.sendall(encode_frame(refusal, [], None))
        return None
    welcome = {"proof": proof(secret, "server", server_nonce, client_nonce).hex()}
    sock.sendall(encode_frame(welcome, [], None))
    return SessionMac(proof(secret, "session", server_nonce, client_nonce), is_server=True)


def client_handshake(
    sock: socket.socket,
    reader: FrameReader,
    secret: bytes,
    *,
    schema: str,
    deadline: float,
    server: str,
) -> tuple[SessionMac, dict[str, Any]]:
    """The client's side: check the server's hello, prove we know the secret, check its proof.

    Args:
        schema: our operations' fingerprint (`ops.SCHEMA`); the server's must be the same.
        deadline: monotonic time by which the handshake must be done.
        server: how to name the server in errors (its URL).

    Returns:
        The session's MAC and the server's hello (its limits and timeouts).

    Raises:
        AuthenticationError: another version, another secret, or not a pynenc_lite server.
        ProtocolError, OSError: the server is not answering properly.
    """

    def receive() -> dict[str, Any]:
        header, _ = reader.read(
            limits=HANDSHAKE_LIMITS,
            mac=None,
            idle_deadline=deadline,
            frame_seconds=max(deadline - time.monotonic(), 0.0),
        )
        return header

    hello = receive()
    theirs = hello.get("hello")
    if theirs != PROTOCOL_NAME and isinstance(theirs, str) and theirs.startswith("pynenc_lite/"):
        raise AuthenticationError(
            f"the server at {server} speaks {theirs[:40]} and this client {PROTOCOL_NAME}: "
            f"upgrade the older side ({_UPGRADE_HINT})"
        )
    if theirs != PROTOCOL_NAME or not isinstance(hello.get("nonce"), str):
        raise AuthenticationError(
            f"{server} is not a pynenc_lite server speaking {PROTOCOL_NAME} "
            f"(it said {str(hello)[:100]})"
        )
    if hello.get("schema") != schema:
        raise AuthenticationError(
            f"the server at {server} runs another build of the pynenc_lite backend protocol "
            f"(schema {str(hello.get('schema'))[:40]}, ours {schema}): {_UPGRADE_HINT}"
        )
    server_nonce = bytes.fromhex(hello["nonce"])
    client_nonce = new_nonce()
    client_proof = proof(secret, "client", server_nonce, client_nonce)
    sock.sendall(encode_frame({"nonce": client_nonce.hex(), "proof": client_proof.hex()}, [], None))
    answer = receive()
    if "error" in answer:
        raise AuthenticationError(
            f"the server at {server} refused our secret: check that this process and the "
            "server use the same one (broker_secret_file / PYNENC__BROKER_SECRET)"
        )
    expected = proof(secret, "server", server_nonce, client_nonce)
    given = answer.get("proof")
    if not isinstance(given, str) or not hmac.compare_digest(expected.hex(), given):
        raise AuthenticationError(
            f"the server at {server} did not prove that it knows the secret: it is not our "
            "server, or it was started with another secret"
        )
    return SessionMac(proof(secret, "session", server_nonce, client_nonce), is_server=False), hello
