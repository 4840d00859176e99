"""Worker processes: `python -m pynenc_lite.worker`, the process runner, leases and recovery.

Every test starts its workers as subprocesses in their own session and kills that whole
session at the end (by PID), whatever happened. Waits are bounded: a bug fails a test, it
never hangs CI.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from pynenc_lite import (
    InvocationStatus,
    SerializationError,
    TaskNotFoundError,
    WorkerLostError,
)
from tests import tasks_proc

ROOT = Path(__file__).resolve().parent.parent
TARGET = "tests.tasks_proc:app"


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield from proc_db(tmp_path, monkeypatch)


def proc_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh database for tasks_proc.app, with short leases so recovery is quick (the
    body of the `db` fixture of the worker-process test modules)."""
    for name in list(os.environ):
        if name.startswith("PYNENC__"):
            monkeypatch.delenv(name)
    path = tmp_path / "proc.sqlite3"
    app = tasks_proc.app
    app.close()
    app.conf.sqlite_db_path = str(path)
    app.conf.heartbeat_interval_seconds = 0.2
    app.conf.lease_seconds = 1.0
    app.conf.no_worker_warning_seconds = 30.0
    yield path
    app.close()


class Workers:
    """Starts worker command lines and guarantees they are all killed afterwards."""

    def __init__(self, db: Path, tmp_path: Path) -> None:
        self.db = db
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen[bytes]] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYNENC__")}
        env.update(
            PYNENC__SQLITE_DB_PATH=str(self.db),
            PYNENC__HEARTBEAT_INTERVAL_SECONDS="0.2",
            PYNENC__LEASE_SECONDS="1.0",
            PYTHONPATH=str(ROOT),
        )
        env.update(extra)
        return env

    def start(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        with open(self.tmp_path / f"worker{len(self.started)}.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "pynenc_lite.worker", TARGET, *args],
                cwd=ROOT,
                env=self.env(**env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: cleanup reaches the children
            )
        self.started.append(process)
        return process

    def log(self, index: int = 0) -> str:
        return (self.tmp_path / f"worker{index}.log").read_text(errors="replace")

    def kill_all(self) -> None:
        for process in self.started:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=10)


@pytest.fixture
def workers(db: Path, tmp_path: Path) -> Iterator[Workers]:
    yield from started_workers(db, tmp_path)


def started_workers(db: Path, tmp_path: Path) -> Iterator[Workers]:
    """Worker commands for a test, all killed at its end (the body of `workers` fixtures)."""
    w = Workers(db, tmp_path)
    try:
        yield w
    finally:
        w.kill_all()


def child_pids(db: Path) -> list[int]:
    """PIDs of worker processes that announced themselves (read straight from the file)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return [row[0] for row in conn.execute("SELECT pid FROM workers")]


def statuses(db: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT status, COUNT(*) FROM invocations GROUP BY status")
        return dict(rows.fetchall())


def test_many_processes_run_every_task_exactly_once(workers: Workers, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    group = tasks_proc.record.parallelize([(i, str(log)) for i in range(2000)])
    worker = workers.start("--processes", "4", "--threads", "4", "--burst")
    assert worker.wait(timeout=120) == 0, workers.log()
    assert group.get_results(timeout=10) == [i * 2 for i in range(2000)]
    runs = log.read_text().split()
    assert sorted(map(int, runs)) == list(range(2000))  # each ran exactly once
    output = workers.log()
    assert "locked" not in output and "Traceback" not in output, output
    assert statuses(workers.db) == {"SUCCESS": 2000}


def test_worker_in_other_process_serves_blocking_calls(workers: Workers, db: Path) -> None:
    workers.start("--processes", "2", "--threads", "2")
    assert tasks_proc.add(2, 3) == 5
    pids = {tasks_proc.worker_pid() for _ in range(20)}
    assert os.getpid() not in pids
    assert pids <= set(child_pids(db))


@pytest.mark.slow
def test_sigkilled_workers_lose_no_task(workers: Workers, tmp_path: Path, db: Path) -> None:
    """Chaos: SIGKILL worker processes again and again while tasks are in flight."""
    log = tmp_path / "runs.log"
    count = 300
    group = tasks_proc.slow_record.parallelize([(i, str(log), 0.01) for i in range(count)])
    workers.start("--processes", "2", "--threads", "4", PYNENC__MAX_LOST_ATTEMPTS="20")
    kills = 0
    deadline = time.monotonic() + 60
    while kills < 6 and time.monotonic() < deadline:
        done = sum(f.done() for f in (i.future for i in group))
        if done >= count:
            break
        pids = [pid for pid in child_pids(db) if _alive(pid)]
        if pids and done >= kills * count // 8:
            os.kill(pids[0], signal.SIGKILL)
            kills += 1
            wait_until(lambda p=pids[0]: not _alive(p), 10, "the killed worker to die")
        time.sleep(0.02)
    assert kills >= 3, f"only {kills} kills happened before the tasks finished"
    assert group.get_results(timeout=60) == [i * 2 for i in range(count)]
    assert set(map(int, log.read_text().split())) == set(range(count))  # none lost
    assert statuses(db) == {"SUCCESS": count}
    attempts = [tasks_proc.app.backend.get_invocation(i.invocation_id) for i in group]
    assert any(r is not None and r.attempts > 1 for r in attempts)  # some really re-ran


def test_lease_expiry_recovers_work_of_an_unsupervised_worker(
    workers: Workers, tmp_path: Path, db: Path
) -> None:
    """A worker with no supervisor is SIGKILLed mid-task; another worker takes the work over
    once the lease (1 s here) expires, and the attempt count shows it."""
    gate = tmp_path / "gate"
    invocation = tasks_proc.wait_for_file(str(gate), 30.0)
    first = workers.start("--processes", "0", "--threads", "1")
    wait_until(lambda: invocation.status is InvocationStatus.RUNNING, 20, "the task to start")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    gate.touch()
    workers.start("--processes", "0", "--threads", "1")
    assert invocation.get_result(timeout=30) == "finished"
    record = invocation.record()
    assert record is not None and record.attempts == 2 and record.lost_attempts == 1


def test_sigterm_lets_running_tasks_finish(workers: Workers, tmp_path: Path, db: Path) -> None:
    gate = tmp_path / "gate"
    invocations = [tasks_proc.wait_for_file(str(gate), 30.0) for _ in range(2)]
    worker = workers.start("--processes", "1", "--threads", "2")
    wait_until(
        lambda: all(i.status is InvocationStatus.RUNNING for i in invocations),
        20,
        "both tasks to start",
    )
    os.kill(worker.pid, signal.SIGTERM)
    gate.touch()
    assert worker.wait(timeout=30) == 0, workers.log()
    assert [i.get_result(timeout=5) for i in invocations] == ["finished", "finished"]


def test_sigterm_hands_back_unfinished_work_at_once(
    workers: Workers, tmp_path: Path, db: Path
) -> None:
    gate = tmp_path / "gate"
    invocation = tasks_proc.wait_for_file(str(gate), 60.0)
    worker = workers.start(
        "--processes", "1", "--threads", "1", PYNENC__SHUTDOWN_GRACE_SECONDS="0"
    )
    wait_until(lambda: invocation.status is InvocationStatus.RUNNING, 20, "the task to start")
    os.kill(worker.pid, signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, workers.log()
    assert invocation.status is InvocationStatus.REGISTERED  # back in the queue, not leased
    gate.touch()
    workers.start("--processes", "0", "--threads", "1")
    assert invocation.get_result(timeout=30) == "finished"


def test_task_that_exits_its_process_fails_with_worker_lost(workers: Workers) -> None:
    workers.start("--processes", "1", "--threads", "1", PYNENC__MAX_LOST_ATTEMPTS="2")
    with pytest.raises(WorkerLostError, match="os._exit"):
        tasks_proc.exit_process()
    assert tasks_proc.add(1, 1) == 2  # the replaced worker process still serves


def test_task_from_a_module_the_worker_cannot_import(
    workers: Workers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "caller_only.py").write_text(
        textwrap.dedent(
            """
            from tests import tasks_proc

            class Point:
                def __init__(self, x):
                    self.x = x

            @tasks_proc.app.direct_task
            def only_here(x):
                return x
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import caller_only  # type: ignore[import-not-found]

    workers.start("--processes", "1", "--threads", "1")
    try:
        with pytest.raises(TaskNotFoundError, match="caller_only"):
            caller_only.only_here(1)
        # Arguments the worker cannot unpickle: a class only the caller has.
        with pytest.raises(SerializationError, match="cannot be unpickled on this worker"):
            tasks_proc.echo(caller_only.Point(1))
    finally:
        del tasks_proc.app.runtime.tasks["caller_only.only_here"]
        sys.modules.pop("caller_only", None)


def test_task_defined_in_main_script_names_the_fix(workers: Workers, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            from tests import tasks_proc
            from pynenc_lite import TaskNotFoundError

            @tasks_proc.app.direct_task
            def in_main():
                return 1

            try:
                in_main()
            except TaskNotFoundError as exc:
                print("ERROR:", exc)
            """
        )
    )
    workers.start("--processes", "1", "--threads", "1")
    env = workers.env()
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    expected = "ERROR: task __main__.in_main was defined in the caller's __main__ script"
    assert expected in out.stdout, out.stdout + out.stderr
    assert "importable module" in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["nosuchmodule:app"], "no module named 'nosuchmodule'"),
        (["tests.tasks_proc:nothing"], "not a Pynenc app"),
        (["tests/missing.py"], "no such file"),
        (["a:b:c"], "is not a target"),
    ],
)
def test_bad_targets_exit_2_with_a_message(args: list[str], message: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pynenc_lite.worker", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_module_that_fails_to_import_and_app_without_tasks(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import json\nraise RuntimeError('boom at import')\n")
    (tmp_path / "empty.py").write_text("from pynenc_lite import Pynenc\napp = Pynenc('e')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "pynenc_lite.worker", "broken.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2 and "RuntimeError: boom at import" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    # No task in the app's module: served all the same, tasks are imported by name (pynenc).
    out = subprocess.run(
        [sys.executable, "-m", "pynenc_lite.worker", "empty.py", "--burst", "--processes", "0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "has no tasks in its module" in out.stderr


def test_help_explains_every_option() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pynenc_lite.worker", "--help"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    for option in ("--processes", "--threads", "--db", "--burst", "--log-level", "default"):
        assert option in out.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
