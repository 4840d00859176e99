"""The tcp:// backend against a real server subprocess: every operation, lost replies,
threads, the end-to-end path of an app configured only by broker_url, and a server killed
with SIGKILL and restarted while calls are in flight."""

from __future__ import annotations

import concurrent.futures
import inspect
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from pynenc_lite import Pynenc
from pynenc_lite.backend.base import Backend, NewInvocation, Outcome, WorkerInfo
from pynenc_lite.backend.tcp import ops
from pynenc_lite.backend.tcp.client import RemoteBackend, backend_from_config
from pynenc_lite.conf import PynencConfig
from pynenc_lite.errors import ConfigError
from pynenc_lite.status import InvocationStatus
from tests import tasks_core
from tests.helpers import WAIT_SECONDS, wait_until
from tests.test_tcp_helpers import LossyRelay, ServerProcess, running_server

APP = "tcp-app"


@pytest.fixture
def tcp_server(tmp_path: Path) -> Iterator[ServerProcess]:
    yield from running_server(tmp_path)


def new(i: int, now: float, args: bytes = b"\x80args") -> NewInvocation:
    return NewInvocation(f"inv-{i}-{time.monotonic_ns()}", APP, "tests.t", args, now, now)


@pytest.fixture
def backend(tcp_server: ServerProcess) -> Iterator[RemoteBackend]:
    client = tcp_server.backend()
    try:
        yield client
    finally:
        client.close()


def test_the_allowlist_is_exactly_the_backend_protocol() -> None:
    # A method added to Backend must be added to ops.OPS too (one line), with the same
    # argument names, or the server could not serve it.
    abstract = set(Backend.__abstractmethods__)
    assert set(ops.OPS) == abstract
    for name, op in ops.OPS.items():
        params = list(inspect.signature(getattr(Backend, name)).parameters)[1:]
        assert params == list(op.params), name


def test_the_client_is_the_contract_with_generated_methods() -> None:
    # Every operation is a method with the contract's name and signature; those sent again
    # after a lost reply are generated from the contract, the others written by hand.
    assert issubclass(RemoteBackend, Backend) and not RemoteBackend.__abstractmethods__
    for name, op in ops.OPS.items():
        method, contract = getattr(RemoteBackend, name), getattr(Backend, name)
        assert method.__name__ == name
        assert inspect.signature(method) == inspect.signature(contract), name
        generated = getattr(method, "__wrapped__", None) is contract
        assert generated == (op.after_lost_reply == ops.RESEND), name


def test_a_generated_method_checks_its_arguments_before_sending() -> None:
    client = RemoteBackend("127.0.0.1", 9, secret=b"x" * 32, retry_seconds=0.0)
    try:
        with pytest.raises(TypeError, match="get_invocation"):
            client.get_invocation()  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="get_invocation"):
            client.get_invocation("a", "b")  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="get_invocation"):
            client.get_invocation("a", invocation_id="a")  # type: ignore[misc]
        with pytest.raises(TypeError, match="list_invocations"):
            client.list_invocations("app", state=None)  # type: ignore[call-arg]
    finally:
        client.close()


