"""The worker command's start-up, as a user runs it: which storage it opens, and signals that
arrive while the app is still importing. Each test starts `python -m pynenc_lite.worker` in a
subprocess on loopback/local files only and ends it by its PID."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import WAIT_SECONDS, wait_until

ROOT = Path(__file__).resolve().parent.parent

TASKS = """
import os, time
from pynenc_lite import Pynenc
marker = os.environ.get("SLOW_IMPORT_MARKER")
if marker:
    open(marker, "w").close()  # the test signals the worker now, mid-import
    time.sleep(1.0)
app = Pynenc("wcmd")

@app.task
def add(a, b):
    return a + b
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYNENC__")}
    return {**env, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}", **extra}


def test_db_option_beats_a_broker_url_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "wtasks.py").write_text(TASKS)
    db = tmp_path / "chosen.sqlite3"
    # Nothing listens on port 9 of loopback: using the URL would fail, after a short retry.
    env = _env(tmp_path, PYNENC__BROKER_URL="tcp://127.0.0.1:9", PYNENC__BROKER_RETRY_SECONDS="0.2")
    out = subprocess.run(
        [sys.executable, "-m", "pynenc_lite.worker", "wtasks:app", "--db", str(db),
         "--processes", "0", "--burst"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert db.exists()
    with contextlib.closing(sqlite3.connect(db)) as conn:  # the file it was given
        assert conn.execute("SELECT count(*) FROM invocations").fetchone() == (0,)


def test_sigterm_while_the_app_imports_is_a_clean_stop(tmp_path: Path) -> None:
    (tmp_path / "wtasks.py").write_text(TASKS)
    marker = tmp_path / "importing"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pynenc_lite.worker", "wtasks:app", "--processes", "0",
         "--db", str(tmp_path / "w.sqlite3")],
        cwd=tmp_path, env=_env(tmp_path, SLOW_IMPORT_MARKER=str(marker)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_until(marker.exists)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=WAIT_SECONDS * 3)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped" in err
    assert time.monotonic() - started < WAIT_SECONDS


def test_tasks_in_other_modules_are_imported_when_their_work_arrives(tmp_path: Path) -> None:
    (tmp_path / "appmod.py").write_text("from pynenc_lite import Pynenc\napp = Pynenc('lazy')\n")
    (tmp_path / "taskmod.py").write_text(
        "from appmod import app\n\n@app.task\ndef triple(x):\n    return 3 * x\n"
    )
    env = _env(tmp_path, PYNENC__SQLITE_DB_PATH=str(tmp_path / "lazy.sqlite3"))
    submit = "import taskmod; print(taskmod.triple(5).invocation_id)"
    done = subprocess.run([sys.executable, "-c", submit], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    worker = subprocess.run(  # the app's module defines no task
        [sys.executable, "-m", "pynenc_lite.worker", "appmod:app", "--burst", "--processes", "0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert worker.returncode == 0, worker.stderr
    check = f"import appmod; print(appmod.app.get_invocation({done.stdout.strip()!r}).result)"
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "15", result.stderr


def test_without_processes_flag_the_worker_follows_the_configuration(tmp_path: Path) -> None:
    (tmp_path / "wtasks.py").write_text(TASKS)
    cases = [
        ({}, "1 processes"),  # nothing configured: one supervised process, as before
        ({"PYNENC__RUNNER_CLS": "ThreadRunner"}, "this process"),
        ({"PYNENC__RUNNER_CLS": "PersistentProcessRunner", "PYNENC__RUNNER_PROCESSES": "2"},
         "2 processes"),
    ]
    for extra, expected in cases:
        out = subprocess.run(
            [sys.executable, "-m", "pynenc_lite.worker", "wtasks:app", "--burst",
             "--db", str(tmp_path / "cfg.sqlite3")],
            cwd=tmp_path, env=_env(tmp_path, **extra), capture_output=True, text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert f"{expected} x " in out.stderr, (extra, out.stderr)


def test_an_app_kept_in_memory_is_refused_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "memapp.py").write_text(
        "from pynenc_lite import PynencBuilder\n"
        "app = PynencBuilder().app_id('mem').memory().build()\n\n"
        "@app.task\ndef one():\n    return 1\n"
    )
    for processes in ("0", "2"):
        out = subprocess.run(
            [sys.executable, "-m", "pynenc_lite.worker", "memapp:app", "--burst",
             "--processes", processes],
            cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 2, out.stderr
        assert "lives in the memory of this process" in out.stderr
        assert "Traceback" not in out.stderr
    assert not [p.name for p in tmp_path.iterdir() if "sqlite" in p.name]  # no file was made
