"""Helpers for the TCP tests (no tests here): the server as a subprocess, raw protocol
clients for the security tests, and a relay that can lose replies on purpose.

The server always runs as `sys.executable -m pynenc_lite.server` on a free loopback port it
picks itself (`--bind 127.0.0.1:0`); its address is read from the line it prints. Every
server is killed by PID when its test ends, and its log goes to a file, never to a pipe
nobody reads.
"""

from __future__ import annotations

import os
import re
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from pynenc_lite.backend.tcp import ops, wire
from pynenc_lite.backend.tcp.client import RemoteBackend
from pynenc_lite.backend.tcp.wire import SessionMac

REPO_ROOT = Path(__file__).resolve().parents[1]
START_SECONDS = 20.0  # generous: a cold interpreter on a loaded CI machine
_URL_LINE = re.compile(r"PYNENC__BROKER_URL=(tcps?)://(\[[^\]]+\]|[^:\s]+):(\d+)")


def write_secret(path: Path, secret: Optional[str] = None) -> str:
    """Write a secret file (mode 600) and return the secret."""
    secret = secret if secret is not None else secrets.token_urlsafe(32)
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return secret


def subprocess_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The environment for a child: ours without PYNENC__*, with the repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PYNENC__")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


class ServerProcess:
    """`python -m pynenc_lite.server` in a subprocess, restartable on the same port."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        args: Sequence[str] = (),
        secret: Optional[str] = None,
        launcher: Optional[Sequence[str]] = None,
        env: Optional[dict[str, str]] = None,
        host: str = "127.0.0.1",
        wrapper: Sequence[str] = (),
    ) -> None:
        self.tmp_path = tmp_path
        self.db = tmp_path / "server.sqlite3"
        self.secret_file = tmp_path / "secret"
        self.secret = write_secret(self.secret_file, secret)
        self.args = list(args)
        # What runs the server module: `-m pynenc_lite.server` unless a test wraps it.
        self.launcher = list(launcher) if launcher else ["-m", "pynenc_lite.server"]
        self.env = subprocess_env(env)
        self.host = host
        self.wrapper = list(wrapper)  # e.g. `ip netns exec NAME`
        self.port = 0
        self.url = ""
        self.log = tmp_path / "server.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.starts = 0
        self.output = ""  # what the last start printed, up to its address line

    @property
    def command(self) -> list[str]:
        return [
            *self.wrapper,
            sys.executable,
            *self.launcher,
            "--db",
            str(self.db),
            "--bind",
            f"{self.host}:{self.port}",
            "--secret-file",
            str(self.secret_file),
            *self.args,
        ]

    def start(self) -> ServerProcess:
        """Start it (again on the same port after the first start) and wait for its
        address line."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=log, cwd=self.tmp_path, env=self.env
            )
        assert self.proc.stdout is not None
        text = self.output = read_until(self.proc, _URL_LINE, START_SECONDS)
        match = _URL_LINE.search(text)
        assert match, f"the server printed no address:\n{text}\n{self.log_text()}"
        self.url = match.group(0).split("=", 1)[1]
        self.port = int(match.group(3))
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL it (no chance to clean up) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self._reap()

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """SIGTERM it and wait; SIGKILL if it does not stop in time. Returns its exit code."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
        return self._reap()

    def _reap(self) -> Optional[int]:
        if self.proc is None:
            return None
        code = self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def backend(self, **kwargs: Any) -> RemoteBackend:
        """A client for this server (short retry window unless given)."""
        kwargs.setdefault("retry_seconds", 10.0)
        return RemoteBackend(self.host, self.port, secret=self.secret.encode(), **kwargs)


def read_until(proc: subprocess.Popen[bytes], pattern: re.Pattern[str], timeout: float) -> str:
    """Read the child's stdout until `pattern` shows up, it exits, or `timeout` passes."""
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    text = ""
    deadline = time.monotonic() + timeout
    try:
        while not pattern.search(text):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                break
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            text += chunk.decode(errors="replace")
    finally:
        selector.close()
    return text


