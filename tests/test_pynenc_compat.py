"""pynenc programs run when only the module name changes: each test is written the way a
pynenc user writes it (pynenc's names, paths and call shapes), with `pynenc_lite` imported."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Iterator
from unittest import mock

import pytest

from pynenc_lite import Pynenc, PynencBuilder, PynencConfig
from pynenc_lite.invocation import InvocationStatus
from pynenc_lite.pynenc_paths import PATHS
from tests import tasks_pynenc_style as tasks
from tests.helpers import WAIT_SECONDS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Pynenc]:
    """The pynenc-style app on this test's own database."""
    app = tasks.app
    app.close()
    app.conf = PynencConfig(
        app_id=f"pynenc-style-{uuid.uuid4().hex[:8]}",
        config_values={"sqlite_db_path": str(tmp_path / "style.sqlite3"),
                       "runner_cls": "ThreadRunner", "threadrunner": {"max_threads": 4},
                       "result_timeout_seconds": WAIT_SECONDS, "no_worker_warning_seconds": 0.2},
    )
    app._runner = None
    tasks.reset()
    yield app
    tasks.release_first.set()
    runner = app._runner
    if runner is not None and runner.is_running:
        runner.stop_runner_loop()
        runner.wait_until_stopped(WAIT_SECONDS)
    app.close()
    app._runner = None


def test_a_builder_made_app_has_the_builders_settings() -> None:
    made = PynencBuilder().app_id("a").thread_runner(max_threads=3).logging_level("info").build()
    assert (made.app_id, made.conf.runner_cls, made.conf.logging_level) == (
        "a", "ThreadRunner", "INFO")
    assert made.runner.threads == 3
    built = (PynencBuilder().app_id("b").sqlite("b.sqlite3").persistent_process_runner(3)
             .dev_mode(force_sync_tasks=True).show_argument_keys().build())
    assert (built.app_id, built.conf.sqlite_db_path, built.conf.runner_cls) == (
        "b", "b.sqlite3", "ProcessRunner")
    assert built.conf.runner_processes == 3 and built.conf.dev_mode_force_sync_tasks
    assert built.conf.argument_print_mode == "KEYS"
    with pytest.raises(ValueError, match="thread_runner"):
        PynencBuilder().memory().process_runner().build()
    with pytest.raises(Exception, match="no Redis backend yet"):
        PynencBuilder().redis(url="redis://127.0.0.1:6379/0")


