"""What the server refuses, and that it stays up for everybody else afterwards: wrong or no
secret, replayed handshakes and frames, fuzzed and oversized frames, idle and surplus
connections, non-loopback binds without a secret; that it never unpickles; TLS."""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shlex
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from pynenc_lite import Pynenc
from pynenc_lite.backend.base import NewInvocation, Outcome
from pynenc_lite.backend.tcp import ops, wire
from pynenc_lite.backend.tcp.client import AuthenticationError, RemoteBackend
from pynenc_lite.errors import BackendError
from pynenc_lite.status import InvocationStatus
from tests.helpers import WAIT_SECONDS, wait_until
from tests.test_tcp_helpers import (
    RawClient,
    ServerProcess,
    read_until,
    running_server,
    subprocess_env,
    write_secret,
)


@pytest.fixture
def tcp_server(tmp_path: Path) -> Iterator[ServerProcess]:
    yield from running_server(tmp_path)


def assert_serving(server: ServerProcess) -> None:
    """The server process is alive and answers a real client."""
    assert server.is_alive(), server.log_text()
    client = server.backend()
    try:
        assert client.wait_for_change(None, 0) > 0
    finally:
        client.close()


# -- authentication -------------------------------------------------------------------------


def test_wrong_secret_is_refused_at_once(tcp_server: ServerProcess) -> None:
    client = RemoteBackend("127.0.0.1", tcp_server.port, secret=b"not-the-secret-at-all!!")
    try:
        start = time.monotonic()
        with pytest.raises(AuthenticationError, match="refused our secret"):
            client.get_invocation("x")
        assert time.monotonic() - start < 2.0  # not retried: it cannot get better
    finally:
        client.close()
    assert "authentication failed" in tcp_server.log_text()
    assert_serving(tcp_server)


def test_no_secret_no_service(tcp_server: ServerProcess) -> None:
    # A request before (instead of) authenticating: the connection is closed, unanswered.
    with RawClient(tcp_server.port) as raw:
        raw.hello()
        raw.sock.sendall(
            wire.encode_frame(
                {"op": "get_invocation", "args": {"invocation_id": "x"}}, [], None
            )
        )
        assert raw.is_closed_by_server()
    # An empty proof is a wrong proof.
    with RawClient(tcp_server.port) as raw:
        raw.hello()
        raw.sock.sendall(wire.encode_frame({"nonce": "00" * 32, "proof": ""}, [], None))
        assert raw.recv(wire.HANDSHAKE_LIMITS)["error"] == "AuthenticationError"
        assert raw.is_closed_by_server()
    assert_serving(tcp_server)


# -- protocol versions ----------------------------------------------------------------------


def test_a_server_of_another_version_is_named_in_one_line() -> None:
    # A pynenc_lite/1 server greets with its version; this client hangs up at once (no retry,
    # no traceback from deeper down) with both versions and what to do.
    listener = socket.create_server(("127.0.0.1", 0))
    old_hello = {"hello": "pynenc_lite/1", "schema": "0" * 16, "nonce": "00" * 32}

    def old_server() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(wire.encode_frame(old_hello, [], None))
            conn.recv(1)  # until the client hangs up

    thread = threading.Thread(target=old_server, daemon=True)
    thread.start()
    client = RemoteBackend("127.0.0.1", listener.getsockname()[1], secret=b"s" * 32)
    try:
        start = time.monotonic()
        with pytest.raises(AuthenticationError) as caught:
            client.get_invocation("x")
        assert time.monotonic() - start < 2.0
    finally:
        client.close()
        thread.join(WAIT_SECONDS)
        listener.close()
    message = str(caught.value)
    assert "\n" not in message
    assert "pynenc_lite/1" in message and wire.PROTOCOL_NAME in message
    assert "upgrade" in message and "same pynenc_lite version" in message


