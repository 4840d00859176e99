"""The admin command line, `python -m pynenc_lite <command>`, run as a subprocess against a
real SQLite database (and once against a tcp:// server).

The `filled` fixture stores, through the library, one invocation in each interesting state:
SUCCESS, FAILED (with a traceback), REGISTERED (waiting, with a long argument) and CANCELLED
(with an argument that cannot be unpickled), plus two worker rows, one fresh and one stale.
Work runs with `ThreadRunner(...).run(burst=True)`, so nothing here sleeps. Every subprocess
has a bounded timeout and runs with warnings as errors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from pynenc_lite import InvocationStatus, Pynenc, PynencConfig, ThreadRunner
from pynenc_lite.backend.base import WorkerInfo
from tests import tasks_admin
from tests.test_tcp_helpers import ServerProcess, running_server

ROOT = Path(__file__).resolve().parent.parent
APP = "admin_tests"
TARGET = "tests.tasks_admin:app"
CLI_TIMEOUT_SECONDS = 60.0  # a cold interpreter on a loaded CI machine; reached only on a bug
COMMANDS = ["status", "inspect", "list", "requeue", "cancel", "purge", "config"]


def cli(*args: str, env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m pynenc_lite ARGS` from the repository root, without outer PYNENC__*."""
    child_env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PYNENC__")}
    child_env.update(PYTHONPATH=str(ROOT), PYTHONWARNINGS="error")
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pynenc_lite", *args],
        cwd=ROOT,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
    )


def cli_json(*args: str, code: int = 0, env: Optional[dict[str, str]] = None) -> Any:
    """Run a command with --json, check its exit code, and return the parsed output."""
    done = cli(*args, "--json", env=env)
    assert done.returncode == code, done.stderr
    return json.loads(done.stdout)


def line(text: str, *cells: object) -> bool:
    """True when one line of `text` holds exactly these cells, separated by spaces."""
    pattern = r"\s+".join(re.escape(str(cell)) for cell in cells)
    return re.search(rf"^{pattern}\s*$", text, re.MULTILINE) is not None


@dataclasses.dataclass
class Filled:
    db: Path
    app: Pynenc
    success: str
    failed: str
    waiting: str
    cancelled: str

    def args(self, *args: str) -> list[str]:
        """`args` plus the options that select this database through the app target."""
        return [*args, "--app", TARGET, "--db", str(self.db)]


def fill(app: Pynenc) -> Filled:
    """Store one invocation per state, and a fresh and a stale worker row."""
    success = tasks_admin.add(1, 2)
    failed = tasks_admin.fail("boom")
    ThreadRunner(app, threads=2).run(burst=True)
    assert success.status is InvocationStatus.SUCCESS
    assert failed.status is InvocationStatus.FAILED
    waiting = tasks_admin.add("x" * 500, b="y")
    cancelled = tasks_admin.add(tasks_admin.Unloadable(), 1)
    assert cancelled.cancel()
    now = time.time()
    for worker_id, pid, seen in (("fresh-worker", 101, now), ("stale-worker", 102, now - 600)):
        info = WorkerInfo(worker_id, app.app_id, "admin-host", pid, 4, now - 700)
        app.backend.heartbeat(info, [], seen, 10.0)
    db = Path(str(app.conf.sqlite_db_path))
    ids = (i.invocation_id for i in (success, failed, waiting, cancelled))
    return Filled(db, app, *ids)


@pytest.fixture
def filled(tmp_path: Path) -> Iterator[Filled]:
    app = tasks_admin.app
    app.close()
    app.conf = PynencConfig(app_id=APP, config_values={"sqlite_db_path": str(tmp_path / "a.db")})
    app._runner = None
    try:
        yield fill(app)
    finally:
        app.close()


# -- every command -----------------------------------------------------------------------------


def test_every_command_has_help() -> None:
    for command in COMMANDS:
        done = cli(command, "--help")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"usage: python -m pynenc_lite {command}")
        assert "--json" in done.stdout
    done = cli("--help")
    assert done.returncode == 0 and all(command in done.stdout for command in COMMANDS)


