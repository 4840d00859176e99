"""The whole direct_task demo in one command, checked: every mode must return the same
reports, in the same order, as plain Python.

    python samples/direct_task_demo/run_demo.py

Modes, each calling the slow `generate_report` for 5 periods:
    plain Python (baseline)       tasks_original.py, no pynenc_lite
    sync mode                     PYNENC__DEV_MODE_FORCE_SYNC_TASKS=True, in a child process,
                                  which must leave no database file behind
    sequential calls on runner    the unchanged loop, with the runner in this process
    concurrent caller threads     ThreadPoolExecutor(5).map(generate_report, PERIODS)
    parallel fan-out              generate_reports(periods=PERIODS): parallel_func/aggregate_func

Prints one table (mode, time, ideal time, reports) and exits with status 1 if any mode
returned other reports than the baseline, or sync mode created a database file.
"""

from __future__ import annotations

# Runnable from the repo root or from this folder without installing anything: put this
# folder (for `tasks`) and the repo root (for `pynenc_lite`) on the import path.
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_REPO = _HERE.parents[1]
for _path in (str(_REPO), str(_HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import sample_distributed  # noqa: E402
import sample_parallel  # noqa: E402
import tasks  # noqa: E402
import tasks_original  # noqa: E402

# The demo prints one table; the library's per-task INFO lines (printed, as pynenc prints
# them, by a program that configures no logging) would bury it. A program that configures
# logging, as this harness does, gets only what it asks for.
logging.basicConfig(level=logging.WARNING)

# Runs in a child process with PYNENC__DEV_MODE_FORCE_SYNC_TASKS=True in its environment:
# sync mode exactly as a user turns it on. It reports its reports and how it was configured.
_SYNC_CHILD = """
import json, sys
sys.path[:0] = {paths!r}
import sample_sync, tasks
seconds, reports = sample_sync.run_sync()
conf = tasks.app.conf
print(json.dumps({{
    "seconds": seconds,
    "reports": reports,
    "sync": conf.dev_mode_force_sync_tasks,
    "source": conf.source_of("dev_mode_force_sync_tasks"),
}}))
"""


def run_baseline() -> tuple[float, list[dict[str, Any]]]:
    """The plain-Python loop of tasks_original.py."""
    start = time.perf_counter()
    reports = [tasks_original.generate_report(period) for period in tasks_original.PERIODS]
    return time.perf_counter() - start, reports


def run_sync_in_child() -> tuple[float, list[dict[str, Any]], list[str]]:
    """Sync mode in a child process whose environment turns it on.

    The child runs in an empty folder and is told a database path inside a second empty
    folder, so that a database file created by mistake (at the default path or the
    configured one) is found.

    Returns:
        (seconds, reports, problems): problems are what went wrong, in words (empty if none).
    """
    with tempfile.TemporaryDirectory(prefix="direct_task_demo-sync-") as scratch:
        cwd = os.path.join(scratch, "cwd")
        db_dir = os.path.join(scratch, "db")
        os.mkdir(cwd)
        os.mkdir(db_dir)
        env = dict(os.environ)
        env["PYNENC__DEV_MODE_FORCE_SYNC_TASKS"] = "True"
        env["PYNENC__SQLITE_DB_PATH"] = os.path.join(db_dir, "direct_task_demo.sqlite3")
        code = _SYNC_CHILD.format(paths=[str(_REPO), str(_HERE)])
        child = subprocess.run(
            [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True
        )
        if child.returncode != 0:
            failure = f"the sync-mode child failed (exit {child.returncode}):\n{child.stderr}"
            return 0.0, [], [failure]
        answer = json.loads(child.stdout.strip().splitlines()[-1])
        problems = []
        if not (answer["sync"] is True and answer["source"] == "env"):
            problems.append(
                "sync mode was not taken from the environment: dev_mode_force_sync_tasks="
                f"{answer['sync']!r} from {answer['source']!r}"
            )
        created = sorted(os.listdir(cwd)) + sorted(os.listdir(db_dir))
        if created:
            problems.append(f"sync mode created files: {created}")
        return answer["seconds"], answer["reports"], problems


def main() -> int:
    n = len(tasks.PERIODS)
    one = tasks.REPORT_SECONDS
    print(f"direct_task demo: {n} reports of {one}s each, in 5 modes (about 9 s)...", flush=True)
    rows = []  # (mode, seconds, ideal seconds, reports)

    seconds, baseline = run_baseline()
    rows.append(("plain Python (baseline)", seconds, n * one, baseline))

    seconds, reports, problems = run_sync_in_child()
    rows.append(("sync mode (env var, inline)", seconds, n * one, reports))

    # Distributed, on threads of this process, whatever PYNENC__DEV_MODE_FORCE_SYNC_TASKS or
    # PYNENC__RUNNER_CLS say: assignment beats the environment.
    tasks.app.conf.dev_mode_force_sync_tasks = False
    tasks.app.conf.runner_cls = "ThreadRunner"
    with tasks.app.runner:  # the ThreadRunner in a background thread
        seconds, reports = sample_distributed.run_sequential()
        rows.append(("sequential calls on runner", seconds, n * one, reports))
        seconds, reports = sample_distributed.run_concurrent_callers()
        rows.append(("concurrent caller threads", seconds, one, reports))
        seconds, reports = sample_parallel.run_parallel_fanout()
        rows.append(("parallel fan-out", seconds, one, reports))

    table = [("mode", "time (s)", "ideal (s)", "reports")]
    for mode, seconds, ideal, reports in rows:
        if reports is baseline:
            verdict = f"{len(reports)}, the baseline"
        elif reports == baseline:
            verdict = f"{len(reports)}, same as baseline"
        else:
            verdict = f"{len(reports)}, DIFFERENT from baseline"
            periods = [report.get("period") for report in reports]
            problems.append(f"{mode} returned other reports than the baseline (periods {periods})")
        table.append((mode, f"{seconds:.2f}", f"{ideal:.2f}", verdict))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    print()
    for i, row in enumerate(table):
        print(
            f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}"
        )
        if i == 0:
            print("  ".join("-" * width for width in widths))
    print()
    if problems:
        for problem in problems:
            print(f"FAILED: {problem}")
        return 1
    print("OK: every mode returned the baseline's reports in the same order;")
    print("    sync mode ran inline and created no database file.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
