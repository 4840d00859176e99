"""The TCP server: a network front for one SQLite backend, for callers and workers on other
hosts. Run it with `python -m pynenc_lite.server --db PATH` (`--help` lists every option).

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

What it refuses to do: unpickle anything (payloads are opaque bytes: nothing here or in
`protocol` calls pickle, and no field of the protocol is a pickle; a test checks with an
audit hook), answer anybody who has not proven knowledge of the shared secret, or run an
operation that is not in `protocol.OPS`. A frame that breaks the
format closes only its own connection, with a log line; everybody else is served on.

It does not decide how clients retry (see `backend.remote`) or what an operation means (the
backend does).
"""

from __future__ import annotations

import argparse
import dataclasses
import hmac
import ipaddress
import logging
import os
import queue
import secrets
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
import types
from typing import Any, Callable, Optional, Sequence

from pynenc_lite import protocol
from pynenc_lite.backend.base import Backend
from pynenc_lite.errors import BackendError, ConfigError
from pynenc_lite.protocol import OPS, FrameLimits, ProtocolError, SessionMac

logger = logging.getLogger(__name__)

ENV_SECRET = "PYNENC__BROKER_SECRET"
ENV_SECRET_FILE = "PYNENC__BROKER_SECRET_FILE"
MIN_SECRET_BYTES = 16
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
    counter can. It starts at a random value, so a token from before a server restart never
    equals a new one: a client waiting across a restart sees a change (possibly spurious,
    which the protocol allows) instead of missing one.
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
        """Release every waiter now and stop the monitor."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

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
                    _peer(client_address),
                    len(self._connections),
                )
                return False
            self._connections[id(request)] = _Connection(request, _peer(client_address))
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
                logger.exception("connection from %s failed", _peer(client_address))
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
        peer = _peer(client_address)
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
            reader = protocol.FrameReader(sock)
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
        self, sock: socket.socket, reader: protocol.FrameReader, peer: str, deadline: float
    ) -> Optional[SessionMac]:
        server_nonce = protocol.new_nonce()
        s = self.settings
        hello = {
            "hello": protocol.PROTOCOL_NAME,
            "schema": protocol.SCHEMA,
            "nonce": server_nonce.hex(),
            "idle_timeout": s.idle_timeout_seconds,
            "max_wait": s.max_wait_seconds,
            "max_header_bytes": s.limits.max_header_bytes,
            "max_body_bytes": s.limits.max_body_bytes,
        }
        sock.sendall(protocol.encode_frame(hello, [], None))
        try:
            header, _ = reader.read(
                limits=protocol.HANDSHAKE_LIMITS,
                mac=None,
                idle_deadline=deadline,
                frame_seconds=max(deadline - time.monotonic(), 0.0),
            )
        except protocol.IdleTimeoutError:
            raise ProtocolError("no authentication before the handshake timeout") from None
        try:
            client_nonce = bytes.fromhex(header["nonce"])
            claimed = bytes.fromhex(header["proof"])
        except (KeyError, TypeError, ValueError):
            raise ProtocolError("malformed authentication frame") from None
        if len(client_nonce) != protocol.NONCE_BYTES or set(header) != {"nonce", "proof"}:
            raise ProtocolError("malformed authentication frame")
        expected = protocol.proof(self._secret, "client", server_nonce, client_nonce)
        if not hmac.compare_digest(expected, claimed):
            logger.warning("refused %s: authentication failed (wrong secret?)", peer)
            refusal = {"error": "AuthenticationError", "message": "authentication failed"}
            sock.sendall(protocol.encode_frame(refusal, [], None))
            return None
        welcome = {
            "proof": protocol.proof(self._secret, "server", server_nonce, client_nonce).hex()
        }
        sock.sendall(protocol.encode_frame(welcome, [], None))
        key = protocol.proof(self._secret, "session", server_nonce, client_nonce)
        logger.debug("authenticated %s", peer)
        return SessionMac(key, is_server=True)

    def _serve_requests(
        self,
        sock: socket.socket,
        reader: protocol.FrameReader,
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
            except protocol.IdleTimeoutError:
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
            sock.sendall(protocol.encode_frame(reply, reply_blobs, mac))
            with self._lock:
                if state is not None:
                    state.busy = False
                if self._closing:
                    return

    @staticmethod
    def _say_bye(sock: socket.socket, mac: SessionMac, reason: str) -> None:
        # "bye" tells the client that its next request, if already sent, was not processed.
        try:
            sock.sendall(protocol.encode_frame({"bye": reason}, [], mac))
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
            args = protocol.check_args(op, protocol.attach_blobs(header["args"], blobs))
        except ProtocolError as exc:
            logger.warning("bad %s request from %s: %s", name, peer, exc)
            return _error("BadRequest", f"{name}: {exc}"), []
        try:
            result = self._handlers[name](**args)
        except (ValueError, BackendError) as exc:
            return _error(type(exc).__name__, str(exc)), []
        except Exception as exc:
            # sqlite3.IntegrityError lands here (a submit of an id that exists): the client
            # reads the kind to tell a resent submit from a conflicting one.
            logger.warning("%s from %s failed: %s: %s", name, peer, type(exc).__name__, exc)
            return _error(type(exc).__name__, str(exc)), []
        if op.wakes_waiters:
            self.feed.bump()
        if not op.read_only and not self._wrote:
            with self._lock:
                self._wrote = True
                self._wake_maintenance.notify()
        out: list[bytes] = []
        return {"ok": protocol.to_plain(result, out)}, out

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


def _peer(client_address: Any) -> str:
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


# -- command line --------------------------------------------------------------------------


def parse_bind(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT`, `HOST` or `:PORT` into (host, port) with the defaults.

    Raises:
        ValueError: not one of those shapes, or a port outside 0-65535.
    """
    host, port = "127.0.0.1", protocol.DEFAULT_PORT
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"--bind {text!r}: missing ']' after an IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"--bind {text!r}: expected [IPv6]:PORT")
            port = int(rest[1:])
    elif text.count(":") == 1:
        name, _, number = text.partition(":")
        host, port = name or host, int(number)
    elif text.count(":") > 1:
        host = text  # a bare IPv6 address
    elif text:
        host = text
    if not 0 <= port <= 65535:
        raise ValueError(f"--bind {text!r}: the port must be 0-65535")
    return host, port