def test_status_table(filled: Filled) -> None:
    done = cli(*filled.args("status"))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for status, count in [("REGISTERED", 1), ("RUNNING", 0), ("SUCCESS", 1), ("FAILED", 1),
                          ("CANCELLED", 1), ("CONCURRENCY_CONTROLLED_FINAL", 0), ("total", 4)]:
        assert line(out, status, count), out
    assert line(out, "tests.tasks_admin.add", 1, 0, 0, 1, 0, 1, 0, 3), out
    assert line(out, "tests.tasks_admin.fail", 0, 0, 0, 0, 1, 0, 0, 1), out
    assert re.search(r"^oldest waiting work: \d+\.\ds \(since ", out, re.MULTILINE), out
    assert re.search(r"^finished in the last minute: \d+", out, re.MULTILINE), out
    assert re.search(r"^fresh-worker\s+admin-host\s+101\s+4\s+.*\s+alive$", out, re.MULTILINE)
    assert re.search(r"^stale-worker\s+admin-host\s+102\s+4\s+.*10m\d\ds ago\s+STALE$", out,
                     re.MULTILINE), out


def test_status_json(filled: Filled) -> None:
    data = cli_json(*filled.args("status"))
    assert data["app_id"] == APP
    assert data["counts_by_status"] == {
        "REGISTERED": 1, "RUNNING": 0, "RETRY": 0, "SUCCESS": 1, "FAILED": 1, "CANCELLED": 1,
        "CONCURRENCY_CONTROLLED_FINAL": 0,
    }
    assert data["total"] == 4
    by_task = data["counts_by_task"]
    assert by_task["tests.tasks_admin.fail"] == {"FAILED": 1}
    assert {k: v for k, v in by_task["tests.tasks_admin.add"].items() if v} == {
        "REGISTERED": 1, "SUCCESS": 1, "CANCELLED": 1
    }
    waiting = filled.app.backend.get_invocation(filled.waiting)
    assert waiting is not None
    assert data["oldest_waiting_since"] == pytest.approx(waiting.run_at)
    assert data["oldest_waiting_age_seconds"] >= 0
    assert data["finished_last_minute"] >= 2  # SUCCESS and FAILED finished just now
    assert data["throughput_per_second"] == pytest.approx(data["finished_last_minute"] / 60, 0.01)
    workers = {w["worker_id"]: w for w in data["workers"]}
    assert set(workers) == {"fresh-worker", "stale-worker"}
    assert workers["fresh-worker"]["stale"] is False
    assert workers["stale-worker"]["stale"] is True
    assert workers["stale-worker"]["last_heartbeat_age_seconds"] >= 600
    assert workers["fresh-worker"]["hostname"] == "admin-host"


def test_inspect_failed_shows_history_error_and_remote_traceback(filled: Filled) -> None:
    done = cli(*filled.args("inspect", filled.failed))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert line(out, "status:", "FAILED")
    assert line(out, "task:", "tests.tasks_admin.fail")
    assert line(out, "attempts:", "1", "(retries", "0,", "lost", "workers", "0)")
    assert re.search(r"^arguments:\s+\('boom'\)  \[\d+ bytes\]$", out, re.MULTILINE), out
    assert line(out, "error:", "ValueError: boom")
    history = out.split("history:\n", 1)[1]
    assert [ln.split()[0] for ln in history.splitlines()[1:4]] == [
        "REGISTERED", "RUNNING", "FAILED"
    ]
    traceback = out.split("traceback on the worker:\n", 1)[1]
    assert traceback.startswith("Traceback (most recent call last):")
    assert "raise ValueError(message)" in traceback and "ValueError: boom" in traceback

    data = cli_json(*filled.args("inspect", filled.failed))
    assert data["status"] == "FAILED" and data["error"] == "ValueError: boom"
    assert data["attempts"] == 1 and data["lost_attempts"] == 0 and data["retries"] == 0
    assert data["arguments"]["repr"] == "('boom')" and data["arguments"]["error"] is None
    assert [h["status"] for h in data["history"]] == ["REGISTERED", "RUNNING", "FAILED"]
    assert data["history"][1]["worker_id"] and data["history"][1]["worker_id"] == (
        data["history"][2]["worker_id"]
    )
    assert "raise ValueError(message)" in data["traceback"]
    assert data["result"] is None


