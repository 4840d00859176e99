"""Cron ids name the app (issue 10.1): two apps sharing one database or one server, each
with a cron task of the same name, both fire at the same moment.

Before, a moment's invocation id was `cron-<task>-<moment>`: the second app's `advance_cron`
failed on the unique id (its transaction rolled back), so its cron task never fired.
Firing is driven with `upkeep.fire_due(runtime, now)` and a fixed `now`, as in
tests/test_lifecycle.py.
"""

from __future__ import annotations

import datetime
import secrets
from pathlib import Path
from typing import Callable, Iterator

import pytest

from pynenc_lite import Pynenc, PynencConfig
from pynenc_lite.backend.base import Backend
from pynenc_lite.backend.sqlite import SQLiteBackend
from pynenc_lite.backend.tcp.client import RemoteBackend
from pynenc_lite.backend.tcp.engine import BrokerServer
from pynenc_lite.runner import upkeep

T0 = datetime.datetime(2026, 11, 29, 12, 1, tzinfo=datetime.timezone.utc).timestamp()
APPS = ("cron_one", "cron_two")


def every_five_minutes() -> None:
    """The same function, so the same task name, in both apps."""


def sqlite_storage(tmp_path: Path) -> Iterator[Callable[[], Backend]]:
    path = str(tmp_path / "shared.sqlite3")
    yield lambda: SQLiteBackend(path)


def tcp_storage(tmp_path: Path) -> Iterator[Callable[[], Backend]]:
    secret = secrets.token_bytes(32)
    storage = SQLiteBackend(str(tmp_path / "served.sqlite3"))
    server = BrokerServer(("127.0.0.1", 0), storage, secret=secret)
    server.start()
    try:
        yield lambda: RemoteBackend("127.0.0.1", server.port, secret=secret, retry_seconds=5.0)
    finally:
        server.stop()
        storage.close()


@pytest.fixture(params=[sqlite_storage, tcp_storage], ids=["sqlite", "tcp"])
def apps(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Pynenc]]:
    """Two apps on one storage, each with its own backend object (as two processes)."""
    storage = request.param(tmp_path)
    make_backend = next(storage)
    made = []
    for app_id in APPS:
        app = Pynenc(app_id)
        app.conf = PynencConfig(app_id=app_id, environ={})
        app.runtime.backend = make_backend()
        app.task(cron="*/5 * * * *")(every_five_minutes)
        made.append(app)
    try:
        yield made
    finally:
        for app in made:
            app.close()
        next(storage, None)  # stops the server, if any


def test_two_apps_with_the_same_cron_task_both_fire(apps: list[Pynenc]) -> None:
    for app in apps:
        assert upkeep.fire_due(app.runtime, T0) == 0  # first sight: the schedule starts
    for app in apps:
        assert upkeep.fire_due(app.runtime, T0 + 4 * 60) == 1  # 12:05, in each app
    ids = set()
    for app in apps:
        [stored] = app.backend.list_invocations(app.app_id)
        assert stored.task_name.endswith("every_five_minutes")
        assert stored.run_at == T0 + 4 * 60
        ids.add(stored.invocation_id)
    assert len(ids) == 2
    assert apps[0].backend.count_invocations_by_app() == {app_id: 1 for app_id in APPS}
