"""The library's default output: a pynenc-style program that configures no logging sees the
runner's INFO lines on log_stream; one that configures logging sees only what it asked for,
once. Each case runs in its own interpreter (logging is process-wide)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROGRAM = """
import logging, sys
{setup}
from pynenc_lite import Pynenc
app = Pynenc("logs", config_values={{"sqlite_db_path": sys.argv[1], "log_stream": "{stream}"}})

@app.task
def add(a, b):
    return a + b

invocation = add(1, 2)
app.runner.run(burst=True)
assert invocation.result == 3
logging.getLogger("pynenc_lite.probe").warning("a warning")
"""


def run(
    tmp_path: Path, setup: str = "", stream: str = "stderr"
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(PROGRAM.format(setup=setup, stream=stream)))
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path / "logs.sqlite3")],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True, timeout=60,
    )


@pytest.mark.parametrize("stream", ["stderr", "stdout"])
def test_unconfigured_program_sees_the_runner_lines_on_its_stream(
    tmp_path: Path, stream: str
) -> None:
    done = run(tmp_path, stream=stream)
    assert done.returncode == 0, done.stderr
    out = getattr(done, stream)
    assert "INFO pynenc_lite.execution: start __main__.add" in out
    assert "finish __main__.add" in out and "a warning" in out


def test_configured_program_gets_only_what_it_asked_for_once(tmp_path: Path) -> None:
    done = run(tmp_path, setup="logging.basicConfig(level=logging.WARNING)")
    assert done.returncode == 0, done.stderr
    assert "start __main__.add" not in done.stderr  # below the program's WARNING
    assert done.stderr.count("a warning") == 1  # through the program's handler only


def test_worker_processes_show_the_default_output_too(tmp_path: Path) -> None:
    (tmp_path / "logtasks.py").write_text(textwrap.dedent("""
        import sys
        from pynenc_lite import Pynenc
        app = Pynenc("logs-proc", config_values={
            "sqlite_db_path": "procs.sqlite3", "runner_cls": "ProcessRunner",
            "runner_processes": 1, "max_threads": 1})

        @app.task
        def add(a, b):
            return a + b
    """))
    (tmp_path / "prog.py").write_text(textwrap.dedent("""
        import logtasks
        if __name__ == "__main__":  # worker processes are spawned: they import this file
            invocation = logtasks.add(1, 2)
            logtasks.app.runner.run(burst=True)
            assert invocation.result == 3
    """))
    done = subprocess.run([sys.executable, "prog.py"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "start logtasks.add" in done.stderr  # printed by the worker process


def test_logging_configured_later_gets_its_own_levels(tmp_path: Path) -> None:
    setup = (
        "Pynenc('early', config_values={'sqlite_db_path': sys.argv[1]}).runner\n"
        "from pynenc_lite import Pynenc as _P\n"
        "logging.basicConfig(level=logging.DEBUG)\n"
        "logging.getLogger('pynenc_lite.probe').info('first info')\n"
        "logging.getLogger('pynenc_lite.probe').debug('a debug line')\n"
    )
    done = run(tmp_path, setup="from pynenc_lite import Pynenc\n" + setup)
    assert done.returncode == 0, done.stderr
    assert "a debug line" in done.stderr and done.stderr.count("first info") == 1
    assert "INFO pynenc_lite" not in done.stderr  # the default output stepped aside
