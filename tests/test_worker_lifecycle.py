"""The worker command's lifecycle, as an operator meets it: stop signals sent to the whole
process group, a supervisor killed under its children, children that crash or cannot reach
storage as they start, a TCP server gone when the worker is told to stop, and a hard stop
(time limit) whose outcome could not be stored at the first try.

Every test starts `python -m pynenc_lite.worker` in its own session and kills that session
(by its PID, which is the group id) when it ends, whatever happened. Waits are bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest

from pynenc_lite import Invocation, InvocationStatus, Pynenc
from pynenc_lite.backend.base import Outcome
from pynenc_lite.errors import BackendError
from pynenc_lite.runtime import runtime_of
from tests import tasks_proc
from tests.helpers import wait_until
from tests.test_tcp_helpers import ServerProcess, running_server, subprocess_env
from tests.test_worker_processes import (
    ROOT,
    Workers,
    child_pids,
    proc_db,
    started_workers,
    statuses,
)

# Stop signals: how long a stop may take beyond the grace period it asked for (a cold
# interpreter on a loaded CI machine included).
STOP_SLACK_SECONDS = 4.0


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield from proc_db(tmp_path, monkeypatch)


@pytest.fixture
def workers(db: Path, tmp_path: Path) -> Iterator[Workers]:
    yield from started_workers(db, tmp_path)


def unused_port() -> int:
    """A loopback port nobody listens on (bound, then released, by this call)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def one_task_running(
    workers: Workers, tmp_path: Path, grace: str
) -> tuple[subprocess.Popen[bytes], Invocation[str]]:
    """A worker command (one process, one thread) running a task that waits for the file
    `tmp_path / "gate"`, with `grace` as its shutdown_grace_seconds."""
    invocation = tasks_proc.wait_for_file(str(tmp_path / "gate"), 60.0)
    worker = workers.start(
        "--processes", "1", "--threads", "1", PYNENC__SHUTDOWN_GRACE_SECONDS=grace
    )
    wait_until(lambda: invocation.status is InvocationStatus.RUNNING, 20)
    return worker, invocation