def test_every_operation_round_trips(backend: RemoteBackend) -> None:
    now = time.time()
    token = backend.wait_for_change(None, 0)
    items = [new(i, now, args=bytes(range(256)) * (i + 1)) for i in range(3)]
    assert backend.submit(items) == [i.invocation_id for i in items]
    assert backend.wait_for_change(token, WAIT_SECONDS) != token
    record = backend.get_invocation(items[0].invocation_id)
    assert record is not None and record.status is InvocationStatus.REGISTERED
    assert backend.get_invocation("no-such-id") is None
    assert backend.next_run_at(APP) == now
    worker = WorkerInfo("w1", APP, "host", 1, 2, now)
    assert backend.heartbeat(worker, [], now, 10.0) == []
    assert backend.count_live_workers(APP, now - 1) == 1
    claimed = backend.claim(
        app_id=APP, worker_id="w1", limit=2, now=now, lease_seconds=10.0, max_lost_attempts=3
    )
    assert [c.args for c in claimed] == [items[0].args, items[1].args]  # bytes intact
    assert backend.heartbeat(worker, [c.invocation_id for c in claimed], now, 10.0) == []
    seq, _ = backend.get_finished_since(-1)
    outcomes = [
        Outcome(claimed[0].invocation_id, InvocationStatus.SUCCESS, b"\x00result"),
        Outcome(claimed[1].invocation_id, InvocationStatus.FAILED, None, "ValueError: x", "tb"),
    ]
    assert backend.complete_many(outcomes, "w1", now) == [True, True]
    assert backend.complete_many(outcomes[:1], "w1", now) == [False]  # exactly one outcome
    new_seq, finished = backend.get_finished_since(seq)
    assert new_seq > seq and finished == [o.invocation_id for o in outcomes]
    assert sorted(
        backend.get_outcomes([o.invocation_id for o in outcomes] + ["x"]),
        key=lambda o: o.status.value,
    ) == sorted(outcomes, key=lambda o: o.status.value)
    third = backend.claim(
        app_id=APP, worker_id="w1", limit=5, now=now, lease_seconds=10.0, max_lost_attempts=3
    )
    assert len(third) == 1
    assert backend.expire_leases("w1") == 1
    assert backend.release("w1", now) == 1  # an expired lease is still its to hand back
    backend.remove_worker("w1")
    assert backend.count_live_workers(APP, now - 1) == 0
    assert backend.get_outcomes([]) == [] and backend.complete_many([], "w1", now) == []
    with pytest.raises(ValueError, match="status RUNNING"):  # raised there, same type here
        running = Outcome(items[2].invocation_id, InvocationStatus.RUNNING)
        backend.complete_many([running], "w1", now)


def test_wait_for_change_long_polls_without_spinning(backend: RemoteBackend) -> None:
    token = backend.wait_for_change(None, 0)
    start = time.monotonic()
    assert backend.wait_for_change(token, 0.3) == token  # nothing changed: waits it out
    assert time.monotonic() - start >= 0.25
    other = RemoteBackend(backend.host, backend.port, secret=backend._pool.secret)
    try:
        timer = threading.Timer(0.1, lambda: other.submit([new(1, time.time())]))
        timer.start()
        start = time.monotonic()
        assert backend.wait_for_change(token, WAIT_SECONDS) != token
        assert time.monotonic() - start < WAIT_SECONDS / 2
        timer.join()
    finally:
        other.close()


def test_many_threads_share_one_backend(backend: RemoteBackend) -> None:
    now = time.time()

    def submit_and_read(i: int) -> bool:
        item = new(i, now)
        backend.submit([item])
        record = backend.get_invocation(item.invocation_id)
        return record is not None and record.invocation_id == item.invocation_id

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert all(pool.map(submit_and_read, range(400)))
    assert len(backend._pool.idle) <= backend._pool.max_idle_connections


# -- lost replies ---------------------------------------------------------------------------


@pytest.fixture
def relay(tcp_server: ServerProcess) -> Iterator[LossyRelay]:
    relay = LossyRelay(tcp_server.port)
    try:
        yield relay
    finally:
        relay.close()


@pytest.fixture
def lossy(tcp_server: ServerProcess, relay: LossyRelay) -> Iterator[RemoteBackend]:
    client = RemoteBackend(
        "127.0.0.1", relay.port, secret=tcp_server.secret.encode(), retry_seconds=10.0
    )
    try:
        yield client
    finally:
        client.close()


def test_submit_with_a_lost_reply_is_stored_once(
    lossy: RemoteBackend, relay: LossyRelay, backend: RemoteBackend
) -> None:
    now = time.time()
    items = [new(i, now) for i in range(5)]
    relay.lose_next_replies(1)
    # No error: the client finds the batch stored, and says which ids stand for the calls.
    assert lossy.submit(items) == [i.invocation_id for i in items]
    assert relay.lost == 1
    claimed = backend.claim(
        app_id=APP, worker_id="w", limit=100, now=now, lease_seconds=10.0, max_lost_attempts=3
    )
    assert sorted(c.invocation_id for c in claimed) == sorted(i.invocation_id for i in items)


def test_complete_with_a_lost_reply_reports_accepted(
    lossy: RemoteBackend, relay: LossyRelay
) -> None:
    now = time.time()
    items = [new(i, now) for i in range(2)]
    lossy.submit(items)
    claimed = lossy.claim(
        app_id=APP, worker_id="w", limit=2, now=now, lease_seconds=10.0, max_lost_attempts=3
    )
    outcomes = [Outcome(c.invocation_id, InvocationStatus.SUCCESS, b"r") for c in claimed]
    relay.lose_next_replies(1)
    assert lossy.complete_many(outcomes, "w", now) == [True, True]
    assert relay.lost == 1


