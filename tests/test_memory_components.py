"""pynenc's in-memory components (`orchestrator_cls = "MemOrchestrator"`, `broker_cls =
"MemBroker"`, `state_backend_cls = "MemStateBackend"`, `PynencBuilder().memory()`; issue
11.7): the queue lives in this process, in a SQLite database held in memory, and no file is
written anywhere. Only thread runners can serve it; worker processes and the admin command,
which cannot see another process's memory, refuse at once with one clear line.

The backend contract runs over the in-memory database too (`tests/test_backend_contract.py`,
store "memory"); here are what is particular to it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from pynenc_lite import ConfigError, ProcessRunner, Pynenc, ThreadRunner, admin
from pynenc_lite.backend.base import NewInvocation
from pynenc_lite.backend.sqlite import SQLiteBackend
from pynenc_lite.errors import BackendError
from tests.helpers import WAIT_SECONDS

ROOT = Path(__file__).resolve().parent.parent
MEMORY_FIELDS = [("orchestrator_cls", "MemOrchestrator"), ("broker_cls", "MemBroker"),
                 ("state_backend_cls", "MemStateBackend"), ("broker_cls", "memory")]


def _new(invocation_id: str) -> NewInvocation:
    return NewInvocation(invocation_id, "mem", "t", b"args", 1.0, 1.0)


# -- the backend ------------------------------------------------------------------------------


def test_backends_on_one_name_share_it_and_the_last_close_frees_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    name = f"shared-{uuid.uuid4().hex}"
    first = SQLiteBackend(name, memory=True)
    second = SQLiteBackend(name, memory=True)
    other = SQLiteBackend(f"other-{uuid.uuid4().hex}", memory=True)
    try:
        first.submit([_new("a")])
        assert second.get_invocation("a") is not None
        assert other.get_invocation("a") is None
        assert repr(first) == f"SQLiteBackend({name!r}, memory=True)"
        first.close()  # the second still holds it
        assert second.get_invocation("a") is not None
    finally:
        first.close()
        second.close()
        other.close()
    again = SQLiteBackend(name, memory=True)
    try:
        assert again.get_invocation("a") is None  # freed with its last connection
    finally:
        again.close()
    assert list(tmp_path.iterdir()) == []


def test_the_database_outlives_the_connections_of_the_threads_that_used_it() -> None:
    """The connection of a thread that ended is closed (`_close_orphans`, run when the next
    thread opens one); with no other connection open, the database would vanish with it."""
    name = f"threads-{uuid.uuid4().hex}"
    backend = SQLiteBackend(name, memory=True)
    thread = threading.Thread(target=backend.submit, args=([_new("a")],))
    thread.start()
    thread.join(WAIT_SECONDS)
    with backend._db._setup_lock:
        backend._db._close_orphans()  # the thread's connection, the only one it opened
    assert backend._db._connections == []
    probe = SQLiteBackend(name, memory=True)
    try:
        assert probe.get_invocation("a") is not None
    finally:
        probe.close()
        backend.close()


def test_memory_and_read_only_do_not_go_together() -> None:
    with pytest.raises(ValueError, match="read_only"):
        SQLiteBackend("x", memory=True, read_only=True)


def test_a_closed_in_memory_backend_refuses_use() -> None:
    backend = SQLiteBackend(f"closed-{uuid.uuid4().hex}", memory=True)
    backend.submit([_new("a")])
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.get_invocation("a")


# -- an app -----------------------------------------------------------------------------------


def square(x: int) -> int:
    return x * x


@pytest.fixture
def in_tmp_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test runs in an empty folder: the default SQLite file would appear here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(("field", "value"), MEMORY_FIELDS)
def test_any_mem_component_keeps_the_whole_app_in_memory(
    in_tmp_cwd: Path, field: str, value: str
) -> None:
    app = Pynenc("mem-app", config_values={field: value, "result_timeout_seconds": WAIT_SECONDS})
    task = app.task(square)
    try:
        with ThreadRunner(app, threads=2):
            assert task(3).result == 9
            assert task.parallelize([(i,) for i in range(20)]).get_results(WAIT_SECONDS) == [
                i * i for i in range(20)
            ]
        assert "memory=True" in repr(app.backend)
        assert "memory" in app.runtime.storage_location
        assert list(in_tmp_cwd.iterdir()) == []
    finally:
        app.close()
    assert list(in_tmp_cwd.iterdir()) == []


def test_closing_the_app_frees_its_queue(in_tmp_cwd: Path) -> None:
    app = Pynenc("mem-close", config_values={"broker_cls": "MemBroker"})
    task = app.task(square)
    try:
        waiting = task(2)
        name = app.backend.path  # type: ignore[attr-defined]
        assert name.startswith("pynenc-lite-mem-close-")
        app.close()
        probe = SQLiteBackend(name, memory=True)
        try:
            assert probe.get_invocation(waiting.invocation_id) is None
        finally:
            probe.close()
        other = app.backend.path  # type: ignore[attr-defined]
        assert other != name  # made anew on next use: a new, empty queue
    finally:
        app.close()


def test_sync_mode_wins_no_backend_is_made(in_tmp_cwd: Path) -> None:
    app = Pynenc("mem-sync", config_values={"broker_cls": "MemBroker",
                                            "dev_mode_force_sync_tasks": True})
    task = app.task(square)
    try:
        assert task(4).result == 16
        assert app.runtime._backend is None
    finally:
        app.close()


# -- what cannot reach it ---------------------------------------------------------------------


@pytest.fixture
def memory_app(in_tmp_cwd: Path) -> Iterator[Pynenc]:
    app = Pynenc("mem-only", config_values={"state_backend_cls": "MemStateBackend"})
    app.task(square)
    yield app
    app.close()


def _assert_says_why(message: str) -> None:
    assert "lives in the memory of this process" in message
    assert "ThreadRunner" in message and "SQLite file" in message


def test_a_process_runner_refuses_an_in_memory_app(memory_app: Pynenc) -> None:
    with pytest.raises(ConfigError) as info:
        ProcessRunner(memory_app, processes=1)
    _assert_says_why(str(info.value))


@pytest.mark.parametrize("runner_cls", ["ProcessRunner", "PersistentProcessRunner",
                                        "MultiThreadRunner"])
def test_app_runner_with_a_process_runner_refuses(memory_app: Pynenc, runner_cls: str) -> None:
    memory_app.conf.runner_cls = runner_cls
    with pytest.raises(ConfigError) as info:
        memory_app.runner  # noqa: B018 - the property makes the runner
    _assert_says_why(str(info.value))


def test_the_worker_command_refuses_an_in_memory_app(tmp_path: Path) -> None:
    module = tmp_path / "memory_tasks.py"
    module.write_text(textwrap.dedent("""
        from pynenc_lite import PynencBuilder

        app = PynencBuilder().app_id("mem-worker").memory().build()

        @app.task
        def square(x):
            return x * x
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYNENC__")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "pynenc_lite.worker", str(module), "--processes", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    _assert_says_why(done.stderr)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == [
        "memory_tasks.py"
    ]


