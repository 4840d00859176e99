"""The backend contract suite (tests/test_backend_contract.py) run against the tcp:// backend.

Every contract test is collected here a second time with `make_backend` making
`RemoteBackend` clients of one server per test (each client its own connections, like
another process would have). The SQLite-specific tests (`test_sqlite_*`) stay there.

The server here runs in this process (a `BrokerServer` on a real loopback socket with the
real protocol), because a subprocess per contract test would cost a second of start-up per
ten tests; every other TCP test starts it as `python -m pynenc_lite.server`.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Iterator

import pytest

from pynenc_lite.backend.base import Backend
from pynenc_lite.backend.sqlite import SQLiteBackend
from pynenc_lite.backend.tcp.client import RemoteBackend
from pynenc_lite.backend.tcp.engine import BrokerServer
from tests import test_backend_contract as contract
from tests.test_backend_contract import MakeBackend, backend  # noqa: F401 - a fixture

# Collect the contract's tests in this module, where `make_backend` below is the TCP one.
globals().update(
    {
        name: test
        for name, test in vars(contract).items()
        if name.startswith("test_") and not name.startswith("test_sqlite_") and callable(test)
    }
)


@pytest.fixture
def make_backend(tmp_path: Path) -> Iterator[MakeBackend]:
    """Makes clients of one server on this test's SQLite file; all closed at the end."""
    secret = secrets.token_bytes(32)
    storage = SQLiteBackend(
        str(tmp_path / "contract.sqlite3"), poll_min_seconds=0.0005, poll_max_seconds=0.01
    )
    server = BrokerServer(("127.0.0.1", 0), storage, secret=secret)
    server.start()
    made: list[Backend] = []

    def make() -> Backend:
        client = RemoteBackend("127.0.0.1", server.port, secret=secret, retry_seconds=5.0)
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            client.close()
        server.stop()


def test_the_contract_tests_are_collected_here() -> None:
    names = [n for n in vars(contract) if n.startswith("test_") and "sqlite" not in n]
    assert names and all(n in globals() for n in names)