def test_reads_and_repeatable_writes_survive_lost_replies(
    lossy: RemoteBackend, relay: LossyRelay
) -> None:
    now = time.time()
    lossy.submit([new(0, now)])
    relay.lose_next_replies(1)
    assert lossy.next_run_at(APP) == now
    relay.lose_next_replies(1)
    assert lossy.heartbeat(WorkerInfo("w", APP, "h", 1, 1, now), [], now, 10.0) == []
    relay.lose_next_replies(1)
    assert (
        len(
            lossy.claim(
                app_id=APP, worker_id="w", limit=1, now=now, lease_seconds=10.0, max_lost_attempts=3
            )
        )
        == 0
    )  # the lost claim took it (documented)
    assert relay.lost == 3


# -- configuration --------------------------------------------------------------------------


def test_backend_from_config_needs_a_secret(tmp_path: Path) -> None:
    conf = PynencConfig(config_values={"broker_url": "tcp://127.0.0.1:1"}, environ={})
    with pytest.raises(ConfigError, match="no secret is configured"):
        backend_from_config(conf)
    conf.broker_tls_ca_file = str(tmp_path / "ca.pem")
    conf.broker_secret = "x" * 32
    with pytest.raises(ConfigError, match="use tcps://"):
        backend_from_config(conf)


def test_secret_from_env_wins_and_is_masked(tmp_path: Path) -> None:
    conf = PynencConfig(
        config_values={"broker_url": "tcp://127.0.0.1:9", "broker_secret_file": "/nonexistent"},
        environ={"PYNENC__BROKER_SECRET": "s3cret-value-0123456789"},
    )
    client = backend_from_config(conf)
    assert client._pool.secret == b"s3cret-value-0123456789"
    assert "s3cret" not in conf.format_table() and "s3cret" not in repr(conf.describe())
    client.close()


# -- end to end: an app configured only by broker_url ----------------------------------------


@pytest.fixture
def tcp_app(tcp_server: ServerProcess, configure_core_app: Callable[..., Pynenc]) -> Pynenc:
    # tcp_server first: set up first, torn down last (the app closes through it).
    return configure_core_app(
        broker_url=tcp_server.url,
        broker_secret_file=str(tcp_server.secret_file),
        max_threads=4,
    )


def test_direct_tasks_run_through_the_server(tcp_app: Pynenc) -> None:
    assert isinstance(tcp_app.backend, RemoteBackend)
    with tcp_app.runner:
        assert tasks_core.add(1, 2) == 3
        assert tasks_core.sum_pairs_by_tuples([1, 2, 3, 4]) == [3, 7]
        with pytest.raises(ValueError, match="boom"):
            tasks_core.raise_value_error("boom")
        invocations = [tasks_core.multiply(i, 3) for i in range(50)]
        assert [i.get_result(WAIT_SECONDS) for i in invocations] == [i * 3 for i in range(50)]


def test_server_sigkill_and_restart_loses_nothing(
    tcp_app: Pynenc, tcp_server: ServerProcess
) -> None:
    results: dict[str, Any] = {}

    def call(key: str, func: Callable[[], Any]) -> threading.Thread:
        def run() -> None:
            try:
                results[key] = func()
            except BaseException as exc:  # reported by the assertion below
                results[key] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    with tcp_app.runner:
        # A caller blocked in a direct_task call whose task runs across the restart, and
        # queued work (4 threads: 3 run, the rest wait in the database).
        blocked = call("blocked", lambda: tasks_core.block_until_released("s-direct", "go", 42))
        queued = [tasks_core.wait_for_release(f"s-{i}", "go", i) for i in range(10)]
        assert tasks_core.event("s-direct").wait(WAIT_SECONDS)
        wait_until(lambda: sum(tasks_core.event(f"s-{i}").is_set() for i in range(10)) == 3)

        tcp_server.kill()
        during = call("during", lambda: tasks_core.add(20, 1))  # submitted while it is down
        tcp_server.start()
        tasks_core.event("go").set()

        blocked.join(WAIT_SECONDS)
        during.join(WAIT_SECONDS)
        assert results == {"blocked": 42, "during": 21}
        assert [i.get_result(WAIT_SECONDS) for i in queued] == list(range(10))
    assert tcp_server.starts == 2
