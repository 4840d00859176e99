"""The TCP server engine: serves one `Backend` to authenticated clients, one thread each.

    accept thread                     connection threads (one per connection, pooled)
    ─────────────                     ──────────────────────────────────────────────
    accept ── over max_connections? ─► close at once (logged)
       │                              TLS handshake (optional), then hmac challenge-response
       └── hand the socket ─────────► loop: read one frame (bounded size, idle deadline)
                                            check the tag, the operation, every argument
                                            call the backend ─► SQLiteBackend (one transaction)
                                            reply; after a write, wake the change feed
    change feed: the server-wide token of wait_for_change. Writes through this server that
    can make work or outcomes appear bump it at once; a monitor thread (running only while
    somebody waits) bumps it when the SQLite file changed otherwise (other processes on this
    host, quiet writes), looking every 20-50 ms.

What it refuses to do: unpickle anything (payloads are opaque bytes: nothing here, in `wire`
or in `ops` calls pickle, and no field of the protocol is a pickle; a test checks with an
audit hook), answer anybody who has not proven knowledge of the shared secret, or run an
operation that is not in `ops.OPS`. A frame that breaks the format closes only its own
connection, with a log line; everybody else is served on.

It does not parse a command line or read secrets (that is `pynenc_lite.server`), decide how
clients retry (`client`), or what an operation means (the backend does).

It is about 500 lines because a connection's whole life (accept, authenticate, serve, close)
is one concept that a reviewer of the server's security must read in one place.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import queue
import secrets
import socket
import socketserver
import ssl
import threading
import time
from typing import Any, Callable, Optional

from pynenc_lite.backend.base import Backend
from pynenc_lite.backend.tcp import ops, wire
from pynenc_lite.backend.tcp.ops import OPS
from pynenc_lite.backend.tcp.wire import FrameLimits, ProtocolError, SessionMac
from pynenc_lite.errors import BackendError

logger = logging.getLogger(__name__)

# How long a monitor's single look at the database may block before it rechecks whether
# anybody still waits.
_MONITOR_SLICE_SECONDS = 0.5
# After writes, the backend's housekeeping (`Backend.maintain`: SQLite checkpoints its WAL)
# runs at most this often, in a thread of its own, off every request's path. In a client
# process the hub's watcher does this; in the server nobody else would.
_MAINTENANCE_SECONDS = 0.5


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """Bounds on what one client can hold or make the server hold."""

    max_connections: int = 128  # each is a thread; long-polls hold theirs while they wait
    idle_timeout_seconds: float = 300.0  # no frame for this long: the connection is closed
    handshake_timeout_seconds: float = 10.0  # TLS + authentication must be done by then
    frame_timeout_seconds: float = 60.0  # once a frame starts, all of it within this time
    max_wait_seconds: float = 30.0  # longest single wait_for_change; clients ask again
    limits: FrameLimits = FrameLimits()


# -- the change feed -----------------------------------------------------------------------


class ChangeFeed:
    """The token `wait_for_change` hands out: a server-wide counter of possible changes.

    A SQLite `data_version` belongs to one database connection and each server thread has
    its own, so it cannot be the token clients carry from one connection to another. This
    counter can. It starts at a random value (62 bits), so a token from before a server
    restart is all but certain to differ from the new ones: a client waiting across a
    restart sees a change (possibly spurious, which the protocol allows) instead of
    missing one.
    """

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        # Guards _epoch, _waiters and _closed; notified on every bump, when the first waiter
        # arrives (the monitor wakes up) and on close.
        self._cond = threading.Condition()
        self._epoch = secrets.randbits(62)
        self._waiters = 0
        self._closed = False
        self._monitor: Optional[threading.Thread] = None

    def bump(self) -> None:
        """Say that stored data may have changed: every waiter returns."""
        with self._cond:
            self._epoch += 1
            self._cond.notify_all()

    def wait(self, token: Optional[int], timeout: float) -> int:
        """The backend's `wait_for_change`, answered from the counter."""
        with self._cond:
            if token is None or token != self._epoch or self._closed:
                return self._epoch
            self._waiters += 1
            if self._monitor is None:
                self._monitor = threading.Thread(
                    target=self._watch_database, name="pynenc-lite-feed-monitor", daemon=True
                )
                self._monitor.start()
            self._cond.notify_all()
            try:
                self._cond.wait_for(lambda: self._epoch != token or self._closed, timeout)
            finally:
                self._waiters -= 1
            return self._epoch

    def close(self) -> None:
        """Release every waiter now and tell the monitor to stop (see `join_monitor`)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def join_monitor(self, timeout: float) -> bool:
        """After `close`, wait until the monitor thread has ended (it may be inside one look
        at the database, at most `_MONITOR_SLICE_SECONDS`), so the backend can be closed
        without a thread still using it. Returns False if it is still running."""
        with self._cond:
            monitor = self._monitor
        if monitor is not None:
            monitor.join(timeout)
            return not monitor.is_alive()
        return True

    def _watch_database(self) -> None:
        # Other processes on this host may share the SQLite file (local workers): their
        # commits are seen only through the database itself.
        token: Optional[int] = None
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._waiters > 0 or self._closed)
                if self._closed:
                    return
            try:
                if token is None:
                    token = self._backend.wait_for_change(None, 0)
                new_token = self._backend.wait_for_change(token, _MONITOR_SLICE_SECONDS)
            except Exception:
                with self._cond:
                    if self._closed:
                        return  # the backend closed under a look at it: we are stopping
                logger.exception("watching the database for changes failed; retrying in 1s")
                with self._cond:
                    self._cond.wait(1.0)
                continue
            if new_token != token:
                token = new_token
                self.bump()


# -- the server ----------------------------------------------------------------------------


@dataclasses.dataclass
class _Connection:
    sock: socket.socket
    peer: str
    busy: bool = False  # a request is being answered: let it finish before closing


class _Handler(socketserver.BaseRequestHandler):
    server: BrokerServer

    def handle(self) -> None:
        self.server.serve_connection(self.request, self.client_address)


class BrokerServer(socketserver.TCPServer):
    """Serves `backend` over TCP to clients that know `secret`.

    Args:
        address: (host, port) to listen on; port 0 picks a free one (see `server_address`).
        backend: what the operations run on (a `SQLiteBackend` in the CLI).
        secret: the shared secret clients must prove they know.
        ssl_context: a server-side TLS context, or None for plain TCP.
        settings: limits and timeouts.
    """

    allow_reuse_address = True  # a restart can bind the port while old sockets linger
    # socketserver's default backlog of 5 drops SYNs when clients reconnect together (after a
    # restart), and a dropped SYN costs the client a whole second before it is resent.
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        backend: Backend,
        *,
        secret: bytes,
        ssl_context: Optional[ssl.SSLContext] = None,
        settings: ServerSettings = ServerSettings(),
    ) -> None:
        if not secret:
            raise ValueError("secret must not be empty")
        self.address_family = _family_of(address[0])
        super().__init__(address, _Handler)
        self.backend = backend
        self.settings = settings
        self.feed = ChangeFeed(backend)
        self._secret = secret
        self._ssl_context = ssl_context
        # The dispatch table: protocol name -> callable taking the checked keyword arguments.
        # Every allowed operation is a backend method of the same name except the wait,
        # which the change feed answers.
        self._handlers: dict[str, Callable[..., Any]] = {
            name: getattr(backend, name) for name in OPS if name != "wait_for_change"
        }
        self._handlers["wait_for_change"] = self._wait_for_change
        # Guards _connections, _closing, _wrote and the thread pool counters below; notified
        # after writes (for the maintenance thread) and on stop.
        self._lock = threading.Lock()
        self._wake_maintenance = threading.Condition(self._lock)
        self._wrote = False
        self._maintenance: Optional[threading.Thread] = None
        self._connections: dict[int, _Connection] = {}
        self._closing = False
        # Connection threads are pooled so their number, and the SQLite connections they
        # open (one per thread), stay bounded by the peak number of clients.
        self._jobs: queue.SimpleQueue[Optional[tuple[socket.socket, Any]]] = queue.SimpleQueue()
        self._idle_threads = 0
        self._threads = 0
        self._serving: Optional[threading.Thread] = None

    def _wait_for_change(self, token: Optional[int], timeout: float) -> int:
        # Bounded: a long-poll holds a connection thread while it waits.
        return self.feed.wait(token, min(max(timeout, 0.0), self.settings.max_wait_seconds))

    @property
    def port(self) -> int:
        """The port it listens on (useful after binding port 0)."""
        return int(self.server_address[1])

    # -- accepting ------------------------------------------------------------------------

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self._lock:
            if self._closing:
                return False
            if len(self._connections) >= self.settings.max_connections:
                logger.warning(
                    "refused a connection from %s: already %d connections (--max-connections)",
                    peer_name(client_address),
                    len(self._connections),
                )
                return False
            self._connections[id(request)] = _Connection(request, peer_name(client_address))
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            if self._idle_threads > 0:
                self._idle_threads -= 1  # reserve an idle thread for this job
            else:
                self._threads += 1
                threading.Thread(
                    target=self._pool_thread, name=f"pynenc-lite-conn-{self._threads}", daemon=True
                ).start()
        self._jobs.put((request, client_address))

    def _pool_thread(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            request, client_address = job
            try:
                self.finish_request(request, client_address)
            except Exception:
                logger.exception("connection from %s failed", peer_name(client_address))
            finally:
                self.shutdown_request(request)
                with self._lock:
                    self._connections.pop(id(request), None)
                    self._idle_threads += 1

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._connections.pop(id(request), None)
        super().shutdown_request(request)

    # -- one connection -------------------------------------------------------------------

    def serve_connection(self, raw: socket.socket, client_address: Any) -> None:
        """Authenticate one client, then answer its requests until it leaves or misbehaves."""
        peer = peer_name(client_address)
        sock = raw
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            deadline = time.monotonic() + self.settings.handshake_timeout_seconds
            if self._ssl_context is not None:
                raw.settimeout(self.settings.handshake_timeout_seconds)
                sock = self._ssl_context.wrap_socket(raw, server_side=True)
                with self._lock:  # shutdown must reach the TLS socket from now on
                    if id(raw) in self._connections:
                        self._connections[id(raw)].sock = sock
            reader = wire.FrameReader(sock)
            mac = self._authenticate(sock, reader, peer, deadline)
            if mac is not None:
                self._serve_requests(sock, reader, raw, peer, mac)
        except ProtocolError as exc:
            logger.warning("closed the connection from %s: %s", peer, exc)
        except (OSError, ssl.SSLError) as exc:
            logger.info("connection from %s ended: %s", peer, exc)
        finally:
            if sock is not raw:
                sock.close()

    def _authenticate(
        self, sock: socket.socket, reader: wire.FrameReader, peer: str, deadline: float
    ) -> Optional[SessionMac]:
        s = self.settings
        offer = {
            "idle_timeout": s.idle_timeout_seconds,
            "max_wait": s.max_wait_seconds,
            "max_header_bytes": s.limits.max_header_bytes,
            "max_body_bytes": s.limits.max_body_bytes,
        }
        mac = wire.serve_handshake(
            sock, reader, self._secret, schema=ops.SCHEMA, offer=offer, deadline=deadline, peer=peer
        )
        if mac is not None:
            logger.debug("authenticated %s", peer)
        return mac

    def _serve_requests(
        self,
        sock: socket.socket,
        reader: wire.FrameReader,
        raw: socket.socket,
        peer: str,
        mac: SessionMac,
    ) -> None:
        s = self.settings
        while True:
            try:
                header, blobs = reader.read(
                    limits=s.limits,
                    mac=mac,
                    idle_deadline=time.monotonic() + s.idle_timeout_seconds,
                    frame_seconds=s.frame_timeout_seconds,
                )
            except wire.IdleTimeoutError:
                logger.info(
                    "closing the connection from %s: idle for %ss", peer, s.idle_timeout_seconds
                )
                self._say_bye(sock, mac, "idle")
                return
            with self._lock:
                state = self._connections.get(id(raw))
                if self._closing or state is None:
                    closing = True
                else:
                    closing, state.busy = False, True
            if closing:
                self._say_bye(sock, mac, "shutdown")  # not processed: safe for the client to resend
                return
            reply, reply_blobs = self._dispatch(header, blobs, peer)
            sock.sendall(wire.encode_frame(reply, reply_blobs, mac))
            with self._lock:
                if state is not None:
                    state.busy = False
                if self._closing:
                    return

    @staticmethod
    def _say_bye(sock: socket.socket, mac: SessionMac, reason: str) -> None:
        # "bye" tells the client that its next request, if already sent, was not processed.
        try:
            sock.sendall(wire.encode_frame({"bye": reason}, [], mac))
        except OSError:
            pass

    def _dispatch(
        self, header: dict[str, Any], blobs: list[bytes], peer: str
    ) -> tuple[dict[str, Any], list[bytes]]:
        """Run one request; every failure becomes an error reply (the connection stays)."""
        name = header.get("op")
        op = OPS.get(name) if isinstance(name, str) else None
        if op is None or not isinstance(name, str):
            return _error(
                "UnknownOperation",
                f"unknown operation {name!r}; this server allows {', '.join(sorted(OPS))}",
            ), []
        try:
            if set(header) != {"op", "args"}:
                raise ProtocolError("a request has exactly the fields op, args and blobs")
            args = ops.check_args(op, ops.attach_blobs(header["args"], blobs))
        except ProtocolError as exc:
            logger.warning("bad %s request from %s: %s", name, peer, exc)
            return _error("BadRequest", f"{name}: {exc}"), []
        try:
            result = self._handlers[name](**args)
        except (ValueError, BackendError) as exc:
            return _error(type(exc).__name__, str(exc)), []
        except Exception as exc:
            # A backend bug, or an error it did not wrap: the client gets the type name and
            # message (a ServerError), and the connection stays.
            logger.warning("%s from %s failed: %s: %s", name, peer, type(exc).__name__, exc)
            return _error(type(exc).__name__, str(exc)), []
        if op.wakes_waiters:
            self.feed.bump()
        if not op.read_only and not self._wrote:
            with self._lock:
                self._wrote = True
                self._wake_maintenance.notify()
        out: list[bytes] = []
        return {"ok": ops.to_plain(result, out)}, out

    # -- running and stopping -------------------------------------------------------------

    def _poke(self) -> None:
        try:
            socket.create_connection(_wake_address(self.server_address), timeout=1.0).close()
        except OSError:
            pass

    def _maintain(self) -> None:
        maintain = getattr(self.backend, "maintain", None)
        while maintain is not None:
            with self._lock:
                self._wake_maintenance.wait_for(lambda: self._wrote or self._closing)
                if self._closing:
                    return
                self._wrote = False
            try:
                maintain()
            except Exception:
                logger.exception("housekeeping of %r failed; trying again later", self.backend)
            with self._lock:
                if self._wake_maintenance.wait_for(lambda: self._closing, _MAINTENANCE_SECONDS):
                    return

    def start(self) -> None:
        """Serve in a background thread (for tests and embedding)."""
        self._maintenance = threading.Thread(
            target=self._maintain, name="pynenc-lite-server-maintenance", daemon=True
        )
        self._maintenance.start()
        self._serving = threading.Thread(
            target=self.serve_forever, name="pynenc-lite-server", daemon=True
        )
        self._serving.start()

    def stop(self, grace_seconds: float = 5.0) -> None:
        """Stop accepting, wake every long-poll, let requests in progress answer (at most
        `grace_seconds`), close every connection and the backend."""
        with self._lock:
            self._closing = True
            self._wake_maintenance.notify_all()
        self.feed.close()
        if self._serving is not None:
            # serve_forever looks at a shutdown request only between accepts or every half
            # second: connect to ourselves so it looks now (refused: we are closing).
            stopper = threading.Thread(target=self.shutdown, name="pynenc-lite-server-stop")
            stopper.start()
            while stopper.is_alive():
                self._poke()
                stopper.join(0.05)
            self._serving.join()
        self.server_close()
        deadline = time.monotonic() + grace_seconds
        while True:
            with self._lock:
                busy = [c for c in self._connections.values() if c.busy]
                idle = [c for c in self._connections.values() if not c.busy]
            for connection in idle:
                _shut(connection.sock)
            if not busy or time.monotonic() >= deadline:
                break
            time.sleep(0.01)  # a shutdown path: requests finish within milliseconds
        for connection in busy:
            _shut(connection.sock)
        with self._lock:
            threads, self._threads = self._threads, 0
        for _ in range(threads):
            self._jobs.put(None)
        if self._maintenance is not None:
            self._maintenance.join()  # it may be using the backend
        # So is the change feed's monitor: closing a backend under a call in progress loses
        # that thread's sockets (a ResourceWarning) and, on old SQLite modules, may crash.
        if not self.feed.join_monitor(_MONITOR_SLICE_SECONDS + 5.0):
            logger.warning("the change feed's monitor did not stop; closing the backend anyway")
        self.backend.close()


def _wake_address(address: tuple[Any, ...]) -> tuple[str, int]:
    host = str(address[0])
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
    return wildcard.get(host, host), int(address[1])


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"error": kind, "message": message}


def _shut(sock: socket.socket) -> None:
    # The plain-socket shutdown, also for a TLS socket: SSLSocket.shutdown would drop its
    # TLS state under the thread still reading it. The reader then sees the end and leaves.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def peer_name(client_address: Any) -> str:
    if isinstance(client_address, tuple) and len(client_address) >= 2:
        host, port = client_address[0], client_address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(client_address)


def _family_of(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a host name: resolve it
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return socket.AddressFamily(infos[0][0])