def running_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A running server on a free loopback port, killed when the test ends (the body of
    each TCP test module's `tcp_server` fixture)."""
    server = ServerProcess(tmp_path)
    try:
        yield server.start()
    finally:
        server.kill()


# -- raw protocol, for the security tests ---------------------------------------------------


_DEFAULT_LIMITS = wire.FrameLimits()


class RawClient:
    """One connection spoken to by hand, so tests can send what a real client never would."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.reader = wire.FrameReader(self.sock)
        self.mac: Optional[SessionMac] = None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def recv(self, limits: wire.FrameLimits = _DEFAULT_LIMITS) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        header, _ = self.reader.read(
            limits=limits,
            mac=self.mac,
            idle_deadline=deadline,
            frame_seconds=self.timeout,
        )
        return header

    def hello(self) -> bytes:
        """Read the server's hello; returns its nonce."""
        hello = self.recv(wire.HANDSHAKE_LIMITS)
        assert hello["hello"] == wire.PROTOCOL_NAME
        return bytes.fromhex(hello["nonce"])

    def auth_frame(
        self, secret: bytes, server_nonce: bytes, client_nonce: Optional[bytes] = None
    ) -> bytes:
        client_nonce = client_nonce or wire.new_nonce()
        self._nonces = (server_nonce, client_nonce)
        proof = wire.proof(secret, "client", server_nonce, client_nonce)
        return wire.encode_frame({"nonce": client_nonce.hex(), "proof": proof.hex()}, [], None)

    def authenticate(self, secret: bytes) -> None:
        """Complete the handshake; afterwards frames are tagged."""
        frame = self.auth_frame(secret, self.hello())
        self.sock.sendall(frame)
        welcome = self.recv(wire.HANDSHAKE_LIMITS)
        assert "proof" in welcome, welcome
        self.mac = SessionMac(wire.proof(secret, "session", *self._nonces), is_server=False)

    def request_frame(self, header: dict[str, Any], blobs: Sequence[bytes] = ()) -> bytes:
        return wire.encode_frame(header, list(blobs), self.mac)

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        blobs: list[bytes] = []
        plain = ops.to_plain(args, blobs)
        self.sock.sendall(self.request_frame({"op": op, "args": plain}, blobs))
        return self.recv()

    def is_closed_by_server(self) -> bool:
        """True when the server ends the connection (EOF or reset) within the timeout,
        reading and discarding whatever it sends first (a refusal, a "bye")."""
        self.sock.settimeout(self.timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False


# -- a relay that can lose replies ----------------------------------------------------------


class LossyRelay:
    """A TCP relay between clients and the server that can drop the next reply.

    `lose_next_replies(n)`: the next n replies to requests (frames from the server after
    the handshake) are swallowed and both sides of that connection closed, as when the
    server crashes right after committing. The request itself reaches the server.
    """

    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        # Guards _to_lose and lost.
        self._lock = threading.Lock()
        self._to_lose = 0
        self.lost = 0
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def lose_next_replies(self, count: int = 1) -> None:
        with self._lock:
            self._to_lose = count

    def close(self) -> None:
        self._closed = True
        self.listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.server_port))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(
                target=self._pump_replies, args=(upstream, client), daemon=True
            ).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _pump_replies(self, src: socket.socket, dst: socket.socket) -> None:
        frames = 0
        try:
            while True:
                prefix = _read_exact(src, 8)
                header_len = int.from_bytes(prefix[:4], "big")
                body_len = int.from_bytes(prefix[4:], "big")
                frames += 1
                # The hello and the welcome carry no tag; every later frame does.
                tag = wire.TAG_BYTES if frames > 2 else 0
                rest = _read_exact(src, header_len + body_len + tag)
                if frames > 2:
                    with self._lock:
                        lose = self._to_lose > 0
                        if lose:
                            self._to_lose -= 1
                            self.lost += 1
                    if lose:
                        break
                dst.sendall(prefix + rest)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("closed")
        data += chunk
    return data