def test_task_logger_id_and_invocation_inside_a_task(
    app: Pynenc, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pynenc_lite.tasks")
    with app.runner:
        invocation = tasks.add(1, 2)
        assert invocation.result == 3
    name = "pynenc_lite.tasks.tests.tasks_pynenc_style.add"
    [record] = [r for r in caplog.records if r.name == name]
    assert f"in tests.tasks_pynenc_style.add {invocation.invocation_id}" in record.getMessage()
    assert tasks.add.task_id == "tests.tasks_pynenc_style.add"
    assert invocation.task is tasks.add
    with pytest.raises(RuntimeError, match="only known inside a running task"):
        _ = tasks.add.invocation
    assert tasks.add.args(1, y=2).kwargs == {"x": 1, "y": 2}


def test_env_patched_after_the_app_was_built_is_seen(app: Pynenc) -> None:
    # pynenc's own sample test does this; no worker runs, so only sync mode can answer.
    with mock.patch.dict(os.environ, {"PYNENC__DEV_MODE_FORCE_SYNC_TASKS": "True"}):
        assert tasks.add(1, 2).result == 3
    assert not app.runtime.is_sync  # and unpatched, calls are distributed again


def test_results_come_in_completion_order(app: Pynenc) -> None:
    with app.runner:
        group = tasks.finish_first_last.parallelize([(0,), (1,), (2,)])
        results = iter(group.results)
        assert {next(results), next(results)} == {1, 2}  # 0 still waits for its release
        tasks.release_first.set()
        assert next(results) == 0
        assert list(group.results_in_order) == [0, 1, 2]
    assert "completion order" in repr(group.results)


@pytest.mark.parametrize("sync", [False, True])
def test_an_invocation_passed_as_an_argument_is_usable_in_the_task(
    app: Pynenc, sync: bool
) -> None:
    app.conf.dev_mode_force_sync_tasks = sync
    with app.runner:
        inner = tasks.add(2, 3)
        assert tasks.double_result(inner).result == 10


def test_a_memory_app_runs_on_threads_and_writes_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where a SQLite file would appear
    memory_app = tasks.memory_app
    try:
        with memory_app.runner:
            assert tasks.multiply(6, 7).result == 42
            group = tasks.multiply.parallelize([(i, 2) for i in range(5)])
            assert list(group.results_in_order) == [0, 2, 4, 6, 8]
    finally:
        memory_app.close()
        memory_app._runner = None
    assert list(tmp_path.iterdir()) == []


def test_a_call_blocked_by_running_concurrency_is_dropped(app: Pynenc) -> None:
    # pynenc's default, reroute_on_concurrency_control=False
    with app.runner:
        first = tasks.one_at_a_time(0)
        assert tasks.first_started.wait(WAIT_SECONDS)
        second = tasks.one_at_a_time(1)
        with pytest.raises(KeyError):
            second.result  # noqa: B018 - the property raises
        assert second.status == InvocationStatus.CONCURRENCY_CONTROLLED_FINAL
        tasks.release_first.set()
        assert first.result == 0


def test_every_pynenc_path_imports_first_thing_in_a_fresh_process() -> None:
    lines = [f"from {path} import {', '.join(sorted(names))}" for path, names in PATHS.items()]
    lines += ["from pynenc_lite.builder import PynencBuilder",
              "from pynenc_lite.invocation import DistributedInvocation, InvocationStatus",
              "from pynenc_lite.runner import MultiThreadRunner, PersistentProcessRunner",
              "import pynenc_lite.conf.config_task; pynenc_lite.conf.config_task.ConfigTask",
              "import pynenc_lite.exceptions as e; e.RetryError",
              "import pynenc_lite, importlib.util as u; "
              "assert u.find_spec('pynenc_lite.invocation.status')"]
    for line in lines:  # each as the first import of its own interpreter
        done = subprocess.run([sys.executable, "-c", line], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, (line, done.stderr)


def test_runner_sections_of_a_pynenc_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent("""
        [tool.pynenc]
        app_id = "sections"
        [tool.pynenc.threadrunner]
        max_threads = 5
        [tool.pynenc.multithreadrunner]
        max_threads = 2
    """), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-c", "from pynenc_lite import Pynenc; print(Pynenc().runner.threads)"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True, timeout=60,
    )
    assert done.stdout.strip() == "5", done.stderr


def test_pynenc_command_form_starts_a_worker(tmp_path: Path) -> None:
    (tmp_path / "pyapp.py").write_text(textwrap.dedent("""
        from pynenc_lite import Pynenc
        app = Pynenc("cli-form")

        @app.task
        def add(a, b):
            return a + b
    """), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYNENC__SQLITE_DB_PATH": "cli.sqlite3"}
    submit = "import pyapp; print(pyapp.add(2, 3).invocation_id)"
    done = subprocess.run([sys.executable, "-c", submit], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    invocation_id = done.stdout.strip()
    assert done.returncode == 0 and invocation_id, done.stderr
    worker = subprocess.run(  # pynenc's form: --app module.app, then `runner start`
        [sys.executable, "-m", "pynenc_lite", "--app", "pyapp.app", "runner", "start",
         "--burst", "--processes", "0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert worker.returncode == 0, worker.stderr
    check = f"import pyapp; print(pyapp.app.get_invocation({invocation_id!r}).result)"
    done = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "5", done.stderr
    shown = subprocess.run([sys.executable, "-m", "pynenc_lite", "--app=pyapp.app",
                            "show_config"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0 and "cli-form" in shown.stdout, shown.stderr