def test_inspect_success_shows_the_result(filled: Filled) -> None:
    data = cli_json(*filled.args("inspect", filled.success))
    assert data["status"] == "SUCCESS" and data["error"] is None and data["traceback"] is None
    assert data["arguments"]["repr"] == "(1, 2)"
    assert data["result"]["repr"] == "3"
    assert data["started_at"] <= data["finished_at"]


def test_inspect_truncates_long_arguments(filled: Filled) -> None:
    data = cli_json(*filled.args("inspect", filled.waiting))
    assert data["status"] == "REGISTERED" and data["started_at"] is None
    shown = data["arguments"]["repr"]
    full = f"({'x' * 500!r}, b='y')"
    assert shown == f"{full[:200]}... ({len(full)} chars)"
    assert len(shown) < 250
    assert data["arguments"]["size_bytes"] > 500


def test_inspect_survives_arguments_that_cannot_be_unpickled(filled: Filled) -> None:
    done = cli(*filled.args("inspect", filled.cancelled))
    assert done.returncode == 0, done.stderr
    assert re.search(
        r"^arguments:\s+<cannot unpickle here: RuntimeError: this argument refuses to be "
        r"unpickled \(made by tests\)>  \[\d+ bytes\]$", done.stdout, re.MULTILINE
    ), done.stdout
    assert line(done.stdout, "status:", "CANCELLED")
    data = cli_json(*filled.args("inspect", filled.cancelled))
    assert data["arguments"]["repr"] is None and data["arguments"]["size_bytes"] > 0
    assert [h["status"] for h in data["history"]] == ["REGISTERED", "CANCELLED"]


def test_inspect_without_unpickling(filled: Filled) -> None:
    data = cli_json(*filled.args("inspect", filled.success, "--no-unpickle"))
    assert data["arguments"]["repr"] is None and data["result"]["repr"] is None
    assert "--no-unpickle" in data["arguments"]["error"]


def test_inspect_an_unknown_id_exits_1(filled: Filled) -> None:
    done = cli(*filled.args("inspect", "no-such-id"))
    assert done.returncode == 1 and done.stdout == ""
    assert "no invocation 'no-such-id'" in done.stderr and "Traceback" not in done.stderr
    assert cli_json(*filled.args("inspect", "no-such-id"), code=1)["error"] == "not found"