def is_running(pid: int) -> bool:
    """True while `pid` is a live process (a zombie nobody reaped yet counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:  # no /proc: ask the kernel (a zombie then counts as alive)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def start_command(
    tmp_path: Path, target: str, *args: str, name: str = "worker", **env: str
) -> subprocess.Popen[bytes]:
    """`python -m pynenc_lite.worker TARGET ARGS` in its own session, logging to a file."""
    with open(tmp_path / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "pynenc_lite.worker", target, *args],
            cwd=ROOT,
            env=subprocess_env(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the whole session of a command started by `start_command`, and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def read_log(tmp_path: Path, name: str = "worker") -> str:
    return (tmp_path / f"{name}.log").read_text(errors="replace")


# -- 1. a stop signal sent to the whole group is ONE stop ------------------------------------


@pytest.mark.parametrize("how", ["supervisor", "group", "children-first"])
def test_sigterm_lets_tasks_that_fit_the_grace_finish(
    workers: Workers, tmp_path: Path, db: Path, how: str
) -> None:
    """systemd (KillMode=control-group), `kill -TERM -PGID` and Ctrl-C signal every process
    at once: a child must count that signal and its supervisor's stop as one stop, and let
    its tasks finish within the grace period instead of handing them back.

    "children-first" is the group signal with its order pinned down: each child has acted
    on its own SIGTERM before the supervisor gets its own (with `killpg` the order is up
    to the kernel, and two signals close together can even merge into one)."""
    log = tmp_path / "runs.log"
    group = tasks_proc.slow_record.parallelize([(i, str(log), 1.5) for i in range(4)])
    worker = workers.start(
        "--processes", "2", "--threads", "2", PYNENC__SHUTDOWN_GRACE_SECONDS="20"
    )
    wait_until(lambda: statuses(db) == {"RUNNING": 4}, 20)
    if how == "group":
        os.killpg(worker.pid, signal.SIGTERM)
    else:
        if how == "children-first":
            for pid in child_pids(db):
                os.kill(pid, signal.SIGTERM)
            wait_until(lambda: workers.log().count("finishing running tasks") == 2, 10)
        os.kill(worker.pid, signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, workers.log()
    assert statuses(db) == {"SUCCESS": 4}, workers.log()
    assert sorted(map(int, log.read_text().split())) == [0, 1, 2, 3]  # none ran twice
    assert group.get_results(timeout=5) == [0, 2, 4, 6]


def test_a_second_group_signal_skips_the_grace(workers: Workers, tmp_path: Path, db: Path) -> None:
    worker, invocation = one_task_running(workers, tmp_path, grace="60")
    os.killpg(worker.pid, signal.SIGTERM)
    wait_until(lambda: "finishing running tasks" in workers.log(), 10)
    os.killpg(worker.pid, signal.SIGTERM)
    assert worker.wait(timeout=15) == 0, workers.log()
    assert invocation.status is InvocationStatus.REGISTERED  # handed back, not leased


# -- 7. handing work back on a graceful stop is not a lost attempt ---------------------------


def test_work_handed_back_on_a_graceful_stop_is_not_a_lost_attempt(
    workers: Workers, tmp_path: Path, db: Path
) -> None:
    worker, invocation = one_task_running(workers, tmp_path, grace="0")
    os.kill(worker.pid, signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, workers.log()
    record = invocation.record()
    assert record is not None and record.status is InvocationStatus.REGISTERED
    assert (record.attempts, record.lost_attempts) == (1, 0)
    (tmp_path / "gate").touch()
    workers.start("--processes", "1", "--threads", "1")
    assert invocation.get_result(timeout=30) == "finished"
    record = invocation.record()
    assert record is not None and (record.attempts, record.lost_attempts) == (2, 0)


# -- 2. children of a killed supervisor stop ------------------------------------------------


@pytest.mark.slow
def test_children_of_a_killed_supervisor_stop_and_nothing_is_lost(
    workers: Workers, tmp_path: Path, db: Path
) -> None:
    """Chaos: SIGKILL the supervisor under load. Its children notice, claim nothing more,
    finish or hand back what they run and exit; a new worker then runs the rest."""
    log = tmp_path / "runs.log"
    count = 60
    group = tasks_proc.slow_record.parallelize([(i, str(log), 0.2) for i in range(count)])
    first = workers.start(
        "--processes", "2", "--threads", "2", PYNENC__SHUTDOWN_GRACE_SECONDS="1"
    )
    wait_until(lambda: statuses(db).get("SUCCESS", 0) >= 8, 30)
    old_children = child_pids(db)
    assert len(old_children) == 2
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    killed_at = time.monotonic()
    wait_until(lambda: not any(is_running(pid) for pid in old_children), 15)
    orphaned_seconds = time.monotonic() - killed_at
    assert statuses(db).get("SUCCESS", 0) < count  # they stopped claiming
    workers.start("--processes", "1", "--threads", "4")
    assert group.get_results(timeout=60) == [i * 2 for i in range(count)]
    assert statuses(db) == {"SUCCESS": count}
    assert set(map(int, log.read_text().split())) == set(range(count))
    assert orphaned_seconds < 1 + STOP_SLACK_SECONDS, orphaned_seconds


# -- 3. a stop while waiting to respawn a child that crashed at start ------------------------


def test_sigterm_during_the_respawn_back_off_stops_at_once(tmp_path: Path) -> None:
    worker = start_command(
        tmp_path, "tests.tasks_start_faults:app", "--processes", "1",
        "--db", str(tmp_path / "w.sqlite3"), TEST_START_FAULT="crash",
    )
    try:
        # The fifth crash in a row is followed by a 1.6 s pause before the next start.
        wait_until(lambda: read_log(tmp_path).count("exited with code 1") >= 5, 30)
        started = time.monotonic()
        os.kill(worker.pid, signal.SIGTERM)
        assert worker.wait(timeout=15) == 0, read_log(tmp_path)
        stopped_in = time.monotonic() - started
    finally:
        kill_group(worker)
    assert stopped_in < 1.0, f"took {stopped_in:.2f}s to stop:\n{read_log(tmp_path)}"


# -- 4. storage that cannot be reached at start ---------------------------------------------


def _run_to_exit(process: subprocess.Popen[bytes], timeout: float) -> Optional[int]:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        kill_group(process)


def _one_error_line(output: str) -> list[str]:
    return [line for line in output.splitlines() if "error" in line.lower()]


@pytest.mark.parametrize("storage", ["missing-folder", "tcp-server-down"])
def test_storage_unusable_at_start_stops_the_worker_with_one_line(
    tmp_path: Path, storage: str
) -> None:
    if storage == "missing-folder":
        args = ["--db", str(tmp_path / "no-such-folder" / "w.sqlite3")]
        env: dict[str, str] = {}
        message = "cannot open the SQLite database"
    else:
        args = []
        env = {
            "PYNENC__BROKER_URL": f"tcp://127.0.0.1:{unused_port()}",
            "PYNENC__BROKER_SECRET": "x" * 32,
            "PYNENC__BROKER_RETRY_SECONDS": "0.5",
        }
        message = "cannot reach the pynenc_lite server"
    worker = start_command(
        tmp_path, "tests.tasks_start_faults:app", "--processes", "2", *args, **env
    )
    code = _run_to_exit(worker, 20)
    output = read_log(tmp_path)
    assert code == 2, output
    assert "Traceback" not in output, output
    errors = _one_error_line(output)
    assert len(errors) == 1 and message in errors[0], output


def test_a_child_that_cannot_reach_storage_at_its_start_is_not_respawned(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    worker = start_command(
        tmp_path, "tests.tasks_start_faults:app", "--processes", "1",
        "--db", str(folder / "w.sqlite3"),
        TEST_START_FAULT="remove-db-folder", TEST_DB_FOLDER=str(folder),
    )
    code = _run_to_exit(worker, 20)
    output = read_log(tmp_path)
    assert code not in (0, None), output
    assert "Traceback" not in output, output
    assert output.count("cannot open the SQLite database") == 1, output
    assert "holding" not in output, output  # it held nothing: say nothing about it


# -- 5. a TCP worker whose server is gone stops in bounded time ------------------------------


@pytest.fixture
def tcp_server(tmp_path: Path) -> Iterator[ServerProcess]:
    yield from running_server(tmp_path)


@pytest.mark.slow
def test_a_tcp_worker_whose_server_died_stops_within_the_grace(
    tcp_server: ServerProcess, tmp_path: Path
) -> None:
    grace = 2.0
    gate = tmp_path / "gate"  # never created: the task outlasts the grace period
    client = tcp_server.backend()
    worker = start_command(
        tmp_path, "tests.tasks_proc:app", "--processes", "2", "--threads", "2",
        PYNENC__BROKER_URL=tcp_server.url,
        PYNENC__BROKER_SECRET_FILE=str(tcp_server.secret_file),
        PYNENC__SHUTDOWN_GRACE_SECONDS=str(grace),
        PYNENC__HEARTBEAT_INTERVAL_SECONDS="0.2",
    )
    try:
        app = tasks_proc.app
        app.close()
        app.conf.broker_url = tcp_server.url
        app.conf.broker_secret_file = str(tcp_server.secret_file)
        invocation = tasks_proc.wait_for_file(str(gate), 120.0)
        wait_until(lambda: invocation.status is InvocationStatus.RUNNING, 20)
        app.close()
        tcp_server.kill()
        started = time.monotonic()
        os.kill(worker.pid, signal.SIGTERM)
        code = _run_to_exit(worker, grace + 60)
        stopped_in = time.monotonic() - started
    finally:
        kill_group(worker)
        client.close()
        tasks_proc.app.close()
        tasks_proc.app.conf.broker_url = None
        tasks_proc.app.conf.broker_secret_file = None
    output = read_log(tmp_path)
    assert code == 0, output
    assert stopped_in < grace + STOP_SLACK_SECONDS, f"{stopped_in:.1f}s:\n{output}"
    assert "did not stop" not in output, output  # the log is true: each child stopped itself


def test_a_retry_budget_shortens_calls_to_an_unreachable_server() -> None:
    from pynenc_lite.backend.tcp.client import RemoteBackend

    port = unused_port()
    client = RemoteBackend("127.0.0.1", port, secret=b"x" * 32, retry_seconds=30.0)
    try:
        client.set_retry_budget(0.3)
        started = time.monotonic()
        with pytest.raises(BackendError, match="cannot reach"):
            client.next_run_at("app")
        assert time.monotonic() - started < 3.0
        client.set_retry_budget(None)
        assert client.retry_seconds == 30.0  # the configured limit is untouched
    finally:
        client.close()


# -- 6. a hard stop does not hand back the invocation that caused it -------------------------


def test_a_time_limit_whose_failure_store_failed_once_is_not_run_again(tmp_path: Path) -> None:
    from tests import tasks_hard_stop

    db = tmp_path / "hard.sqlite3"
    flag = tmp_path / "fail-store-once"
    flag.touch()
    runs = tmp_path / "runs.log"
    app = tasks_hard_stop.app
    app.close()
    app.conf.sqlite_db_path = str(db)
    worker = start_command(
        tmp_path, "tests.tasks_hard_stop:app", "--processes", "1", "--threads", "1",
        PYNENC__SQLITE_DB_PATH=str(db), PYNENC__HEARTBEAT_INTERVAL_SECONDS="0.05",
        TEST_FAIL_STORE_ONCE=str(flag),
    )
    try:
        invocation = tasks_hard_stop.spins(str(runs))
        wait_until(lambda: invocation.status is InvocationStatus.FAILED, 30)
        changes = [h.status.value for h in app.backend.get_history(invocation.invocation_id)]
        record = invocation.record()
    finally:
        kill_group(worker)
        app.close()
    output = read_log(tmp_path)
    assert not flag.exists(), "the injected store failure never happened:\n" + output
    assert len(runs.read_text().split()) == 1, output  # it ran once
    assert changes == ["REGISTERED", "RUNNING", "FAILED"], output  # never handed back
    assert record is not None and record.attempts == 1
    assert record.error is not None and "TaskTimeLimitError" in record.error


class _ProcessEnded(Exception):
    """Stands for `os._exit` in the in-process hard-stop tests."""


@pytest.mark.parametrize("failures, stored", [(1, True), (1000, False)])
def test_a_hard_stop_hands_work_back_only_once_its_outcomes_are_stored(
    core_app: Pynenc, monkeypatch: pytest.MonkeyPatch, failures: int, stored: bool
) -> None:
    """The dispatcher's side of a hard stop, in this process: the time limit's failure is
    retried until stored; if it cannot be, the runner is told not to hand work back."""
    from pynenc_lite.runner import dispatcher as dispatching
    from pynenc_lite.runner.pool import WorkPool

    runtime = runtime_of(core_app)
    backend = runtime.backend
    real_store = backend.complete_many
    left = [failures]

    def complete_many(outcomes: list[Outcome], worker_id: str, now: float) -> list[bool]:
        if left[0] > 0:
            left[0] -= 1
            raise BackendError("storage down (injected by the test)")
        return real_store(outcomes, worker_id, now)

    monkeypatch.setattr(backend, "complete_many", complete_many)
    monkeypatch.setattr(dispatching, "HARD_STOP_STORE_SECONDS", 0.5)
    pool = WorkPool(1)
    pool.add_outcome(Outcome("inv-1", InvocationStatus.FAILED, None, "TaskTimeLimitError: x"))
    pool.ask_hard_stop("time limit")
    told: list[tuple[str, bool]] = []

    def stop_process(reason: str, outcomes_stored: bool) -> None:
        told.append((reason, outcomes_stored))
        raise _ProcessEnded

    dispatcher = dispatching.Dispatcher(
        runtime, pool, worker_id="w-test", clock=time.time, hard_stop=True,
        stop_process=stop_process,
    )
    with pytest.raises(_ProcessEnded):
        dispatcher.run(burst=False)
    assert told == [("time limit", stored)]
    assert [o.invocation_id for o in pool.outcomes] == ([] if stored else ["inv-1"])
