"""The TCP server's command line: `python -m pynenc_lite.server --db PATH` serves one SQLite
file to callers and workers on other hosts (`--help` lists every option).

Holds the options, where the secret comes from (and generating one on loopback), TLS
loading, the printed connect line, signals and exit codes: 0 after SIGINT/SIGTERM, 1 when the
database or the address cannot be served, 2 for a bad option or secret. The engine that
serves connections is `pynenc_lite.backend.tcp.engine`; the wire format is
`pynenc_lite.backend.tcp.wire`.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import secrets
import shlex
import signal
import socket
import ssl
import sys
import threading
import types
from typing import Any, Callable, Optional, Sequence

from pynenc_lite.backend.tcp import wire
from pynenc_lite.backend.tcp.engine import BrokerServer, ServerSettings, peer_name
from pynenc_lite.backend.tcp.wire import FrameLimits
from pynenc_lite.errors import BackendError, ConfigError

logger = logging.getLogger(__name__)

ENV_SECRET = "PYNENC__BROKER_SECRET"
ENV_SECRET_FILE = "PYNENC__BROKER_SECRET_FILE"
MIN_SECRET_BYTES = 16


def parse_bind(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT`, `HOST` or `:PORT` into (host, port) with the defaults.

    Raises:
        ValueError: not one of those shapes, or a port outside 0-65535.
    """
    host, port = "127.0.0.1", wire.DEFAULT_PORT
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


def _load_secret(
    args: argparse.Namespace, environ: dict[str, str]
) -> tuple[bytes, str, Optional[str]]:
    """The secret, a description of where it came from (see --help for the order), and the
    absolute path of its file (None when it came from the environment)."""
    if args.secret_file:
        path = os.path.abspath(args.secret_file)
        return wire.read_secret_file(path), f"file {path}", path
    if environ.get(ENV_SECRET):
        return environ[ENV_SECRET].strip().encode(), f"env {ENV_SECRET}", None
    if environ.get(ENV_SECRET_FILE):
        path = os.path.abspath(environ[ENV_SECRET_FILE])
        return wire.read_secret_file(path), f"file {path}", path
    if not is_loopback(args.host):
        raise ConfigError(
            f"refusing to listen on {args.host}, which is not a loopback address, without a "
            f"secret: give --secret-file PATH or set {ENV_SECRET}. Make one with: python -c "
            '"import secrets; print(secrets.token_urlsafe(32))" > secret && chmod 600 secret'
        )
    path = os.path.abspath(args.db) + ".secret"
    if not os.path.exists(path):
        try:
            # O_EXCL + 0600: never reuse a file somebody else planted, never readable by others.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_urlsafe(32) + "\n")
        except OSError as exc:
            raise ConfigError(
                f"cannot write the generated secret file {path}: {exc.strerror or exc}. Make "
                f"the folder {os.path.dirname(path)} exist and be writable, or give "
                "--secret-file PATH"
            ) from exc
    return wire.read_secret_file(path), f"file {path} (generated)", path


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
        default=f"127.0.0.1:{wire.DEFAULT_PORT}",
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
        secret, secret_origin, secret_path = _load_secret(args, environ)
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
        f"PYNENC__BROKER_SECRET_FILE={shlex.quote(secret_path)}"  # pasted into a shell
        if secret_path is not None
        else "PYNENC__BROKER_SECRET=<the same secret as this server's>"
    )
    tls_line = (
        "\n  PYNENC__BROKER_TLS_CA_FILE=<the CA file that signed --tls-cert>" if context else ""
    )
    print(
        f"pynenc_lite server: serving {backend.path} on {peer_name((host, server.port))} "
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