def is_loopback(host: str) -> bool:
    """True when every address `host` stands for is a loopback address."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def _load_secret(args: argparse.Namespace, environ: dict[str, str]) -> tuple[bytes, str]:
    """The secret and a description of where it came from (see --help for the order)."""
    if args.secret_file:
        return protocol.read_secret_file(
            args.secret_file
        ), f"file {os.path.abspath(args.secret_file)}"
    if environ.get(ENV_SECRET):
        return environ[ENV_SECRET].strip().encode(), f"env {ENV_SECRET}"
    if environ.get(ENV_SECRET_FILE):
        path = environ[ENV_SECRET_FILE]
        return protocol.read_secret_file(path), f"file {os.path.abspath(path)}"
    if not is_loopback(args.host):
        raise ConfigError(
            f"refusing to listen on {args.host}, which is not a loopback address, without a "
            f"secret: give --secret-file PATH or set {ENV_SECRET}. Make one with: python -c "
            '"import secrets; print(secrets.token_urlsafe(32))" > secret && chmod 600 secret'
        )
    path = os.path.abspath(args.db) + ".secret"
    if not os.path.exists(path):
        # O_EXCL + 0600: never reuse a file somebody else planted, never readable by others.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(32) + "\n")
    return protocol.read_secret_file(path), f"file {path} (generated)"


def _tls_context(cert: str, key: Optional[str]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load --tls-cert {cert!r} / --tls-key {key!r}: {exc}") from exc
    return context


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    convert.__name__ = kind.__name__
    return convert


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m pynenc_lite.server`."""
    d = ServerSettings()
    parser = argparse.ArgumentParser(
        prog="python -m pynenc_lite.server",
        description="Serve a pynenc_lite SQLite database over TCP to callers and workers on "
        "other hosts. Clients select it with PYNENC__BROKER_URL=tcp://HOST:PORT and the shared "
        "secret (PYNENC__BROKER_SECRET_FILE or PYNENC__BROKER_SECRET).",
        epilog=f"Secret, first found: --secret-file; env {ENV_SECRET}; env {ENV_SECRET_FILE}; "
        "else, on a loopback address only, a random one generated into DB.secret (mode 600). "
        "Never pass the secret itself on the command line: every user can read it with ps. "
        "The server never unpickles anything, but anybody with the secret can make the "
        "workers run code: give it only to hosts you would let run your tasks.",
    )
    parser.add_argument(
        "--db",
        required=True,
        metavar="PATH",
        help="the SQLite database file to serve (created if missing, mode 600)",
    )
    parser.add_argument(
        "--bind",
        default=f"127.0.0.1:{protocol.DEFAULT_PORT}",
        metavar="HOST:PORT",
        help="address to listen on (default: %(default)s; port 0 picks a free "
        "port; [::1]:PORT for IPv6). Other than loopback needs a secret",
    )
    parser.add_argument(
        "--secret-file",
        metavar="PATH",
        help=f"file holding the shared secret (at least {MIN_SECRET_BYTES} characters)",
    )
    parser.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="serve TLS with this certificate chain (clients use tcps:// and "
        "PYNENC__BROKER_TLS_CA_FILE to pin the CA)",
    )
    parser.add_argument(
        "--tls-key",
        metavar="PEM",
        help="private key of --tls-cert (if not inside the certificate file)",
    )
    parser.add_argument(
        "--max-connections",
        type=_positive(int),
        default=d.max_connections,
        help="most simultaneous client connections, each one thread (default: %(default)s)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=_positive(float),
        default=d.idle_timeout_seconds,
        metavar="SECONDS",
        help="close a connection that sends nothing for this long (default: %(default)s)",
    )
    parser.add_argument(
        "--handshake-timeout",
        type=_positive(float),
        default=d.handshake_timeout_seconds,
        metavar="SECONDS",
        help="TLS and authentication must finish within this (default: %(default)s)",
    )
    parser.add_argument(
        "--max-wait",
        type=_positive(float),
        default=d.max_wait_seconds,
        metavar="SECONDS",
        help="longest single long-poll; clients then ask again (default: %(default)s)",
    )
    parser.add_argument(
        "--max-header-bytes",
        type=_positive(int),
        default=d.limits.max_header_bytes,
        help="largest JSON header of a request (default: %(default)s)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=_positive(int),
        default=d.limits.max_body_bytes,
        help="largest payload of a request, the pickled arguments and results "
        "together (default: %(default)s)",
    )
    parser.add_argument(
        "--sqlite-synchronous",
        choices=("NORMAL", "FULL"),
        default="NORMAL",
        help="SQLite synchronous mode; FULL also survives power loss (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="logging level on stderr (default: %(default)s)",
    )
    return parser