def test_an_older_client_is_told_what_to_do(tcp_server: ServerProcess) -> None:
    # A pynenc_lite/1 client refuses a hello it does not know with this error line, built
    # from the hello's first 100 characters; the server logs why the client left.
    with RawClient(tcp_server.port) as old_client:
        hello = old_client.recv(wire.HANDSHAKE_LIMITS)
    old_error = (
        f"tcp://127.0.0.1:{tcp_server.port} is not a pynenc_lite server speaking "
        f"pynenc_lite/1 (it said {str(hello)[:100]})"
    )
    assert wire.PROTOCOL_NAME in old_error and wire.HELLO_HINT in old_error
    wait_until(lambda: "left before authenticating" in tcp_server.log_text())
    assert wire.PROTOCOL_NAME in tcp_server.log_text()
    assert_serving(tcp_server)


def test_a_fake_server_is_detected_by_the_client(tmp_path: Path) -> None:
    # A server started with another secret cannot prove it knows ours: the client hangs up
    # before it would unpickle anything that server sends.
    other = ServerProcess(tmp_path)
    try:
        other.start()
        client = RemoteBackend("127.0.0.1", other.port, secret=b"our-secret-0123456789-abc")
        with pytest.raises(AuthenticationError):
            client.get_invocation("x")
        client.close()
    finally:
        other.kill()


def test_replayed_handshake_and_frames_are_refused(tcp_server: ServerProcess) -> None:
    secret = tcp_server.secret.encode()
    with RawClient(tcp_server.port) as first:
        recorded_auth = first.auth_frame(secret, first.hello())
        first.sock.sendall(recorded_auth)
        first.recv(wire.HANDSHAKE_LIMITS)
        first.mac = wire.SessionMac(
            wire.proof(secret, "session", *first._nonces), is_server=False
        )
        request = first.request_frame({"op": "next_run_at", "args": {"app_id": "a"}})
        first.sock.sendall(request)
        assert first.recv()["ok"] is None
        # The same frame again in the same session: its sequence number is used up.
        first.sock.sendall(request)
        assert first.is_closed_by_server()
    # The recorded authentication on a new connection: the server's nonce is new.
    with RawClient(tcp_server.port) as second:
        second.hello()
        second.sock.sendall(recorded_auth)
        assert second.recv(wire.HANDSHAKE_LIMITS)["error"] == "AuthenticationError"
    # A recorded request frame inside another, properly authenticated session.
    with RawClient(tcp_server.port) as third:
        third.authenticate(secret)
        third.sock.sendall(request)
        assert third.is_closed_by_server()
    assert tcp_server.log_text().count("tag mismatch") == 2
    assert_serving(tcp_server)


# -- garbage --------------------------------------------------------------------------------


def test_only_allowed_operations_with_valid_arguments_run(tcp_server: ServerProcess) -> None:
    with RawClient(tcp_server.port) as raw:
        raw.authenticate(tcp_server.secret.encode())
        reply = raw.call("drop_all_tables")
        assert reply["error"] == "UnknownOperation" and "allows" in reply["message"]
        reply = raw.call("close")  # a Backend method, but not an operation of the protocol
        assert reply["error"] == "UnknownOperation"
        reply = raw.call("get_invocation", invocation_id=7)
        assert reply == {"error": "BadRequest", "message": reply["message"]}
        assert "invocation_id" in reply["message"]
        reply = raw.call("next_run_at", app_id="a", extra=1)
        assert reply["error"] == "BadRequest"
        assert raw.call("next_run_at", app_id="a") == {"ok": None}  # still usable
    assert_serving(tcp_server)


def _valid_request(rng: random.Random) -> tuple[dict[str, Any], list[bytes]]:
    blobs: list[bytes] = []
    now = time.time()
    choices = [
        {"op": "next_run_at", "args": {"app_id": "a"}},
        {"op": "get_invocation", "args": {"invocation_id": "x"}},
        {"op": "get_finished_since", "args": {"seq": 0}},
        {
            "op": "submit",
            "args": ops.to_plain(
                {
                    "invocations": [
                        NewInvocation(f"fz-{rng.random()}", "fuzz", "t", b"\x80\x04N.", now, now)
                    ]
                },
                blobs,
            ),
        },
    ]
    return rng.choice(choices), blobs


