"""The remote backend: the `Backend` protocol spoken to a `pynenc_lite.server` over TCP.

Selected by configuration alone (`broker_url = "tcp://host:port"` plus the secret); see
`backend_from_config`. Each method is one request, answered by one atomic backend operation
on the server. `wait_for_change` is a long-poll the server answers when something changes,
so a waiting client sends one request per change (or per second when idle), never a spin.

    calling thread ── take a connection from the pool (or connect + authenticate) ──┐
         ▲                                                                          ▼
         └── result ◄── check the reply's shape ◄── one frame back ◄── one frame out

Connections: a small pool shared by the threads of this process; a thread takes one for
its request and gives it back, so a long-poll never blocks other threads' requests. After a
fork the child drops the parent's connections (they must never be shared).

When the server goes away (restart, network), requests reconnect with growing pauses for up
to `retry_seconds`. What is sent again depends on whether the request may have been
processed:
- not processed for sure (the send failed, or the server answered "bye": it closes an idle
  connection or stops without reading further): sent again, whatever the operation.
- maybe processed (sent, then no reply):
  - read-only operations and `wait_for_change`: sent again.
  - `submit`: ids are fresh uuids, so the client asks which of them are stored (those stand
    for themselves) and sends only the others again (stored now, or named after the waiting
    invocation their registration key matches). Nothing is stored twice.
  - `complete_many`: sent again; a final outcome refused the second time is compared with
    what is stored, and counts as accepted when it is the same outcome (a RETRY outcome has
    no stored copy to compare, so it is reported refused: the runner only logs that).
  - `heartbeat`, `release`, `expire_leases`, `remove_worker`: sent again (repeating them
    changes nothing more; a repeated release reports 0 handed back).
  - `cancel`, `advance_cron`: sent again; refused the second time, the stored state tells
    whether the first attempt did it (status CANCELLED; the cron moment moved to ours).
  - `claim`: sent again. If the lost reply had leased invocations to this worker, they stay
    leased to it (its heartbeats extend every lease it holds) until it stops and hands them
    back; nothing is lost, but they wait. This needs a server crash between the commit and
    the reply, a window of microseconds.

This module does not pickle or unpickle: payloads pass through as bytes.
"""

from __future__ import annotations

import hmac
import logging
import os
import random
import select
import socket
import ssl
import struct
import threading
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Optional, Sequence

from pynenc_lite import protocol
from pynenc_lite.backend.base import (
    AppStats,
    Backend,
    ClaimedInvocation,
    HistoryEntry,
    InvocationRecord,
    NewInvocation,
    Outcome,
    WorkerInfo,
)
from pynenc_lite.errors import BackendError, ConfigError
from pynenc_lite.protocol import OPS, FrameLimits, ProtocolError, SessionMac
from pynenc_lite.status import InvocationStatus

if TYPE_CHECKING:
    from pynenc_lite.conf import PynencConfig

logger = logging.getLogger(__name__)

# Replies come from a server that proved it knows the secret, and their tags are checked
# after reading, so the client's bounds only stop a broken stream from eating all memory.
_REPLY_LIMITS = FrameLimits(max_header_bytes=1 << 30, max_body_bytes=(1 << 32) - 1)
# A maybe-processed request is settled (resent, checked) at most this many times.
_MAX_SETTLE_ATTEMPTS = 5


class AuthenticationError(BackendError):
    """The handshake failed: wrong secret on either side, or not a pynenc_lite server."""


