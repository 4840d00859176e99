"""The TCP client: the `Backend` contract spoken to a `pynenc_lite.server` over a socket.

Selected by configuration alone (`broker_url = "tcp://host:port"` plus the secret); see
`backend_from_config`. Each method is one request, answered by one atomic backend operation
on the server. `wait_for_change` is a long-poll the server answers when something changes,
so a waiting client sends one request per change (or per second when idle), never a spin.

    calling thread ── take a connection from the pool (or connect + authenticate) ──┐
         ▲                                                                          ▼
         └── result ◄── check the reply's shape ◄── one frame back ◄── one frame out

Connections come from a `channels.ChannelPool` shared by the threads of this process (one
per request, so a long-poll never blocks other threads' requests).

Most methods are generated from the contract (`_proxy`): one line each in `RemoteBackend`,
the arguments checked against `ops.OPS`. Only the operations whose lost reply needs more
than sending them again are written out here.

When the server goes away (restart, network), requests reconnect with growing pauses for up
to `retry_seconds`. What is sent again depends on whether the request may have been
processed. This list is the one place these rules are written (`ops._ALLOWED` marks each
operation RESEND or BY_HAND accordingly):
- not processed for sure (the send failed, or the server answered "bye": it closes an idle
  connection or stops without reading further): sent again, whatever the operation.
- maybe processed (sent, then no reply), RESEND operations: sent again (a few times at most).
  - reads, including `wait_for_change` (a spurious return is allowed).
  - `heartbeat`, `release`, `expire_leases`, `remove_worker`, `requeue`, `purge`,
    `purge_expired`: repeating them changes nothing more (a repeated release or requeue
    reports 0, a repeated purge 0 deleted).
  - `claim`: if the lost reply had leased invocations to this worker, nobody runs them
    for now: heartbeats extend only the leases of what the worker says it runs, so those
    leases run out after `lease_seconds` and a later claim recovers them (counting a lost
    attempt). Nothing is lost; it waits. This needs a lost reply after the commit.
- maybe processed, BY_HAND operations (the methods below):
  - `submit`: ids are fresh uuids, so the client asks which of them are stored (those stand
    for themselves) and sends only the others again (stored now, or named after the waiting
    invocation their registration key matches). Nothing is stored twice.
  - `complete_many`: sent again; a final outcome refused the second time is compared with
    what is stored, and counts as accepted when it is the same outcome (a RETRY outcome has
    no stored copy to compare, so it is reported refused: the runner only logs that).
  - `cancel`, `advance_cron`: sent again; refused the second time, the stored state tells
    whether the first attempt did it (status CANCELLED; the cron moment moved to ours).

This module does not pickle or unpickle: payloads pass through as bytes.
"""

from __future__ import annotations

import functools
import inspect
import logging
import random
import ssl
import struct
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, TypeVar, cast

from pynenc_lite.backend.base import Backend, NewInvocation, Outcome
from pynenc_lite.backend.tcp import ops, wire
from pynenc_lite.backend.tcp.channels import Channel, ChannelPool
from pynenc_lite.backend.tcp.ops import OPS
from pynenc_lite.backend.tcp.wire import AuthenticationError, FrameLimits, ProtocolError
from pynenc_lite.errors import BackendError, ConfigError
from pynenc_lite.status import InvocationStatus

if TYPE_CHECKING:
    from pynenc_lite.conf import PynencConfig

__all__ = [
    "AuthenticationError",
    "RemoteBackend",
    "ServerError",
    "backend_from_config",
    "parse_broker_url",
]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# Replies come from a server that proved it knows the secret, and their tags are checked
# after reading, so the client's bounds only stop a broken stream from eating all memory.
_REPLY_LIMITS = FrameLimits(max_header_bytes=1 << 30, max_body_bytes=(1 << 32) - 1)
# A maybe-processed request is settled (resent, checked) at most this many times.
_MAX_SETTLE_ATTEMPTS = 5