def _client_url(host: str, port: int, tls: bool) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()  # listening everywhere: name this host for the others
    if ":" in host:
        host = f"[{host}]"
    return f"{'tcps' if tls else 'tcp'}://{host}:{port}"


def main(argv: Optional[Sequence[str]] = None, environ: Optional[dict[str, str]] = None) -> int:
    """Run the server until SIGINT or SIGTERM. Returns the exit status."""
    from pynenc_lite.backend.sqlite import SQLiteBackend

    parser = build_parser()
    args = parser.parse_args(argv)
    environ = dict(os.environ if environ is None else environ)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.host, args.port = parse_bind(args.bind)
    except ValueError as exc:
        parser.error(str(exc))
    if args.tls_key and not args.tls_cert:
        parser.error("--tls-key needs --tls-cert")
    try:
        secret, secret_origin = _load_secret(args, environ)
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"the secret from {secret_origin} has {len(secret)} characters; use at least "
                f'{MIN_SECRET_BYTES} (python -c "import secrets; print(secrets.token_urlsafe(32))")'
            )
        context = _tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = ServerSettings(
        max_connections=args.max_connections,
        idle_timeout_seconds=args.idle_timeout,
        handshake_timeout_seconds=args.handshake_timeout,
        max_wait_seconds=args.max_wait,
        limits=FrameLimits(
            max_header_bytes=args.max_header_bytes, max_body_bytes=args.max_body_bytes
        ),
    )
    # Only the change feed's monitor polls (connection threads never call wait_for_change):
    # at most every 20 ms, so the server's own writes, which it sees again, wake long-polls
    # a second time at most 50 times a second, while commits of other processes sharing
    # the file are still noticed within 20-50 ms.
    backend = SQLiteBackend(
        args.db,
        synchronous=args.sqlite_synchronous,
        poll_min_seconds=0.02,
        poll_max_seconds=0.05,
    )
    try:
        backend.get_finished_since(-1)  # open (and create) the database now, not on a request
        server = BrokerServer(
            (args.host, args.port), backend, secret=secret, ssl_context=context, settings=settings
        )
    except (OSError, BackendError) as exc:
        print(f"error: cannot serve {args.db} on {args.bind}: {exc}", file=sys.stderr)
        backend.close()
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: Optional[types.FrameType]) -> None:
        stop.set()  # only a flag: the main thread stops the server

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    server.start()
    host = str(server.server_address[0])
    url = _client_url(host, server.port, context is not None)
    secret_line = (
        f"PYNENC__BROKER_SECRET_FILE={secret_origin.split(' ')[1]}"
        if secret_origin.startswith("file")
        else "PYNENC__BROKER_SECRET=<the same secret as this server's>"
    )
    tls_line = (
        "\n  PYNENC__BROKER_TLS_CA_FILE=<the CA file that signed --tls-cert>" if context else ""
    )
    print(
        f"pynenc_lite server: serving {backend.path} on {_peer((host, server.port))} "
        f"(TLS {'on' if context else 'off'}; secret from {secret_origin})\n"
        f"Connect callers and workers with:\n"
        f"  PYNENC__BROKER_URL={url}\n  {secret_line}{tls_line}",
        flush=True,
    )
    try:
        while not stop.wait(1.0):  # a timed wait, so a signal is noticed on every platform
            pass
    finally:
        logger.info("stopping: finishing requests in progress")
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
