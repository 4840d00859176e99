"""Server and worker in different network namespaces, joined by a veth pair: the tcp://
backend across a real network interface (not loopback), with a non-loopback bind that
needs the secret. Skipped, with the reason, where namespaces cannot be made (not root, no
`ip` command, or a container that forbids it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers import wait_until
from tests.test_tcp_helpers import REPO_ROOT, ServerProcess, subprocess_env

SERVER_ADDRESS, WORKER_ADDRESS = "10.231.77.1", "10.231.77.2"


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    """Two namespaces with one veth pair between them, removed afterwards."""
    if shutil.which("ip") is None:
        pytest.skip("the `ip` command (iproute2) is not installed")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    tag = uuid.uuid4().hex[:6]
    server_ns, worker_ns = f"pl-srv-{tag}", f"pl-wrk-{tag}"
    made: list[str] = []
    try:
        for ns in (server_ns, worker_ns):
            result = _ip("netns", "add", ns)
            if result.returncode != 0:
                pytest.skip(f"`ip netns add` failed here: {result.stderr.strip()}")
            made.append(ns)
        steps = [
            ("link", "add", f"v{tag}s", "type", "veth", "peer", "name", f"v{tag}w"),
            ("link", "set", f"v{tag}s", "netns", server_ns),
            ("link", "set", f"v{tag}w", "netns", worker_ns),
            ("-n", server_ns, "addr", "add", f"{SERVER_ADDRESS}/30", "dev", f"v{tag}s"),
            ("-n", worker_ns, "addr", "add", f"{WORKER_ADDRESS}/30", "dev", f"v{tag}w"),
            ("-n", server_ns, "link", "set", f"v{tag}s", "up"),
            ("-n", worker_ns, "link", "set", f"v{tag}w", "up"),
            ("-n", server_ns, "link", "set", "lo", "up"),
            ("-n", worker_ns, "link", "set", "lo", "up"),
        ]
        for step in steps:
            result = _ip(*step)
            if result.returncode != 0:
                pytest.skip(f"`ip {' '.join(step)}` failed here: {result.stderr.strip()}")
        yield server_ns, worker_ns
    finally:
        for ns in made:  # deleting a namespace deletes its end of the veth pair, and so both
            _ip("netns", "delete", ns)


def test_worker_in_another_namespace(namespaces: tuple[str, str], tmp_path: Path) -> None:
    server_ns, worker_ns = namespaces
    server = ServerProcess(
        tmp_path, host=SERVER_ADDRESS, wrapper=["ip", "netns", "exec", server_ns]
    )
    worker = None
    try:
        server.start()
        assert server.url.startswith(f"tcp://{SERVER_ADDRESS}:")
        env = subprocess_env(
            {
                "PYNENC__BROKER_URL": server.url,
                "PYNENC__BROKER_SECRET_FILE": str(server.secret_file),
                "PYNENC__APP_ID": f"netns-{uuid.uuid4().hex[:6]}",
                "PYNENC__RESULT_TIMEOUT_SECONDS": "30",
            }
        )
        in_worker_ns = ["ip", "netns", "exec", worker_ns, sys.executable]
        worker = subprocess.Popen(
            [
                *in_worker_ns,
                "-m",
                "pynenc_lite.worker",
                "tests.tasks_core:app",
                "--processes",
                "0",
                "--threads",
                "2",
                "--log-level",
                "WARNING",
            ],
            cwd=REPO_ROOT,
            env=env,
        )
        # The caller too: from the worker's namespace the server is only reachable over veth.
        caller = subprocess.run(
            [
                *in_worker_ns,
                "-c",
                "import json; from tests import tasks_core; "
                "print(json.dumps([tasks_core.add(i, 1) for i in range(20)]))",
            ],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert caller.returncode == 0, caller.stderr + server.log_text()
        assert json.loads(caller.stdout) == [i + 1 for i in range(20)]
        # The server saw the caller's connections come from the other end of the veth pair.
        wait_until(lambda: f"from {WORKER_ADDRESS}:" in server.log_text())
    finally:
        if worker is not None:
            worker.terminate()  # SIGTERM to the worker by its PID: a graceful stop
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        server.kill()