def test_list_with_filters(filled: Filled) -> None:
    done = cli(*filled.args("list"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split() == [
        "id", "task", "status", "attempts", "created", "finished", "error"
    ]
    assert all(i in done.stdout for i in (filled.success, filled.failed, filled.waiting))
    every = cli_json(*filled.args("list"))
    assert [r["invocation_id"] for r in every][-2:] in (
        [filled.failed, filled.success], [filled.success, filled.failed]
    )  # newest first: the two submitted first come last
    assert len(every) == 4
    failed = cli_json(*filled.args("list", "--status", "failed"))
    assert [(r["invocation_id"], r["error"]) for r in failed] == [
        (filled.failed, "ValueError: boom")
    ]
    adds = cli_json(*filled.args("list", "--task", "tests.tasks_admin.add", "--limit", "2"))
    assert len(adds) == 2 and {r["task_name"] for r in adds} == {"tests.tasks_admin.add"}
    none = cli(*filled.args("list", "--task", "nope"))
    assert none.returncode == 1 and "no invocations" in none.stdout  # the README: nothing found
    assert cli_json(*filled.args("list", "--task", "nope"), code=1) == []
    assert cli(*filled.args("list", "--status", "PENDING")).returncode == 2


def test_requeue_by_id_then_the_task_runs_again(filled: Filled) -> None:
    done = cli(*filled.args("requeue", filled.failed))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"requeued 1 failed invocation(s) of app '{APP}'"
    data = cli_json(*filled.args("inspect", filled.failed))
    assert data["status"] == "REGISTERED"
    assert [h["status"] for h in data["history"]] == ["REGISTERED", "RUNNING", "FAILED",
                                                      "REGISTERED"]
    again = cli(*filled.args("requeue", filled.failed, filled.success))
    assert again.returncode == 1 and "2 of the given ids are unknown or not FAILED" in again.stdout
    ThreadRunner(filled.app, threads=1).run(burst=True)
    record = filled.app.backend.get_invocation(filled.failed)
    assert record is not None and record.status is InvocationStatus.FAILED
    assert record.attempts == 2


def test_requeue_by_task_and_all_failed(filled: Filled) -> None:
    nothing = cli_json(*filled.args("requeue", "--task", "tests.tasks_admin.add"), code=1)
    assert nothing["requeued"] == 0  # the README: nothing done is exit code 1
    assert cli_json(*filled.args("requeue", "--task", "tests.tasks_admin.fail"))["requeued"] == 1
    ThreadRunner(filled.app, threads=1).run(burst=True)
    done = cli(*filled.args("requeue", "--all-failed"))
    assert done.returncode == 0 and "requeued 1 failed" in done.stdout
    assert cli_json(*filled.args("requeue", "--all-failed"), code=1)["requeued"] == 0


@pytest.mark.parametrize(
    "args", [[], ["some-id", "--task", "t"], ["--task", "t", "--all-failed"]], ids=str
)
def test_requeue_needs_exactly_one_selection(filled: Filled, args: list[str]) -> None:
    done = cli(*filled.args("requeue", *args))
    assert done.returncode == 2 and "exactly one of" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_cancel(filled: Filled) -> None:
    done = cli(*filled.args("cancel", filled.waiting))
    assert done.returncode == 0 and done.stdout.strip() == f"cancelled {filled.waiting}"
    done = cli(*filled.args("cancel", filled.waiting))
    assert done.returncode == 1
    assert done.stdout.strip() == (
        f"not cancelled: {filled.waiting} had already finished (CANCELLED)"
    )
    data = cli_json(*filled.args("cancel", filled.success), code=1)
    assert data == {"invocation_id": filled.success, "cancelled": False, "status": "SUCCESS"}
    assert cli(*filled.args("cancel", "no-such-id")).returncode == 1
    record = filled.app.backend.get_invocation(filled.waiting)
    assert record is not None and record.status is InvocationStatus.CANCELLED


def test_purge_needs_yes(filled: Filled) -> None:
    done = cli(*filled.args("purge"))
    assert done.returncode == 2 and "--yes" in done.stderr and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert filled.app.backend.get_invocation(filled.success) is not None
    done = cli(*filled.args("purge", "--yes"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"deleted 4 invocation(s) of app '{APP}'"
    status = cli_json(*filled.args("status"))
    assert status["total"] == 0 and status["workers"] == []
    assert cli_json(*filled.args("purge", "--yes")) == {"app_id": APP, "deleted": 0}


def test_config_shows_every_field_and_its_source(tmp_path: Path) -> None:
    done = cli("config", "--db", str(tmp_path / "x.db"), env={"PYNENC__MAX_THREADS": "3"})
    assert done.returncode == 0, done.stderr
    assert line(done.stdout, "max_threads", 3, "env")
    assert line(done.stdout, "sqlite_db_path", repr(str(tmp_path / "x.db")), "assignment")
    assert line(done.stdout, "lease_seconds", 10.0, "default")
    data = cli_json("config", "--app", TARGET, "--app-id", "other")
    fields = {f["name"]: f for f in data["fields"]}
    assert data["app_id"] == "other"
    assert fields["app_id"] == {"name": "app_id", "value": "other", "source": "assignment"}
    assert fields["max_threads"] == {"name": "max_threads", "value": 16, "source": "default"}
    assert list(fields) == [name for name, _, _ in PynencConfig().describe()]
    assert not (tmp_path / "x.db").exists()  # config never opens the database


def test_without_app_the_environment_selects_the_database(filled: Filled) -> None:
    env = {"PYNENC__SQLITE_DB_PATH": str(filled.db), "PYNENC__APP_ID": APP}
    assert cli_json("status", env=env)["total"] == 4
    # Options may also come before the command; --app-id picks another app in the same file.
    assert cli_json("--json", "--db", str(filled.db), "--app-id", "nobody", "status")["total"] == 0


def test_status_of_an_app_with_nothing_names_the_apps_in_the_file(filled: Filled) -> None:
    """`status --db FILE` without --app looks at app 'pynenc'; the file holds another app's
    work, so it says which apps are there and how to pick one (issue 10.12)."""
    done = cli("status", "--db", str(filled.db))
    assert done.returncode == 0, done.stderr
    assert "app 'pynenc'" in done.stdout
    assert line(done.stdout, APP, 4), done.stdout
    assert f"--app-id {APP}" in done.stdout, done.stdout
    data = cli_json("status", "--db", str(filled.db))
    assert data["total"] == 0 and data["apps_in_storage"] == {APP: 4}
    # An app with invocations of its own is shown as before, with the others listed.
    assert cli_json(*filled.args("status"))["apps_in_storage"] == {APP: 4}


@pytest.mark.parametrize(
    "args, message",
    [
        (["status", "--app", "no_such_module:app"], "no module named 'no_such_module'"),
        (["status", "--app", "tests.tasks_admin:nothing"], "is nothing, not a Pynenc app"),
        (["status", "--app-id", "nobody-here"], "no database at"),
        (["status", "--db", "no/such/dir/x.db"], "no database at"),
    ],
    ids=["module", "attribute", "default-db", "db-path"],
)
def test_bad_targets_exit_2_with_one_line(args: list[str], message: str) -> None:
    done = cli(*args)
    assert done.returncode == 2 and done.stdout == ""
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (ROOT / "nobody-here.pynenc.sqlite3").exists()


def test_bad_configuration_exits_2(tmp_path: Path) -> None:
    done = cli("config", env={"PYNENC__MAX_THREADS": "many"})
    assert done.returncode == 2 and "max_threads" in done.stderr and "Traceback" not in done.stderr


# -- through a tcp:// server -------------------------------------------------------------------


@pytest.fixture
def tcp_server(tmp_path: Path) -> Iterator[ServerProcess]:
    yield from running_server(tmp_path)


def test_commands_work_through_a_tcp_server(tcp_server: ServerProcess) -> None:
    app = tasks_admin.app
    app.close()
    app.conf = PynencConfig(app_id=APP, config_values={
        "broker_url": tcp_server.url, "broker_secret_file": str(tcp_server.secret_file),
    })
    app._runner = None
    try:
        filled = fill(app)
    finally:
        app.close()
    env = {"PYNENC__BROKER_URL": tcp_server.url,
           "PYNENC__BROKER_SECRET_FILE": str(tcp_server.secret_file)}
    status = cli_json("status", "--app", TARGET, env=env)
    assert status["backend"].startswith("RemoteBackend") or "tcp" in status["backend"]
    assert status["total"] == 4 and len(status["workers"]) == 2
    inspected = cli_json("inspect", filled.failed, "--app", TARGET, env=env)
    assert [h["status"] for h in inspected["history"]] == ["REGISTERED", "RUNNING", "FAILED"]
    assert "raise ValueError(message)" in inspected["traceback"]
    assert cli_json("cancel", filled.waiting, "--app", TARGET, env=env)["cancelled"] is True
    assert cli_json("requeue", filled.failed, "--app", TARGET, env=env)["requeued"] == 1
    assert cli_json("purge", "--yes", "--app", TARGET, env=env)["deleted"] == 4
