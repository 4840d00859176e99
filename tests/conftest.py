"""Shared fixtures.

- Every test runs without PYNENC__* variables from the outer environment (autouse).
- `core_app` is `tests.tasks_core.app`, reconfigured for the test: its own app_id, its own
  SQLite file under `tmp_path`, a result timeout so that a bug fails instead of hanging, and
  a fresh runner; it is stopped and closed afterwards.
- `running_app` is the same with its thread runner running in the background.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from pynenc_lite import Pynenc, PynencConfig
from tests import tasks_core
from tests.helpers import WAIT_SECONDS

ConfigureApp = Callable[..., Pynenc]


@pytest.fixture(autouse=True)
def clean_pynenc_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove PYNENC__* variables so the outer environment cannot change any test."""
    for name in list(os.environ):
        if name.upper().startswith("PYNENC__"):
            monkeypatch.delenv(name)


def core_config_values(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """Configuration for a test app: a private database and bounded waits."""
    values: dict[str, Any] = {
        "sqlite_db_path": str(tmp_path / "core.sqlite3"),
        # Calls that should succeed finish in milliseconds; this only bounds a bug.
        "result_timeout_seconds": WAIT_SECONDS,
        "max_threads": 8,
    }
    values.update(overrides)
    return values


@pytest.fixture
def configure_core_app(tmp_path: Path) -> Iterator[ConfigureApp]:
    """A function that (re)configures `tasks_core.app` for this test from keyword values.

    It reads the environment when called, so set PYNENC__* variables before calling it.
    The app is stopped, closed and its test objects reset at the end of the test.
    """
    app = tasks_core.app
    app_id = f"core-{uuid.uuid4().hex[:8]}"

    def configure(**overrides: Any) -> Pynenc:
        app.close()
        app.conf = PynencConfig(
            app_id=app_id, config_values=core_config_values(tmp_path, **overrides)
        )
        # The runner is made lazily from the configuration: make the next one from this one.
        app._runner = None
        return app

    tasks_core.reset()
    try:
        yield configure
    finally:
        runner = app._runner
        if runner is not None and runner.is_running:
            runner.stop_runner_loop()
            assert runner.wait_until_stopped(WAIT_SECONDS), "the runner did not stop"
        app.close()
        app._runner = None
        tasks_core.reset()


@pytest.fixture
def core_app(configure_core_app: ConfigureApp) -> Pynenc:
    """`tasks_core.app` with this test's database and app_id (no runner running)."""
    return configure_core_app()


@pytest.fixture
def running_app(core_app: Pynenc) -> Iterator[Pynenc]:
    """`core_app` with its thread runner running in a background thread."""
    with core_app.runner:
        yield core_app


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., Pynenc]]:
    """A factory of fresh `Pynenc` apps for this test (closed at the end), for tests that
    define their own tasks; each gets its own app_id and database under `tmp_path`."""
    apps: list[Pynenc] = []

    def make(**overrides: Any) -> Pynenc:
        values = core_config_values(tmp_path, **overrides)
        app = Pynenc(app_id=f"local-{uuid.uuid4().hex[:8]}", config_values=values)
        apps.append(app)
        return app

    yield make
    for app in apps:
        runner = app._runner
        if runner is not None and runner.is_running:
            runner.stop_runner_loop()
            runner.wait_until_stopped(WAIT_SECONDS)
        app.close()