class ServerError(BackendError):
    """The server answered a request with an error; `kind` is the error's type name."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class _NotProcessed(Exception):
    """The request certainly did not run on the server: safe to send again."""


class _ReplyLost(Exception):
    """The request was sent but no reply came: it may or may not have run."""


def _proxy(method: F) -> F:
    """A `RemoteBackend` method for the `Backend` method `method`: one request, sent again
    after a lost reply. Its name, docstring and signature are `method`'s.

    Raises:
        TypeError: (at import) the operation is marked BY_HAND and needs a method of its own.
    """
    name = method.__name__
    if OPS[name].after_lost_reply != ops.RESEND:
        raise TypeError(f"{name} is settled BY_HAND after a lost reply: write its method")
    params = tuple(OPS[name].params)
    expected = frozenset(params)
    defaults = {
        p.name: p.default
        for p in inspect.signature(method).parameters.values()
        if p.default is not inspect.Parameter.empty
    }

    # updated=(): not the contract's __dict__, whose __isabstractmethod__ would make this
    # method abstract again.
    @functools.wraps(method, updated=())
    def proxy(self: RemoteBackend, *args: Any, **kwargs: Any) -> Any:
        call = dict(zip(params, args)) if args else {}
        if len(args) > len(params) or not call.keys().isdisjoint(kwargs):
            raise TypeError(f"{name}() takes the arguments ({', '.join(params)}), each once")
        call.update(kwargs)
        if call.keys() != expected:
            call = {**defaults, **call}
            if call.keys() != expected:
                raise TypeError(f"{name}() takes exactly the arguments ({', '.join(params)})")
        return self._resend(name, call)

    return cast(F, proxy)


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
        self._pool = ChannelPool(
            host,
            port,
            secret=secret,
            ssl_context=ssl_context,
            connect_timeout_seconds=connect_timeout_seconds,
            max_idle_connections=max_idle_connections,
        )
        self.host, self.port = host, self._pool.port
        self.retry_seconds = retry_seconds
        self.request_timeout_seconds = request_timeout_seconds
        self._retry_budget: Optional[float] = None  # set_retry_budget: a shorter limit

    @property
    def url(self) -> str:
        """The `broker_url` of this backend."""
        return self._pool.url

    def __repr__(self) -> str:
        return f"RemoteBackend({self.url!r})"

    def close(self) -> None:
        self._pool.close()

    def set_retry_budget(self, seconds: Optional[float]) -> None:
        self._retry_budget = None if seconds is None else max(float(seconds), 0.0)

    # -- one request ------------------------------------------------------------------------

    def _exchange(
        self, channel: Channel, frame: bytes, reply_seconds: float
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

    def _call(self, name: str, kwargs: dict[str, Any]) -> Any:
        """Send one request and return its checked result.

        Raises:
            _ReplyLost: (only for operations that are not read-only) sent, no reply.
            ServerError / ValueError: the server refused or the operation failed there.
            BackendError: the server stayed unreachable for `retry_seconds`.
        """
        op = OPS[name]
        blobs: list[bytes] = []
        header = {"op": name, "args": ops.to_plain(kwargs, blobs)}
        reply_seconds = self.request_timeout_seconds
        if name == "wait_for_change":
            reply_seconds += max(float(kwargs["timeout"]), 0.0)
        budget = self._retry_budget
        retry_seconds = self.retry_seconds if budget is None else min(budget, self.retry_seconds)
        deadline = time.monotonic() + retry_seconds
        failures = 0
        while True:
            channel = self._pool.acquire(deadline)
            # Each connection has its own session key, so the frame is made per connection.
            frame = wire.encode_frame(header, blobs, channel.mac)
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
            self._pool.release(channel)
            return self._result(op, name, reply, reply_blobs)

    @staticmethod
    def _check_size(frame: bytes, channel: Channel, name: str) -> None:
        header_len, body_len = struct.unpack("!II", frame[:8])
        if header_len > channel.max_header or body_len > channel.max_body:
            raise BackendError(
                f"{name} request too large for the server: header {header_len} bytes (limit "
                f"{channel.max_header}), payloads {body_len} bytes (limit {channel.max_body}); "
                "send fewer or smaller items per call, or raise the server's "
                "--max-header-bytes / --max-body-bytes"
            )

    @staticmethod
    def _result(op: ops.Op, name: str, reply: dict[str, Any], blobs: list[bytes]) -> Any:
        if "error" in reply:
            kind, message = str(reply.get("error")), str(reply.get("message", ""))
            if kind == "ValueError":
                raise ValueError(message)
            raise ServerError(kind, message)
        if "ok" not in reply:
            raise ProtocolError(f"reply to {name} has neither ok nor error")
        try:
            return op.result(ops.attach_blobs(reply["ok"], blobs))
        except ProtocolError as exc:
            raise ProtocolError(f"reply to {name}: {exc}") from None

    def _resend(self, name: str, kwargs: dict[str, Any]) -> Any:
        """`_call`, sending the request again after a lost reply (at most a few times)."""
        for _ in range(_MAX_SETTLE_ATTEMPTS):
            try:
                return self._call(name, kwargs)
            except _ReplyLost as exc:
                logger.warning(
                    "lost the reply to %s from %s (%s); sending it again", name, self.url, exc
                )
        raise BackendError(
            f"{name}: {_MAX_SETTLE_ATTEMPTS} replies in a row were lost from {self.url}"
        )

    def _call_noting_lost_reply(self, name: str, kwargs: dict[str, Any]) -> tuple[Any, bool]:
        """`_call`, and after a lost reply `_resend`. Returns the result and whether a reply
        was lost (then the caller finds out what the lost attempt did)."""
        try:
            return self._call(name, kwargs), False
        except _ReplyLost as exc:
            logger.warning(
                "lost the reply to %s from %s (%s); sending it again", name, self.url, exc
            )
        return self._resend(name, kwargs), True

    # -- BY_HAND: operations whose lost reply needs more than a resend (module docstring) --

    def submit(self, invocations: Sequence[NewInvocation]) -> list[str]:
        if not invocations:
            return []
        items = list(invocations)
        try:
            result: list[str] = self._call("submit", {"invocations": items})
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
                answer = iter(self._call("submit", {"invocations": rest}))
            except _ReplyLost as exc:
                logger.warning("lost the reply to a submit to %s again (%s)", self.url, exc)
                continue
            return [i if i in stored else next(answer) for i in ids]
        raise BackendError(
            f"submit: {_MAX_SETTLE_ATTEMPTS} replies in a row were lost from {self.url}"
        )

    def complete_many(self, outcomes: Sequence[Outcome], worker_id: str, now: float) -> list[bool]:
        if not outcomes:
            return []
        items = list(outcomes)
        kwargs = {"outcomes": items, "worker_id": worker_id, "now": now}
        flags: list[bool]
        flags, lost = self._call_noting_lost_reply("complete_many", kwargs)
        refused = [o.invocation_id for o, ok in zip(items, flags) if not ok]
        if lost and refused:
            # Refused now, but maybe because the lost attempt stored them: the same outcome
            # stored means it was ours.
            stored = {o.invocation_id: o for o in self.get_outcomes(refused)}
            flags = [ok or stored.get(o.invocation_id) == o for o, ok in zip(items, flags)]
        return flags

    def cancel(self, invocation_id: str, now: float) -> bool:
        done: bool
        done, lost = self._call_noting_lost_reply(
            "cancel", {"invocation_id": invocation_id, "now": now}
        )
        if done or not lost:
            return done
        # Refused the second time: the lost attempt may be what cancelled it.
        record = self.get_invocation(invocation_id)
        return record is not None and record.status is InvocationStatus.CANCELLED

    def advance_cron(
        self,
        app_id: str,
        task_name: str,
        expected: Optional[float],
        moment: float,
        invocations: Sequence[NewInvocation],
    ) -> bool:
        kwargs = {
            "app_id": app_id,
            "task_name": task_name,
            "expected": expected,
            "moment": moment,
            "invocations": list(invocations),
        }
        done: bool
        done, lost = self._call_noting_lost_reply("advance_cron", kwargs)
        if done or not lost:
            return done
        # Refused the second time: if the moment is where we moved it, the lost attempt did
        # it (the moment fired once either way).
        return self.get_cron_moment(app_id, task_name) == moment

    # -- RESEND: generated from the contract (see `_proxy`) --------------------------------

    get_outcomes = _proxy(Backend.get_outcomes)
    get_finished_since = _proxy(Backend.get_finished_since)
    get_invocation = _proxy(Backend.get_invocation)
    count_live_workers = _proxy(Backend.count_live_workers)
    get_args = _proxy(Backend.get_args)
    get_history = _proxy(Backend.get_history)
    get_stats = _proxy(Backend.get_stats)
    count_invocations_by_app = _proxy(Backend.count_invocations_by_app)
    list_invocations = _proxy(Backend.list_invocations)
    requeue = _proxy(Backend.requeue)
    purge = _proxy(Backend.purge)
    purge_expired = _proxy(Backend.purge_expired)
    claim = _proxy(Backend.claim)
    release = _proxy(Backend.release)
    expire_leases = _proxy(Backend.expire_leases)
    heartbeat = _proxy(Backend.heartbeat)
    remove_worker = _proxy(Backend.remove_worker)
    next_run_at = _proxy(Backend.next_run_at)
    get_cron_moment = _proxy(Backend.get_cron_moment)
    wait_for_change = _proxy(Backend.wait_for_change)


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
        secret = wire.read_secret_file(conf.broker_secret_file)
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
