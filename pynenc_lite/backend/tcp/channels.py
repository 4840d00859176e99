"""The client's connections to one server: connecting, authenticating, pooling, reconnecting.

`ChannelPool` hands a thread an authenticated connection (`Channel`) for one request and
takes it back afterwards, so a long-poll never blocks other threads' requests. When the
server cannot be reached it reconnects with growing pauses until the caller's deadline.
After a fork the child drops the parent's connections (they must never be shared).

It does not send requests or decide what is sent again after a lost reply: that is
`client.RemoteBackend`.
"""

from __future__ import annotations

import logging
import os
import random
import select
import socket
import ssl
import threading
import time
from typing import Any, Optional

from pynenc_lite.backend.tcp import wire
from pynenc_lite.backend.tcp.ops import SCHEMA
from pynenc_lite.backend.tcp.wire import AuthenticationError, ProtocolError, SessionMac
from pynenc_lite.errors import BackendError

logger = logging.getLogger(__name__)


class Channel:
    """One authenticated connection, with the limits its server announced in its hello.
    Used by one thread at a time (the pool sees to it)."""

    def __init__(
        self,
        sock: socket.socket,
        reader: wire.FrameReader,
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


class ChannelPool:
    """Authenticated connections to one server, shared by the threads of one process.

    The arguments are those of `client.RemoteBackend` of the same names (`secret` and the
    TLS context are used for every new connection).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        secret: bytes,
        ssl_context: Optional[ssl.SSLContext],
        connect_timeout_seconds: float,
        max_idle_connections: int,
    ) -> None:
        if not secret:
            raise ValueError("secret must not be empty")
        self.host = host
        self.port = int(port)
        self.secret = secret
        self.ssl_context = ssl_context
        self.connect_timeout_seconds = connect_timeout_seconds
        self.max_idle_connections = max_idle_connections
        host_part = f"[{host}]" if ":" in host else host
        self.url = f"{'tcps' if ssl_context else 'tcp'}://{host_part}:{self.port}"
        # Guards idle, _pid, _closed and _outage.
        self._lock = threading.Lock()
        self.idle: list[Channel] = []
        self._pid = os.getpid()
        self._closed = False
        self._outage = False  # logged once per outage, not once per retry

    def _connect(self) -> Channel:
        """Open and authenticate one connection.

        Raises:
            AuthenticationError: the secrets or the versions differ (not worth retrying).
            OSError, ProtocolError: the server is unreachable or not answering properly.
        """
        timeout = self.connect_timeout_seconds
        deadline = time.monotonic() + timeout
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=self.host)
            reader = wire.FrameReader(sock)
            mac, hello = wire.client_handshake(
                sock, reader, self.secret, schema=SCHEMA, deadline=deadline, server=self.url
            )
            return Channel(sock, reader, mac, hello)
        except BaseException:
            sock.close()
            raise

    def acquire(self, deadline: float) -> Channel:
        """A fresh-enough connection from the pool, or a new one (retrying until `deadline`).

        Raises:
            AuthenticationError: the handshake failed (secrets, versions, TLS certificate).
            BackendError: the pool was closed, or the server stayed unreachable.
        """
        delay = 0.02
        while True:
            with self._lock:
                if self._closed:
                    raise BackendError(f"the client of {self.url} was closed")
                if self._pid != os.getpid():
                    self.idle, self._pid = [], os.getpid()  # the parent's: never touch them
                channel = self.idle.pop() if self.idle else None
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
                        "cannot reach the server at %s (%s); retrying for up to %.0fs",
                        self.url,
                        exc,
                        max(deadline - now, 0.0),
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

    def release(self, channel: Channel) -> None:
        """Give back a channel whose request was answered (kept for the next, if room)."""
        channel.last_used = time.monotonic()
        with self._lock:
            if (
                not self._closed
                and self._pid == os.getpid()
                and (len(self.idle) < self.max_idle_connections)
            ):
                self.idle.append(channel)
                return
        channel.close()

    def close(self) -> None:
        """Close every idle channel; `acquire` raises from now on (idempotent)."""
        with self._lock:
            self._closed = True
            channels, self.idle = self.idle, []
        for channel in channels:
            channel.close()