def _mutate_json(rng: random.Random, value: Any) -> Any:
    """A random edit of decoded JSON: wrong types, missing or extra keys, odd numbers."""
    weird = [
        None,
        True,
        -1,
        2**70,
        1.5,
        "x" * rng.randint(0, 300),
        [],
        {},
        {"$b": 99},
        [[[[[[[[[[[[1]]]]]]]]]]]],
        "NaN",
        1e308,
    ]
    if isinstance(value, dict) and value and rng.random() < 0.7:
        key = rng.choice(list(value))
        edited = dict(value)
        roll = rng.random()
        if roll < 0.3:
            del edited[key]
        elif roll < 0.5:
            edited[rng.choice(["op", "args", "blobs", "zz", "$b"])] = rng.choice(weird)
        else:
            edited[key] = _mutate_json(rng, value[key])
        return edited
    if isinstance(value, list) and value and rng.random() < 0.7:
        edited_list = list(value)
        i = rng.randrange(len(value))
        edited_list[i] = _mutate_json(rng, value[i])
        return edited_list
    return rng.choice(weird)


def _raw_frame(header: bytes, body: bytes = b"", tag: bytes = b"") -> bytes:
    return struct.pack("!II", len(header), len(body)) + header + body + tag


def test_fuzzed_frames_are_refused_and_the_server_serves_on(tcp_server: ServerProcess) -> None:
    rng = random.Random(20240601)
    secret = tcp_server.secret.encode()
    cases = 0
    answered = closed = 0
    deadline = time.monotonic() + 60
    authed: RawClient | None = None

    def authed_client() -> RawClient:
        nonlocal authed
        if authed is None:
            authed = RawClient(tcp_server.port, timeout=5.0)
            authed.authenticate(secret)
        return authed

    try:
        while cases < 1200 and time.monotonic() < deadline:
            cases += 1
            kind = cases % 4
            if kind in (0, 1):
                # Before authentication: random bytes, or a mutated auth frame.
                with RawClient(tcp_server.port, timeout=5.0) as raw:
                    raw.hello()
                    if kind == 0:
                        payload = rng.randbytes(rng.randint(1, 300))
                    else:
                        frame = bytearray(raw.auth_frame(secret, wire.new_nonce()))
                        for _ in range(rng.randint(1, 4)):
                            frame[rng.randrange(len(frame))] = rng.randrange(256)
                        payload = bytes(frame)
                    raw.sock.sendall(payload)
                    try:
                        raw.sock.shutdown(socket.SHUT_WR)  # a truncated frame must not hang it
                    except OSError:
                        pass  # the server hung up already
                    assert raw.is_closed_by_server()
                    closed += 1
                continue
            client = authed_client()
            header, blobs = _valid_request(rng)
            if kind == 2:
                # Authenticated, well-tagged, but the content is wrong: an error reply, and
                # the connection stays usable.
                mutated = _mutate_json(rng, header)
                if not isinstance(mutated, dict):
                    mutated = {"op": mutated}
                text = json.dumps(mutated | {"blobs": [len(b) for b in blobs]}).encode()
                body = b"".join(blobs)
                prefix = struct.pack("!II", len(text), len(body))
                assert client.mac is not None
                frame = prefix + text + body + client.mac.sign((prefix, text, body))
                client.sock.sendall(frame)
                try:
                    reply = client.recv()
                except (OSError, wire.ProtocolError):
                    reply = {}
                if "error" in reply or "ok" in reply:
                    answered += 1
                    continue
                closed += 1
            else:
                # Authenticated, then bytes flipped on the wire: the tag check closes it.
                frame = bytearray(client.request_frame(header, blobs))
                frame[rng.randrange(8, len(frame))] ^= 1 << rng.randrange(8)
                client.sock.sendall(bytes(frame))
                assert client.is_closed_by_server()
                closed += 1
            client.close()
            authed = None
            if cases % 100 == 3:
                assert_serving(tcp_server)
    finally:
        if authed is not None:
            authed.close()
    assert cases >= 1000, f"only {cases} cases ran in the time allowed"
    assert answered > 100 and closed > 500
    assert_serving(tcp_server)