class ServerError(BackendError):
    """The server answered a request with an error; `kind` is the error's type name."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class _NotProcessed(Exception):
    """The request certainly did not run on the server: safe to send again."""


class _ReplyLost(Exception):
    """The request was sent but no reply came: it may or may not have run."""


class _Channel:
    """One authenticated connection. Used by one thread at a time (the pool sees to it)."""

    def __init__(
        self,
        sock: socket.socket,
        reader: protocol.FrameReader,
        mac: SessionMac,
        hello: dict[str, Any],
    ) -> None:
        self.sock = sock
        self.reader = reader
        self.mac = mac
        self.idle_timeout = float(hello.get("idle_timeout", 60.0))
        self.max_wait = float(hello.get("max_wait", 30.0))
        self.max_header = int(hello.get("max_header_bytes", 1 << 20))
        self.max_body = int(hello.get("max_body_bytes", 1 << 20))
        self.last_used = time.monotonic()

    def is_stale(self) -> bool:
        """True when it should not be used: idle near the server's timeout, or the server
        already sent something unasked (its "bye", or the end of the connection)."""
        if time.monotonic() - self.last_used > self.idle_timeout / 2:
            return True
        if self.reader.has_unread:
            return True
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class RemoteBackend(Backend):
    """A `Backend` on a `pynenc_lite.server` reached over TCP (optionally TLS).

    Args:
        host: the server's host name or address.
        port: its port.
        secret: the shared secret (bytes) the server was started with.
        ssl_context: a client TLS context (for tcps://), or None for plain TCP.
        connect_timeout_seconds: for one connection attempt, including the handshake.
        retry_seconds: how long a request keeps reconnecting before it raises BackendError.
        request_timeout_seconds: how long one reply may take (waits add their own timeout).
        max_idle_connections: connections kept open in the pool between requests.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        secret: bytes,
        ssl_context: Optional[ssl.SSLContext] = None,
        connect_timeout_seconds: float = 5.0,
        retry_seconds: float = 30.0,
        request_timeout_seconds: float = 120.0,
        max_idle_connections: int = 16,
    ) -> None:
        if not secret:
            raise ValueError("secret must not be empty")
        self.host = host
        self.port = int(port)
        self.connect_timeout_seconds = connect_timeout_seconds
        self.retry_seconds = retry_seconds
        self.request_timeout_seconds = request_timeout_seconds
        self.max_idle_connections = max_idle_connections
        self._secret = secret
        self._ssl_context = ssl_context
        # Guards _idle, _pid, _closed and _outage.
        self._lock = threading.Lock()
        self._idle: list[_Channel] = []
        self._pid = os.getpid()
        self._closed = False
        self._outage = False  # logged once per outage, not once per retry

    @property
    def url(self) -> str:
        """The `broker_url` of this backend."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'tcps' if self._ssl_context else 'tcp'}://{host}:{self.port}"

    def __repr__(self) -> str:
        return f"RemoteBackend({self.url!r})"

    # -- connections ------------------------------------------------------------------------

    def _connect(self) -> _Channel:
        """Open and authenticate one connection.

        Raises:
            AuthenticationError: the secrets differ (not worth retrying).
            OSError, ProtocolError: the server is unreachable or not answering properly.
        """
        timeout = self.connect_timeout_seconds
        deadline = time.monotonic() + timeout
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl_context is not None:
                sock = self._ssl_context.wrap_socket(sock, server_hostname=self.host)
            reader = protocol.FrameReader(sock)

            def receive() -> dict[str, Any]:
                header, _ = reader.read(
                    limits=protocol.HANDSHAKE_LIMITS,
                    mac=None,
                    idle_deadline=deadline,
                    frame_seconds=max(deadline - time.monotonic(), 0.0),
                )
                return header

            hello = receive()
            if hello.get("hello") != protocol.PROTOCOL_NAME or not isinstance(
                hello.get("nonce"), str
            ):
                raise AuthenticationError(
                    f"{self.url} is not a pynenc_lite server speaking {protocol.PROTOCOL_NAME} "
                    f"(it said {str(hello)[:100]})"
                )
            if hello.get("schema") != protocol.SCHEMA:
                raise AuthenticationError(
                    f"the server at {self.url} runs another version of the pynenc_lite backend "
                    f"protocol (schema {hello.get('schema')}, ours {protocol.SCHEMA}): run the "
                    "same pynenc_lite version on the server, the callers and the workers"
                )
            server_nonce = bytes.fromhex(hello["nonce"])
            client_nonce = protocol.new_nonce()
            client_proof = protocol.proof(self._secret, "client", server_nonce, client_nonce)
            auth = {"nonce": client_nonce.hex(), "proof": client_proof.hex()}
            sock.sendall(protocol.encode_frame(auth, [], None))
            answer = receive()
            if "error" in answer:
                raise AuthenticationError(
                    f"the server at {self.url} refused our secret: check that this process "
                    "and the server use the same one (broker_secret_file / "
                    "PYNENC__BROKER_SECRET)"
                )
            expected = protocol.proof(self._secret, "server", server_nonce, client_nonce)
            given = answer.get("proof")
            if not isinstance(given, str) or not hmac.compare_digest(expected.hex(), given):
                raise AuthenticationError(
                    f"the server at {self.url} did not prove that it knows the secret: it is "
                    "not our server, or it was started with another secret"
                )
            key = protocol.proof(self._secret, "session", server_nonce, client_nonce)
            return _Channel(sock, reader, SessionMac(key, is_server=False), hello)
        except BaseException:
            sock.close()
            raise

    def _acquire(self, deadline: float) -> _Channel:
        """A fresh-enough connection from the pool, or a new one (retrying until `deadline`)."""
        delay = 0.02
        while True:
            with self._lock:
                if self._closed:
                    raise BackendError(f"{self!r} was closed")
                if self._pid != os.getpid():
                    self._idle, self._pid = [], os.getpid()  # the parent's: never touch them
                channel = self._idle.pop() if self._idle else None
            if channel is not None:
                if not channel.is_stale():
                    return channel
                channel.close()
                continue
            try:
                channel = self._connect()
            except AuthenticationError:
                raise
            except ssl.SSLCertVerificationError as exc:
                raise AuthenticationError(
                    f"the TLS certificate of {self.url} does not verify: {exc}. Point "
                    "broker_tls_ca_file (PYNENC__BROKER_TLS_CA_FILE) at the CA that signed the "
                    "server's --tls-cert, and use the host name the certificate names"
                ) from exc
            except (OSError, ProtocolError, ValueError) as exc:
                now = time.monotonic()
                with self._lock:
                    first, self._outage = not self._outage, True
                if first:
                    logger.warning(
                        "cannot reach the server at %s (%s); retrying for up to %ss",
                        self.url,
                        exc,
                        self.retry_seconds,
                    )
                if now >= deadline:
                    raise BackendError(
                        f"cannot reach the pynenc_lite server at {self.url}: {exc}. Is "
                        "`python -m pynenc_lite.server` running there, and is broker_url right?"
                    ) from exc
                time.sleep(min(delay * (0.5 + random.random()), max(deadline - now, 0.0)))
                delay = min(delay * 2, 1.0)
                continue
            with self._lock:
                if self._outage:
                    self._outage = False
                    logger.warning("reconnected to the server at %s", self.url)
            return channel

    def _release(self, channel: _Channel) -> None:
        channel.last_used = time.monotonic()
        with self._lock:
            if (
                not self._closed
                and self._pid == os.getpid()
                and (len(self._idle) < self.max_idle_connections)
            ):
                self._idle.append(channel)
                return
        channel.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels, self._idle = self._idle, []
        for channel in channels:
            channel.close()

    # -- one request ------------------------------------------------------------------------

    def _exchange(
        self, channel: _Channel, frame: bytes, reply_seconds: float
    ) -> tuple[dict[str, Any], list[bytes]]:
        try:
            channel.sock.sendall(frame)
        except OSError as exc:
            # A frame that did not arrive whole fails its tag: the server never runs it.
            raise _NotProcessed(str(exc)) from exc
        try:
            reply, blobs = channel.reader.read(
                limits=_REPLY_LIMITS,
                mac=channel.mac,
                idle_deadline=time.monotonic() + reply_seconds,
                frame_seconds=reply_seconds,
            )
        except (OSError, ProtocolError) as exc:
            raise _ReplyLost(str(exc)) from exc
        if "bye" in reply:
            raise _NotProcessed(f"the server closed the connection ({reply['bye']})")
        return reply, blobs

    def _call(self, name: str, **kwargs: Any) -> Any:
        """Send one request and return its checked result.

        Raises:
            _ReplyLost: (only for operations that are not read-only) sent, no reply.
            ServerError / ValueError: the server refused or the operation failed there.
            BackendError: the server stayed unreachable for `retry_seconds`.
        """
        op = OPS[name]
        blobs: list[bytes] = []
        header = {"op": name, "args": protocol.to_plain(kwargs, blobs)}
        reply_seconds = self.request_timeout_seconds
        if name == "wait_for_change":
            reply_seconds += max(float(kwargs["timeout"]), 0.0)
        deadline = time.monotonic() + self.retry_seconds
        failures = 0
        while True:
            channel = self._acquire(deadline)
            # Each connection has its own session key, so the frame is made per connection.
            frame = protocol.encode_frame(header, blobs, channel.mac)
            try:
                self._check_size(frame, channel, name)
            except BackendError:
                channel.close()  # its MAC counted a frame that was never sent
                raise
            try:
                reply, reply_blobs = self._exchange(channel, frame, reply_seconds)
            except (_NotProcessed, _ReplyLost) as exc:
                channel.close()
                if isinstance(exc, _ReplyLost) and not op.read_only:
                    raise
                # Safe to send again. Once is routine (a connection the server had just
                # closed); again and again means trouble: pause, and give up at the deadline.
                failures += 1
                logger.debug("%s got no answer (%s); sending it again", name, exc)
                if time.monotonic() >= deadline:
                    raise BackendError(
                        f"{name}: the server at {self.url} kept closing the connection ({exc})"
                    ) from None
                if failures > 1:
                    time.sleep(min(0.01 * 2**failures, 1.0) * (0.5 + random.random()))
                continue
            self._release(channel)
            return self._result(op, name, reply, reply_blobs)

    @staticmethod
    def _check_size(frame: bytes, channel: _Channel, name: str) -> None:
        header_len, body_len = struct.unpack("!II", frame[:8])
        if header_len > channel.max_header or body_len > channel.max_body:
            raise BackendError(
                f"{name} request too large for the server: header {header_len} bytes (limit "
                f"{channel.max_header}), payloads {body_len} bytes (limit {channel.max_body}); "
                "send fewer or smaller items per call, or raise the server's "
                "--max-header-bytes / --max-body-bytes"
            )

    @staticmethod
    def _result(op: protocol.Op, name: str, reply: dict[str, Any], blobs: list[bytes]) -> Any:
        if "error" in reply:
            kind, message = str(reply.get("error")), str(reply.get("message", ""))
            if kind == "ValueError":
                raise ValueError(message)
            raise ServerError(kind, message)
        if "ok" not in reply:
            raise ProtocolError(f"reply to {name} has neither ok nor error")
        try:
            return op.result(protocol.attach_blobs(reply["ok"], blobs))
        except ProtocolError as exc:
            raise ProtocolError(f"reply to {name}: {exc}") from None

    def _settle(self, name: str, **kwargs: Any) -> Any:
        """`_call` for an operation that is harmless to repeat: resend after a lost reply."""
        for _ in range(_MAX_SETTLE_ATTEMPTS):
            try:
                return self._call(name, **kwargs)
            except _ReplyLost as exc:
                logger.warning(
                    "lost the reply to %s from %s (%s); sending it again", name, self.url, exc
                )
        raise BackendError(
            f"{name}: {_MAX_SETTLE_ATTEMPTS} replies in a row were lost from {self.url}"
        )

    # -- callers ----------------------------------------------------------------------------

    def submit(self, invocations: Sequence[NewInvocation]) -> list[str]:
        if not invocations:
            return []
        items = list(invocations)
        try:
            result: list[str] = self._call("submit", invocations=items)
            return result
        except _ReplyLost as exc:
            logger.warning(
                "lost the reply to a submit to %s (%s); checking what was stored", self.url, exc
            )
        for _ in range(_MAX_SETTLE_ATTEMPTS):
            # Stored ids stand for themselves. The rest were not stored: either the lost
            # attempt did not commit, or their registration key matched a waiting
            # invocation; sending just those again stores them or names that invocation.
            ids = [i.invocation_id for i in items]
            stored = {i for i in ids if self.get_invocation(i) is not None}
            rest = [i for i in items if i.invocation_id not in stored]
            if not rest:
                return ids
            try:
                answer = iter(self._call("submit", invocations=rest))
            except _ReplyLost as exc:
                logger.warning("lost the reply to a submit to %s again (%s)", self.url, exc)
                continue
            return [i if i in stored else next(answer) for i in ids]
        raise BackendError(
            f"submit: {_MAX_SETTLE_ATTEMPTS} replies in a row were lost from {self.url}"
        )

    def get_outcomes(self, invocation_ids: Sequence[str]) -> list[Outcome]:
        if not invocation_ids:
            return []
        result: list[Outcome] = self._call("get_outcomes", invocation_ids=list(invocation_ids))
        return result

    def get_finished_since(self, seq: int) -> tuple[int, list[str]]:
        result: tuple[int, list[str]] = self._call("get_finished_since", seq=seq)
        return result

    def get_invocation(self, invocation_id: str) -> Optional[InvocationRecord]:
        result: Optional[InvocationRecord] = self._call(
            "get_invocation", invocation_id=invocation_id
        )
        return result

    def count_live_workers(self, app_id: str, since: float) -> int:
        result: int = self._call("count_live_workers", app_id=app_id, since=since)
        return result

    def cancel(self, invocation_id: str, now: float) -> bool:
        try:
            result: bool = self._call("cancel", invocation_id=invocation_id, now=now)
            return result
        except _ReplyLost as exc:
            logger.warning("lost the reply to a cancel at %s (%s); sending it again", self.url, exc)
        if self._settle("cancel", invocation_id=invocation_id, now=now):
            return True
        # Refused the second time: the lost attempt may be what cancelled it.
        record = self.get_invocation(invocation_id)
        return record is not None and record.status is InvocationStatus.CANCELLED

    def get_args(self, invocation_id: str) -> Optional[bytes]:
        result: Optional[bytes] = self._call("get_args", invocation_id=invocation_id)
        return result

    def get_history(self, invocation_id: str) -> list[HistoryEntry]:
        result: list[HistoryEntry] = self._call("get_history", invocation_id=invocation_id)
        return result

    def get_stats(self, app_id: str, now: float) -> AppStats:
        result: AppStats = self._call("get_stats", app_id=app_id, now=now)
        return result

    def list_invocations(
        self,
        app_id: str,
        *,
        status: Optional[InvocationStatus] = None,
        task_name: Optional[str] = None,
        limit: int = 50,
    ) -> list[InvocationRecord]:
        result: list[InvocationRecord] = self._call(
            "list_invocations", app_id=app_id, status=status, task_name=task_name, limit=limit
        )
        return result

    def requeue(
        self,
        app_id: str,
        *,
        invocation_ids: Optional[Sequence[str]] = None,
        task_name: Optional[str] = None,
        now: float,
    ) -> int:
        ids = None if invocation_ids is None else list(invocation_ids)
        result: int = self._settle(
            "requeue", app_id=app_id, invocation_ids=ids, task_name=task_name, now=now
        )
        return result

    def purge(self, app_id: str) -> int:
        result: int = self._settle("purge", app_id=app_id)
        return result

    def purge_expired(self, app_id: str, finished_before: float, limit: int) -> int:
        result: int = self._settle(
            "purge_expired", app_id=app_id, finished_before=finished_before, limit=limit
        )
        return result

    # -- runners ----------------------------------------------------------------------------

    def claim(
        self,
        *,
        app_id: str,
        worker_id: str,
        limit: int,
        now: float,
        lease_seconds: float,
        max_lost_attempts: int,
    ) -> list[ClaimedInvocation]:
        result: list[ClaimedInvocation] = self._settle(
            "claim",
            app_id=app_id,
            worker_id=worker_id,
            limit=limit,
            now=now,
            lease_seconds=lease_seconds,
            max_lost_attempts=max_lost_attempts,
        )
        return result

    def complete_many(self, outcomes: Sequence[Outcome], worker_id: str, now: float) -> list[bool]:
        if not outcomes:
            return []
        items = list(outcomes)
        try:
            flags: list[bool] = self._call(
                "complete_many", outcomes=items, worker_id=worker_id, now=now
            )
            return flags
        except _ReplyLost as exc:
            logger.warning(
                "lost the reply to storing %d outcome(s) at %s (%s); sending them again",
                len(items),
                self.url,
                exc,
            )
        flags = self._settle("complete_many", outcomes=items, worker_id=worker_id, now=now)
        refused = [o for o, ok in zip(items, flags) if not ok]
        if refused:
            # Refused now, but maybe because the lost attempt stored them: same outcome stored
            # means it was ours.
            stored = {
                o.invocation_id: o for o in self.get_outcomes([o.invocation_id for o in refused])
            }
            flags = [ok or stored.get(o.invocation_id) == o for o, ok in zip(items, flags)]
        return flags

    def release(self, worker_id: str, now: float) -> int:
        result: int = self._settle("release", worker_id=worker_id, now=now)
        return result

    def expire_leases(self, worker_id: str) -> int:
        result: int = self._settle("expire_leases", worker_id=worker_id)
        return result

    def heartbeat(
        self, worker: WorkerInfo, running: Sequence[str], now: float, lease_seconds: float
    ) -> list[str]:
        result: list[str] = self._settle(
            "heartbeat", worker=worker, running=list(running), now=now, lease_seconds=lease_seconds
        )
        return result

    def remove_worker(self, worker_id: str) -> None:
        self._settle("remove_worker", worker_id=worker_id)

    def next_run_at(self, app_id: str) -> Optional[float]:
        result: Optional[float] = self._call("next_run_at", app_id=app_id)
        return result

    def get_cron_moment(self, app_id: str, task_name: str) -> Optional[float]:
        result: Optional[float] = self._call("get_cron_moment", app_id=app_id, task_name=task_name)
        return result

    def advance_cron(
        self,
        app_id: str,
        task_name: str,
        expected: Optional[float],
        moment: float,
        invocations: Sequence[NewInvocation],
    ) -> bool:
        kwargs = dict(
            app_id=app_id,
            task_name=task_name,
            expected=expected,
            moment=moment,
            invocations=list(invocations),
        )
        try:
            result: bool = self._call("advance_cron", **kwargs)
            return result
        except _ReplyLost as exc:
            logger.warning(
                "lost the reply to advance_cron at %s (%s); sending it again", self.url, exc
            )
        if self._settle("advance_cron", **kwargs):
            return True
        # Refused the second time: if the moment is where we moved it, the lost attempt did
        # it (the moment fired once either way).
        return self.get_cron_moment(app_id, task_name) == moment

    # -- waiting ----------------------------------------------------------------------------

    def wait_for_change(self, token: Optional[int], timeout: float) -> int:
        result: int = self._call("wait_for_change", token=token, timeout=float(timeout))
        return result


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of a `tcp://host:port` or `tcps://host:port` URL.

    Raises:
        ConfigError: another scheme, or no host or port.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"broker_url {url!r}: {exc}") from None
    if parts.scheme not in ("tcp", "tcps") or not parts.hostname or port is None:
        raise ConfigError(
            f"broker_url: expected 'tcp://host:port' or 'tcps://host:port', got {url!r}"
        )
    return parts.hostname, port, parts.scheme == "tcps"


def backend_from_config(conf: PynencConfig) -> RemoteBackend:
    """The remote backend `conf` describes: `broker_url`, the secret (`broker_secret`, else
    `broker_secret_file`) and, for tcps://, `broker_tls_ca_file` (default: system CAs).

    Raises:
        ConfigError: no secret, an unreadable secret file, or a CA file without tcps://.
    """
    url = str(conf.broker_url)
    host, port, tls = parse_broker_url(url)
    secret_text: Optional[str] = getattr(conf, "broker_secret", None)
    if secret_text:
        secret = secret_text.strip().encode()
    elif conf.broker_secret_file:
        secret = protocol.read_secret_file(conf.broker_secret_file)
    else:
        raise ConfigError(
            f"broker_url is {url} but no secret is configured: set broker_secret_file "
            "(PYNENC__BROKER_SECRET_FILE) to the file the server printed, or "
            "PYNENC__BROKER_SECRET"
        )
    ca_file: Optional[str] = getattr(conf, "broker_tls_ca_file", None)
    if ca_file and not tls:
        raise ConfigError(
            f"broker_tls_ca_file is set but broker_url {url} is plain TCP; use tcps://"
        )
    context = None
    if tls:
        try:
            context = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"broker_tls_ca_file {ca_file!r}: {exc}") from exc
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    return RemoteBackend(
        host, port, secret=secret, ssl_context=context, retry_seconds=conf.broker_retry_seconds
    )