@pytest.mark.parametrize("command", [["status"], ["list"], ["inspect", "abc"],
                                     ["requeue", "--all-failed"], ["cancel", "abc"],
                                     ["purge", "--yes"]])
def test_the_admin_command_has_nothing_to_look_at(
    in_tmp_cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    monkeypatch.setenv("PYNENC__BROKER_CLS", "MemBroker")
    assert admin.main(command) == admin.EXIT_USAGE
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "memory" in err and "another process" in err
    assert list(in_tmp_cwd.iterdir()) == []


def test_admin_config_still_shows_the_settings(
    in_tmp_cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PYNENC__BROKER_CLS", "MemBroker")
    assert admin.main(["config"]) == admin.EXIT_OK
    assert "MemBroker" in capsys.readouterr().out


def test_a_memory_app_with_a_database_path_or_server_says_which_wins(
    in_tmp_cwd: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conf: dict[str, Any] = {"broker_cls": "MemBroker", "sqlite_db_path": "ignored.sqlite3"}
    app = Pynenc("mem-path", config_values=conf)
    try:
        app.backend.submit([_new("a")])
        assert "memory=True" in repr(app.backend)
    finally:
        app.close()
    assert "sqlite_db_path" in caplog.text and "memory" in caplog.text
    assert list(in_tmp_cwd.iterdir()) == []