def test_oversized_frames_close_the_connection(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path, args=["--max-header-bytes", "4096", "--max-body-bytes", "65536"]
    )
    try:
        server.start()
        # Announcing 1 GiB before authenticating: closed without reading a byte of it.
        with RawClient(server.port) as raw:
            raw.hello()
            raw.sock.sendall(struct.pack("!II", 1 << 30, 0))
            assert raw.is_closed_by_server()
        # After authenticating: the server's limits hold too.
        with RawClient(server.port) as raw:
            raw.authenticate(server.secret.encode())
            raw.sock.sendall(struct.pack("!II", 100, 1 << 20))
            assert raw.is_closed_by_server()
        assert "frame too large" in server.log_text()
        # A real client learns the limits in the handshake and refuses before sending.
        client = server.backend()
        big = NewInvocation("big", "a", "t", b"x" * 100_000, 0.0, 0.0)
        with pytest.raises(BackendError, match="too large"):
            client.submit([big])
        client.close()
        assert_serving(server)
    finally:
        server.kill()


def test_idle_connections_are_closed(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, args=["--idle-timeout", "0.3", "--handshake-timeout", "0.3"])
    try:
        server.start()
        start = time.monotonic()
        with RawClient(server.port) as silent:  # connects, never authenticates
            silent.hello()
            assert silent.is_closed_by_server()
        with RawClient(server.port) as idle:  # authenticates, then says nothing
            idle.authenticate(server.secret.encode())
            assert idle.recv() == {"bye": "idle"}
            assert idle.is_closed_by_server()
        assert time.monotonic() - start < 3.0
        log = server.log_text()
        assert "no authentication before the handshake timeout" in log and "idle for" in log
        # A pooled client connection that went idle is replaced without an error.
        client = server.backend()
        assert client.get_invocation("x") is None
        with RawClient(server.port) as marker:  # a later connection: the first one is gone
            marker.authenticate(server.secret.encode())
            assert marker.recv() == {"bye": "idle"}
        assert client.get_invocation("x") is None
        client.close()
        assert_serving(server)
    finally:
        server.kill()


def test_connections_beyond_the_limit_are_refused(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, args=["--max-connections", "2"])
    try:
        server.start()
        first, second = RawClient(server.port), RawClient(server.port)
        first.hello()
        second.hello()
        with RawClient(server.port) as third:
            assert third.is_closed_by_server()
        first.close()
        second.close()
        assert "refused a connection" in server.log_text()
        assert_serving(server)
    finally:
        server.kill()


# -- no unpickling --------------------------------------------------------------------------


class _LeavesAMark:
    """Unpickling this creates the file at `path` (it calls `open(path, "w")`)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


# Installs an audit hook that records every attempt to load a global from a pickle (any
# real unpickling of an object does), then runs the server module as __main__.
_AUDITED_SERVER = """
import runpy, sys
marker = sys.argv.pop(1)
def hook(event, args):
    if event == "pickle.find_class":
        with open(marker, "a") as f:
            f.write(repr(args) + "\\n")
sys.addaudithook(hook)
sys.argv[0] = "pynenc_lite.server"
runpy.run_module("pynenc_lite.server", run_name="__main__", alter_sys=True)
"""


def test_the_server_never_unpickles(tmp_path: Path) -> None:
    mark = tmp_path / "unpickled-here"
    audit = tmp_path / "find_class-calls"
    payload = pickle.dumps(_LeavesAMark(str(mark)))
    server = ServerProcess(tmp_path, launcher=["-c", _AUDITED_SERVER, str(audit)])
    try:
        server.start()
        client = server.backend()
        now = time.time()
        client.submit([NewInvocation("bomb", "a", "t", payload, now, now)])
        (claimed,) = client.claim(
            app_id="a", worker_id="w", limit=1, now=now, lease_seconds=10.0, max_lost_attempts=3
        )
        assert claimed.args == payload
        outcome = Outcome("bomb", InvocationStatus.SUCCESS, payload)
        assert client.complete_many([outcome], "w", now) == [True]
        assert client.get_outcomes(["bomb"]) == [outcome]
        client.close()
        assert_serving(server)
    finally:
        server.kill()
    assert not mark.exists(), "something unpickled the payload"
    assert not audit.exists(), f"the server loaded globals from a pickle: {audit.read_text()}"
    # The check itself works: unpickling the payload here does leave the mark.
    pickle.loads(payload).close()
    assert mark.exists()


# -- command line ---------------------------------------------------------------------------


def _run_cli(
    args: list[str], tmp_path: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pynenc_lite.server", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=subprocess_env(env),
        timeout=60,
    )


def test_help_documents_every_option(tmp_path: Path) -> None:
    from pynenc_lite.server import build_parser

    result = _run_cli(["--help"], tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for action in build_parser()._actions:
        for flag in action.option_strings:
            assert flag in text
        assert action.help, f"{action.option_strings} has no help"
    assert "PYNENC__BROKER_SECRET" in text and "ps" in text


def test_refuses_a_public_address_without_a_secret(tmp_path: Path) -> None:
    result = _run_cli(["--db", "x.db", "--bind", "0.0.0.0:0"], tmp_path)
    assert result.returncode == 2
    assert "not a loopback address, without a secret" in result.stderr
    assert not (tmp_path / "x.db").exists()
    short = tmp_path / "short"
    short.write_text("tooshort")
    short.chmod(0o600)
    result = _run_cli(["--db", "x.db", "--secret-file", str(short)], tmp_path)
    assert result.returncode == 2 and "at least 16" in result.stderr


def test_a_secret_that_cannot_be_generated_is_one_clear_line(tmp_path: Path) -> None:
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o500)
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    folders = [tmp_path / "missing", not_a_folder]
    if os.geteuid() != 0:  # root writes anywhere
        folders.append(read_only)
    try:
        for folder in folders:
            result = _run_cli(["--db", str(folder / "x.db"), "--bind", "127.0.0.1:0"], tmp_path)
            assert result.returncode == 2, result.stderr
            assert "Traceback" not in result.stderr
            (line,) = result.stderr.strip().splitlines()
            assert line.startswith("error: cannot write the generated secret file")
            assert str(folder) in line and "--secret-file" in line
    finally:
        read_only.chmod(0o700)


def test_loopback_without_a_secret_generates_a_private_one(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    server.secret_file.unlink()
    server.args = []
    command = [a for a in server.command if a not in ("--secret-file", str(server.secret_file))]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=tmp_path, env=server.env
    )
    server.proc = proc
    try:
        from tests.test_tcp_helpers import _URL_LINE, read_until

        text = read_until(proc, _URL_LINE, 20)
        generated = Path(str(server.db) + ".secret")
        assert f"PYNENC__BROKER_SECRET_FILE={generated}" in text
        assert generated.stat().st_mode & 0o777 == 0o600
        port = int(_URL_LINE.search(text).group(3))  # type: ignore[union-attr]
        secret = generated.read_text().strip().encode()
        client = RemoteBackend("127.0.0.1", port, secret=secret)
        assert client.get_invocation("x") is None
        client.close()
    finally:
        server.kill()


def test_the_connect_line_quotes_a_secret_path_for_the_shell(tmp_path: Path) -> None:
    folder = tmp_path / "my secrets"
    folder.mkdir()
    server = ServerProcess(tmp_path)
    server.secret_file = folder / "the secret"
    write_secret(server.secret_file, server.secret)
    try:
        server.start()
        assert server.proc is not None
        secret_line = re.compile(r"SECRET_FILE=.*\n")
        text = server.output
        if not secret_line.search(text):  # printed in one write, but read maybe in two
            text += read_until(server.proc, secret_line, 10)
        (line,) = [line for line in text.splitlines() if "PYNENC__BROKER_SECRET_FILE=" in line]
        assert shlex.split(line) == [f"PYNENC__BROKER_SECRET_FILE={server.secret_file}"]
    finally:
        server.kill()


def test_sigterm_stops_it_cleanly(tcp_server: ServerProcess) -> None:
    client = tcp_server.backend()
    token = client.wait_for_change(None, 0)
    assert client.get_invocation("x") is None
    assert tcp_server.stop() == 0
    client.retry_seconds = 0.2
    with pytest.raises(BackendError, match="cannot reach"):
        client.wait_for_change(token, 0)
    client.close()


# -- TLS ------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed: the stdlib cannot make a certificate")
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    # Own config files: the extensions Python's strict verification (3.13+) expects, and
    # nothing inherited from the machine's openssl.cnf.
    (d / "ca.cnf").write_text(
        "[req]\ndistinguished_name=dn\nx509_extensions=v3\nprompt=no\n[dn]\n"
        "CN=pynenc_lite test CA\n[v3]\nbasicConstraints=critical,CA:TRUE\n"
        "keyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n"
    )
    (d / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    for name in ("ca", "other-ca"):
        _openssl(
            "req",
            "-x509",
            *ec,
            "-config",
            "ca.cnf",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            cwd=d,
        )
    _openssl(
        "req",
        "-new",
        *ec,
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=d,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        cwd=d,
    )
    yield {name: d / name for name in ("ca.pem", "server.pem", "server.key", "other-ca.pem")}


def test_tls_round_trip(tmp_path: Path, tls_files: dict[str, Path], make_app: Any) -> None:
    server = ServerProcess(
        tmp_path,
        args=[
            "--tls-cert",
            str(tls_files["server.pem"]),
            "--tls-key",
            str(tls_files["server.key"]),
        ],
    )
    try:
        server.start()
        assert server.url.startswith("tcps://127.0.0.1:")
        app: Pynenc = make_app(
            broker_url=server.url,
            broker_secret_file=str(server.secret_file),
            broker_tls_ca_file=str(tls_files["ca.pem"]),
        )

        @app.direct_task
        def shout(text: str) -> str:
            return text.upper()

        assert isinstance(app.backend, RemoteBackend)
        with app.runner:
            assert shout("over tls") == "OVER TLS"
        # A client that trusts another CA refuses the server, at once.
        context = ssl.create_default_context(cafile=str(tls_files["other-ca.pem"]))
        stranger = RemoteBackend(
            "127.0.0.1", server.port, secret=server.secret.encode(), ssl_context=context
        )
        with pytest.raises(AuthenticationError, match="does not verify"):
            stranger.get_invocation("x")
        stranger.close()
        assert_tls_serving(server, tls_files["ca.pem"])
    finally:
        server.kill()


def assert_tls_serving(server: ServerProcess, ca: Path) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    client = RemoteBackend(
        "127.0.0.1", server.port, secret=server.secret.encode(), ssl_context=context
    )
    try:
        assert client.get_invocation("x") is None
    finally:
        client.close()
    assert server.is_alive()


def test_secret_file_permissions_are_checked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s"
    path.write_text("x" * 20)
    os.chmod(path, 0o644)
    assert wire.read_secret_file(str(path)) == b"x" * 20
    assert "can be read by other users" in caplog.text
